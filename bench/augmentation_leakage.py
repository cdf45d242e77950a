"""Speed and memory of notebook 05's near-duplicate scan: 4 x 10^5 validation rows against
2.4 x 10^6 training rows of 40 features (the source's 2.8 M augmented rows, split 85/15).

The rows are made here (seeded) with the source's structure: parents, 50 noisy copies for a
third of them, 25 for another third, none for the rest, then a row-wise split. The scan
(``helpers.augmentation_leakage.leakage.nearest_distance``: faiss IVF index above its exact limit) runs in a child
process whose VmHWM is its peak memory; recall of the exact nearest neighbour is measured on a
10^4-row query subsample against faiss's exact IndexFlatL2. The baseline is scikit-learn's
brute-force ``NearestNeighbors`` on the same training rows, timed on a query subsample and
scaled linearly to all validation rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np

N_TRAIN, N_VAL, D = 2_400_000, 400_000, 40
TARGET_RATIO = 0.2
TARGET_GB = 6.0
SKLEARN_QUERIES = 1000
RECALL_QUERIES = 10_000


def make_rows(n_rows: int, d: int, seed: int = 0, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """(rows, is_val): parents with 50 / 25 / 0 copies (thirds), standard-normal features, row-wise split."""
    rng = np.random.default_rng(seed)
    n_parents = max(3, int(n_rows / 26))
    copies = np.array([50, 25, 0])[np.arange(n_parents) % 3]
    parents = rng.standard_normal((n_parents, d), dtype=np.float32)
    idx = np.repeat(np.arange(n_parents), copies + 1)[:n_rows]
    x = parents[idx]
    x += (noise * rng.standard_normal(x.shape, dtype=np.float32)) * (np.r_[True, idx[1:] == idx[:-1]][:, None])
    is_val = np.zeros(len(x), bool)
    is_val[rng.permutation(len(x))[: int(round(0.142857 * len(x)))]] = True
    return x, is_val


_CHILD = """
import json, sys, time
import numpy as np
import faiss
sys.path.insert(0, sys.argv[1])
from augmentation_leakage import make_rows
from helpers.augmentation_leakage import leakage as lk
n_rows, d, n_recall = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
x, is_val = make_rows(n_rows, d)
train, val = np.ascontiguousarray(x[~is_val]), np.ascontiguousarray(x[is_val])
del x
t0 = time.perf_counter()
dist = lk.nearest_distance(train, val, exact=False)
seconds = time.perf_counter() - t0
rng = np.random.default_rng(1)
sub = rng.choice(len(val), min(n_recall, len(val)), replace=False)
exact = lk.nearest_distance(train, val[sub], exact=True)
recall = float(np.mean(dist[sub] <= exact * (1 + 1e-3) + 1e-4))
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "recall": recall, "hwm_kb": hwm, "n_train": len(train), "n_val": len(val)}))
"""


def sklearn_seconds_per_query(n_rows: int, d: int, n_queries: int) -> float:
    from sklearn.neighbors import NearestNeighbors

    x, is_val = make_rows(n_rows, d)
    train, val = x[~is_val], x[is_val][:n_queries]
    nn = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(train)
    t0 = time.perf_counter()
    nn.kneighbors(val)
    return (time.perf_counter() - t0) / len(val)


def run(quick: bool = False) -> list[dict]:
    from pathlib import Path

    n_rows, d = (28_000, D) if quick else (N_TRAIN + N_VAL, D)
    here = str(Path(__file__).resolve().parent)
    res = subprocess.run([sys.executable, "-c", _CHILD, here, str(n_rows), str(d),
                          str(1000 if quick else RECALL_QUERIES)], capture_output=True, text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    per_query = sklearn_seconds_per_query(n_rows, d, 200 if quick else SKLEARN_QUERIES)
    sk = per_query * r["n_val"]
    peak = r["hwm_kb"] / 2**20
    size = f"{r['n_val']:.1e} val x {r['n_train']:.1e} train x {d}"
    return [
        {"name": "05 near-duplicate scan (faiss IVF) / sklearn brute NearestNeighbors", "value": r["seconds"] / sk,
         "target": TARGET_RATIO,
         "detail": (f"{size}: {r['seconds']:.1f} s vs sklearn {sk:.0f} s (scaled from {200 if quick else SKLEARN_QUERIES}"
                    f" queries); recall of the exact nearest neighbour {r['recall']:.4f} on "
                    f"{1000 if quick else RECALL_QUERIES} queries")},
        {"name": "05 near-duplicate scan, peak memory (GB)", "value": peak, "target": TARGET_GB,
         "detail": f"{size}, VmHWM of the scanning process (data + index + queries)"},
    ]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(f"{row['name']}: {row['value']:.3f} (target <= {row['target']}) - {row['detail']}")
