"""What the training loader actually yielded: a log of sample ids per epoch (``seen_ids``).

An ``IterableDataset`` that shards its input by rank but not by DataLoader worker
makes every worker yield the whole rank shard: with ``num_workers=8`` each sample
arrives 8 times per epoch. The log shows it directly: the multiplicity of each
sample per epoch, which workers (and ranks) yielded the repeats, and the effective
number of passes over the data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def multiplicity(seen: pd.DataFrame, distinct: bool = False) -> pd.DataFrame:
    """Per epoch: rows, distinct samples, how often each was yielded (mean, max), passes over the data.

    ``distinct``: the caller knows no (epoch, sample_id) repeats (each sample once per epoch), so the
    table is read from the rows per epoch without counting every pair.
    """
    if distinct:
        rows = seen.groupby("epoch", sort=True).size()
        one = pd.Series(1, index=rows.index, dtype=rows.dtype)
        per_epoch = pd.DataFrame({"distinct_samples": rows, "rows": rows, "mean_multiplicity": one.astype(float),
                                  "max_multiplicity": one, "min_multiplicity": one,
                                  "share_repeated": (one * 0).astype(float)})
        per_epoch["passes"] = per_epoch["rows"] / per_epoch["distinct_samples"]
        return per_epoch.reset_index()
    counts = seen.groupby(["epoch", "sample_id"], sort=True).size()
    per_epoch = counts.groupby(level="epoch").agg(
        distinct_samples="size", rows="sum", mean_multiplicity="mean", max_multiplicity="max",
        min_multiplicity="min")
    per_epoch["share_repeated"] = (counts > 1).groupby(level="epoch").mean()
    per_epoch["passes"] = per_epoch["rows"] / per_epoch["distinct_samples"]
    return per_epoch.reset_index()


def multiplicity_histogram(seen: pd.DataFrame) -> pd.DataFrame:
    """How many (epoch, sample) pairs were yielded 1, 2, ... times."""
    counts = seen.groupby(["epoch", "sample_id"], sort=False).size()
    h = counts.value_counts().sort_index()
    return pd.DataFrame({"times_per_epoch": h.index.to_numpy(), "samples": h.to_numpy()})


def by_source(seen: pd.DataFrame) -> pd.DataFrame | None:
    """Per (epoch, rank, worker): rows, distinct ids, and the share of its ids that another
    worker or rank also yielded in the same epoch. None without ``worker`` and ``rank`` columns."""
    keys = [k for k in ("rank", "worker") if k in seen.columns]
    if not keys:
        return None
    g = seen.groupby(["epoch", *keys], sort=True)["sample_id"]
    table = g.agg(rows="size", distinct="nunique").reset_index()
    # in how many sources (rank, worker) each id appears per epoch
    src = seen.drop_duplicates(["epoch", *keys, "sample_id"])
    n_sources = src.groupby(["epoch", "sample_id"]).size().rename("n_sources")
    src = src.join(n_sources, on=["epoch", "sample_id"])
    shared = (src["n_sources"] > 1).groupby([src["epoch"], *[src[k] for k in keys]]).mean()
    table["share_also_elsewhere"] = shared.to_numpy()
    return table


def summary(seen: pd.DataFrame, dataset_size: int | None = None) -> dict:
    """Headline numbers: mean multiplicity, effective epochs (passes summed over epochs), sources."""
    m = multiplicity(seen)
    n_epochs = int(m["epoch"].nunique())
    out = {
        "n_epochs_logged": n_epochs,
        "rows": int(m["rows"].sum()),
        "distinct_samples": int(seen["sample_id"].nunique()),
        "mean_multiplicity": float(m["rows"].sum() / m["distinct_samples"].sum()),
        "max_multiplicity": int(m["max_multiplicity"].max()),
        "share_repeated": float((m["share_repeated"] * m["distinct_samples"]).sum() / m["distinct_samples"].sum()),
        "effective_epochs": float(m["passes"].sum()),
    }
    if "worker" in seen.columns:
        out["n_workers"] = int(seen["worker"].nunique())
    if "rank" in seen.columns:
        out["n_ranks"] = int(seen["rank"].nunique())
    src = by_source(seen)
    if src is not None:
        out["share_also_elsewhere"] = float(np.average(src["share_also_elsewhere"], weights=src["distinct"]))
    if dataset_size:
        out["coverage"] = float(m["distinct_samples"].mean() / dataset_size)
    return out
