"""Leakage statistics: parents split across train and validation, near-duplicates found from
features alone, augmentation multiplicity, validation composition and reweighted metrics.

The feature-only scan (:func:`near_duplicate_scan`) compares rows in the feature space where
near-copies stand out from ordinary neighbours (per-column standardised, or one common scale for
columns in one unit such as pixels), links rows closer than the valley between the two into
clusters (:func:`link_rows`), and judges each validation row by its distance to the nearest
training row over its distance to the nearest training row of another cluster, against clean
re-splits of the same rows.

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
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks
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
# without parent ids, rows linked to one of their LINK_NEIGHBOURS nearest rows closer than the valley
# between near-copies and ordinary neighbours (see link_radius) are one (pseudo-)parent; a radius whose
# largest cluster would hold more than MAX_CLUSTER_SHARE of the rows is refused.
LINK_NEIGHBOURS = 10
VALLEY_BINS, VALLEY_PROMINENCE, VALLEY_MIN_PEAK, VALLEY_DEPTH, VALLEY_SIDE = 512, 0.005, 30, 0.5, 0.005
MAX_CLUSTER_SHARE, RADIUS_STEP = 0.05, 0.9
SPACE_QUERIES = 2000  # rows whose neighbours decide the feature space
# the ratio statistic: neighbours searched for one of another (pseudo-)parent, and at most this many
OUTSIDE_NEIGHBOURS, MAX_FIRST_SEARCH, MAX_FAMILY_SEARCH = 21, 128, 2048
DEEP_NEIGHBOURS, DEEP_ENTRIES = 128, 20_000_000  # neighbours kept per row (see link_rows)


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


# --------------------------------------------------------------------------- feature spaces and linking
def common_scale(x: np.ndarray) -> np.ndarray:
    """Columns centred and divided by one common scale (the root mean column variance), as contiguous float32.

    Distances keep the columns' own units relative to each other: right for columns in one unit
    (pixels, spectra), where per-column standardisation would blow up near-constant columns.
    """
    c = np.asarray(x, dtype=np.float64)
    c = c - c.mean(axis=0)
    scale = float(np.sqrt(np.mean(c.var(axis=0)))) if c.size else 0.0
    return np.ascontiguousarray(c / (scale if scale > 0 else 1.0), dtype=np.float32)


SPACES = {"per-column standardised": standardise, "common scale": common_scale}


def neighbours(z: np.ndarray, k: int, queries: np.ndarray | None = None, exact: bool | None = None,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest *other* rows of each row of ``z`` (or of the rows ``queries``): distances and indices,
    -1 / inf where there are fewer."""
    n = len(z)
    q = np.arange(n) if queries is None else np.asarray(queries)
    k = min(k, max(n - 1, 0))
    if k == 0:
        return np.full((len(q), 0), np.inf), np.full((len(q), 0), -1, dtype=np.int64)
    dist, idx = search(build_index(z, len(q), exact, seed), z[q], k + 1)
    own = idx == q[:, None]
    # drop the row itself wherever it appears (ties with exact duplicates), else the farthest
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(len(q)), drop] = False
    return dist[keep].reshape(len(q), k), idx[keep].reshape(len(q), k)


def link_radius(dist: np.ndarray) -> tuple[float, float]:
    """(radius, depth) of the valley in the distribution of log nearest-neighbour distances that
    separates near-copies from ordinary neighbours; (0.0, nan) when there is none.

    Copies of one original sit much closer to each other than ordinary neighbours do, so the
    log-distances of each row to its nearest rows are bimodal; the radius is the density minimum
    below the rightmost (ordinary) mode. A valley counts when it is below ``VALLEY_DEPTH`` x the
    lower of its two peaks, is more than 3 Poisson SDs below it, and at least ``VALLEY_SIDE`` of
    the distances lie on each side. Ordinary data (no copies) gives one mode: no radius.
    """
    v = np.log(dist[np.isfinite(dist) & (dist > 0)])
    if len(v) < 100:
        return 0.0, np.nan
    lo, hi = np.quantile(v, [0.0005, 0.9995])
    q25, q75 = np.quantile(v, [0.25, 0.75])
    spread = min(v.std(), (q75 - q25) / 1.34)
    if not hi > lo or not spread > 0:
        return 0.0, np.nan
    h = 0.9 * spread * len(v) ** -0.2  # Silverman's bandwidth
    hist, edges = np.histogram(v, bins=VALLEY_BINS, range=(lo, hi))
    width = (hi - lo) / VALLEY_BINS
    dens = gaussian_filter1d(hist.astype(float), max(h / width, 1.0), mode="constant")
    peaks = find_peaks(np.r_[0.0, dens, 0.0], prominence=VALLEY_PROMINENCE * dens.max())[0] - 1
    centres = (edges[:-1] + edges[1:]) / 2
    ordered = np.sort(v)

    def count(c):  # distances within one bandwidth of c
        return int(np.searchsorted(ordered, c + h) - np.searchsorted(ordered, c - h))

    peaks = [p for p in peaks if count(centres[p]) >= VALLEY_MIN_PEAK]
    if len(peaks) < 2:
        return 0.0, np.nan
    right = peaks[-1]
    for left in peaks[-2::-1]:
        m = left + int(np.argmin(dens[left:right + 1]))
        depth = dens[m] / min(dens[left], dens[right])
        peak_count = min(count(centres[left]), count(centres[right]))
        below = np.searchsorted(ordered, edges[m]) / len(v)
        if (depth <= VALLEY_DEPTH and peak_count - count(centres[m]) >= 3 * np.sqrt(peak_count)
                and VALLEY_SIDE <= below <= 1 - VALLEY_SIDE):
            return float(np.exp(edges[m])), float(depth)
    return 0.0, np.nan


def components(dist: np.ndarray, idx: np.ndarray, radius: float) -> np.ndarray:
    """Connected components of the graph linking each row to those of its neighbours (``idx``) within ``radius``."""
    n = len(dist)
    keep = (dist <= radius) & (idx >= 0)
    rows = np.repeat(np.arange(n), dist.shape[1])[keep.ravel()]
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, idx[keep])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


@dataclass
class Linking:
    """The feature space of the scan, each row's nearest other rows there, and the clusters of
    near-identical rows found from them."""

    space: str  # a key of SPACES
    z: np.ndarray  # the rows in that space (float32)
    dist: np.ndarray  # (n, k) distances to each row's k nearest other rows, ascending (k >= LINK_NEIGHBOURS)
    idx: np.ndarray  # their indices (-1 where there are fewer)
    radius: float  # link radius (0: exact repeats only)
    groups: np.ndarray  # component label of each row
    depth: dict = field(default_factory=dict)  # valley depth found in each space (nan: none)


def link_rows(x: np.ndarray, space: str | None = None, exact: bool | None = None, seed: int = 0) -> Linking:
    """Choose the feature space, find the link radius there and cluster the rows (pseudo-parents).

    ``space=None`` tries every entry of :data:`SPACES` on at most ``SPACE_QUERIES`` rows and keeps
    the one with the deepest valley between near-copies and ordinary neighbours (per-column
    standardised when neither has one), provided the valley holds in all rows. The choice sees the features only, never the split, so a
    clean split stays exchangeable with the reference re-splits. A radius whose largest cluster
    would hold more than ``MAX_CLUSTER_SHARE`` of the rows is shrunk by ``RADIUS_STEP`` until none
    does, down to the median nearest-neighbour distance (then exact repeats only).
    Each row keeps up to ``DEEP_NEIGHBOURS`` nearest rows (fewer when rows x neighbours would pass
    ``DEEP_ENTRIES``): the scan reads every split's statistic from them.
    """
    n = len(x)
    deep = int(min(max(n - 1, 0), max(LINK_NEIGHBOURS, min(DEEP_NEIGHBOURS, DEEP_ENTRIES // max(n, 1)))))
    rng = np.random.default_rng(seed)
    sub = None if n <= SPACE_QUERIES else np.sort(rng.choice(n, SPACE_QUERIES, replace=False))
    tried, depth = {}, {}
    for name in ([space] if space else SPACES):
        z = SPACES[name](x)
        d, i = neighbours(z, deep if sub is None else LINK_NEIGHBOURS, sub, exact, seed)
        r, depth[name] = link_radius(d[:, :LINK_NEIGHBOURS])
        tried[name] = (z, r, (d, i) if sub is None else None)
    order = sorted(tried, key=lambda s: (depth[s] if np.isfinite(depth[s]) else np.inf, s != "per-column standardised"))
    # the spaces with a valley among the sampled rows, best first (else the first): keep the first whose
    # valley holds in all rows, or the last one tried, linking exact repeats only
    for name in [s for s in order if np.isfinite(depth[s])] or order[:1]:
        z, r, full = tried[name]
        if full is None:  # the radius from every row's neighbours, not the sample's
            full = neighbours(z, deep, None, exact, seed)
            r, depth[name] = link_radius(full[0][:, :LINK_NEIGHBOURS])
        if r > 0:
            break
    d, i = full
    near_d, near_i = d[:, :LINK_NEIGHBOURS], i[:, :LINK_NEIGHBOURS]
    groups = components(near_d, near_i, r)
    # a radius that chains clusters into one holding a large share of the rows links unrelated rows:
    # shrink it (but not below the near-copies' own distances) until no cluster does
    floor = np.quantile(near_d[:, 0][near_d[:, 0] > 0], 0.5) if (near_d[:, 0] > 0).any() else 0.0
    while r > 0 and np.bincount(groups).max() > max(MAX_CLUSTER_SHARE * n, 100):
        r = r * RADIUS_STEP if r * RADIUS_STEP > floor else 0.0
        groups = components(near_d, near_i, r)
    return Linking(name, z, d, i, r, groups, depth)


def nearest_outside(z_train: np.ndarray, groups_train: np.ndarray, query: np.ndarray, exact: bool | None = None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per query row: the distance to its nearest training row, and to the nearest training row of
    another (pseudo-)parent than that one's.

    A copy of a training row's original sits much closer to it than to any other original; a fresh
    row is about as close to the nearest original as to the next. Searches as many rows as the
    largest family holds plus one (at least ``OUTSIDE_NEIGHBOURS``, at most ``MAX_FIRST_SEARCH``),
    then, for rows whose neighbours are still all one family, up to ``MAX_FAMILY_SEARCH``; beyond
    that the farthest row searched stands in (a lower bound).
    """
    n = len(z_train)
    if n == 0:
        return np.full(len(query), np.inf), np.full(len(query), np.inf)
    index = build_index(z_train, len(query), exact, seed)
    sizes = np.bincount(groups_train)
    # one search deep enough to step out of the largest family, when that is cheap
    d, i = search(index, query, int(min(n, max(OUTSIDE_NEIGHBOURS, min(sizes.max() + 1, MAX_FIRST_SEARCH)))))
    family = groups_train[i[:, 0]]
    other = (groups_train[np.clip(i, 0, None)] != family[:, None]) & (i >= 0)
    outside = np.where(other, d, np.inf).min(axis=1)
    stuck = np.flatnonzero(~np.isfinite(outside))
    if len(stuck):
        k = int(min(n, sizes[family[stuck]].max() + 1, MAX_FAMILY_SEARCH))
        if k > d.shape[1]:
            d2, i2 = search(index, query[stuck], k)
            o2 = (groups_train[np.clip(i2, 0, None)] != family[stuck][:, None]) & (i2 >= 0)
            outside[stuck] = np.where(o2, d2, np.inf).min(axis=1)
            last = d2[:, -1]
        else:
            last = d[stuck, -1]
        still = ~np.isfinite(outside[stuck])
        outside[stuck[still]] = last[still]
    return d[:, 0], outside


# --------------------------------------------------------------------------- near-duplicate scan
@dataclass
class NearDuplicateScan:
    """How much closer each validation row is to its nearest training row than to the next original.

    The statistic of a validation row is ``ratio = val / val_outside``: its distance to the nearest
    training row over its distance to the nearest training row of another (pseudo-)parent. A copy
    of a training row's original scores far below 1; a fresh row about as high as ordinary
    neighbours do. Being a ratio of two distances of the same row, it does not move when the
    validation rows differ from the training rows in kind (originals against noisy copies).
    """

    val: np.ndarray  # each validation row's distance to its nearest training row
    val_outside: np.ndarray  # ... and to the nearest training row of another (pseudo-)parent
    train_loo: np.ndarray  # each training row's distance to its nearest other training row
    reference: np.ndarray  # per validation (pseudo-)parent median ratio, on clean re-splits of the rows
    reference_kind: str  # "parent_id", "pseudo-parents" (clusters of near-identical rows) or "rows"
    threshold: float  # ALPHA quantile of ``reference``
    n_val_below: int  # validation rows whose (pseudo-)parent's median ratio is below the threshold
    leaked_share: float  # estimated share of validation rows that have a copy in training
    p_value: float  # binomial: more validation (pseudo-)parents below the threshold than ALPHA predicts
    space: str = "per-column standardised"  # the feature space of the distances (a key of SPACES)
    link_radius: float = np.nan  # pseudo-parent linking radius in that space (no parent ids; 0: exact repeats only)
    n_exact_duplicate_rows: int = 0  # rows whose feature vector repeats an earlier row (train and val)
    train_near_duplicate_share: float = np.nan  # train rows with another train row of their own (pseudo-)parent
    n_units: int = 0  # validation (pseudo-)parents
    n_units_below: int = 0  # ... of them below the threshold
    groups: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))  # (pseudo-)parent of each train/val row
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> np.ndarray:
        """Each validation row's ratio (0 for an exact repeat of a training row)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.val_outside > 0, self.val / self.val_outside, 0.0)

    @property
    def detected(self) -> bool:
        return bool(self.leaked_share >= MIN_LEAKED_SHARE and self.p_value < P_MAX)


def reference_splits(groups: np.ndarray, val_fraction: float, n_splits: int, seed: int):
    """Clean re-splits: whole (pseudo-)parents go to one side (GroupShuffleSplit)."""
    n_groups = len(np.unique(groups))
    test_size = min(max(val_fraction, 1.0 / n_groups), 1 - 1.0 / n_groups)
    splitter = GroupShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
    return splitter.split(np.zeros(len(groups)), groups=groups)


def split_distances(link: Linking, groups: np.ndarray, train: np.ndarray, query: np.ndarray,
                    exact: bool | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`nearest_outside` for the rows ``query`` of ``link`` against its rows ``train``.

    Read from the rows' neighbour lists where they reach a training row of another (pseudo-)parent
    than the nearest training row's; the other rows are searched against ``train``.
    """
    is_train = np.zeros(len(link.z), bool)
    is_train[train] = True
    idx, dist = link.idx[query], link.dist[query]
    ok_idx = idx >= 0
    cand = is_train[np.clip(idx, 0, None)] & ok_idx
    first = cand.argmax(axis=1)
    rows = np.arange(len(query))
    d1 = np.where(cand.any(axis=1), dist[rows, first], np.inf)
    family = groups[idx[rows, first].clip(0)]
    other = cand & (groups[np.clip(idx, 0, None)] != family[:, None])
    outside = np.where(other, dist, np.inf).min(axis=1)
    redo = np.flatnonzero(~np.isfinite(outside))
    if len(redo):
        d1[redo], outside[redo] = nearest_outside(link.z[train], groups[train], link.z[query[redo]], exact, seed)
    return d1, outside


def _unit_ratios(link, groups, train, val, exact, seed) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    d, outside = split_distances(link, groups, train, val, exact, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(outside > 0, d / outside, 0.0)
    return d, outside, pd.Series(ratio).groupby(groups[val]).median()


def near_duplicate_scan(x: np.ndarray, is_train: np.ndarray, is_val: np.ndarray, parent: np.ndarray | None = None,
                        seed: int = 0, n_reference_splits: int | None = None, exact: bool | None = None,
                        exact_duplicates: int | None = None, space: str | None = None) -> NearDuplicateScan:
    """Near-duplicate leakage from features alone.

    ``x``: the features of all rows as given (the scan scales them, see :func:`link_rows`);
    ``is_train`` / ``is_val`` boolean masks. Each validation row's statistic is its distance to
    the nearest training row over its distance to the nearest training row of another
    (pseudo-)parent. The clean reference re-splits the train+val rows so that no (pseudo-)parent
    straddles the split: by ``parent`` when given, else by clusters of near-identical rows
    (:func:`link_rows`). A validation (pseudo-)parent counts as leaked when its median ratio is
    below the reference's ``ALPHA`` quantile; the leaked share is the excess over ``ALPHA`` of
    validation rows so counted, and a binomial test on (pseudo-)parents decides.
    """
    is_train, is_val = np.asarray(is_train, bool), np.asarray(is_val, bool)
    pool = np.flatnonzero(is_train | is_val)
    link = link_rows(np.asarray(x)[pool], space, exact, seed)
    z = link.z
    if parent is not None:
        groups, kind = pd.factorize(pd.Series(np.asarray(parent)[pool]))[0].astype(np.int64), "parent_id"
    else:
        groups = link.groups
        kind = "pseudo-parents" if len(np.unique(groups)) < len(pool) else "rows"
    tr, va = np.flatnonzero(is_train[pool]), np.flatnonzero(is_val[pool])
    n_val = len(va)
    d_val, d_out, actual = _unit_ratios(link, groups, tr, va, exact, seed)
    # each training row's nearest other training row, from the rows' neighbour lists
    in_train = is_train[pool][np.clip(link.idx[tr], 0, None)] & (link.idx[tr] >= 0)
    d_loo = np.where(in_train, link.dist[tr], np.inf).min(axis=1)
    missing = np.flatnonzero(~np.isfinite(d_loo))
    if len(missing) and len(tr) > 1:
        dd, ii = search(build_index(z[tr], len(missing), exact, seed), z[tr[missing]], 2)
        d_loo[missing] = np.where(ii == missing[:, None], np.inf, dd).min(axis=1)
    if n_reference_splits is None:
        n_reference_splits = 5 if len(pool) <= 100_000 else 1
    ref = []
    if len(np.unique(groups)) >= 2:
        for rtr, rva in reference_splits(groups, n_val / len(pool), n_reference_splits, seed):
            ref.append(_unit_ratios(link, groups, rtr, rva, exact, seed)[2].to_numpy())
    reference = np.concatenate(ref) if ref else np.array([])
    threshold = float(np.quantile(reference, ALPHA)) if len(reference) else np.nan
    sizes = pd.Series(groups[va]).value_counts()
    low = actual < threshold if np.isfinite(threshold) else actual < -1
    below = int(sizes[actual.index[low.to_numpy()]].sum())
    n_units = len(actual)
    share = max(0.0, (below / n_val - ALPHA) / (1 - ALPHA)) if n_val and np.isfinite(threshold) else np.nan
    p = (binomtest(int(low.sum()), n_units, ALPHA, alternative="greater").pvalue
         if n_units and np.isfinite(threshold) else np.nan)
    if exact_duplicates is None:
        exact_duplicates = int(pd.DataFrame(np.asarray(x)[pool]).duplicated().sum())
    train_sizes = np.bincount(groups[tr]) if len(tr) else np.array([], dtype=np.int64)
    train_near = float(np.mean(train_sizes[groups[tr]] > 1)) if len(tr) else np.nan
    return NearDuplicateScan(d_val, d_out, d_loo, reference, kind, threshold, below, share, float(p), link.space,
                             link.radius if parent is None else np.nan, exact_duplicates, train_near, n_units,
                             int(low.sum()), groups, {"valley_depth": link.depth})


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
