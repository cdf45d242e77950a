"""Representation statistics behind notebook 02: is an encoder's embedding collapsed?

The embeddings of a task encoder vary for three reasons, and the law of total
variance splits a sampled embedding's variance into them (per coordinate,
averaged over coordinates):

- **between** groups (puzzles): how far apart the puzzles' mean embeddings are;
- **within** a group: how much embeddings of different demonstrations of one
  puzzle differ (computed on the posterior means ``z``);
- **sampling**: how much repeated stochastic passes of *one* input differ
  (from ``z_samples`` or from ``exp(logvar)``).

Between and within come from the one-way random-effects ANOVA, whose mean
squares give unbiased estimators for unbalanced groups (groups of one included);
sampling uses the per-input variance with ``ddof=1``. Shares of the total are
scale-free, raw variances are not.

Everything is computed from one centred Gram matrix and one pass of group sums,
so 10^6 x 256 embeddings cost about one ``numpy.cov``. A (N, T, D) embedding is
flattened to (N, T*D): every token coordinate is one unit. Statistics computed in
float64 from float32 arrays go a chunk of rows at a time (:data:`CHUNK_BYTES`), so
their temporaries stay small whatever the run's size; a run that fits in one chunk
(the sample's) is computed in one pass, exactly as the formulas read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.metrics.pairwise import cosine_similarity

# RankMe (Garrido et al., 2023) adds this to each normalised singular value before the log.
RANKME_EPS = 1e-7
# Burda et al. (2016): a unit is active if the variance over inputs of its posterior mean exceeds 0.01.
BURDA_THRESHOLD = 0.01
# float64 temporaries of a row-wise statistic hold at most this many bytes at a time (row_chunks)
CHUNK_BYTES = 32 * 2**20


# --------------------------------------------------------------------------- shapes and groups
def flatten(z: np.ndarray, lead: int = 1) -> np.ndarray:
    """(N, D) or (N, T, D) -> (N, T*D); with ``lead=2``, (N, R, ...) -> (N, R, prod(...)).

    Integer and float16 inputs become float64; float32 and float64 are kept.
    """
    a = np.asarray(z)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return a.reshape(*a.shape[:lead], -1)


def group_codes(group) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..G-1 and the sorted distinct ids (ints, strings or bytes)."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(group).ravel()), sort=True)
    return codes.astype(np.int64), np.asarray(uniques)


def group_sums(x: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Row sums per group, (G, F), with torch's multithreaded ``index_add_`` (no copy of ``x``)."""
    x = np.ascontiguousarray(x)
    out = torch.zeros((n_groups, x.shape[1]), dtype=torch.from_numpy(x[:0]).dtype)
    out.index_add_(0, torch.from_numpy(np.ascontiguousarray(codes)), torch.from_numpy(x))
    return out.numpy()


def group_sums_f64(x: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """:func:`group_sums` accumulated in float64, converting ``x`` a chunk of rows at a time."""
    chunks = row_chunks(len(x), x.shape[1])
    if len(chunks) == 1:
        return group_sums(np.asarray(x, dtype=np.float64), codes, n_groups)
    out = torch.zeros((n_groups, x.shape[1]), dtype=torch.float64)
    for sl in chunks:
        out.index_add_(0, torch.from_numpy(np.ascontiguousarray(codes[sl])),
                       torch.from_numpy(np.asarray(x[sl], dtype=np.float64)))
    return out.numpy()


# --------------------------------------------------------------------------- statistics a chunk of rows at a time
def row_chunks(n: int, row_elements: int) -> list[slice]:
    """Slices of ``n`` rows whose float64 temporaries of ``row_elements`` values per row fit in CHUNK_BYTES."""
    step = max(1, CHUNK_BYTES // max(1, 8 * row_elements))
    return [slice(a, min(a + step, n)) for a in range(0, n, step)] or [slice(0, 0)]


def mean_rows(fn, n: int, row_elements: int, axis: int | None = 0):
    """The mean over rows (``axis=0``) or over every element (``axis=None``) of ``fn(rows)``, a float64
    array computed for one slice of rows at a time (:func:`row_chunks`). One chunk: ``fn(all).mean(axis)``."""
    chunks = row_chunks(n, row_elements)
    if len(chunks) == 1:
        return fn(chunks[0]).mean(axis=axis)
    total, count = 0.0, 0
    for sl in chunks:
        part = fn(sl)
        total = total + part.sum(axis=axis)
        count += len(part) if axis == 0 else part.size
    return total / count


def var_rows(x: np.ndarray, ddof: int = 1) -> np.ndarray:
    """Variance over rows of each column of a 2-d array, in float64 (``x.var(axis=0, ddof, dtype=float64)``)."""
    n, f = x.shape
    chunks = row_chunks(n, f)
    if len(chunks) == 1:
        return x.var(axis=0, ddof=ddof, dtype=np.float64)
    mu = mean_rows(lambda sl: np.asarray(x[sl], dtype=np.float64), n, f)
    ss = sum(np.square(np.asarray(x[sl], dtype=np.float64) - mu).sum(axis=0) for sl in chunks)
    return ss / (n - ddof)


def mean_exp(logvar, axis: int | None = 0):
    """Mean posterior variance ``exp(logvar)`` per unit (``axis=0``) or over every value (``axis=None``)."""
    lv = flatten(logvar)
    return mean_rows(lambda sl: np.exp(np.asarray(lv[sl], dtype=np.float64)), len(lv), lv.shape[1], axis)


# --------------------------------------------------------------------------- the decomposition
@dataclass
class VarianceDecomposition:
    """Variance components per coordinate (averaged over coordinates) and their shares.

    ``between`` and ``within`` are the unbiased ANOVA estimates on the posterior
    means (``between`` can come out slightly negative when it is truly ~0; the
    shares clip it at 0). ``sampling`` is NaN when the input has neither
    ``z_samples`` nor ``logvar``. ``between``/``within`` are NaN when every group
    has one row (within-group variance is then not identifiable).
    """

    n: int
    n_groups: int
    n_dims: int
    n_singletons: int
    n0: float  # the ANOVA's effective group size (mean group size for balanced groups)
    between: float
    within: float
    sampling: float
    sampling_source: str  # "z_samples", "logvar" or "none"
    total_means: float  # variance of the posterior means, ddof=1 (between + within, roughly)
    between_per_dim: np.ndarray = field(repr=False)
    within_per_dim: np.ndarray = field(repr=False)
    sampling_per_dim: np.ndarray = field(repr=False)
    var_per_dim: np.ndarray = field(repr=False)  # variance over inputs of each coordinate of z, ddof=1
    singular_values: np.ndarray = field(repr=False)  # of the centred z, descending

    @property
    def components(self) -> dict[str, float]:
        """between, within, sampling (0 when unknown), clipped at 0."""
        s = 0.0 if np.isnan(self.sampling) else self.sampling
        return {"between": max(self.between, 0.0), "within": max(self.within, 0.0), "sampling": max(s, 0.0)}

    @property
    def total(self) -> float:
        """Variance of a sampled embedding: between + within + sampling (clipped parts)."""
        return float(sum(self.components.values()))

    def share(self, part: str) -> float:
        """One component's share of :attr:`total` (NaN when not identifiable, 0 when total is 0)."""
        if np.isnan(self.between) or (part == "sampling" and np.isnan(self.sampling)):
            return float("nan")
        tot = self.total
        return self.components[part] / tot if tot > 0 else 0.0

    @property
    def between_share(self) -> float:
        """The scale-free collapse indicator: share of a sampled embedding's variance that tells puzzles apart."""
        return self.share("between")

    @property
    def icc(self) -> float:
        """ICC(1) of the posterior means: between / (between + within), sampling ignored."""
        c = self.components
        if np.isnan(self.between):
            return float("nan")
        den = c["between"] + c["within"]
        return c["between"] / den if den > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "between": self.between, "within": self.within, "sampling": self.sampling,
            "total": self.total, "between_share": self.between_share,
            "within_share": self.share("within"), "sampling_share": self.share("sampling"),
            "icc": self.icc, "n": self.n, "n_groups": self.n_groups, "n_dims": self.n_dims,
            "n_singletons": self.n_singletons, "sampling_source": self.sampling_source,
        }


def decompose(z, group, z_samples=None, logvar=None) -> VarianceDecomposition:
    """Between-group, within-group and sampling variance of embeddings (see the module docstring).

    ``z`` (N, D) or (N, T, D) posterior means; ``group`` (N,) ids of any kind;
    ``z_samples`` (N, R, ...) with R >= 2 repeated passes; ``logvar`` like ``z``.
    Sampling variance comes from ``z_samples`` when given, else from ``logvar``.
    """
    x = flatten(z)
    n, f = x.shape
    codes, uniques = group_codes(group)
    if len(codes) != n:
        raise ValueError(f"group has {len(codes)} entries, z has {n} rows")
    g = len(uniques)
    counts = np.bincount(codes, minlength=g).astype(np.float64)

    mean = x.mean(axis=0, dtype=np.float64)
    xc = np.subtract(x, mean.astype(x.dtype))
    gram = xc.T @ xc if n >= f else None  # centred scatter matrix, (F, F)
    if gram is not None:
        sst = np.diag(gram).astype(np.float64)
        eig = np.linalg.eigvalsh(gram.astype(np.float64))[::-1]
        sv = np.sqrt(np.clip(eig, 0.0, None))
    else:  # fewer rows than coordinates: the thin SVD is cheaper than the Gram
        sst = np.einsum("ij,ij->j", xc, xc, dtype=np.float64)
        sv = np.linalg.svd(xc.astype(np.float64), compute_uv=False)
    sums = group_sums(xc, codes, g).astype(np.float64)
    ssb = (sums**2 / counts[:, None]).sum(axis=0)
    ssw = np.clip(sst - ssb, 0.0, None)

    nan_f = np.full(f, np.nan)
    if g >= 2 and n > g:
        msb, msw = ssb / (g - 1), ssw / (n - g)
        n0 = (n - (counts**2).sum() / n) / (g - 1)
        within_d, between_d = msw, (msb - msw) / n0
    else:
        n0 = float("nan") if g < 2 else (n - (counts**2).sum() / n) / (g - 1)
        within_d, between_d = nan_f, nan_f

    if z_samples is not None:
        sampling_d, source = sampling_variance(z_samples), "z_samples"
    elif logvar is not None:
        sampling_d, source = mean_exp(logvar), "logvar"
    else:
        sampling_d, source = nan_f, "none"

    var_d = sst / (n - 1) if n > 1 else np.zeros(f)
    return VarianceDecomposition(
        n=n, n_groups=g, n_dims=f, n_singletons=int((counts == 1).sum()), n0=float(n0),
        between=float(np.mean(between_d)), within=float(np.mean(within_d)),
        sampling=float(np.mean(sampling_d)), sampling_source=source, total_means=float(np.mean(var_d)),
        between_per_dim=between_d, within_per_dim=within_d, sampling_per_dim=sampling_d,
        var_per_dim=var_d, singular_values=sv,
    )


def sampling_variance(z_samples) -> np.ndarray:
    """Per coordinate: mean over inputs of the unbiased (ddof=1) variance across the R passes."""
    s = flatten(z_samples, lead=2)
    if s.shape[1] < 2:
        raise ValueError("z_samples needs R >= 2 passes per input")
    return mean_rows(lambda sl: s[sl].var(axis=1, ddof=1, dtype=np.float64), len(s), s.shape[1] * s.shape[2])


# --------------------------------------------------------------------------- spectrum and rank
def singular_values(z, center: bool = True) -> np.ndarray:
    """Singular values (descending) of the (centred) embedding matrix."""
    x = flatten(z).astype(np.float64)
    if center:
        x = x - x.mean(axis=0)
    return np.linalg.svd(x, compute_uv=False)


def rankme(sv, eps: float = RANKME_EPS) -> float:
    """RankMe effective rank (Garrido et al. 2023): exp of the entropy of the singular values
    normalised to sum to 1 (not squared), with ``eps`` added to each as in the paper.

    This module applies it to the *centred* embeddings (``decompose().singular_values``),
    so a shared offset does not count as a dimension. 0 for an all-zero matrix.
    """
    s = np.asarray(sv, dtype=np.float64)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def effective_rank(z, center: bool = True) -> float:
    """RankMe of the (centred) embeddings; see :func:`rankme`."""
    return rankme(singular_values(z, center=center))


# --------------------------------------------------------------------------- group geometry
def centroids(z, group) -> tuple[np.ndarray, np.ndarray]:
    """Mean embedding of each group (G, F) and the group ids."""
    x = flatten(z)
    codes, uniques = group_codes(group)
    counts = np.bincount(codes, minlength=len(uniques)).astype(np.float64)
    return group_sums_f64(x, codes, len(uniques)) / counts[:, None], uniques


def centroid_cosines(z, group, center: bool = False, max_groups: int | None = 2000, seed: int = 0,
                     c: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarities of all pairs of group centroids (upper triangle, sklearn).

    ``center=True`` subtracts the grand mean first (the raw cosine of embeddings
    that share a large offset is close to 1 whatever the puzzles). With more than
    ``max_groups`` groups a seeded random subset of groups is used. ``c``: the
    centroids already computed (:func:`centroids` of the same ``z`` and ``group``).
    """
    if c is None:
        c, _ = centroids(z, group)
    if center:
        c = c - flatten(z).mean(axis=0, dtype=np.float64)
    if max_groups is not None and len(c) > max_groups:
        c = c[np.sort(np.random.default_rng(seed).choice(len(c), max_groups, replace=False))]
    sim = cosine_similarity(c)
    return sim[np.triu_indices(len(c), k=1)]


# --------------------------------------------------------------------------- units and KL
@dataclass
class ActiveUnits:
    """Per-unit activity of a (variational) encoder.

    ``burda_active``: variance over inputs of the posterior mean above 0.01 (Burda
    et al. 2016), meaningful when the latent has the prior's unit scale.
    ``active``: the scale-free version used by the finding: the mean's variance
    above 0.01 x max(the unit's marginal variance, the average unit's marginal
    variance), marginal = variance of the mean + mean posterior variance. For a
    VAE whose aggregate posterior matches N(0, I) both references are 1 and the
    two agree; for a deterministic encoder it compares each unit with the average unit.
    """

    var_mean: np.ndarray
    noise_var: np.ndarray
    burda_active: np.ndarray
    active: np.ndarray

    @property
    def n_units(self) -> int:
        return int(self.active.size)

    @property
    def n_active(self) -> int:
        return int(self.active.sum())

    @property
    def n_burda_active(self) -> int:
        return int(self.burda_active.sum())


def active_units(z, logvar=None, z_samples=None, threshold: float = BURDA_THRESHOLD) -> ActiveUnits:
    """Active units from the posterior means ``z`` (and the posterior variance, if known)."""
    x = flatten(z)
    var_mean = var_rows(x, ddof=1) if len(x) > 1 else np.zeros(x.shape[1])
    if logvar is not None:
        noise = mean_exp(logvar)
    elif z_samples is not None:
        noise = sampling_variance(z_samples)
    else:
        noise = np.zeros_like(var_mean)
    marginal = var_mean + noise
    reference = np.maximum(marginal, marginal.mean())
    return ActiveUnits(var_mean, noise, var_mean > threshold, var_mean > threshold * reference)


def kl_per_dim(z, logvar) -> np.ndarray:
    """Mean over inputs of KL(N(mu, exp(logvar)) || N(0, 1)) per unit, in nats.

    The closed form 0.5 (mu^2 + exp(logvar) - 1 - logvar), as torch.distributions computes it,
    but from logvar itself: a collapsed posterior whose exp(logvar / 2) underflows to 0 still has a
    finite KL (torch.distributions.Normal refuses a scale of 0).
    """
    z, logvar = flatten(z), flatten(logvar)

    def kl(sl: slice) -> np.ndarray:
        mu = np.asarray(z[sl], dtype=np.float64)
        lv = np.asarray(logvar[sl], dtype=np.float64)
        return 0.5 * (mu * mu + np.exp(lv) - 1.0 - lv)

    return mean_rows(kl, len(z), 4 * z.shape[1])


# --------------------------------------------------------------------------- the source's metrics
def source_within_as_written(z_samples) -> float:
    """The source's "within-puzzle variance": mean squared difference of two passes of the same
    inputs. For independent passes its expectation is twice the sampling variance."""
    s = flatten(z_samples, lead=2)
    return float(mean_rows(lambda sl: (s[sl, 0].astype(np.float64) - s[sl, 1].astype(np.float64)) ** 2,
                           len(s), 3 * s.shape[2], axis=None))


def source_cross_sample_as_written(x) -> float:
    """The source's "cross-sample variance": mean squared deviation from the batch mean over all
    elements (ddof=0) of one (sampled) pass: between + within + sampling noise, all mixed."""
    a = flatten(x)
    n, f = a.shape
    mu = mean_rows(lambda sl: a[sl].astype(np.float64), n, f)
    return float(mean_rows(lambda sl: (a[sl].astype(np.float64) - mu[None]) ** 2, n, 2 * f, axis=None))
