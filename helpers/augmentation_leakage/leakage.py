"""Leakage statistics: parents split across train and validation, near-duplicates found from
features alone, augmentation multiplicity, validation composition and reweighted metrics.

Nearest neighbours come from faiss (``IndexFlatL2``, exact, for the sizes a notebook meets;
an inverted-file index ``IndexIVFFlat`` above ``EXACT_LIMIT`` distance evaluations). Tests
cross-check the distances against ``sklearn.neighbors.NearestNeighbors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.stats import binomtest
from sklearn.model_selection import GroupShuffleSplit
from sklearn.preprocessing import StandardScaler

# exact search while n_train x n_query stays under this many distance evaluations (~1 s at 40 features)
EXACT_LIMIT = 2e9
# approximate search: lists scanned per query, and lists per sqrt(n_train) rows
NPROBE = 32
LISTS_PER_SQRT = 4
TRAIN_PER_LIST = 20
# near-duplicate leakage: the reference's ALPHA quantile is the "closer than a fresh sample" threshold;
# detected when the excess share over ALPHA is at least MIN_LEAKED_SHARE with a binomial p below P_MAX.
ALPHA = 0.01
MIN_LEAKED_SHARE = 0.02
P_MAX = 1e-3
# without parent ids, rows closer than LINK_FRACTION x the median distance of random row pairs are
# treated as copies of one (pseudo-)parent when the clean reference split is drawn.
LINK_FRACTION = 0.1
LINK_NEIGHBOURS = 10


# --------------------------------------------------------------------------- nearest neighbours
def standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (scikit-learn's StandardScaler), as contiguous float32."""
    return np.ascontiguousarray(StandardScaler().fit_transform(np.asarray(x, dtype=np.float64)), dtype=np.float32)


def build_index(base: np.ndarray, n_queries: int, exact: bool | None = None, seed: int = 0,
                nprobe: int = NPROBE) -> faiss.Index:
    """A faiss L2 index over ``base``: exact (IndexFlatL2) unless the search is large and ``exact`` is not True."""
    base = np.ascontiguousarray(base, dtype=np.float32)
    n, d = base.shape
    if exact is None:
        exact = n * n_queries <= EXACT_LIMIT or n < 10_000
    if exact:
        index = faiss.IndexFlatL2(d)
    else:
        nlist = int(min(65536, max(16, LISTS_PER_SQRT * np.sqrt(n))))
        # an HNSW graph over the centroids assigns rows to lists in ~log(nlist) instead of nlist steps
        quantizer = faiss.IndexHNSWFlat(d, 32)
        index = faiss.IndexIVFFlat(quantizer, d, nlist)
        rng = np.random.default_rng(seed)
        train = base[rng.choice(n, min(n, TRAIN_PER_LIST * nlist), replace=False)]
        index.cp.seed = seed
        index.cp.niter = 10  # k-means refinement beyond this buys little recall
        index.cp.min_points_per_centroid = 5
        index.train(train)
        index.nprobe = nprobe
    index.add(base)
    return index


def search(index: faiss.Index, query: np.ndarray, k: int = 1, batch: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances (float64, >= 0) and indices of the k nearest base rows of each query row."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    dist = np.empty((len(query), k), dtype=np.float64)
    idx = np.empty((len(query), k), dtype=np.int64)
    for s in range(0, len(query), batch):
        d2, i = index.search(query[s:s + batch], k)
        dist[s:s + batch], idx[s:s + batch] = np.sqrt(np.clip(d2, 0.0, None)), i
    return dist, idx


def nearest_distance(base: np.ndarray, query: np.ndarray, exact: bool | None = None, seed: int = 0) -> np.ndarray:
    """Distance from each query row to its nearest base row."""
    if len(base) == 0:
        return np.full(len(query), np.inf)
    return search(build_index(base, len(query), exact, seed), query, 1)[0][:, 0]


def loo_distance(x: np.ndarray, exact: bool | None = None, seed: int = 0) -> np.ndarray:
    """Each row's distance to its nearest *other* row (leave-one-out); inf for a single row."""
    n = len(x)
    if n < 2:
        return np.full(n, np.inf)
    dist, idx = search(build_index(x, n, exact, seed), x, 2)
    # drop the row itself wherever it appears: with exact duplicates it need not come first, and
    # when it is not among the two, both are other rows
    return np.where(idx == np.arange(n)[:, None], np.inf, dist).min(axis=1)


# --------------------------------------------------------------------------- parents
def parent_leakage(split: pd.Series, parent: pd.Series, group: pd.Series | None = None,
                   train: str = "train", other: str = "val") -> tuple[dict, pd.DataFrame]:
    """Parents with rows both in ``train`` and in ``other``; share of ``other`` rows whose parent is in train.

    Returns (totals, per-group table) - the table has one row per group (or one "all" row).
    """
    df = pd.DataFrame({"split": split.to_numpy(), "parent": parent.to_numpy(),
                       "group": group.to_numpy() if group is not None else "all"})
    in_train = set(df.loc[df["split"] == train, "parent"])
    rows = df[df["split"] == other].assign(leaked=lambda t: t["parent"].isin(in_train))
    shared = rows.loc[rows["leaked"], "parent"].nunique()
    totals = {"n_rows": len(rows), "n_leaked_rows": int(rows["leaked"].sum()),
              "leaked_share": float(rows["leaked"].mean()) if len(rows) else np.nan,
              "n_parents": int(rows["parent"].nunique()), "n_shared_parents": int(shared)}
    per = rows.groupby("group", sort=True).agg(rows=("leaked", "size"), leaked_rows=("leaked", "sum"),
                                               parents=("parent", "nunique"))
    per["shared_parents"] = rows[rows["leaked"]].groupby("group")["parent"].nunique()
    per = per.fillna({"shared_parents": 0}).astype({"shared_parents": int, "leaked_rows": int})
    per["leaked_share"] = per["leaked_rows"] / per["rows"]
    return totals, per.reset_index()


def pseudo_parents(x: np.ndarray, radius: float, neighbours: int = LINK_NEIGHBOURS, seed: int = 0) -> np.ndarray:
    """Component labels of the graph linking each row to those of its nearest neighbours within ``radius``."""
    n = len(x)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    k = min(neighbours + 1, n)
    dist, idx = search(build_index(x, n, None, seed), x, k)
    keep = (dist <= radius) & (idx >= 0)
    rows = np.repeat(np.arange(n), k)[keep.ravel()]
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, idx.ravel()[keep.ravel()])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def pair_distance_scale(x: np.ndarray, n_pairs: int = 20_000, seed: int = 0) -> float:
    """Median distance between random pairs of distinct rows (the data's own scale)."""
    n = len(x)
    if n < 2:
        return np.nan
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, n_pairs)
    b = (a + rng.integers(1, n, n_pairs)) % n
    return float(np.median(np.linalg.norm(x[a].astype(np.float64) - x[b], axis=1)))


# --------------------------------------------------------------------------- near-duplicate scan
@dataclass
class NearDuplicateScan:
    """Val-to-train nearest-neighbour distances against the train rows' own and a clean reference's."""

    val: np.ndarray  # each validation row's distance to its nearest training row
    train_loo: np.ndarray  # each training row's distance to its nearest other training row
    reference: np.ndarray  # per validation (pseudo-)parent median of ``val``, on clean re-splits of the rows
    reference_kind: str  # "parent_id", "pseudo-parents" (near-duplicate clusters) or "rows"
    threshold: float  # ALPHA quantile of ``reference`` (medians per validation (pseudo-)parent)
    n_val_below: int  # validation rows whose (pseudo-)parent's median distance is below the threshold
    leaked_share: float  # estimated share of validation rows that have a copy in training
    p_value: float  # binomial: more validation rows below the threshold than ALPHA predicts
    link_radius: float = np.nan  # pseudo-parent linking radius (no parent ids)
    n_exact_duplicate_rows: int = 0  # rows whose feature vector repeats an earlier row (any split)
    train_near_duplicate_share: float = np.nan  # train rows with another train row below the threshold
    extra: dict = field(default_factory=dict)

    @property
    def detected(self) -> bool:
        return bool(self.leaked_share >= MIN_LEAKED_SHARE and self.p_value < P_MAX)


def reference_splits(groups: np.ndarray, val_fraction: float, n_splits: int, seed: int):
    """Clean re-splits: whole (pseudo-)parents go to one side (GroupShuffleSplit)."""
    n_groups = len(np.unique(groups))
    test_size = min(max(val_fraction, 1.0 / n_groups), 1 - 1.0 / n_groups)
    splitter = GroupShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
    return splitter.split(np.zeros(len(groups)), groups=groups)


def near_duplicate_scan(x: np.ndarray, is_train: np.ndarray, is_val: np.ndarray, parent: np.ndarray | None = None,
                        seed: int = 0, n_reference_splits: int | None = None, exact: bool | None = None,
                        exact_duplicates: int | None = None) -> NearDuplicateScan:
    """Near-duplicate leakage from features alone.

    ``x``: standardised features of all rows; ``is_train`` / ``is_val`` boolean masks. The clean
    reference re-splits the train+val rows so that no (pseudo-)parent straddles the split: by
    ``parent`` when given, else by clusters of rows closer than ``LINK_FRACTION`` x the median
    random-pair distance (exact repeats always cluster). The leaked share is the excess, over
    ``ALPHA``, of validation rows closer to training than the reference's ``ALPHA`` quantile.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    is_train, is_val = np.asarray(is_train, bool), np.asarray(is_val, bool)
    pool = np.flatnonzero(is_train | is_val)
    n_val = int(is_val.sum())
    d_val = nearest_distance(x[is_train], x[is_val], exact, seed)
    d_loo = loo_distance(x[is_train], exact, seed)
    link = np.nan
    if parent is not None:
        groups, kind = pd.factorize(pd.Series(np.asarray(parent)[pool]))[0], "parent_id"
    else:
        link = LINK_FRACTION * pair_distance_scale(x[pool], seed=seed)
        groups = pseudo_parents(x[pool], link, seed=seed)
        kind = "pseudo-parents" if len(np.unique(groups)) < len(pool) else "rows"
    if n_reference_splits is None:
        n_reference_splits = 5 if len(pool) <= 100_000 else 1
    # the unit of the test is the (pseudo-)parent: rows of one parent are not independent draws.
    # Each group's statistic is the median distance of its validation rows.
    val_groups = np.full(len(x), -1, dtype=np.int64)
    val_groups[pool] = groups
    val_groups = val_groups[is_val]
    ref = []
    if len(np.unique(groups)) >= 2:
        for tr, va in reference_splits(groups, n_val / len(pool), n_reference_splits, seed):
            d = nearest_distance(x[pool[tr]], x[pool[va]], exact, seed)
            ref.append(pd.Series(d).groupby(groups[va]).median().to_numpy())
    reference = np.concatenate(ref) if ref else np.array([])
    threshold = float(np.quantile(reference, ALPHA)) if len(reference) else np.nan
    per_group = pd.Series(d_val).groupby(val_groups).agg(["median", "size"])
    low = per_group["median"] < threshold if np.isfinite(threshold) else per_group["median"] < -1
    below = int(per_group.loc[low, "size"].sum())
    n_units = len(per_group)
    share = max(0.0, (below / n_val - ALPHA) / (1 - ALPHA)) if n_val and np.isfinite(threshold) else np.nan
    p = (binomtest(int(low.sum()), n_units, ALPHA, alternative="greater").pvalue
         if n_units and np.isfinite(threshold) else np.nan)
    if exact_duplicates is None:
        exact_duplicates = int(pd.DataFrame(x[pool]).duplicated().sum())
    train_near = float(np.mean(d_loo < threshold)) if len(d_loo) and np.isfinite(threshold) else np.nan
    return NearDuplicateScan(d_val, d_loo, reference, kind, threshold, below, share, float(p), link,
                             exact_duplicates, train_near)


# --------------------------------------------------------------------------- augmentation
def multiplicity(group: pd.Series, is_augmented: pd.Series | None = None, parent: pd.Series | None = None,
                 declared: dict | None = None) -> pd.DataFrame:
    """Copies per original row, per group, as present in the table, next to the declared copies.

    With ``is_augmented``: augmented rows / original rows. Otherwise with ``parent``: rows per
    parent minus one (mean over the group's parents).
    """
    if is_augmented is None and parent is None:
        raise ValueError("need is_augmented or parent to count copies")
    df = pd.DataFrame({"group": group.to_numpy()})
    if is_augmented is not None:
        df["aug"] = is_augmented.to_numpy().astype(int)
        g = df.groupby("group", sort=True)["aug"].agg(rows="size", augmented="sum")
        g["originals"] = g["rows"] - g["augmented"]
        g["copies_per_original"] = g["augmented"] / g["originals"].where(g["originals"] > 0)
    else:
        df["parent"] = parent.to_numpy()
        sizes = df.groupby(["group", "parent"], sort=True).size()
        g = sizes.groupby(level="group").agg(rows="sum", originals="size")
        g["augmented"] = g["rows"] - g["originals"]
        g["copies_per_original"] = g["augmented"] / g["originals"]
    g = g[["rows", "originals", "augmented", "copies_per_original"]]
    if declared is not None:
        g["declared_copies"] = [declared.get(str(k), np.nan) for k in g.index]
        g["ratio_to_declared"] = g["copies_per_original"] / g["declared_copies"].where(g["declared_copies"] > 0)
    return g.reset_index()


# --------------------------------------------------------------------------- composition and metrics
def composition(split: pd.Series, group: pd.Series, tier: pd.Series | None = None,
                originals: pd.Series | None = None, which: str = "val") -> pd.DataFrame:
    """Each group's share of the ``which`` rows (the overall metric's implicit weight) and a reference weight.

    The reference is the group's share of original (non-augmented) rows when ``originals`` (a
    boolean mask) is given, else an equal share per group.
    """
    df = pd.DataFrame({"group": group.to_numpy(), "split": split.to_numpy(),
                       "tier": tier.to_numpy() if tier is not None else ""})
    rows = df[df["split"] == which]
    groups = sorted(df["group"].unique().tolist(), key=str)
    out = pd.DataFrame({"group": groups})
    out["tier"] = out["group"].map(df.drop_duplicates("group").set_index("group")["tier"])
    out["val_rows"] = out["group"].map(rows.groupby("group").size()).fillna(0).astype(int)
    out["implicit_weight"] = out["val_rows"] / max(len(rows), 1)
    if originals is not None:
        o = df[np.asarray(originals, bool)]
        counts = out["group"].map(o.groupby("group").size()).fillna(0)
        out["reference_weight"] = counts / counts.sum()
        out.attrs["reference"] = "share of original rows"
    else:
        out["reference_weight"] = 1.0 / len(out)
        out.attrs["reference"] = "equal per group"
    out["weight_ratio"] = out["implicit_weight"] / out["reference_weight"].where(out["reference_weight"] > 0)
    return out


def reweighted_metrics(values: pd.Series, weights: pd.Series, tiers: pd.Series | None = None) -> dict:
    """Per-group metric values combined three ways: row-weighted (the overall metric), macro, tier-balanced.

    ``values``, ``weights`` (and ``tiers``) are indexed by group; groups with a NaN value are skipped.
    """
    weights = weights.reindex(values.index)  # align by group, whatever the order
    ok = values.notna() & weights.notna()
    v, w = values[ok].astype(float), weights[ok].astype(float)
    out = {"row_weighted": float(np.average(v, weights=w)) if w.sum() > 0 else np.nan,
           "macro": float(v.mean()) if len(v) else np.nan, "tier_balanced": np.nan, "per_tier": {}}
    if tiers is not None and len(v):
        t = tiers.reindex(v.index)
        per_tier = v.groupby(t).mean()
        out["per_tier"] = {str(k): float(x) for k, x in per_tier.items()}
        out["tier_balanced"] = float(per_tier.mean())
    return out


def degradation(this: pd.Series, baseline: pd.Series) -> pd.DataFrame:
    """Per-group loss of this run against the baseline (lower is better): change and ratio."""
    df = pd.DataFrame({"this": this, "baseline": baseline}).dropna()
    df["change"] = df["this"] - df["baseline"]
    df["ratio"] = df["this"] / df["baseline"].where(df["baseline"] > 0)
    return df.rename_axis("group").reset_index()
