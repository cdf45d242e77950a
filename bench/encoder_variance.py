"""Speed of notebook 02's statistics: variance decomposition + effective rank vs one numpy.cov.

10^6 embeddings x 256 units in 10^4 groups, float32, generated here (seeded). Both
sides see the same float32 matrix: ``numpy.cov(x, rowvar=False, dtype=float32)``
against ``representation.decompose`` (group sums, ANOVA components, centred Gram,
its eigenvalues) followed by ``representation.rankme``. Each side is timed
``REPEATS`` times, alternating, and the best time is kept (the machine is shared).
Peak memory: the matrix (1 GB) plus one centred copy (1 GB) on either side.
"""

from __future__ import annotations

import gc
import time

import numpy as np

from helpers.encoder_variance import representation as rep

N, D, G = 1_000_000, 256, 10_000
TARGET = 3.0
REPEATS = 3


def make_embeddings(seed: int = 0, n: int = N, d: int = D, g: int = G) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    group = rng.integers(0, g, n)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x += 0.5 * rng.standard_normal((g, d), dtype=np.float32)[group]
    return x, group


def _timed(fn) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    """The ratio row; ``quick`` uses 10^4 x 32 in 10^2 groups (a smoke test, no verdict)."""
    n, d, g = (10_000, 32, 100) if quick else (N, D, G)
    x, group = make_embeddings(n=n, d=d, g=g)

    def ours():
        d = rep.decompose(x, group)
        return d.between_share, rep.rankme(d.singular_values)

    def baseline():
        return np.cov(x, rowvar=False, dtype=np.float32)

    ours()  # warm-up (torch index_add_ thread pool, BLAS)
    t_ours, t_cov = [], []
    for _ in range(REPEATS):
        t_cov.append(_timed(baseline))
        t_ours.append(_timed(ours))
    a, b = min(t_ours), min(t_cov)
    share, erank = ours()
    return [{
        "name": "02 variance decomposition + RankMe / numpy.cov",
        "value": a / b,
        "target": TARGET,
        "detail": (f"{n:.0e} x {d} float32 in {g:.0e} groups: decompose+rankme {a:.2f} s, "
                   f"numpy.cov(float32) {b:.2f} s (best of {REPEATS}); between share {share:.3f}, RankMe {erank:.1f}"),
    }]


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']}: {row['value']:.2f} (target <= {row['target']}) - {row['detail']}")
