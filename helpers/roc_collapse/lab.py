"""Mechanism lab of notebook 04: live, CPU, a few seconds.

(a) the same logits through sigmoid in bfloat16, float16, float32, float64;
(b) a real DataLoader over an IterableDataset sharded by rank only, with worker processes,
    then the fix with ``get_worker_info()``;
(c) paired controls: a model trained on lenses and their own controls learns "extra flux";
    flux-matched unpaired negatives expose it; training on flux-matched controls fixes it;
(d) a small classifier trained past its best epoch; early stopping on partial AUC keeps the good one.
"""

from __future__ import annotations

import copy
import sys
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from helpers.roc_collapse import low_fpr as lf
from helpers.training import FastAdam


# --------------------------------------------------------------------------- (a) dtypes
def sigmoid_dtypes(logits, labels, fpr_targets) -> pd.DataFrame:
    """tpr@fpr of the same logits with the sigmoid computed in each dtype, and of the logits themselves."""
    logits, labels = np.asarray(logits, float), np.asarray(labels)
    rows = []
    for name in ("bfloat16", "float16", "float32", "float64", "logits"):
        s = logits if name == "logits" else lf.sigmoid_in(logits, name)
        c = lf.curve(labels, s)
        row = {"computed as": "logits (fp64)" if name == "logits" else f"sigmoid in {name}",
               "distinct values": c.n_distinct, "negatives at top": int(c.fps[1])}
        row.update({f"tpr@fpr{lf.rate_str(t)}": lf.tpr_at_fpr(c.fpr, c.tpr, t) for t in fpr_targets})
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- (b) loader
class FragmentStream(IterableDataset):
    """Yields (sample_id, worker id) from fragments sharded by rank; ``shard_workers`` also by worker."""

    def __init__(self, n_fragments: int, per_fragment: int, rank: int = 0, world: int = 1,
                 shard_workers: bool = False):
        self.n_fragments, self.per_fragment = n_fragments, per_fragment
        self.rank, self.world, self.shard_workers = rank, world, shard_workers

    def fragments(self) -> list[int]:
        frags = list(range(self.n_fragments))[self.rank::self.world]
        info = get_worker_info()
        if self.shard_workers and info is not None:
            frags = frags[info.id::info.num_workers]
        return frags

    def __iter__(self):
        info = get_worker_info()
        wid = info.id if info is not None else 0
        for f in self.fragments():
            for i in range(f * self.per_fragment, (f + 1) * self.per_fragment):
                yield i, wid


def loader_duplicates(num_workers: int = 4, n_fragments: int = 16, per_fragment: int = 250,
                      start_method: str | None = None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One epoch through a real DataLoader, rank-only sharding vs worker-aware sharding."""
    ctx = start_method or ("fork" if sys.platform == "linux" else "spawn")
    logs, rows = {}, []
    for label, fix in (("shard by rank only", False), ("shard by rank and worker (get_worker_info)", True)):
        with warnings.catch_warnings():  # more workers than cores is the point here
            warnings.filterwarnings("ignore", message=".*worker processes in total.*")
            dl = DataLoader(FragmentStream(n_fragments, per_fragment, shard_workers=fix), batch_size=500,
                            num_workers=num_workers, multiprocessing_context=ctx if num_workers else None)
            batches = list(dl)
        ids, workers = [], []
        for i, w in batches:
            ids.append(i.numpy()), workers.append(w.numpy())
        seen = pd.DataFrame({"epoch": 0, "sample_id": np.concatenate(ids), "worker": np.concatenate(workers)})
        logs[label] = seen
        counts = seen["sample_id"].value_counts()
        rows.append({"loader": label, "rows yielded": len(seen), "distinct samples": int(counts.size),
                     "times each sample is yielded": float(len(seen) / counts.size),
                     "dataset size": n_fragments * per_fragment})
    return pd.DataFrame(rows), logs


# --------------------------------------------------------------------------- (c) paired controls
def paired_controls(seed: int = 0, n: int = 4000) -> pd.DataFrame:
    """Train on lenses + their own controls vs on lenses + flux-matched unpaired controls; evaluate both ways.

    A stamp is summarised by two features: log total flux and a noisy arc-shape statistic.
    A lens is a galaxy plus an arc (extra flux, arc shape); its paired control is the same
    galaxy without the arc, so "more flux than usual" separates the pairs well. Unpaired
    galaxies drawn to match the lenses' total flux have no arc and as much flux.
    """
    rng = np.random.default_rng(seed)
    g = rng.lognormal(0.0, 0.35, n)  # galaxy flux
    a = rng.uniform(0.4, 1.0, n)  # arc flux
    x_pos = np.c_[np.log(g + a), 1.0 + rng.normal(0, 0.8, n)]
    x_ctl = np.c_[np.log(g), rng.normal(0, 0.8, n)]  # paired: the same galaxy, no arc
    x_matched = np.c_[np.log(rng.permutation(g + a)), rng.normal(0, 0.8, n)]  # flux-matched, no arc
    half = n // 2  # split by galaxy: train on the first half of the galaxies, test on the rest
    y = np.r_[np.ones(half), np.zeros(half)]
    train_sets = {"lenses + their own controls (paired)": np.r_[x_pos[:half], x_ctl[:half]],
                  "lenses + flux-matched unpaired controls (fix)": np.r_[x_pos[:half], x_matched[:half]]}
    test_sets = {"paired controls": np.r_[x_pos[half:], x_ctl[half:]],
                 "flux-matched unpaired negatives": np.r_[x_pos[half:], x_matched[half:]]}
    rows = []
    for train_name, x_train in train_sets.items():
        model = LogisticRegression().fit(x_train, y)
        for test_name, x_test in test_sets.items():
            s = model.decision_function(x_test)
            c = lf.curve(y.astype(int), s)
            rows.append({"trained on": train_name, "evaluated on": test_name,
                         "weight on log flux": float(model.coef_[0, 0]), "weight on arc shape": float(model.coef_[0, 1]),
                         "AUC": float(roc_auc_score(y, s)), "tpr@fpr0.01": lf.tpr_at_fpr(c.fpr, c.tpr, 0.01)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- (d) early stopping
def _lens_like(rng, n_pos, n_neg, n_lookalike, dim=10):
    """Lenses around +1.5 on feature 0, non-lenses around -1.5, and lens-like non-lenses off to the side."""
    pos = rng.normal(0, 1, (n_pos, dim)) + np.r_[1.5, np.zeros(dim - 1)]
    neg = rng.normal(0, 1, (n_neg - n_lookalike, dim)) - np.r_[1.5, np.zeros(dim - 1)]
    look = rng.normal(0, 0.5, (n_lookalike, dim)) + np.r_[0.0, 3.0, np.zeros(dim - 2)]
    return np.r_[pos, neg, look].astype(np.float32), np.r_[np.ones(n_pos), np.zeros(n_neg)].astype(np.float32)


def early_stopping(seed: int = 0, epochs: int = 40, patience: int = 5, max_fpr: float = 0.01,
                   steps_per_epoch: int = 3) -> dict:
    """A small MLP that slowly memorises lens-like non-lenses mislabelled as lenses in its training set.

    Validation and test lenses are ranked well early; as the network fits the mislabelled
    look-alikes, the look-alike negatives of the held-out sets climb into the top scores and
    tpr at low FPR falls. Early stopping on the validation partial AUC keeps an early checkpoint.
    """
    rng = np.random.default_rng(seed)
    xtr, ytr = _lens_like(rng, 1000, 1000, 60)
    ytr[-60:] = 1.0  # the look-alikes in the training set are labelled as lenses
    xval, yval = _lens_like(rng, 2000, 2000, 80)
    xte, yte = _lens_like(rng, 2000, 2000, 80)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(10, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 1))
    opt = FastAdam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    xv, xs = torch.from_numpy(xval), torch.from_numpy(xte)
    rows, best, best_state, kept, waited, stop = [], -np.inf, None, 0, 0, None
    for e in range(epochs):
        for _ in range(steps_per_epoch):  # full-batch steps
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(xt).squeeze(-1), yt).backward()
            opt.step()
        with torch.no_grad():
            sv, st = model(xv).squeeze(-1).double().numpy(), model(xs).squeeze(-1).double().numpy()
        ct = lf.curve(yte.astype(int), st)
        pauc = lf.partial_auc(lf.curve(yval.astype(int), sv), max_fpr)
        rows.append({"epoch": e, f"val pAUC@{max_fpr:g}": pauc,
                     f"test tpr@fpr{max_fpr:g}": lf.tpr_at_fpr(ct.fpr, ct.tpr, max_fpr)})
        if stop is None:
            if pauc > best:
                best, best_state, kept, waited = pauc, copy.deepcopy(model.state_dict()), e, 0
            else:
                waited += 1
                stop = e if waited >= patience else None
    curve = pd.DataFrame(rows)
    restored = copy.deepcopy(model)
    restored.load_state_dict(best_state)
    with torch.no_grad():
        s_kept = restored(xs).squeeze(-1).double().numpy()
    c_kept = lf.curve(yte.astype(int), s_kept)
    key = f"test tpr@fpr{max_fpr:g}"
    return {"curve": curve, "kept_epoch": kept, "stop_epoch": stop if stop is not None else epochs - 1, "patience": patience,
            "kept_test": lf.tpr_at_fpr(c_kept.fpr, c_kept.tpr, max_fpr), "last_test": float(curve[key].iloc[-1]),
            "best_test": float(curve[key].max()), "best_test_epoch": int(curve[key].idxmax()), "metric": key}
