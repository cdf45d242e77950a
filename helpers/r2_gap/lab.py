"""Mechanism lab of notebook 01: a real torch.distributed (gloo, CPU) evaluation.

``evaluate(model, x, y, world_size=4)`` starts ``world_size`` processes that
evaluate the model on a DistributedSampler shard each, and measures, on the
same run, how the training script's metric computations compare:

* ``rank 0 only``: the metric of rank 0's shard (no synchronisation);
* ``rank 0, mean of per-batch EV``: the source's logged number;
* ``seed Fix 1``: per-rank R² and r averaged across ranks (all-reduce of values);
* ``seed Fix 2``: 1 - SSE / (summed within-batch SS) per rank, then averaged;
  ``seed Fix 2, sums all-reduced`` isolates its bias from the rank averaging;
* ``exact: all-reduced sufficient statistics`` (padded duplicates included / removed by sample id),
  computed by :mod:`helpers.r2_gap.fix` (the code notebook 01 prints as the fix);
* ``torchmetrics R2Score + PearsonCorrCoef`` (their own distributed sync), likewise.

Each row is compared with single-process scikit-learn on the whole set.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers.r2_gap.fix import pooled_r2, unique_rows
from helpers.training import FastAdam


def _preload() -> None:
    """Import what the workers need in the parent, so forked workers start ready."""
    import scipy.stats  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch.distributed  # noqa: F401
    import torchmetrics  # noqa: F401


def _worker(rank: int, world_size: int, init_file: str, model: torch.nn.Module, x: np.ndarray,
            y: np.ndarray, batch_size: int, out_path: str) -> None:
    import torch.distributed as dist
    from scipy import stats as sps
    from sklearn.metrics import r2_score
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from torchmetrics import PearsonCorrCoef, R2Score
    from torchmetrics.functional import explained_variance

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        n = len(y)
        ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y), torch.arange(n))
        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=False)
        loader = DataLoader(ds, batch_size=batch_size, sampler=sampler)
        model.eval()
        preds, targets, ids, batch_ev = [], [], [], []
        sse_fix2 = within_fix2 = 0.0
        with torch.no_grad():
            for xb, yb, ib in loader:
                pb = model(xb).squeeze(-1)
                preds.append(pb), targets.append(yb), ids.append(ib)
                if len(yb) > 1:
                    batch_ev.append(float(explained_variance(pb, yb)))
                sse_fix2 += float(((pb - yb) ** 2).sum())  # the source's Fix 2, as written
                within_fix2 += float(((yb - yb.mean()) ** 2).sum())
        p, t, i = torch.cat(preds), torch.cat(targets), torch.cat(ids)
        pn, tn = p.double().numpy(), t.double().numpy()
        local_r2, local_r = r2_score(tn, pn), float(sps.pearsonr(tn, pn).statistic)

        keep = unique_rows(i)  # the fix notebook 01 prints: each sample once, across ranks

        def all_reduce(values, op=dist.ReduceOp.SUM) -> np.ndarray:
            buf = torch.tensor(values, dtype=torch.float64)
            dist.all_reduce(buf, op=op)  # gloo has no AVG: sum, then divide
            return buf.numpy()

        results = {}
        fix1 = all_reduce([local_r2, local_r]) / world_size
        fix2_local = 1 - sse_fix2 / within_fix2
        fix2_avg = all_reduce([fix2_local])[0] / world_size
        fix2_sum = all_reduce([sse_fix2, within_fix2])
        for label, mask in (("incl. duplicates", torch.ones_like(keep)), ("duplicates removed", keep)):
            results[f"exact: all-reduced sufficient statistics, {label}"] = pooled_r2(p, t, mask)
            r2m, pcm = R2Score(), PearsonCorrCoef()  # sync on compute() across the process group
            r2m.update(p[mask].double(), t[mask].double())
            pcm.update(p[mask].double(), t[mask].double())
            results[f"torchmetrics R2Score + PearsonCorrCoef, {label}"] = (float(r2m.compute()), float(pcm.compute()))
        results["seed Fix 1: all-reduce mean of per-rank R² and r"] = (float(fix1[0]), float(fix1[1]))
        results["seed Fix 2: summed within-batch SS, averaged over ranks"] = (float(fix2_avg), np.nan)
        results["seed Fix 2 with its sums all-reduced"] = (float(1 - fix2_sum[0] / fix2_sum[1]), np.nan)

        per_rank = [None] * world_size
        dist.all_gather_object(per_rank, {"rank": rank, "n": len(t), "n_duplicates": int((~keep).sum()),
                                          "r2": local_r2, "r": local_r, "batch_ev_mean": float(np.mean(batch_ev))})
        if rank == 0:
            Path(out_path).write_text(json.dumps({"collective": results, "per_rank": per_rank}))
    finally:
        dist.destroy_process_group()


def evaluate(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, world_size: int = 4,
             batch_size: int = 16, start_method: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the distributed evaluation; return (methods table, per-rank table).

    Processes are forked on Linux (as DataLoader workers are: they inherit the
    imported libraries, so start in milliseconds) and spawned elsewhere.

    The methods table has one row per computation with its R², Pearson r and
    their differences from single-process scikit-learn/scipy on all ``len(y)`` samples.
    """
    import torch.multiprocessing as mp
    from scipy import stats as sps
    from sklearn.metrics import r2_score

    _preload()
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32).ravel()
    with tempfile.TemporaryDirectory(prefix="dist-eval-") as tmp:
        init_file, out_path = os.path.join(tmp, "rendezvous"), os.path.join(tmp, "results.json")
        mp.start_processes(_worker, args=(world_size, init_file, model, x, y, batch_size, out_path),
                           nprocs=world_size, join=True,
                           start_method=start_method or ("fork" if sys.platform == "linux" else "spawn"))
        res = json.loads(Path(out_path).read_text())
    with torch.no_grad():
        p_all = model.eval()(torch.from_numpy(x)).squeeze(-1).double().numpy()
    ref_r2, ref_r = r2_score(y.astype(float), p_all), float(sps.pearsonr(y.astype(float), p_all).statistic)
    ranks = pd.DataFrame(res["per_rank"])
    rows = [("single process, scikit-learn (reference)", ref_r2, ref_r),
            ("rank 0 only", ranks["r2"].iloc[0], ranks["r"].iloc[0]),
            ("rank 0, mean of per-batch explained variance", ranks["batch_ev_mean"].iloc[0], np.nan)]
    rows += [(k, v[0], v[1]) for k, v in res["collective"].items()]
    table = pd.DataFrame(rows, columns=["method", "r2", "pearson_r"])
    table["r2_error"] = table["r2"] - ref_r2
    table["r_error"] = table["pearson_r"] - ref_r
    return table, ranks


def fit_small_model(x: np.ndarray, y: np.ndarray, seed: int = 0, steps: int = 300) -> torch.nn.Module:
    """A linear model fitted full-batch with Adam (torch's update, see FastAdam; deterministic per seed).

    Linear on purpose: on a few hundred noisy samples a hidden layer overfits
    (validation R² near 0), and the lab is about the metric, not the model.
    """
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], 1)
    opt = FastAdam(model.parameters(), lr=0.05)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.float32).ravel())
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(xt).squeeze(-1), yt)
        loss.backward()
        opt.step()
    return model.eval()


def support(table: pd.DataFrame, ranks: pd.DataFrame) -> dict[str, str]:
    """What the lab measured for each fix, by finding id (for ``what_to_change``'s ``support``).

    ``table``, ``ranks``: what :func:`evaluate` returned. Only the fixes the lab tests get a sentence.
    """
    err = table.set_index("method")["r2_error"]
    exact = abs(err["exact: all-reduced sufficient statistics, duplicates removed"])
    where = (f"in the lab's gloo evaluation ({len(ranks)} processes, {int(ranks['n'].sum())} rows of which "
             f"{int(ranks['n_duplicates'].sum())} padded repeats)")
    fixed = f"all-reduced sums of each sample once (`pooled_r2` with `unique_rows`) matched scikit-learn within {exact:.1e}"
    return {
        "unsynced_rank_metrics": f"{where}, rank 0's shard alone was off scikit-learn's R² by {err['rank 0 only']:+.4f}; {fixed}.",
        "rank_averaged_metrics": (f"{where}, the mean of per-rank R² (the source's Fix 1) was off by "
                                  f"{err['seed Fix 1: all-reduce mean of per-rank R² and r']:+.4f}; {fixed}."),
        "batch_averaged_r2": (f"{where}, summing within-batch sums of squares (the source's Fix 2) was off by "
                              f"{err['seed Fix 2 with its sums all-reduced']:+.4f} even with its sums all-reduced; {fixed}."),
        "sampler_padding_duplicates": (f"{where}, keeping the repeats moved R² by "
                                       f"{err['exact: all-reduced sufficient statistics, incl. duplicates']:+.2e}; {fixed}."),
    }
