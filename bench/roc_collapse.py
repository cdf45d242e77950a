"""Speed of notebook 04's statistics against one ``sklearn.metrics.roc_curve`` call on the same scores.

* tpr@fpr with a 1,000-replicate stratified bootstrap interval on 1.3 x 10^6 bfloat16 scores
  (the per-block multinomial walk of ``low_fpr.bootstrap_tpr_at_fpr``), target <= 20x;
* the tie audit and metric recomputation (``helpers.roc_collapse.diagnosis.diagnose`` with 100
  bootstrap replicates, no history, ROC-function audit or loader log) for 12 epochs x 1.3 x 10^6
  rows, target <= 30x one roc_curve on one epoch.

Scores are generated here (seeded): saturating bfloat16 sigmoids of growing logits, as in the sample.
Each side is timed ``REPEATS`` times, alternating, and the best time is kept (the machine is shared).
"""

from __future__ import annotations

import gc
import time

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_curve

from helpers.roc_collapse import diagnosis as dx
from helpers.roc_collapse import low_fpr as lf

N = 1_300_000
EPOCHS = 12
REPEATS = 3


def make_scores(n: int = N, epochs: int = EPOCHS, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.49).astype(np.int64)
    margin = np.where(label == 1, rng.normal(8, 3, n), rng.normal(-8, 3, n))
    frames = []
    for e in range(epochs):
        logit = torch.from_numpy((1 + 0.15 * e) * margin + rng.normal(0, 0.2, n)).to(torch.bfloat16)
        frames.append(pd.DataFrame({"epoch": e, "label": label, "score": torch.sigmoid(logit).float().numpy(),
                                    "logit": logit.float().numpy().astype(np.float64) + rng.normal(0, 1e-3, n)}))
    return pd.concat(frames, ignore_index=True)


def _timed(fn) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_pair(ours, baseline) -> tuple[float, float]:
    ours(), baseline()  # warm-up
    a, b = [], []
    for _ in range(REPEATS):
        b.append(_timed(baseline))
        a.append(_timed(ours))
    return min(a), min(b)


def run(quick: bool = False) -> list[dict]:
    n, epochs = (20_000, 3) if quick else (N, EPOCHS)
    df = make_scores(n, epochs)
    one = df[df["epoch"] == epochs - 1]
    y, s = one["label"].to_numpy(), one["logit"].to_numpy()

    def bootstrap():
        c = lf.curve(y, s)
        return lf.bootstrap_tpr_at_fpr(c, 1e-4, n_boot=1000, seed=0)

    t_boot, t_roc = best_pair(bootstrap, lambda: roc_curve(y, s))
    b = bootstrap()
    rows = [{"name": f"04: tpr@fpr1e-4 + 1,000-replicate stratified bootstrap on {n:.1e} scores / one roc_curve",
             "value": t_boot / t_roc, "target": 20.0,
             "detail": f"{t_boot:.2f} s vs {t_roc:.2f} s (best of {REPEATS}); tpr {b['tpr']:.4f} "
                       f"[{b['low']:.4f}, {b['high']:.4f}]"}]
    scores_only = dx.Run(df[["epoch", "label", "score"]], history=None, seen=None, roc_function=None)
    params = {"fpr_targets": [1e-4, 1e-3], "tpr_targets": [0.5, 0.85], "n_bootstrap": 100, "seed": 0}
    ys, ss = one["label"].to_numpy(), one["score"].to_numpy()

    def audit():
        # the tie audit + every metric and partial AUC per epoch; the bootstrap's own cost is the row above
        return dx.diagnose(scores_only, params, progress=False)  # no bar in a timed call

    t_audit, t_one = best_pair(audit, lambda: roc_curve(ys, ss))
    d = audit()
    rows.append({"name": f"04: tie audit + metric recomputation, {epochs} epochs x {n:.1e} rows / one roc_curve",
                 "value": t_audit / t_one, "target": 30.0,
                 "detail": f"{t_audit:.2f} s vs {t_one:.2f} s (best of {REPEATS}); predicted cliff epochs "
                           f"{dx.cliff_table(d, None)['predicted_cliff_epoch'].tolist()}"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']}: {row['value']:.2f} (target <= {row['target']}) - {row['detail']}")
