"""Speed, recall and memory of notebook 05's near-duplicate scan: 4 x 10^5 validation rows and
2.4 x 10^6 training rows of 40 features (the source's 2.8 M augmented rows, split 85/15).

The rows are made here (seeded) with the source's structure: parents, 50 noisy copies for a
third of them, 25 for another third, none for the rest, then a row-wise split. The scan's search
runs in a child process whose VmHWM is its peak memory: the one all-pairs k-NN search of the pool
the scan reads every distance from (``helpers.augmentation_leakage.leakage.link_rows``: the feature
space chosen, then k-means lists above the exact limit, each row compared with the rows of its
nearest lists, and the rows without a near-copy among their neighbours searched again in more
lists), and the validation rows' nearest training rows read from it (``split_distances``). Recall
of the exact nearest training row is measured on a 10^4-row validation subsample against faiss's
exact IndexFlatL2 in the same feature space. The baseline is scikit-learn's brute-force
``NearestNeighbors`` of the validation rows against the training rows, timed on a query
subsample and scaled linearly to all validation rows.
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
TARGET_MISSED = 0.01  # recall of the exact nearest training row at least 0.99
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
sys.path.insert(0, sys.argv[1])
from augmentation_leakage import make_rows
from helpers.augmentation_leakage import leakage as lk
n_rows, d, n_recall = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
x, is_val = make_rows(n_rows, d)
train, val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
t0 = time.perf_counter()
link = lk.link_rows(x, seed=0)
dist = lk.split_distances(link, np.arange(len(x)), train, val)[0]
seconds = time.perf_counter() - t0
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
rng = np.random.default_rng(1)
sub = rng.choice(len(val), min(n_recall, len(val)), replace=False)
exact = lk.nearest_distance(link.z[train], link.z[val[sub]], exact=True)  # faiss IndexFlatL2
recall = float(np.mean(dist[sub] <= exact * (1 + 1e-3) + 1e-4))
print(json.dumps({"seconds": seconds, "recall": recall, "hwm_kb": hwm, "n_train": len(train), "n_val": len(val),
                  "exact": bool(link.exact), "lists": int(len(link.lists.bounds) - 1), "space": link.space}))
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
    n_recall = 1000 if quick else RECALL_QUERIES
    here = str(Path(__file__).resolve().parent)
    res = subprocess.run([sys.executable, "-c", _CHILD, here, str(n_rows), str(d), str(n_recall)],
                         capture_output=True, text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    per_query = sklearn_seconds_per_query(n_rows, d, 200 if quick else SKLEARN_QUERIES)
    sk = per_query * r["n_val"]
    peak = r["hwm_kb"] / 2**20
    size = f"{r['n_val']:.1e} val x {r['n_train']:.1e} train x {d}"
    how = "exact" if r["exact"] else f"{r['lists']:,} k-means lists"
    return [
        {"name": "05 near-duplicate scan (one all-pairs faiss search of the pool) / sklearn brute NearestNeighbors",
         "value": r["seconds"] / sk, "target": TARGET_RATIO,
         "detail": (f"{size}: {r['seconds']:.1f} s ({how}, {r['space']} features) vs sklearn {sk:.0f} s (val against "
                    f"train, scaled from {200 if quick else SKLEARN_QUERIES} queries)")},
        {"name": "05 near-duplicate scan, share of validation rows whose exact nearest training row it missed",
         "value": 1.0 - r["recall"], "target": TARGET_MISSED,
         "detail": f"{size}: recall {r['recall']:.4f} on {n_recall} validation rows (exact search in the same space)"},
        {"name": "05 near-duplicate scan, peak memory (GB)", "value": peak, "target": TARGET_GB,
         "detail": f"{size}, VmHWM of the scanning process (data + its rows in the chosen feature space + neighbour lists)"},
    ]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(f"{row['name']}: {row['value']:.4f} (target <= {row['target']}) - {row['detail']}")
