"""Leakage statistics: parents split across train and validation, near-duplicates found from
features alone, augmentation multiplicity, validation composition and reweighted metrics.

The feature-only scan (:func:`near_duplicate_scan`) compares rows in the feature space where
near-copies stand out from ordinary neighbours (per-column standardised, or one common scale for
columns in one unit such as pixels), links rows closer than the valley between the two into
clusters (:func:`link_rows`), and judges each validation row by its distance to the nearest
training row over its distance to the nearest training row of another cluster, against clean
re-splits of the same rows.

Every distance of the scan is read from one all-pairs k-nearest-neighbour search of the train and
validation rows (:func:`link_rows`: :func:`pool_lists`, :func:`knn_join`): exact for the sizes a
notebook meets (BLAS products in blocks fed into faiss heaps, as ``IndexFlatL2`` searches), and above
``POOL_EXACT_LIMIT`` an inverted-file search, each row compared with the rows of its few nearest
k-means lists (faiss k-means); the rows with no near-copy among their neighbours are searched again in
more lists. The validation-to-train, leave-one-out and reference-split distances are all read from
those lists; a row whose list falls short is searched again (:func:`nearest_two_groups`), exactly
while that stays small. :func:`nearest_distance` and :func:`loo_distance` are the stand-alone faiss
searches (``IndexFlatL2``, or ``IndexIVFFlat`` above ``EXACT_LIMIT``). Tests cross-check the
distances against ``sklearn.neighbors.NearestNeighbors``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
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

# nearest_distance / loo_distance: exact search while n_train x n_query stays under this many distance evaluations
EXACT_LIMIT = 2e9
# approximate search: lists scanned per query, and lists per sqrt(n_train) rows
NPROBE = 32
LISTS_PER_SQRT = 4
TRAIN_PER_LIST = 20
# the pool's all-pairs search (link_rows -> pool_lists, knn_join): exact while rows^2 stays under POOL_EXACT_LIMIT,
# else every row is compared with the rows of the JOIN_PROBES k-means lists nearest to it (lists of about
# ROWS_PER_LIST rows; their centroids are found through TOP_PROBES of about sqrt(lists) coarse cells). A row whose
# list lacks what a split needs is searched again: exactly against every row of the other side while rows x
# those rows stays under FALLBACK_EXACT_LIMIT, else in its JOIN_PROBES lists.
POOL_EXACT_LIMIT = 5e8
JOIN_PROBES, ROWS_PER_LIST, TOP_PROBES = 3, 256, 3
# rows whose nearest neighbour found is not a near-copy (farther than the link radius) are searched again in their
# SECOND_PROBES nearest lists (fewer when that would cost more than the first search): an ordinary nearest
# neighbour is found by few lists' search, a near-copy's almost always by the row's own list
SECOND_PROBES = 128
FIT_PARALLEL_ROWS = 2000  # forests on fewer rows grow on one thread (fit_jobs)
HEAP_ROWS = 1 << 18  # knn_join searches this many query rows at a time (memory: their heaps)
READ_ROWS = 1 << 16  # split_distances / train_loo read the neighbour lists of this many rows at a time
FALLBACK_EXACT_LIMIT = 2e8
# float32 products give squared distances to about (|a|^2 + |b|^2) x 1e-6: pairs closer than RECOMPUTE_SHARE x that
# scale (near-copies, exact repeats) are recomputed from their differences (see _finish)
RECOMPUTE_SHARE = 1e-2
PROGRESS_ROWS = 200_000  # pools at least this large report what the scan is doing, with progress bars
# near-duplicate leakage: the reference's ALPHA quantile is the "closer than a fresh sample" threshold;
# detected when the excess share over ALPHA is at least MIN_LEAKED_SHARE with a binomial p below P_MAX.
ALPHA = 0.01
REFERENCE_MEDIANS = 2000  # at least this many size-matched reference medians, so the ALPHA quantile is steady
MEDIAN_BATCH_ROWS = 1 << 22  # draws of the reference medians taken together, up to this many rows at once
MIN_LEAKED_SHARE = 0.02
P_MAX = 1e-3
# without parent ids, rows linked to one of their LINK_NEIGHBOURS nearest rows closer than the valley
# between near-copies and ordinary neighbours (see link_radius) are one (pseudo-)parent; a radius whose
# largest cluster would hold more than MAX_CLUSTER_SHARE of the rows is refused.
LINK_NEIGHBOURS = 10
VALLEY_BINS, VALLEY_PROMINENCE, VALLEY_MIN_PEAK, VALLEY_DEPTH, VALLEY_SIDE = 512, 0.005, 30, 0.5, 0.005
MAX_CLUSTER_SHARE, RADIUS_STEP = 0.05, 0.9
# rows whose neighbours decide the feature space: SPACE_QUERIES, fewer when they x rows would pass SPACE_BUDGET
SPACE_QUERIES, SPACE_BUDGET, SPACE_MIN_QUERIES = 2000, 2.5e8, 250
DEEP_NEIGHBOURS, DEEP_ENTRIES = 128, 20_000_000  # neighbours kept per row (see link_rows)


def _say(on: bool, message: str) -> None:
    if on:
        print(message, flush=True)


def _bar(on: bool, total: int, desc: str, unit: str = "row"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not on, mininterval=1.0)


# --------------------------------------------------------------------------- nearest neighbours
def standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (scikit-learn's StandardScaler: a column constant up to rounding keeps
    scale 1), as contiguous float32."""
    x = np.asarray(x)
    if len(x) == 0:
        return np.zeros(x.shape, dtype=np.float32)
    mean, var = _column_stats(x)
    eps = np.finfo(np.float64).eps
    constant = var <= len(x) * eps * var + (len(x) * mean * eps) ** 2  # sklearn's _is_constant_feature
    scale = np.where(constant, 1.0, np.sqrt(var))
    return _scaled(x, mean, scale)


def _column_stats(x: np.ndarray, step: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Column means and (population) variances in float64, two passes over row chunks (no full-size temporaries)."""
    mean = sum(x[s:s + step].sum(axis=0, dtype=np.float64) for s in range(0, len(x), step)) / len(x)
    var = sum(np.square(x[s:s + step] - mean).sum(axis=0) for s in range(0, len(x), step)) / len(x)
    return mean, var


def _scaled(x: np.ndarray, centre: np.ndarray, scale) -> np.ndarray:
    """(x - centre) / scale as contiguous float32, in chunks (no float64 copy of the whole table)."""
    out = np.empty(x.shape, dtype=np.float32)
    step = max(1, (1 << 22) // max(x.shape[1], 1))
    for s in range(0, len(x), step):
        out[s:s + step] = (x[s:s + step] - centre) / scale
    return out


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


# --------------------------------------------------------------------------- the pool's all-pairs search
@dataclass
class Lists:
    """The pool's rows grouped into lists, and the lists each row is compared with.

    One list holding every row is the exact search. Otherwise the lists are faiss k-means cells and
    each row is compared with the rows of the ``probes.shape[1]`` cells whose centroids are nearest
    to it (its own cell first), as an inverted-file index searches.
    """

    order: np.ndarray  # the rows sorted by their own list
    bounds: np.ndarray  # list j holds order[bounds[j]:bounds[j + 1]]
    probes: np.ndarray  # (n, P) the lists each row is compared with (-1: none)
    centroids: np.ndarray | None = field(default=None, repr=False)  # the lists' k-means centroids
    top: np.ndarray | None = field(default=None, repr=False)  # the coarse cells' centroids
    cells: Lists | None = field(default=None, repr=False)  # the lists' centroids grouped by coarse cell

    @property
    def exact(self) -> bool:
        return len(self.bounds) == 2

    def members(self, j: int) -> np.ndarray:
        return self.order[self.bounds[j]:self.bounds[j + 1]]

    def visits(self, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """(list, positions in ``rows`` of the rows compared with it, their probe slot) for each list some row visits."""
        p = self.probes.shape[1]
        flat = self.probes[rows].ravel()
        order = np.argsort(flat, kind="stable")
        bounds = np.searchsorted(flat[order], np.arange(len(self.bounds)))
        return [(j, order[bounds[j]:bounds[j + 1]] // p, order[bounds[j]:bounds[j + 1]] % p)
                for j in np.flatnonzero(np.diff(bounds))]


def one_list(n: int) -> Lists:
    """Every row in one list: the exact search."""
    return Lists(np.arange(n), np.array([0, n]), np.zeros((n, 1), dtype=np.int64))


@contextmanager
def _faiss_threads(n: int):
    """faiss (and its BLAS) on ``n`` OpenMP threads in this thread, restored afterwards."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield before
    finally:
        faiss.omp_set_num_threads(before)


def _workers() -> int:
    """Threads for the searches: as many as faiss would use (the cores it sees)."""
    return max(1, faiss.omp_get_max_threads())


def fit_jobs(rows: int) -> int:
    """Threads growing a forest's trees on ``rows`` rows (each tree has its own seed: the same trees on any
    number): as many as the searches use (OpenMP's count, which the runner sets to each kernel's share of the
    cores), at most 4; one below ``FIT_PARALLEL_ROWS`` rows, where starting threads costs more than they save."""
    return 1 if rows < FIT_PARALLEL_ROWS else min(4, _workers())


def _knn_blocks(zq: np.ndarray, zb: np.ndarray, k: int, shards: list[list[tuple[np.ndarray, np.ndarray]]],
                bar=None, per_row: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances (float32) and indices of the k nearest rows of ``zb`` to each row of ``zq`` among the
    candidates that the blocks name: each block (positions in ``zq``, rows of ``zb``) is one BLAS product
    (|q|^2 + |b|^2 - 2 q.b, as faiss computes it) fed into faiss heaps, one per query row; inf / -1 where there
    are fewer candidates.

    The shards run in parallel, each on one thread with numpy's BLAS and faiss on one thread: no shard
    touches a query row another one does, and each row takes its candidates in block order (deterministic).
    Buffers are reused across blocks: allocating a fresh distance matrix per block costs more than the product.
    """
    from threadpoolctl import threadpool_limits

    heap = faiss.ResultHeap(len(zq), k)
    lock, done = threading.Lock(), [0, 0]
    dim = zq.shape[1]
    q_norm = np.einsum("ij,ij->i", zq, zq)
    b_norm = q_norm if zb is zq else np.einsum("ij,ij->i", zb, zb)

    def work(blocks):
        if not blocks:
            return
        a, b = max(len(p) for p, _ in blocks), max(len(m) for _, m in blocks)
        # each block's rows extended so that one product gives squared distances: [q, |q|^2, 1] . [-2b, 1, |b|^2]
        # (gathered block by block: no extended copy of all rows)
        qraw, braw = np.empty((a, dim), np.float32), np.empty((b, dim), np.float32)
        qbuf, bbuf = np.empty((a, dim + 2), np.float32), np.empty((b, dim + 2), np.float32)
        qbuf[:, -1], bbuf[:, -2] = 1.0, 1.0
        dbuf = np.empty(a * b, np.float32)
        for pos, mem in blocks:
            q, m = qbuf[:len(pos)], bbuf[:len(mem)]
            q[:, :dim] = np.take(zq, pos, axis=0, out=qraw[:len(pos)], mode="clip")
            np.take(q_norm, pos, out=q[:, -2], mode="clip")
            np.multiply(np.take(zb, mem, axis=0, out=braw[:len(mem)], mode="clip"), -2.0, out=m[:, :dim])
            np.take(b_norm, mem, out=m[:, -1], mode="clip")
            d = dbuf[:len(pos) * len(mem)].reshape(len(pos), len(mem))
            np.matmul(q, m.T, out=d)
            heap.add_result_subset(pos, d, mem)
            if bar is not None:
                with lock:  # the rows done so far, in whole rows (each row takes per_row blocks)
                    done[0] += len(pos)
                    step = done[0] // per_row - done[1]
                    done[1] += step
                if step:
                    bar.update(step)

    with threadpool_limits(1, user_api="blas"), _faiss_threads(1):
        if len(shards) == 1:
            work(shards[0])
        else:
            with ThreadPoolExecutor(len(shards), initializer=faiss.omp_set_num_threads, initargs=(1,)) as pool:
                list(pool.map(work, shards))
    heap.finalize()
    return heap.D, heap.I


def _knn_rows(zq: np.ndarray, zb: np.ndarray, k: int, bar=None, near: np.ndarray | None = None, rows: int = 256,
              base: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact: squared distances (float32) and indices of the k nearest rows of ``zb`` to each row of ``zq``,
    blocks of ``rows`` x ``base`` rows (:func:`_knn_blocks`; the query rows shared out among the threads).

    ``near``: for each query row a row of ``zb`` to start from (a self-join: the row itself). Each chunk of
    queries meets the base block holding its first row's ``near`` first, so that on rows stored next to their
    copies the heaps hold close rows early and later candidates are rejected by one comparison.
    """
    zq, zb = np.ascontiguousarray(zq, dtype=np.float32), np.ascontiguousarray(zb, dtype=np.float32)
    w = _workers()
    rows = max(1, min(rows, -(-len(zq) // w)))
    chunks = [np.arange(s, min(len(zq), s + rows)) for s in range(0, len(zq), rows)]
    bases = [np.arange(s, min(len(zb), s + base)) for s in range(0, len(zb), base)]

    def order(c):
        first = 0 if near is None else int(near[c[0]]) // base
        return bases[first:] + bases[:first]

    shards = [[(c, m) for c in chunks[i::w] for m in order(c)] for i in range(w)]
    return _knn_blocks(zq, zb, k, [sh for sh in shards if sh], bar, len(bases))


def _grouped_knn(zq: np.ndarray, zb: np.ndarray, k: int, lists: Lists, bar=None) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances (float32) and indices of the k nearest rows of ``zb`` to each row of ``zq``, among the
    rows of the lists (``lists.order``/``bounds``, over ``zb``) that the row probes (``lists.probes``, one row per
    ``zq`` row); inf / -1 where there are fewer. Each list is compared at once with every row that probes it
    (:func:`_knn_blocks`; the query rows shared out among the threads)."""
    zq, zb = np.ascontiguousarray(zq, dtype=np.float32), np.ascontiguousarray(zb, dtype=np.float32)
    w = _workers()
    shards = [[] for _ in range(w)]
    for j, pos, _ in lists.visits(np.arange(len(zq))):
        mem = lists.members(j)
        if len(mem) == 0:
            continue
        for i in range(w):
            part = pos[pos % w == i] if w > 1 else pos
            if len(part):
                shards[i].append((part, mem))
    return _knn_blocks(zq, zb, k, [sh for sh in shards if sh], bar, lists.probes.shape[1])


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k centroids of the rows ``x`` (faiss k-means, seeded, 10 iterations); the rows themselves when k >= rows."""
    if k >= len(x):
        return np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=10, seed=seed, min_points_per_centroid=1, max_points_per_centroid=10**9)
    with _faiss_threads(1):
        km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids


def ivf_lists(z: np.ndarray, seed: int = 0, probes: int = JOIN_PROBES, progress: bool = False) -> Lists:
    """k-means lists of the rows of ``z`` (about ``ROWS_PER_LIST`` rows each) and each row's ``probes`` nearest lists.

    Two levels, so that neither training nor assigning compares every row with every centroid: about
    sqrt(lists) coarse k-means cells, then the lists by k-means within each cell (as many as its share of the
    rows); a row's nearest lists are searched among those of its ``TOP_PROBES`` nearest cells.
    """
    n, d = z.shape
    nlist = int(np.clip(n // ROWS_PER_LIST, 16, 65536))
    n_top = int(np.ceil(np.sqrt(nlist)))
    rng = np.random.default_rng(seed)
    sample = z[np.sort(rng.choice(n, min(n, TRAIN_PER_LIST * nlist), replace=False))]
    _say(progress, f"  k-means: {n_top} cells, then about {nlist:,} lists within them, from {len(sample):,} rows")
    top = _kmeans(sample, n_top, seed)
    cell = _knn_rows(sample, top, 1)[1][:, 0]
    parts = [sample[cell == c] for c in range(len(top))]
    fine = [_kmeans(parts[c], max(1, int(round(nlist * len(parts[c]) / len(sample)))), seed + 1 + c)
            for c in range(len(top)) if len(parts[c])]
    fine_cell = np.concatenate([np.full(len(f), c) for c, f in zip([c for c in range(len(top)) if len(parts[c])], fine,
                                                                    strict=True)])
    fine = np.ascontiguousarray(np.vstack(fine))
    # the fine centroids grouped by cell, and each row's TOP_PROBES nearest cells: a grouped search finds its lists
    order = np.argsort(fine_cell, kind="stable")
    cells = Lists(order, np.searchsorted(fine_cell[order], np.arange(len(top) + 1)), np.zeros((0, 1), np.int64))
    with _bar(progress, n, "  assigning rows to lists") as bar:
        near = nearest_lists(z, fine, top, cells, probes, bar=bar)
    own = np.argsort(near[:, 0], kind="stable")
    return Lists(own, np.searchsorted(near[own, 0], np.arange(len(fine) + 1)), near, fine, top, cells)


def nearest_lists(zq: np.ndarray, fine: np.ndarray, top: np.ndarray, cells: Lists, probes: int,
                  top_probes: int = TOP_PROBES, bar=None) -> np.ndarray:
    """The ``probes`` lists whose centroids ``fine`` are nearest to each row of ``zq``, searched among the lists of
    its ``top_probes`` nearest coarse cells (``top``; ``cells`` groups the lists by cell); -1 where there are fewer."""
    grouped = Lists(cells.order, cells.bounds, _knn_rows(zq, top, min(top_probes, len(top)))[1])
    return _grouped_knn(zq, fine, min(probes, len(fine)), grouped, bar)[1]


def knn_join(z: np.ndarray, k: int, lists: Lists, queries: np.ndarray | None = None,
             progress: bool = False, desc: str = "  nearest neighbours",
             probes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest *other* rows of each row of ``z`` (or of the rows ``queries``) among the rows of the
    lists it is compared with: distances (float32, ascending) and indices (int32 below 2^31 rows), inf / -1 where
    there are fewer.

    With one list this is exact (BLAS products in blocks into faiss heaps, as IndexFlatL2 searches). With
    k-means lists, each list's rows are compared at once with every row that visits it (:func:`_grouped_knn`;
    ``probes``: other lists than ``lists.probes`` for the query rows).
    """
    n = len(z)
    q = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    k = min(k, max(n - 1, 0))
    if k == 0 or len(q) == 0:
        return np.full((len(q), k), np.inf, np.float32), np.full((len(q), k), -1, dtype=_index_type(n))
    norm = np.einsum("ij,ij->i", z, z)
    # compact lists (a large pool keeps them all along): float32 distances hold the float32 rows' precision
    dist, idx = np.empty((len(q), k), np.float32), np.empty((len(q), k), dtype=_index_type(n))
    # HEAP_ROWS query rows at a time: the heaps of k + 1 candidates never hold every row at once
    with _bar(progress, len(q), desc) as bar:
        for s in range(0, len(q), HEAP_ROWS):
            rows = q[s:s + HEAP_ROWS]
            zq = z if queries is None and len(rows) == n else z[rows]
            if lists.exact:
                d2, i = _knn_rows(zq, z, k + 1, bar, near=rows)
            else:  # probes: the lists of each query row
                per_row = lists.probes[rows] if probes is None else probes[s:s + HEAP_ROWS]
                d2, i = _grouped_knn(zq, z, k + 1, Lists(lists.order, lists.bounds, per_row), bar)
            _finish(z, rows, d2, i, k, norm, out=(dist[s:s + HEAP_ROWS], idx[s:s + HEAP_ROWS]))
            del d2, i
    return dist, idx


def _finish(z: np.ndarray, q: np.ndarray, d2: np.ndarray, i: np.ndarray, k: int, norm: np.ndarray,
            out: tuple[np.ndarray, np.ndarray], step: int = 1 << 16) -> None:
    """The k nearest other rows from the k + 1 candidates (squared float32 distances ``d2``, indices ``i``) of the
    rows ``q`` (squared norms of the rows of ``z``: ``norm``): distances (ascending) and indices, inf / -1 where
    there are fewer, written into ``out``; ``step`` rows at a time (no full-size temporaries).

    The row itself is dropped wherever it appears (ties with exact repeats), else the farthest candidate. The
    products' squared distances carry rounding of about (|q|^2 + |b|^2) x float32's epsilon: the pairs much
    closer than that scale (RECOMPUTE_SHARE of it: near-copies, exact repeats) are recomputed from their
    differences (exact repeats at exactly 0), and the rows whose order that changed are re-sorted.
    """
    dist, idx = out
    for s in range(0, len(q), step):
        rows, dd, ii = q[s:s + step], d2[s:s + step], i[s:s + step]
        own = ii == rows[:, None]
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
        keep = np.ones_like(own)
        keep[np.arange(len(rows)), drop] = False
        dd, ii = dd[keep].reshape(len(rows), k), ii[keep].reshape(len(rows), k)
        found = ii >= 0
        ii = np.where(found, ii, -1)
        d = np.where(found, np.sqrt(np.clip(dd, 0.0, None), dtype=np.float64), np.inf)
        close = found & (dd < RECOMPUTE_SHARE * (norm[rows][:, None] + norm[np.clip(ii, 0, None)]))
        if close.any():
            r, c = np.nonzero(close)
            d[r, c] = pair_distances(z, rows[r], ii[r, c])
            with np.errstate(invalid="ignore"):
                moved = np.flatnonzero((np.diff(d, axis=1) < 0).any(axis=1))
            if len(moved):
                o = np.argsort(d[moved], axis=1, kind="stable")
                d[moved], ii[moved] = np.take_along_axis(d[moved], o, axis=1), np.take_along_axis(ii[moved], o, axis=1)
        dist[s:s + step], idx[s:s + step] = d, ii


def _index_type(n: int) -> type:
    """Row indices below ``n`` (and -1) as int32 where they fit: half the memory of a large pool's lists."""
    return np.int32 if n < np.iinfo(np.int32).max else np.int64


def pair_distances(z: np.ndarray, a: np.ndarray, b: np.ndarray, step: int = 1 << 18) -> np.ndarray:
    """Euclidean distances (float64) between the rows ``a`` and ``b`` of ``z``, pair by pair, from the
    coordinates' differences."""
    out = np.empty(len(a))
    for s in range(0, len(a), step):
        diff = z[a[s:s + step]] - z[b[s:s + step]]
        out[s:s + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff, dtype=np.float64))
    return out


def exact_distances(z: np.ndarray, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Euclidean distances (float64) from each row ``rows[r]`` of ``z`` to the rows ``idx[r]`` (inf where -1),
    from the coordinates' differences."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.full(idx.shape, np.inf)
    r, c = np.nonzero(idx >= 0)
    out[r, c] = pair_distances(z, rows[r], idx[r, c])
    return out


def pool_lists(z: np.ndarray, exact: bool | None = None, seed: int = 0, progress: bool = False) -> Lists:
    """One list (exact) while rows^2 stays under ``POOL_EXACT_LIMIT`` or ``exact`` is True, else k-means lists."""
    n = len(z)
    if exact is None:
        exact = float(n) * n <= POOL_EXACT_LIMIT
    return one_list(n) if exact or n < 64 else ivf_lists(z, seed, progress=progress)


def nearest_two_groups(z: np.ndarray, rows: np.ndarray, candidate: np.ndarray, groups: np.ndarray,
                       lists: Lists, block: tuple[int, int] = (512, 16384)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row of ``rows``: the distance to its nearest ``candidate`` row, that row's group, and the
    distance to the nearest candidate of another group (inf where there is none).

    Searches the candidates in the lists each row is compared with (all of them with one list: exact),
    in float64, keeping per row the best two distinct groups; the two distances are then recomputed from the
    coordinates' differences (:func:`exact_distances`).
    """
    rows = np.asarray(rows, dtype=np.int64)
    r = len(rows)
    a_d, b_d = np.full(r, np.inf), np.full(r, np.inf)
    a_g, b_g = np.full(r, -1, dtype=np.int64), np.full(r, -1, dtype=np.int64)
    a_i, b_i = np.full(r, -1, dtype=np.int64), np.full(r, -1, dtype=np.int64)
    if r == 0:
        return a_d, a_g, b_d
    visits = [(0, np.arange(r))] if lists.exact else [(j, pos) for j, pos, _ in lists.visits(rows)]
    for j, pos in visits:
        mem = lists.members(j)
        mem = mem[candidate[mem]]
        for s in range(0, len(pos), block[0]):
            p = pos[s:s + block[0]]
            zq = z[rows[p]].astype(np.float64)
            for t in range(0, len(mem), block[1]):
                m = mem[t:t + block[1]]
                zm, gm = z[m].astype(np.float64), groups[m]
                d2 = (zq * zq).sum(axis=1)[:, None] + (zm * zm).sum(axis=1)[None, :] - 2.0 * zq @ zm.T
                np.clip(d2, 0.0, None, out=d2)
                ri = np.arange(len(p))
                best = d2.argmin(axis=1)
                bd, bg, bi = d2[ri, best], gm[best], m[best]
                d2[gm[None, :] == bg[:, None]] = np.inf
                second = d2.argmin(axis=1)
                sd = d2[ri, second]
                sg, si = np.where(np.isfinite(sd), gm[second], -1), np.where(np.isfinite(sd), m[second], -1)
                # merge the block's best two groups into the rows' best two so far
                new_best = bd < a_d[p]
                top_d, top_g, top_i = (np.where(new_best, bd, a_d[p]), np.where(new_best, bg, a_g[p]),
                                       np.where(new_best, bi, a_i[p]))
                keep_old = a_g[p] != top_g  # the old state's best outside top_g: its best, else its second
                old_d = np.where(keep_old, a_d[p], b_d[p])
                old_g, old_i = np.where(keep_old, a_g[p], b_g[p]), np.where(keep_old, a_i[p], b_i[p])
                mine = bg != top_g  # the block's best outside top_g
                blk_d, blk_g, blk_i = np.where(mine, bd, sd), np.where(mine, bg, sg), np.where(mine, bi, si)
                take = blk_d < old_d
                a_d[p], a_g[p], a_i[p] = top_d, top_g, top_i
                b_d[p], b_g[p], b_i[p] = (np.where(take, blk_d, old_d), np.where(take, blk_g, old_g),
                                          np.where(take, blk_i, old_i))
    exact = exact_distances(z, rows, np.stack([a_i, b_i], axis=1))
    return exact[:, 0], a_g, exact[:, 1]


# --------------------------------------------------------------------------- parents
def parent_leakage(split: pd.Series, parent: pd.Series, group: pd.Series | None = None,
                   train: str = "train", other: str = "val") -> tuple[dict, pd.DataFrame]:
    """Parents with rows both in ``train`` and in ``other``; share of ``other`` rows whose parent is in train.

    Returns (totals, per-group table) - the table has one row per group (or one "all" row).
    """
    df = pd.DataFrame({"split": split.to_numpy(), "parent": parent.to_numpy(),
                       "group": group.to_numpy() if group is not None else "all"})
    in_train = pd.unique(df.loc[df["split"] == train, "parent"])
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
    c = np.asarray(x)
    if c.size == 0:
        return np.zeros(c.shape, dtype=np.float32)
    mean, var = _column_stats(c)
    scale = float(np.sqrt(np.mean(var)))
    return _scaled(c, mean, scale if scale > 0 else 1.0)


SPACES = {"per-column standardised": standardise, "common scale": common_scale}


def neighbours(z: np.ndarray, k: int, queries: np.ndarray | None = None, exact: bool | None = None,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest *other* rows of each row of ``z`` (or of the rows ``queries``): distances and indices,
    -1 / inf where there are fewer. Exact unless ``exact`` is False or the rows are many (:func:`pool_lists`)."""
    return knn_join(z, k, pool_lists(z, exact, seed), queries)


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
    rows, cols = np.nonzero((dist <= radius) & (idx >= 0))  # only the links (no row index per neighbour)
    graph = sparse.csr_matrix((np.ones(len(rows), np.int8), (rows, idx[rows, cols])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


@dataclass
class Linking:
    """The feature space of the scan, each row's nearest other rows there (the pool's one all-pairs
    search), and the clusters of near-identical rows found from them."""

    space: str  # a key of SPACES
    z: np.ndarray  # the rows in that space (float32)
    dist: np.ndarray  # (n, k) distances (float32) to each row's k nearest other rows, ascending (k >= LINK_NEIGHBOURS)
    idx: np.ndarray  # their indices (int32 below 2^31 rows; -1 where there are fewer)
    radius: float  # link radius (0: exact repeats only)
    groups: np.ndarray  # component label of each row
    depth: dict = field(default_factory=dict)  # valley depth found in each space (nan: none)
    lists: Lists | None = field(default=None, repr=False)  # how the rows were searched (one list: exactly)
    n_exact_duplicates: int | None = None  # rows repeating an earlier row's features exactly (count_repeats)

    @property
    def exact(self) -> bool:
        return self.lists is None or self.lists.exact


def space_queries(n: int) -> int:
    """How many rows' neighbours decide the feature space: ``SPACE_QUERIES``, fewer for large pools so that the
    search stays under ``SPACE_BUDGET`` distance evaluations per space (never fewer than ``SPACE_MIN_QUERIES``)."""
    return int(min(n, SPACE_QUERIES, max(SPACE_MIN_QUERIES, SPACE_BUDGET // max(n, 1))))


def link_rows(x: np.ndarray, space: str | None = None, exact: bool | None = None, seed: int = 0,
              progress: bool = False) -> Linking:
    """Choose the feature space, search the rows' nearest neighbours there once, find the link radius and
    cluster the rows (pseudo-parents).

    ``space=None`` tries every entry of :data:`SPACES` on the neighbours of at most ``SPACE_QUERIES`` rows
    (:func:`space_queries`; exact, against all rows) and keeps the one with the deepest valley between
    near-copies and ordinary neighbours (per-column standardised when neither has one), provided the valley
    holds in all rows. The choice sees the features only, never the split, so a clean split stays
    exchangeable with the reference re-splits. A radius whose largest cluster would hold more than
    ``MAX_CLUSTER_SHARE`` of the rows is shrunk by ``RADIUS_STEP`` until none does, down to the median
    nearest-neighbour distance (then exact repeats only).
    Each row keeps up to ``DEEP_NEIGHBOURS`` nearest rows (fewer when rows x neighbours would pass
    ``DEEP_ENTRIES``), from one all-pairs search (:func:`pool_lists`, :func:`knn_join`): the scan reads every
    split's statistic from them.
    """
    n = len(x)
    deep = int(min(max(n - 1, 0), max(LINK_NEIGHBOURS, min(DEEP_NEIGHBOURS, DEEP_ENTRIES // max(n, 1)))))
    rng = np.random.default_rng(seed)
    n_sub = space_queries(n)
    sub = None if n <= SPACE_QUERIES else np.sort(rng.choice(n, n_sub, replace=False))
    names = [space] if space else list(SPACES)
    tried, depth = {}, {}
    if sub is not None and len(names) > 1:
        _say(progress, f"  choosing the feature space: the {LINK_NEIGHBOURS} nearest of {n_sub:,} rows in "
                       f"{len(names)} spaces ({', '.join(names)})")
    for name in names:
        z = SPACES[name](x)
        if sub is None:
            d, i = knn_join(z, deep, one_list(n))
        elif len(names) > 1:
            d, i = knn_join(z, LINK_NEIGHBOURS, one_list(n), sub)
        else:
            d = i = None
        r, depth[name] = link_radius(d[:, :LINK_NEIGHBOURS]) if d is not None else (0.0, np.nan)
        # a sample's choice keeps no rows: the chosen space's are computed again (memory: one space at a time)
        tried[name] = (z if sub is None or len(names) == 1 else None, r, (d, i) if sub is None else None)
        del z
    order = sorted(tried, key=lambda s: (depth[s] if np.isfinite(depth[s]) else np.inf, s != "per-column standardised"))
    # the spaces with a valley among the sampled rows, best first (else the first): keep the first whose
    # valley holds in all rows, or the last one tried, linking exact repeats only
    lists = one_list(n)
    candidates = [s for s in order if np.isfinite(depth[s])] or order[:1]
    for name in list(tried):
        if name not in candidates:
            del tried[name]  # its rows are no longer needed (memory)
    for name in candidates:
        z, r, full = tried.pop(name)
        z = SPACES[name](x) if z is None else z
        if full is None:  # the radius from every row's neighbours, not the sample's
            lists = pool_lists(z, exact, seed, progress)
            how = "exact" if lists.exact else (f"{len(lists.bounds) - 1:,} k-means lists, each row compared with "
                                               f"the rows of its {lists.probes.shape[1]} nearest")
            _say(progress, f"  the {deep} nearest neighbours of every row ({n:,} rows, {name} features; {how})")
            full = knn_join(z, deep, lists, progress=progress)
            r, depth[name] = link_radius(full[0][:, :LINK_NEIGHBOURS])
            if not lists.exact:
                full = _search_again(z, full, r, lists, progress)
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
    return Linking(name, z, d, i, r, groups, depth, lists)


def _search_again(z: np.ndarray, found: tuple[np.ndarray, np.ndarray], radius: float, lists: Lists,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The neighbour lists ``found`` with the rows whose nearest neighbour is farther than ``radius`` (no
    near-copy found) searched again in their ``SECOND_PROBES`` nearest lists, fewer when those rows x probes x
    rows per list would pass the first search's cost (then none when that leaves no more than the first
    search's probes); each row keeps the nearest of what either search found (``found`` is updated in place)."""
    d, i = found
    far = np.flatnonzero(d[:, 0] > radius)
    per_list = len(z) / max(len(lists.bounds) - 1, 1)
    first = lists.probes.shape[1]
    probes = int(min(SECOND_PROBES, len(z) * first // max(len(far), 1)))
    if len(far) == 0 or probes <= first or lists.centroids is None:
        return d, i
    _say(progress, f"  searching again the {len(far):,} rows without a near-copy among their neighbours, in their "
                   f"{probes} nearest lists (each compared with about {probes * per_list:,.0f} rows)")
    top_probes = min(len(lists.top), TOP_PROBES + 2 * int(np.ceil(probes * len(lists.top) / len(lists.centroids))))
    near = nearest_lists(z[far], lists.centroids, lists.top, lists.cells, probes, top_probes)
    d2, i2 = knn_join(z, d.shape[1], lists, far, progress, "  nearest neighbours, again", probes=near)
    # the nearest of both searches, each row once
    cd, ci = np.hstack([d[far], d2]), np.hstack([i[far], i2])
    by_row = np.lexsort((cd, ci), axis=-1)
    cd, ci = np.take_along_axis(cd, by_row, axis=1), np.take_along_axis(ci, by_row, axis=1)
    cd[:, 1:][(ci[:, 1:] == ci[:, :-1]) & (ci[:, 1:] >= 0)] = np.inf  # a row found by both: once
    best = np.argsort(cd, axis=1, kind="stable")[:, :d.shape[1]]
    d[far], i[far] = np.take_along_axis(cd, best, axis=1), np.take_along_axis(ci, best, axis=1)
    i[far] = np.where(np.isfinite(d[far]), i[far], -1)
    return d, i


def nearest_outside(z_train: np.ndarray, groups_train: np.ndarray, query: np.ndarray, exact: bool | None = None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per query row: the distance to its nearest training row, and to the nearest training row of
    another (pseudo-)parent than that one's (exact; ``exact`` and ``seed`` are kept for compatibility).

    A copy of a training row's original sits much closer to it than to any other original; a fresh
    row is about as close to the nearest original as to the next.
    """
    n, q = len(z_train), len(query)
    if n == 0:
        return np.full(q, np.inf), np.full(q, np.inf)
    z = np.ascontiguousarray(np.vstack([z_train, query]), dtype=np.float32)
    groups = np.r_[np.asarray(groups_train, dtype=np.int64), np.full(q, -1)]
    d1, _, outside = nearest_two_groups(z, np.arange(n, n + q), np.r_[np.ones(n, bool), np.zeros(q, bool)],
                                        groups, one_list(n + q))
    return d1, outside


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
    link: Linking | None = field(default=None, repr=False)  # the search every distance was read from (reusable)

    @property
    def ratio(self) -> np.ndarray:
        """Each validation row's ratio (0 for an exact repeat of a training row)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.val_outside > 0, self.val / self.val_outside, 0.0)

    @property
    def detected(self) -> bool:
        return bool(self.leaked_share >= MIN_LEAKED_SHARE and self.p_value < P_MAX)


def _n_groups(groups: np.ndarray) -> int:
    """How many groups the labels 0 .. G-1 name (pd.factorize and connected_components give such labels)."""
    return int(groups.max()) + 1 if len(groups) else 0


def reference_splits(groups: np.ndarray, val_fraction: float, n_splits: int, seed: int):
    """Clean re-splits: whole (pseudo-)parents go to one side (GroupShuffleSplit); ``val_fraction`` is the
    share of (pseudo-)parents in validation."""
    n_groups = len(np.unique(groups))
    test_size = min(max(val_fraction, 1.0 / n_groups), 1 - 1.0 / n_groups)
    splitter = GroupShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
    return splitter.split(np.zeros(len(groups)), groups=groups)


def _fallback_lists(link: Linking, n_rows: int, n_base: int) -> Lists:
    """Where rows whose neighbour list falls short are searched again: exactly (one list) while rows x base
    rows stays under ``FALLBACK_EXACT_LIMIT`` (always when the pool was searched exactly), else in their lists."""
    if link.exact or float(n_rows) * n_base <= FALLBACK_EXACT_LIMIT:
        return one_list(len(link.z))
    return link.lists


def split_distances(link: Linking, groups: np.ndarray, train: np.ndarray, query: np.ndarray,
                    exact: bool | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """For the rows ``query`` of ``link`` against its rows ``train``: the distance to the nearest training
    row, and to the nearest training row of another (pseudo-)parent than that one's.

    Read from the rows' neighbour lists where they reach a training row of another (pseudo-)parent
    than the nearest training row's; the other rows are searched again (:func:`nearest_two_groups`;
    exactly against all training rows unless they are many, see :func:`_fallback_lists`).
    ``exact`` and ``seed`` are kept for compatibility.
    """
    query = np.asarray(query, dtype=np.int64)
    is_train = np.zeros(len(link.z), bool)
    is_train[train] = True
    d1, outside = np.empty(len(query)), np.empty(len(query))
    for s in range(0, len(query), READ_ROWS):  # a slice of the lists at a time (memory)
        idx, dist = link.idx[query[s:s + READ_ROWS]], link.dist[query[s:s + READ_ROWS]]
        cand = is_train[np.clip(idx, 0, None)] & (idx >= 0)
        first = cand.argmax(axis=1)
        rows = np.arange(len(idx))
        d1[s:s + READ_ROWS] = np.where(cand.any(axis=1), dist[rows, first], np.inf)
        family = groups[idx[rows, first].clip(0)]
        other = cand & (groups[np.clip(idx, 0, None)] != family[:, None])
        outside[s:s + READ_ROWS] = np.where(other, dist, np.inf).min(axis=1)
    redo = np.flatnonzero(~np.isfinite(outside))
    if len(redo):
        lists = _fallback_lists(link, len(redo), int(is_train.sum()))
        d1[redo], _, outside[redo] = nearest_two_groups(link.z, query[redo], is_train, groups, lists)
    return d1, outside


def train_loo(link: Linking, train: np.ndarray) -> np.ndarray:
    """Each training row's distance to its nearest other training row: from the neighbour lists, searched
    again for rows whose list holds no other training row."""
    train = np.asarray(train, dtype=np.int64)
    is_train = np.zeros(len(link.z), bool)
    is_train[train] = True
    d = np.empty(len(train))
    for s in range(0, len(train), READ_ROWS):  # a slice of the lists at a time (memory)
        idx = link.idx[train[s:s + READ_ROWS]]
        in_train = is_train[np.clip(idx, 0, None)] & (idx >= 0)
        d[s:s + READ_ROWS] = np.where(in_train, link.dist[train[s:s + READ_ROWS]], np.inf).min(axis=1)
    missing = np.flatnonzero(~np.isfinite(d))
    if len(missing) and len(train) > 1:
        rows = train[missing]
        # every row its own group: the nearest row of another group than the row itself, when that is the nearest
        d1, g1, d2 = nearest_two_groups(link.z, rows, is_train, np.arange(len(link.z)),
                                        _fallback_lists(link, len(rows), len(train)))
        d[missing] = np.where(g1 == rows, d2, d1)
    return d


def count_repeats(x: np.ndarray, step: int = 1 << 16) -> int:
    """Rows whose feature vector repeats an earlier row's exactly (pandas' ``duplicated``), found by hashing
    the rows (chunk by chunk) and comparing only those whose hashes collide."""
    n = len(x)
    if n < 2:
        return 0
    h = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for s in range(0, n, step):
            a = np.ascontiguousarray(x[s:s + step], dtype=np.float64) + 0.0  # -0.0 == 0.0
            hs = np.full(len(a), 0xCBF29CE484222325, dtype=np.uint64)
            for col in a.view(np.uint64).reshape(len(a), -1).T:  # FNV-style mixing, wrapping in uint64
                hs = (hs ^ col) * np.uint64(0x100000001B3)
                hs ^= hs >> np.uint64(29)
            h[s:s + step] = hs
    collide = np.flatnonzero(pd.Series(h).duplicated(keep=False).to_numpy())
    if not len(collide):
        return 0
    return int(pd.DataFrame(np.asarray(x[collide], dtype=np.float64) + 0.0).duplicated().sum())


def _unit_ratios(link, groups, train, val, exact, seed) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """Each validation row's distances, and each validation unit's median ratio."""
    d, outside = split_distances(link, groups, train, val, exact, seed)
    return d, outside, pd.Series(_ratio(d, outside)).groupby(groups[val]).median()


def _ratio(d: np.ndarray, outside: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(outside > 0, d / outside, 0.0)


def _matched_medians(ratio: np.ndarray, unit: np.ndarray, sizes: np.ndarray, draws: int, seed: int) -> np.ndarray:
    """Reference medians of the same sizes as the units under test: ``draws`` times, each unit keeps a random
    subset of its rows, of a size drawn from ``sizes`` (the row counts of the validation units under test),
    and its median is taken. A median of one row spreads far wider than a median of fifty, so a reference
    of large units beside validation units of single rows (the common clean run: copies made in training
    only) would put clean single rows below the reference quantile far more often than ``ALPHA``."""
    rng = np.random.default_rng(seed)
    out, vals, keys, limits, n_keys = [], [], [], [], 0

    def medians() -> None:  # the draws gathered so far, at once: each unit's rows kept, ranked and median'd
        key = np.concatenate(keys)  # draw by draw, units numbered in order of first appearance
        rank = pd.Series(key).groupby(key).cumcount().to_numpy()
        keep = rank < np.concatenate(limits)
        out.append(pd.Series(np.concatenate(vals)[keep]).groupby(key[keep]).median().to_numpy())
        vals.clear(), keys.clear(), limits.clear()

    for i in range(draws):
        order = rng.permutation(len(ratio))
        codes, units = pd.factorize(unit[order])
        limits.append(rng.choice(sizes, size=len(units))[codes])
        vals.append(ratio[order])
        keys.append(codes + n_keys)
        n_keys += len(units)
        if (len(keys) * len(ratio) >= MEDIAN_BATCH_ROWS) or i == draws - 1:
            medians()
    return np.concatenate(out)


def near_duplicate_scan(x: np.ndarray, is_train: np.ndarray, is_val: np.ndarray, parent: np.ndarray | None = None,
                        seed: int = 0, n_reference_splits: int | None = None, exact: bool | None = None,
                        exact_duplicates: int | None = None, space: str | None = None, link: Linking | None = None,
                        progress: bool | None = None) -> NearDuplicateScan:
    """Near-duplicate leakage from features alone.

    ``x``: the features of all rows as given (the scan scales them, see :func:`link_rows`);
    ``is_train`` / ``is_val`` boolean masks. Each validation row's statistic is its distance to
    the nearest training row over its distance to the nearest training row of another
    (pseudo-)parent. The clean reference re-splits the train+val rows so that no (pseudo-)parent
    straddles the split: by ``parent`` when given, else by clusters of near-identical rows
    (:func:`link_rows`). A validation (pseudo-)parent counts as leaked when its median ratio is
    below the reference's ``ALPHA`` quantile; the leaked share is the excess over ``ALPHA`` of
    validation rows so counted, and a binomial test on (pseudo-)parents decides.

    Every distance is read from one all-pairs search of the train+val rows (:func:`link_rows`), searched
    again only for the rows whose neighbour list falls short. ``link``: that search from an earlier scan of
    the same train+val rows and features (another split of them, or other parent ids), reused as it is.
    ``progress`` (default: pools of at least ``PROGRESS_ROWS`` rows) prints what the scan is doing.
    """
    is_train, is_val = np.asarray(is_train, bool), np.asarray(is_val, bool)
    pool = np.flatnonzero(is_train | is_val)
    progress = len(pool) >= PROGRESS_ROWS if progress is None else progress
    if link is None or (exact_duplicates is None and link.n_exact_duplicates is None):
        x = np.asarray(x)
        rows = x if len(pool) == len(x) else x[pool]  # no copy when every row is train or validation
    if link is None:
        _say(progress, f"near-duplicate scan of {len(pool):,} train and validation rows:")
        link = link_rows(rows, space, exact, seed, progress)
    elif len(link.z) != len(pool):
        raise ValueError(f"link: searched {len(link.z)} rows, but this split has {len(pool)} train and validation rows")
    if exact_duplicates is None:
        if link.n_exact_duplicates is None:
            link.n_exact_duplicates = count_repeats(rows)
        exact_duplicates = link.n_exact_duplicates
    if parent is not None:
        groups, kind = pd.factorize(pd.Series(np.asarray(parent)[pool]))[0].astype(np.int64), "parent_id"
    else:
        groups = link.groups
        kind = "pseudo-parents" if _n_groups(groups) < len(pool) else "rows"
    tr, va = np.flatnonzero(is_train[pool]), np.flatnonzero(is_val[pool])
    n_val = len(va)
    _say(progress, f"  reading the distances of this split and of the clean re-splits (by {kind})")
    d_val, d_out, actual = _unit_ratios(link, groups, tr, va, exact, seed)
    # each training row's nearest other training row, from the rows' neighbour lists
    d_loo = train_loo(link, tr)
    if n_reference_splits is None:
        n_reference_splits = 5 if len(pool) <= 100_000 else 1
    ref = []
    if _n_groups(groups) >= 2:
        sizes = np.bincount(groups[va])
        sizes = sizes[sizes > 0]
        # the reference puts as large a share of (pseudo-)parents in validation as this split has (at most half):
        # a share of rows would leave one or two large parents there when validation holds only single rows
        share = min(max(n_val / len(pool), len(np.unique(groups[va])) / _n_groups(groups)), 0.5)
        for i, (rtr, rva) in enumerate(reference_splits(groups, share, n_reference_splits, seed)):
            d, outside = split_distances(link, groups, rtr, rva, exact, seed)
            units = len(np.unique(groups[rva]))
            draws = max(1, -(-REFERENCE_MEDIANS // max(1, units * n_reference_splits)))
            ref.append(_matched_medians(_ratio(d, outside), groups[rva], sizes, draws, seed + 1 + i))
    reference = np.concatenate(ref) if ref else np.array([])
    threshold = float(np.quantile(reference, ALPHA)) if len(reference) else np.nan
    sizes = pd.Series(groups[va]).value_counts()
    low = actual < threshold if np.isfinite(threshold) else actual < -1
    below = int(sizes[actual.index[low.to_numpy()]].sum())
    n_units = len(actual)
    share = max(0.0, (below / n_val - ALPHA) / (1 - ALPHA)) if n_val and np.isfinite(threshold) else np.nan
    p = (binomtest(int(low.sum()), n_units, ALPHA, alternative="greater").pvalue
         if n_units and np.isfinite(threshold) else np.nan)
    train_sizes = np.bincount(groups[tr]) if len(tr) else np.array([], dtype=np.int64)
    train_near = float(np.mean(train_sizes[groups[tr]] > 1)) if len(tr) else np.nan
    return NearDuplicateScan(d_val, d_out, d_loo, reference, kind, threshold, below, share, float(p), link.space,
                             link.radius if parent is None else np.nan, exact_duplicates, train_near, n_units,
                             int(low.sum()), groups, {"valley_depth": link.depth}, link)


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
    # group codes and counts (no frame of strings: a large run's table stays the largest thing in memory)
    codes, names = pd.factorize(group.to_numpy(), use_na_sentinel=False)
    order = sorted(range(len(names)), key=lambda j: str(names[j]))
    first = np.unique(codes, return_index=True)[1]  # each group's first row gives its tier
    in_which = (split == which).to_numpy()
    out = pd.DataFrame({"group": [names[j] for j in order],
                        "tier": tier.to_numpy()[first][order] if tier is not None else "",
                        "val_rows": np.bincount(codes[in_which], minlength=len(names))[order].astype(int)})
    out["implicit_weight"] = out["val_rows"] / max(int(in_which.sum()), 1)
    if originals is not None:
        counts = np.bincount(codes[np.asarray(originals, bool)], minlength=len(names))[order].astype(float)
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
