"""Checkpoint statistics behind notebook 03: is one experiment's "ideal" epoch real or noise?

An inverse model is saved every epoch. For each checkpoint ``e`` and validation
sample ``i`` the *per-sample error* is the mean over the P parameters of the
squared error in standardised units::

    err[e, i] = mean_p ((pred[e, i, p] - target[i, p]) / scale_p) ** 2

with ``scale`` the standard deviation of the training targets (scikit-learn's
``StandardScaler``). Parameters in different units (a strain of 0.01, a length of
5000 Å) then count alike; an unscaled distance or error is dominated by whichever
parameter has the largest numbers.

From the (E, N) error matrix:

- **noise floor**: every validation sample has *some* epoch that fits it better
  than the val-loss-best one. Its advantage ``err[ref, i] / min_e err[e, i]`` is
  the ordinary epoch-to-epoch luck; an experiment whose advantage is typical of
  the validation samples' is inside that noise;
- **selection check**: pick each sample's best epoch on one half of its repeated
  measurements (or on the sample itself) and score that epoch on the other half
  (or on its nearest validation neighbours, other profiles only): how much of the
  in-sample advantage survives on held-out data (Cawley & Talbot 2010: selection on
  the evaluation data is optimistic). Together the two checks split an advantage
  into measurement noise (lost on a re-measurement), what is specific to the one
  profile (kept on a re-measurement, lost on the neighbours) and what is regional
  (kept on the neighbours): :class:`AdvantageSplit`;
- **paired tests across validation profiles** (:class:`Paired`, a t interval of the
  per-profile gains; repeated rows of one profile count once): the experiment's
  chosen epoch on its nearest validation profiles, an ensemble against the
  val-loss-best checkpoint;
- **coverage** in standardised parameter space: the k-NN distance to the training
  set against the same distance of validation samples, the number of training
  samples within radii taken from that distribution, each parameter's range;
- **ensembles** of the last k checkpoints (mean and median of predictions), the **weight average** of the
  last checkpoints (``torch.optim.swa_utils.AveragedModel``), and a **nearest-neighbour baseline** from
  curves to parameters.

Arrays are processed in epoch chunks, so memory stays near the size of ``pred``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from scipy.spatial import cKDTree
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

# chunks of the (E, N, P) prediction array hold at most this many bytes of temporaries
CHUNK_BYTES = 32 * 2**20
# distributions (noise band, reference k-NN distances, neighbour selection) use at most this many samples
MAX_REFERENCE = 2000
MAX_BAND = 20000
# a validation sample's error is floored at this share of the mean error (a perfect fit has error 0)
REL_FLOOR = 1e-9
# the nearest-neighbour baseline is fitted on at most this many training targets and scored on at most this
# many validation samples
MAX_BASELINE_TRAIN = 300
MAX_BASELINE_VAL = 150
# k-NN distances of a few query rows are computed directly (no tree) up to this many distance evaluations
BRUTE_LIMIT = 5e7


# --------------------------------------------------------------------------- scales and errors
def fit_scaler(reference: np.ndarray) -> StandardScaler:
    """StandardScaler on the reference parameters (constant columns get scale 1, as sklearn does)."""
    return StandardScaler().fit(np.asarray(reference, dtype=np.float64))


def standardise(x: np.ndarray, scaler: StandardScaler) -> np.ndarray:
    return scaler.transform(np.asarray(x, dtype=np.float64).reshape(-1, scaler.n_features_in_)).reshape(np.shape(x))


def per_sample_errors(pred: np.ndarray, target: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(E, N) mean over parameters of the squared standardised error; float64.

    ``pred`` (E, N, P) or (N, P) (then E=1), ``target`` (N, P), ``scale`` (P,).
    Computed a chunk of checkpoints at a time (no full-size temporary).
    """
    pred = np.asarray(pred)
    if pred.ndim == 2:
        pred = pred[None]
    e, n, p = pred.shape
    dtype = np.float64 if pred.dtype == np.float64 else np.float32
    t = np.asarray(target, dtype=dtype)
    inv = (1.0 / np.asarray(scale, dtype=np.float64)).astype(dtype)
    out = np.empty((e, n), dtype=np.float64)
    step = max(1, CHUNK_BYTES // max(1, n * p * np.dtype(dtype).itemsize))
    for a in range(0, e, step):
        d = np.subtract(pred[a:a + step], t, dtype=dtype)
        d *= inv
        np.square(d, out=d)
        out[a:a + step] = d.mean(axis=-1, dtype=np.float64)
    return out


def checkpoint_mse(err: np.ndarray) -> np.ndarray:
    """Per-checkpoint validation MSE in standardised units: the mean of each row of ``err``."""
    return np.asarray(err).mean(axis=1)


# --------------------------------------------------------------------------- noise floor
def error_floor(err: np.ndarray) -> float:
    return REL_FLOOR * max(float(np.mean(err)), np.finfo(float).tiny)


def _floored(err: np.ndarray) -> np.ndarray:
    """Errors floored at :func:`error_floor`; an array that needs no flooring is returned as is (no copy)."""
    floor = error_floor(err)
    return err if float(err.min()) >= floor else np.maximum(err, floor)


def advantage(err: np.ndarray, ref: int) -> np.ndarray:
    """Per sample (column): error at checkpoint ``ref`` over the sample's own best error (>= 1)."""
    e = _floored(np.asarray(err, dtype=np.float64))
    return e[ref] / e.min(axis=0)


def relative_errors(err: np.ndarray, ref: int) -> np.ndarray:
    """err[e, i] / err[ref, i]: each sample's error relative to the reference checkpoint."""
    e = _floored(np.asarray(err, dtype=np.float64))
    return e / e[ref]


def subsample(n: int, m: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``m`` of ``n`` items (all of them when n <= m), seeded."""
    if n <= m:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, m, replace=False))


def noise_band(err: np.ndarray, ref: int, quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
               max_samples: int = MAX_BAND, seed: int = 0) -> np.ndarray:
    """(E, Q) quantiles over validation samples of err[e, i] / err[ref, i] (at most ``max_samples`` samples)."""
    cols = subsample(np.shape(err)[1], max_samples, seed)
    return np.quantile(relative_errors(np.asarray(err)[:, cols], ref), quantiles, axis=1).T


def epoch_to_epoch(err: np.ndarray, max_samples: int = MAX_BAND, seed: int = 0) -> np.ndarray:
    """(E-1,) median over samples of |log err[e+1, i] - log err[e, i]|: typical change between consecutive checkpoints."""
    cols = subsample(np.shape(err)[1], max_samples, seed)
    lg = np.log(_floored(np.asarray(err, dtype=np.float64)[:, cols]))
    return np.median(np.abs(np.diff(lg, axis=0)), axis=1)


def percentile_of(reference: np.ndarray, value: float) -> float:
    """Share (in %) of ``reference`` at or below ``value`` (``scipy.stats.percentileofscore``, kind='weak')."""
    return float(stats.percentileofscore(np.asarray(reference, dtype=np.float64), value, kind="weak"))


@dataclass
class NoiseFloor:
    """The experiment's ideal-vs-reference swing against the validation samples' swings."""

    ref: int  # index of the reference (val-loss-best) checkpoint
    sample_advantage: np.ndarray = field(repr=False)  # (N,) err[ref] / min_e err
    experiment_advantage: float
    percentile: float  # of the experiment's advantage among the samples'
    band: np.ndarray = field(repr=False)  # (E, Q) quantiles of err / err[ref]
    quantiles: tuple
    experiment_relative: np.ndarray = field(repr=False)  # (E,) experiment err / err[ref]
    step_change: np.ndarray = field(repr=False)  # (E-1,) median |log change| between consecutive checkpoints

    @property
    def sample_p95(self) -> float:
        return float(np.quantile(self.sample_advantage, 0.95))

    @property
    def sample_median(self) -> float:
        return float(np.median(self.sample_advantage))


def noise_floor(err: np.ndarray, experiment_err: np.ndarray, ref: int,
                quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95), seed: int = 0) -> NoiseFloor:
    """Validation errors (E, N) and the experiment's errors (E,), both relative to checkpoint ``ref``."""
    err = np.asarray(err, dtype=np.float64)
    adv = advantage(err, ref)
    exp_err = np.asarray(experiment_err, dtype=np.float64)
    exp_adv = float(advantage(exp_err[:, None], ref)[0])
    return NoiseFloor(ref, adv, exp_adv, percentile_of(adv, exp_adv), noise_band(err, ref, quantiles, seed=seed),
                      tuple(quantiles), relative_errors(exp_err[:, None], ref)[:, 0], epoch_to_epoch(err, seed=seed))


# --------------------------------------------------------------------------- selection on the test case
@dataclass
class SelectionCheck:
    """Choose a checkpoint per sample on selection data, score it on held-out data.

    Gains are log ratios ``log(err[ref] / err[chosen])``: > 0 means the chosen
    checkpoint beats the reference one. ``in_sample`` >= 0 by construction.
    """

    method: str  # "repeats" or "neighbours"
    chosen: np.ndarray = field(repr=False)  # chosen checkpoint index per unit
    in_sample: np.ndarray = field(repr=False)
    held_out: np.ndarray = field(repr=False)

    @property
    def n(self) -> int:
        return int(len(self.chosen))

    @property
    def surviving_share(self) -> float:
        """Mean held-out gain over mean in-sample gain (1: all of the advantage is real, <= 0: none)."""
        m = float(np.mean(self.in_sample)) if self.n else 0.0
        return float(np.mean(self.held_out)) / m if m > 0 else float("nan")

    @property
    def share_better(self) -> float:
        """Share of units where the chosen checkpoint also beats the reference on held-out data."""
        return float(np.mean(self.held_out > 0)) if self.n else float("nan")

    @property
    def in_sample_ratio(self) -> float:
        return float(np.exp(np.mean(self.in_sample))) if self.n else float("nan")

    @property
    def held_out_ratio(self) -> float:
        return float(np.exp(np.mean(self.held_out))) if self.n else float("nan")


def _onehot(codes: np.ndarray, n_groups: int, mask: np.ndarray) -> sp.csr_matrix:
    rows = np.flatnonzero(mask)
    return sp.csr_matrix((np.ones(len(rows)), (rows, codes[rows])), shape=(len(codes), n_groups))


def selection_by_repeats(err: np.ndarray, repeat_id: np.ndarray, ref: int, seed: int = 0) -> SelectionCheck:
    """Per group of repeated measurements (same ``repeat_id``, 2+ rows): choose the epoch with the lowest mean
    error on a random half of its rows, score it on the other half. Groups of one row are skipped."""
    err = _floored(np.asarray(err, dtype=np.float64))
    codes, uniques = pd.factorize(pd.Series(np.asarray(repeat_id).ravel()), sort=True)
    g = len(uniques)
    counts = np.bincount(codes, minlength=g)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(codes))
    # rank of each row within its group, in random order: first half selects, the rest scores
    ranked = pd.Series(codes[order]).groupby(codes[order]).cumcount().to_numpy()
    rank = np.empty_like(ranked)
    rank[order] = ranked
    half_a = rank < counts[codes] // 2
    keep = counts >= 2
    a, b = _onehot(codes, g, half_a & keep[codes]), _onehot(codes, g, ~half_a & keep[codes])
    na, nb = np.asarray(a.sum(axis=0)).ravel(), np.asarray(b.sum(axis=0)).ravel()
    mean_a = np.asarray((a.T @ err.T).T)[:, keep] / na[keep]
    mean_b = np.asarray((b.T @ err.T).T)[:, keep] / nb[keep]
    chosen = mean_a.argmin(axis=0)
    cols = np.arange(mean_a.shape[1])
    gain_in = np.log(mean_a[ref] / mean_a[chosen, cols])
    gain_out = np.log(mean_b[ref] / mean_b[chosen, cols])
    return SelectionCheck("repeats", chosen, gain_in, gain_out)


def selection_by_neighbours(err: np.ndarray, target_z: np.ndarray, ref: int, k: int = 5,
                            max_samples: int = MAX_REFERENCE, seed: int = 0,
                            groups: np.ndarray | None = None) -> SelectionCheck:
    """Each (sub-sampled) validation sample chooses its own best epoch; that epoch is scored on the sample's
    ``k`` nearest other validation samples (standardised target space, scikit-learn NearestNeighbors).

    ``groups`` (N,) profile codes (:func:`profile_codes`): rows of the sample's own profile (its repeated
    measurements) are no neighbours, so the neighbours measure what carries over to *other* profiles. A row
    without another profile in reach is skipped."""
    err = _floored(np.asarray(err, dtype=np.float64))
    n = err.shape[1]
    codes = np.arange(n) if groups is None else np.asarray(groups)
    rows = subsample(n, max_samples, seed)
    own = int(np.bincount(codes).max())  # rows of one profile, the sample itself included
    nn = NearestNeighbors(n_neighbors=min(k + own, n)).fit(target_z)
    _, ind = nn.kneighbors(target_z[rows])
    nbrs = np.full((len(rows), k), -1)
    for r, (i, cand) in enumerate(zip(rows, ind, strict=True)):
        keep = cand[codes[cand] != codes[i]][:k]
        nbrs[r, :len(keep)] = keep
    ok = nbrs[:, 0] >= 0
    rows, nbrs = rows[ok], nbrs[ok]
    mask = nbrs >= 0
    idx = np.where(mask, nbrs, 0)
    chosen = err[:, rows].argmin(axis=0)
    gain_in = np.log(err[ref, rows] / err[chosen, rows])
    nb_ref = (err[ref][idx] * mask).sum(axis=1) / mask.sum(axis=1)
    nb_chosen = (err[chosen[:, None], idx] * mask).sum(axis=1) / mask.sum(axis=1)
    return SelectionCheck("neighbours", chosen, gain_in, np.log(nb_ref / nb_chosen))


@dataclass
class AdvantageSplit:
    """Where a per-sample choice's advantage goes (shares of the validation samples' mean log advantage, summing to 1).

    ``regional``: kept on the nearest other profiles (the neighbour check's surviving share); ``noise``: lost on a
    repeated measurement of the same profile (1 - the repeats check's surviving share); ``profile``: kept on a
    re-measurement but not on the neighbours, specific to that one profile (epoch-to-epoch luck at that point of
    parameter space). Without repeated measurements noise and profile are not separable (NaN) and ``specific``
    (= 1 - regional) holds both. Shares are clipped to [0, 1] in that order (the checks are estimates)."""

    regional: float
    noise: float
    profile: float

    @property
    def specific(self) -> float:
        return 1.0 - self.regional


def split_advantage(neighbours: SelectionCheck, repeats: SelectionCheck | None = None) -> AdvantageSplit:
    """:class:`AdvantageSplit` from the neighbour check and (when the run has repeated measurements) the repeats one."""
    regional = float(np.clip(neighbours.surviving_share, 0.0, 1.0)) if np.isfinite(neighbours.surviving_share) \
        else float("nan")
    if repeats is None or not np.isfinite(repeats.surviving_share) or not np.isfinite(regional):
        return AdvantageSplit(regional, float("nan"), float("nan"))
    kept = float(np.clip(repeats.surviving_share, regional, 1.0))
    return AdvantageSplit(regional, 1.0 - kept, kept - regional)


# --------------------------------------------------------------------------- paired tests across profiles
def profile_codes(n: int, repeat_id: np.ndarray | None = None) -> np.ndarray:
    """Row -> profile 0..G-1: rows sharing a ``repeat_id`` are one profile; without ids every row is its own."""
    if repeat_id is None:
        return np.arange(n)
    return pd.factorize(pd.Series(np.asarray(repeat_id).ravel()), sort=True)[0]


def profile_mean(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Mean over each profile's rows along the last axis: (..., N) -> (..., G)."""
    x = np.asarray(x, dtype=np.float64)
    codes = np.asarray(codes)
    g = int(codes.max()) + 1
    onehot = sp.csr_matrix((np.ones(len(codes)), (np.arange(len(codes)), codes)), shape=(len(codes), g))
    flat = x.reshape(-1, x.shape[-1])
    return (np.asarray(onehot.T @ flat.T).T / np.bincount(codes, minlength=g)).reshape(*x.shape[:-1], g)


@dataclass
class Paired:
    """Per-unit gains (> 0 favours the candidate over the reference) across independent units, with a t interval
    (two-sided, ``level``) and the t-test's p-value (``scipy.stats.t``)."""

    values: np.ndarray = field(repr=False)
    level: float = 0.95

    @property
    def n(self) -> int:
        return int(len(self.values))

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.n else float("nan")

    @property
    def se(self) -> float:
        return float(np.std(self.values, ddof=1) / np.sqrt(self.n)) if self.n > 1 else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        if self.n < 2:
            return float("nan"), float("nan")
        half = float(stats.t.ppf(0.5 + self.level / 2, self.n - 1)) * self.se
        return self.mean - half, self.mean + half

    @property
    def p(self) -> float:
        if self.n < 2:
            return float("nan")
        if self.se == 0:
            return 1.0 if self.mean == 0 else 0.0
        return float(2 * stats.t.sf(abs(self.mean / self.se), self.n - 1))

    @property
    def better(self) -> bool:
        """The candidate is better beyond noise: the whole interval is above 0."""
        return bool(self.interval[0] > 0)

    @property
    def worse(self) -> bool:
        """The candidate is worse beyond noise: the whole interval is below 0."""
        return bool(self.interval[1] < 0)


def paired_by_profile(gain: np.ndarray, codes: np.ndarray, level: float = 0.95) -> Paired:
    """Per-row gains averaged within each profile (repeats count once), as a :class:`Paired`."""
    codes = pd.factorize(pd.Series(np.asarray(codes)))[0]
    return Paired(profile_mean(gain, codes), level)


@dataclass
class Regional:
    """A chosen checkpoint against the reference one on the ``k`` validation profiles nearest to a point."""

    k: int
    profiles: np.ndarray = field(repr=False)  # the profiles' codes
    distance: float  # mean standardised distance from the point to them
    log_gain: Paired  # per profile log(err[ref] / err[chosen])

    @property
    def ratio(self) -> float:
        return float(np.exp(self.log_gain.mean))

    @property
    def ratio_interval(self) -> tuple[float, float]:
        lo, hi = self.log_gain.interval
        return float(np.exp(lo)), float(np.exp(hi))


def regional_gain(err: np.ndarray, target_z: np.ndarray, point_z: np.ndarray, ref: int, chosen: int,
                  codes: np.ndarray, k: int = 5) -> Regional | None:
    """Checkpoint ``chosen`` against ``ref`` on the ``k`` validation profiles nearest to ``point_z`` (standardised;
    a profile sits at the mean of its rows). None when there are fewer than two profiles."""
    err = _floored(np.asarray(err, dtype=np.float64))
    codes = pd.factorize(pd.Series(np.asarray(codes)))[0]
    where = profile_mean(np.asarray(target_z, dtype=np.float64).T, codes).T  # (G, P)
    kk = min(k, len(where))
    if kk < 2:
        return None
    dist, ind = NearestNeighbors(n_neighbors=kk).fit(where).kneighbors(np.atleast_2d(point_z))
    per = profile_mean(err[[ref, chosen]], codes)[:, ind[0]]
    return Regional(kk, ind[0], float(dist[0].mean()), Paired(np.log(per[0] / per[1])))


# --------------------------------------------------------------------------- coverage
def knn_distances(reference_z: np.ndarray, query_z: np.ndarray, k: int = 5,
                  exclude_self: bool = False) -> np.ndarray:
    """Mean Euclidean distance from each query row to its ``k`` nearest reference rows (NearestNeighbors).

    ``exclude_self``: the queries are the reference rows themselves; each row's own zero distance is dropped.
    A few queries against many rows (at most BRUTE_LIMIT distances, e.g. one point against 10^6 training
    rows) are measured directly instead of through a tree built for them; the distances are the same.
    """
    reference_z = np.asarray(reference_z, dtype=np.float64)
    query_z = np.atleast_2d(np.asarray(query_z, dtype=np.float64))
    kk = k + 1 if exclude_self else k
    if kk > len(reference_z):
        raise ValueError(f"need at least {kk} reference rows for k={k}, got {len(reference_z)}")
    if len(query_z) * len(reference_z) <= BRUTE_LIMIT:
        dist = _nearest_brute(reference_z, query_z, kk)
    else:
        dist, _ = NearestNeighbors(n_neighbors=kk).fit(reference_z).kneighbors(query_z)
    return dist[:, 1:].mean(axis=1) if exclude_self else dist.mean(axis=1)


def _nearest_brute(reference: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """(n_query, k) ascending Euclidean distances to the k nearest reference rows, each squared distance
    summed coordinate by coordinate in order (as a tree's distance does, so the numbers agree to the bit)."""
    out = np.empty((len(query), k))
    for i, row in enumerate(query):
        d2 = np.zeros(len(reference))
        for j in range(reference.shape[1]):
            diff = reference[:, j] - row[j]
            d2 += diff * diff
        out[i] = np.sort(np.sqrt(np.partition(d2, k - 1)[:k]))
    return out


def counts_within(reference_z: np.ndarray, query_z: np.ndarray, radii: Sequence[float]) -> np.ndarray:
    """(n_query, n_radii) number of reference rows within each radius (a k-d tree, ``query_ball_point``)."""
    tree = cKDTree(np.asarray(reference_z, dtype=np.float64))
    q = np.atleast_2d(np.asarray(query_z, dtype=np.float64))
    return _counts(tree, q, radii)


def _counts(tree: cKDTree, q: np.ndarray, radii: Sequence[float]) -> np.ndarray:
    """Reference rows within each radius (distance <= r) of each query row."""
    return np.stack([np.asarray(tree.query_ball_point(q, r=float(r), return_length=True, workers=-1), dtype=np.int64)
                     for r in radii], axis=1)


@dataclass
class Coverage:
    """Where a point sits in the training distribution, in standardised units."""

    k: int
    distance: float  # mean distance to the k nearest training samples
    reference_distances: np.ndarray = field(repr=False)  # the same for (sub-sampled) validation samples
    percentile: float  # of ``distance`` among ``reference_distances``
    radii: np.ndarray = field(repr=False)  # 10th, 50th, 90th percentile of the reference distances
    counts: np.ndarray = field(repr=False)  # training samples within each radius of the point
    reference_counts: np.ndarray = field(repr=False)  # (n_ref, 3)
    count_percentiles: np.ndarray = field(repr=False)  # of ``counts`` among ``reference_counts`` (low: sparse)
    ranges: pd.DataFrame = field(repr=False)  # per parameter: min, max, value, position, percentile, outside
    reference_rows: np.ndarray | None = field(default=None, repr=False)  # the validation rows of reference_distances

    @property
    def outside_range(self) -> list[str]:
        return self.ranges.index[self.ranges["outside"]].tolist()

    @property
    def beyond_reference(self) -> bool:
        """Farther from the training set than every validation sample is."""
        return bool(self.distance > self.reference_distances.max())


RADIUS_QUANTILES = (0.1, 0.5, 0.9)


def coverage(train: np.ndarray, point: np.ndarray, reference: np.ndarray, scaler: StandardScaler,
             names: Sequence[str], k: int = 5, max_reference: int = MAX_REFERENCE, seed: int = 0) -> Coverage:
    """Coverage of ``point`` (P,) by the training targets (M, P), against validation targets (N, P).

    One k-d tree (scipy's ``cKDTree``) on the standardised training targets answers both the k-NN distances
    (the same numbers as :func:`knn_distances`) and the counts within radii.
    """
    tz = standardise(train, scaler)
    if k > len(tz):
        raise ValueError(f"need at least {k} training rows for k={k}, got {len(tz)}")
    rows = subsample(len(reference), max_reference, seed)
    q = np.vstack([standardise(np.asarray(point)[None], scaler), standardise(np.asarray(reference)[rows], scaler)])
    tree = cKDTree(tz)
    dist = tree.query(q, k=list(range(1, k + 1)), workers=-1)[0].mean(axis=1)
    d_point, d_ref = float(dist[0]), dist[1:]
    radii = np.quantile(d_ref, RADIUS_QUANTILES)
    counts = _counts(tree, q, radii)
    count_pct = np.array([percentile_of(counts[1:, j], counts[0, j]) for j in range(len(radii))])
    return Coverage(k, d_point, d_ref, percentile_of(d_ref, d_point), radii, counts[0], counts[1:], count_pct,
                    parameter_ranges(train, point, names), rows)


@dataclass
class CoverageEffect:
    """Error of the sparsest validation profiles (k-NN distance to the training set at or above a percentile)
    against the others', at one checkpoint; Mann-Whitney U (one-sided: the sparse ones fare worse)."""

    percentile: float
    threshold: float  # the k-NN distance at that percentile
    n_sparse: int
    n_rest: int
    error_sparse: float
    error_rest: float
    p: float

    @property
    def ratio(self) -> float:
        return self.error_sparse / self.error_rest if self.error_rest > 0 else float("nan")

    @property
    def worse(self) -> bool:
        return bool(self.ratio > 1 and self.p < 0.05)


def coverage_effect(err: np.ndarray, cov: Coverage, codes: np.ndarray,
                    percentile: float = 90.0) -> CoverageEffect | None:
    """Do validation profiles the training set covers sparsely have larger errors (``err`` (N,) at one checkpoint)?

    Uses the validation rows ``cov`` measured (:func:`coverage`'s reference rows and their k-NN distances), one
    value per profile. None when either side would hold fewer than two profiles."""
    rows = cov.reference_rows
    codes = pd.factorize(pd.Series(np.asarray(codes)[rows]))[0]
    dist = profile_mean(np.asarray(cov.reference_distances, dtype=np.float64)[None], codes)[0]
    e = profile_mean(np.asarray(err, dtype=np.float64)[rows][None], codes)[0]
    threshold = float(np.percentile(dist, percentile))
    sparse = dist >= threshold
    if sparse.sum() < 2 or (~sparse).sum() < 2:
        return None
    p = float(stats.mannwhitneyu(e[sparse], e[~sparse], alternative="greater").pvalue)
    return CoverageEffect(percentile, threshold, int(sparse.sum()), int((~sparse).sum()), float(e[sparse].mean()),
                          float(e[~sparse].mean()), p)


def parameter_ranges(train: np.ndarray, point: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """Per parameter: training min/max, the point's value, its position in [min, max] (0..1 inside),
    its percentile in the training marginal (scipy, kind='mean'), and whether it is outside the range."""
    train = np.asarray(train, dtype=np.float64)
    point = np.asarray(point, dtype=np.float64)
    lo, hi = train.min(axis=0), train.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    pct = [float(stats.percentileofscore(train[:, j], point[j], kind="mean")) for j in range(train.shape[1])]
    return pd.DataFrame({"min": lo, "max": hi, "value": point, "position": (point - lo) / span,
                         "percentile": pct, "outside": (point < lo) | (point > hi)}, index=pd.Index(names, name="parameter"))


# --------------------------------------------------------------------------- per-parameter errors
def error_by_bin(pred: np.ndarray, target: np.ndarray, scale: np.ndarray, names: Sequence[str],
                 bins: int = 4, point: np.ndarray | None = None) -> pd.DataFrame:
    """Mean absolute standardised error of each parameter by quantile bin of its true value (pd.qcut).

    ``point``: mark the bin the experiment falls in (values outside the bins go to the nearest one).
    """
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    abs_err = np.abs(pred - target) / np.asarray(scale, dtype=np.float64)
    rows = []
    for j, name in enumerate(names):
        cut, edges = pd.qcut(target[:, j], bins, retbins=True, duplicates="drop")
        codes = np.asarray(cut.codes)
        if len(edges) < 2:  # a constant parameter: one bin holding every sample
            edges, codes = np.array([edges[0], edges[0]]), np.zeros(len(target), dtype=int)
        overall = abs_err[:, j].mean()
        here = None
        if point is not None:
            here = int(np.clip(np.searchsorted(edges, point[j], side="right") - 1, 0, len(edges) - 2))
        for b in range(len(edges) - 1):
            sel = codes == b
            mae = float(abs_err[sel, j].mean()) if sel.any() else float("nan")
            rows.append({"parameter": name, "bin": b, "low": edges[b], "high": edges[b + 1], "n": int(sel.sum()),
                         "mae_std": mae, "vs_overall": mae / overall if overall > 0 else float("nan"),
                         "experiment_here": here == b})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- ensembles
def last_k(pred: np.ndarray, k: int) -> np.ndarray:
    """The last ``k`` checkpoints' predictions (pred is ordered by epoch)."""
    return np.asarray(pred)[-k:]


def ensemble(pred: np.ndarray, k: int, how: str = "mean") -> np.ndarray:
    """Mean or median over the last ``k`` checkpoints of predictions (E, ..., P) -> (..., P)."""
    tail = last_k(pred, k)
    if how == "mean":
        return tail.mean(axis=0, dtype=np.float64)
    if how == "median":
        return np.median(tail, axis=0)
    raise ValueError(f"how must be 'mean' or 'median', got {how!r}")


# --------------------------------------------------------------------------- curves and sensitivity
ROW_GRADIENTS = 256  # jacobian: curves up to this many points take one backward pass per point


def call_forward(fn: Callable, params: np.ndarray, chunk: int = 2048, fast: bool = True) -> np.ndarray:
    """Curves (n, L) as float64 numpy from a forward model given (n, P) parameters as a torch tensor.

    ``fast``: pass float32 (about twice as fast for a torch model); a model that fails on float32 gets float64.
    A forward model may return a tensor or anything ``numpy.asarray`` accepts.
    """
    import torch

    params = np.asarray(params, dtype=np.float64)

    def run(dtype):
        out = []
        for a in range(0, len(params), chunk):
            with torch.no_grad():
                y = fn(torch.as_tensor(params[a:a + chunk], dtype=dtype))
            y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
            out.append(y.astype(np.float64).reshape(len(params[a:a + chunk]), -1))
        return np.concatenate(out) if out else np.empty((0, 0))

    if fast:
        try:
            return run(torch.float32)
        except Exception:
            pass
    return run(torch.float64)


def curve_errors(fn: Callable, pred: np.ndarray, reference_curves: np.ndarray) -> np.ndarray:
    """Per row: mean squared difference between the forward model's curve of ``pred`` and the reference curve."""
    c = call_forward(fn, pred)
    return ((c - reference_curves) ** 2).mean(axis=1)


def jacobian(fn: Callable, point: np.ndarray) -> tuple[np.ndarray, str]:
    """d curve / d parameter (L, P) at ``point`` by autograd; a forward model whose curve carries no gradient
    (numpy inside, a tensor made from its result, no autograd support) falls back to central finite differences.
    Returns (J, method).

    Curves of up to ``ROW_GRADIENTS`` points take one backward pass per point: as fast as a batched one at that
    size, without what batched gradients import on first use (sympy, about 0.7 s). Longer curves take one
    batched backward pass; both reuse the one forward call.
    """
    import torch

    x = torch.tensor(np.asarray(point, dtype=np.float64), requires_grad=True)
    try:
        out = fn(x[None])
        if not isinstance(out, torch.Tensor):
            raise TypeError("forward model did not return a tensor")
        out = out[0].reshape(-1)
        if not out.requires_grad:
            raise TypeError("the forward model's curve carries no gradient")
        if len(out) <= ROW_GRADIENTS:
            rows = [torch.autograd.grad(out[i], x, retain_graph=True, allow_unused=True)[0] for i in range(len(out))]
        else:  # all rows in one batched backward pass of the same graph
            rows = torch.autograd.grad(out, x, torch.eye(len(out), dtype=out.dtype), is_grads_batched=True,
                                       allow_unused=True)[0]
            rows = [None] * len(out) if rows is None else list(rows)
        zero = torch.zeros_like(x)
        jac = torch.stack([zero if r is None else r for r in rows]) if rows else x.new_zeros((0, len(x)))
        return jac.detach().numpy().astype(np.float64), "autograd"
    except Exception:  # numpy-only forward model
        return finite_difference_jacobian(fn, np.asarray(point, dtype=np.float64)), "central differences"


def finite_difference_jacobian(fn: Callable, point: np.ndarray, rel_step: float = 1e-5) -> np.ndarray:
    """Central differences with a step of ``rel_step`` x max(|x|, 1e-8) per parameter."""
    h = rel_step * np.maximum(np.abs(point), 1e-8)
    shifts = np.concatenate([point + np.diag(h), point - np.diag(h)])
    c = call_forward(fn, shifts, fast=False)
    p = len(point)
    return ((c[:p] - c[p:]) / (2 * h[:, None])).T


def sensitivity(jac: np.ndarray, scale: np.ndarray, names: Sequence[str], error: np.ndarray | None = None) -> pd.DataFrame:
    """Per parameter: RMS curve change for a change of one training SD, and (given a parameter ``error``
    vector) the RMS curve change that this parameter's error alone causes, linearised."""
    jac = np.asarray(jac, dtype=np.float64)
    per_sd = np.sqrt(((jac * np.asarray(scale)) ** 2).mean(axis=0))
    df = pd.DataFrame({"curve_rms_per_sd": per_sd}, index=pd.Index(names, name="parameter"))
    if error is not None:
        err = np.asarray(error, dtype=np.float64)
        df["error_std"] = err / np.asarray(scale)
        df["curve_rms_from_error"] = np.sqrt(((jac * err) ** 2).mean(axis=0))
    return df


def error_correlation(param_err: np.ndarray, curve_err: np.ndarray) -> dict:
    """Pearson and Spearman correlation of parameter and curve error across samples (scipy.stats)."""
    a, b = np.asarray(param_err, dtype=np.float64), np.asarray(curve_err, dtype=np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"pearson_r": float("nan"), "pearson_p": float("nan"), "spearman_rho": float("nan"),
                "spearman_p": float("nan"), "n": int(len(a))}
    pr, sr = stats.pearsonr(a, b), stats.spearmanr(a, b)
    return {"pearson_r": float(pr.statistic), "pearson_p": float(pr.pvalue), "spearman_rho": float(sr.statistic),
            "spearman_p": float(sr.pvalue), "n": int(len(a))}


# --------------------------------------------------------------------------- remedies
def predict(model, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Model outputs (n, P) as float32 numpy, eval mode, no grad, in chunks."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for a in range(0, len(x), chunk):
            y = model(torch.as_tensor(x[a:a + chunk], dtype=torch.float32))
            outs.append(y.reshape(len(y), -1).numpy().astype(np.float32))
    return np.concatenate(outs)


def weight_average(model, states: Sequence[dict], val_x: np.ndarray,
                   experiment_x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """torch.optim.swa_utils.AveragedModel over the last checkpoints' weights ``states`` (buffers averaged too):
    its predictions of ``val_x`` and of ``experiment_x``, and a note."""
    import torch
    from torch.optim.swa_utils import AveragedModel, update_bn

    model.load_state_dict(states[0])
    avg = AveragedModel(model, use_buffers=True)
    for state in states:  # the first update copies, later ones average
        model.load_state_dict(state)
        avg.update_parameters(model)
    note = "torch.optim.swa_utils.AveragedModel"
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in avg.modules()):
        loader = [torch.as_tensor(val_x[a:a + 256], dtype=torch.float32) for a in range(0, len(val_x), 256)]
        update_bn(loader, avg)
        note += "; BatchNorm statistics recomputed on the validation inputs"
    val_p = predict(avg.module, val_x)
    exp_p = predict(avg.module, experiment_x[None])[0] if experiment_x is not None else None
    return val_p, exp_p, note


def nearest_neighbour_baseline(forward: Callable, train_target: np.ndarray, target: np.ndarray, k: int, seed: int = 0,
                               val_x: np.ndarray | None = None, experiment_curve: np.ndarray | None = None,
                               experiment_x: np.ndarray | None = None, experiment_target: np.ndarray | None = None):
    """k-NN regression from curves to parameters (scikit-learn), fitted on the forward model's curves of
    (at most MAX_BASELINE_TRAIN) training targets. Validation inputs are the measured ``x`` when they are curves
    of the forward model's length, otherwise the forward model's noise-free curves of the targets. The experiment's
    curve is ``experiment_curve``, else ``experiment_x`` when it is one, else the curve of ``experiment_target``.
    Returns ((validation predictions, their rows of ``target``), the experiment's prediction or None, a note)."""
    from sklearn.neighbors import KNeighborsRegressor

    tr = subsample(len(train_target), MAX_BASELINE_TRAIN, seed)
    knn = KNeighborsRegressor(n_neighbors=min(k, len(tr))).fit(call_forward(forward, train_target[tr]),
                                                                train_target[tr])
    sub = subsample(len(target), MAX_BASELINE_VAL, seed)
    length = knn.n_features_in_
    measured = val_x is not None and val_x.ndim == 2 and val_x.shape[1] == length
    val_in = val_x[sub] if measured else call_forward(forward, target[sub])
    note = ("validation: measured curves 'x'" if measured else "validation: noise-free curves of the targets") + \
        f"; fitted on {len(tr)} training curves"
    exp_curve = experiment_curve
    if exp_curve is None and experiment_x is not None and experiment_x.shape == (length,):
        exp_curve = experiment_x
    if exp_curve is None and experiment_target is not None:
        exp_curve = call_forward(forward, experiment_target[None])[0]
    exp_p = knn.predict(exp_curve[None])[0] if exp_curve is not None and len(exp_curve) == length else None
    return (knn.predict(val_in), sub), exp_p, note

