"""The diagnosis of notebook 02: is a task encoder collapsed, and is it still stochastic?

Input: one npz per encoder (docs/02_encoder_variance.md): ``z`` (N, D) or (N, T, D) posterior
means, ``group`` (N,) puzzle ids, optional ``z_samples`` (N, R, ...) with R >= 2
repeated stochastic passes and optional ``logvar`` shaped like ``z``.

Every finding is decided by a scale-free number (a share of variance, a ratio,
an effective rank relative to its maximum), so multiplying the embeddings by 10
changes no finding. Raw variances and the source's two metrics are reported as
evidence only. The thresholds are the module constants below, each with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.encoder_variance import representation as rep
from helpers.findings import Finding, input_files, not_applicable
from helpers.findings import describe_inputs as describe_files
from helpers.io import InputError, check_shape, load_arrays, resolve_path
from helpers.params import check_range, check_types, drop_sample_companions

NOTEBOOK = "02_encoder_variance"

# representation_collapse: between-puzzle variance under half of a sampled embedding's variance,
# i.e. the puzzle explains less of the embedding than demonstrations and sampling noise together
# (an ICC below 0.5 is "poor" reliability in the usual ICC reading).
BETWEEN_SHARE_MIN = 0.5
# dimensional_collapse: RankMe effective rank under a quarter of its maximum min(units, N - 1).
RANK_SHARE_MIN = 0.25
# sampling_noise_dominates: repeat-pass variance above between-puzzle variance (ratio above 1):
# two samples of one input then differ more, on average, than the means of two puzzles.
SAMPLING_OVER_BETWEEN_MAX = 1.0
# stochasticity_collapsed: sampling under 5% of the variance, a posterior sd under ~0.22 of the
# embedding spread: the sampled latent is the mean plus a rounding error.
STOCHASTIC_SHARE_MIN = 0.05
# inactive_units: more than a quarter of the units inactive (scale-free Burda criterion, see
# helpers.encoder_variance.representation.ActiveUnits).
INACTIVE_SHARE_MAX = 0.25
ACTIVE_THRESHOLD = rep.BURDA_THRESHOLD
# logvar above this is refused: exp(logvar) would overflow float64 (e**709.8 is its largest value)
MAX_LOGVAR = 700.0
# diagnose shows a progress bar (which encoder, which step) when the arrays hold more than this many values
PROGRESS_VALUES = 10_000_000

FINDING_IDS = ("representation_collapse", "dimensional_collapse", "sampling_noise_dominates",
               "stochasticity_collapsed", "inactive_units")

PARAMETER_TYPES = {"embeddings": str, "compare": list, "output_dir": str, "run_demos": bool, "seed": int}


# --------------------------------------------------------------------------- inputs
@dataclass
class EncoderRun:
    """One encoder's embeddings, validated."""

    name: str
    z: np.ndarray
    group: np.ndarray
    z_samples: np.ndarray | None = None
    logvar: np.ndarray | None = None
    path: Path | None = None

    @property
    def n(self) -> int:
        return int(self.z.shape[0])

    @property
    def n_units(self) -> int:
        return int(np.prod(self.z.shape[1:]))

    @property
    def has_sampling(self) -> bool:
        return self.z_samples is not None or self.logvar is not None

    @property
    def n_passes(self) -> int:
        return int(self.z_samples.shape[1]) if self.z_samples is not None else 0

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], name: str = "run", param: str = "embeddings",
                    path: str | Path | None = None) -> EncoderRun:
        """Validate in-memory arrays the same way as a file (errors name ``param`` and ``path``)."""
        where = path if path is not None else "<arrays>"
        for key in ("z", "group"):
            if key not in arrays:
                raise InputError(param, f"missing required array '{key}' (found: {', '.join(arrays) or 'none'})", where)
        z = np.asarray(arrays["z"])
        _check_numeric(param, where, "z", z)
        if z.ndim not in (2, 3):
            raise InputError(param, f"array 'z' has shape {z.shape}, expected (N, D) or (N, T, D)", where)
        n = z.shape[0]
        if n < 2 or z.size == 0:
            raise InputError(param, f"array 'z' has shape {z.shape}; need at least 2 rows and 1 unit", where)
        group = np.asarray(arrays["group"])
        if group.ndim != 1 or len(group) != n:
            raise InputError(param, f"array 'group' has shape {group.shape}, expected ({n},) like the rows of 'z'", where)
        if group.dtype.kind not in "iubUS" and not (group.dtype.kind == "f" and np.isfinite(group).all()):
            raise InputError(param, f"array 'group' must hold integer or string puzzle ids, got dtype {group.dtype}", where)
        n_groups = len(pd.unique(pd.Series(group)))
        if n_groups < 2:
            raise InputError(param, f"array 'group' has {n_groups} distinct puzzle id; need at least 2 puzzles", where)
        samples = arrays.get("z_samples")
        if samples is not None:
            samples = np.asarray(samples)
            _check_numeric(param, where, "z_samples", samples)
            check_shape(param, where, "z_samples", samples, (n, None, *z.shape[1:]))
            if samples.shape[1] < 2:
                raise InputError(param, f"array 'z_samples' has R={samples.shape[1]} passes per input; need R >= 2", where)
        logvar = arrays.get("logvar")
        if logvar is not None:
            logvar = np.asarray(logvar)
            _check_numeric(param, where, "logvar", logvar)
            check_shape(param, where, "logvar", logvar, z.shape)
        for key, a in (("z", z), ("z_samples", samples), ("logvar", logvar)):
            if a is not None and a.dtype.kind == "f" and not np.isfinite(a).all():
                raise InputError(param, f"array '{key}' has {int((~np.isfinite(a)).sum())} NaN/inf values", where)
        for key, a in (("z", z), ("z_samples", samples)):
            _check_magnitude(param, where, key, a)
        if logvar is not None and logvar.size and logvar.max() > MAX_LOGVAR:
            raise InputError(param, f"array 'logvar' has values up to {float(logvar.max()):.4g}: exp(logvar), the "
                                    "posterior variance, overflows float64 (is it the log-variance?)", where)
        return cls(name, z, group, samples, logvar, Path(path) if path is not None else None)


def _check_magnitude(param: str, where, key: str, a: np.ndarray | None) -> None:
    """Refuse values whose sums of squares over the rows overflow the dtype they are summed in
    (float32 stays float32 in the Gram matrix; other dtypes become float64)."""
    if a is None or a.dtype.kind != "f" or not a.size:
        return
    dtype = np.float32 if a.dtype == np.float32 else np.float64
    largest = max(float(a.max()), -float(a.min()))
    if largest > np.sqrt(np.finfo(dtype).max / a.shape[0]) / 8:
        hint = "; save it as float64" if dtype is np.float32 else ""
        raise InputError(param, f"array '{key}' has values as large as {largest:.3g}: their sums of squares would overflow "
                                f"{np.dtype(dtype).name} (a diverged encoder?){hint}", where)


def _check_numeric(param: str, where, key: str, a: np.ndarray) -> None:
    if a.dtype.kind not in "iuf":
        raise InputError(param, f"array '{key}' must be numeric, got dtype {a.dtype}", where)


def load_embeddings(param: str, value: str | Path, name: str | None = None) -> EncoderRun:
    """Read and validate one encoder's npz; any problem is one-line :class:`InputError`."""
    arrays = load_arrays(param, value, required=("z", "group"), optional=("z_samples", "logvar"))
    path = resolve_path(param, value, (".npz",))
    return EncoderRun.from_arrays(arrays, name or path.stem, param, path)


@dataclass
class Run:
    """What one execution diagnoses: the ``main`` encoder (``embeddings``), the encoders it is
    compared with (``compare``, keyed by file stem) and the files read (``inputs``)."""

    main: EncoderRun
    others: dict[str, EncoderRun] = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)  # optional inputs left at the sample's value, not used

    @property
    def encoders(self) -> dict[str, EncoderRun]:
        """Every encoder by name, the main one first."""
        return {self.main.name: self.main, **self.others}


def _check_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    p = check_types(params, PARAMETER_TYPES)
    check_range("seed", p["seed"], 0, None)
    for i, item in enumerate(p["compare"]):
        if not isinstance(item, str | Path) or not str(item).strip():
            raise InputError(f"compare[{i}]", f"expected a file path string, got {item!r}")
    return p


def load_inputs(params: Mapping[str, Any]) -> tuple[dict[str, Any], Run]:
    """Check the parameters, then read and validate the run to diagnose and the runs to compare
    it with; any problem is one :class:`InputError`. Returns (parameters, run)."""
    p = _check_parameters(params)
    dropped = drop_sample_companions(p, NOTEBOOK, ["embeddings"], ["compare"])
    main = load_embeddings("embeddings", p["embeddings"])
    others = {}
    for i, item in enumerate(p["compare"]):
        other = load_embeddings(f"compare[{i}]", item)
        others[other.name if other.name not in others and other.name != main.name else f"{other.name}[{i}]"] = other
    return p, Run(main, others, input_files({"embeddings": p["embeddings"], "compare": p["compare"]}), dropped)


def describe_inputs(run: Run) -> str:
    """The files read, and the arrays found in each."""
    def array(key: str, a: np.ndarray | None) -> str:
        return f"no {key}" if a is None else f"{key} {a.shape}"

    details = [f"{name}: z {r.z.shape}, {len(np.unique(r.group.astype(str)))} puzzles, "
               f"{array('z_samples', r.z_samples)}, {array('logvar', r.logvar)}" for name, r in run.encoders.items()]
    return describe_files(run.inputs, dropped=run.dropped, details=details)


# --------------------------------------------------------------------------- measurements
@dataclass
class Measurements:
    run: EncoderRun
    decomposition: rep.VarianceDecomposition
    effective_rank: float
    effective_rank_max: int
    active: rep.ActiveUnits
    kl_per_dim: np.ndarray | None
    source: dict[str, float]
    mean_posterior_var: float | None = None  # mean of exp(logvar) over every value (None: no logvar)

    @property
    def rank_share(self) -> float:
        return self.effective_rank / self.effective_rank_max if self.effective_rank_max > 0 else float("nan")

    @property
    def sampling_over_between(self) -> float:
        d = self.decomposition
        if np.isnan(d.sampling) or np.isnan(d.between):
            return float("nan")
        b = max(d.between, 0.0)
        return max(d.sampling, 0.0) / b if b > 0 else float("inf")

    @property
    def sampling_share(self) -> float:
        """Sampling share of the total; when between/within are not identifiable (every
        group of one), of sampling + the variance of the means."""
        d = self.decomposition
        if np.isnan(d.sampling):
            return float("nan")
        s = d.share("sampling")
        if np.isnan(s):
            tot = max(d.sampling, 0.0) + d.total_means
            s = max(d.sampling, 0.0) / tot if tot > 0 else 0.0
        return s

    @property
    def inactive_share(self) -> float:
        return 1.0 - self.active.n_active / self.active.n_units


def measure(run: EncoderRun) -> Measurements:
    d = rep.decompose(run.z, run.group, run.z_samples, run.logvar)
    source = {}
    if run.z_samples is not None:
        source["within_as_written"] = rep.source_within_as_written(run.z_samples)
        source["cross_sample_as_written"] = rep.source_cross_sample_as_written(run.z_samples[:, 0])
    else:
        source["within_as_written"] = float("nan")
        source["cross_sample_as_written"] = rep.source_cross_sample_as_written(run.z)
    return Measurements(
        run=run, decomposition=d, effective_rank=rep.rankme(d.singular_values),
        effective_rank_max=int(min(d.n_dims, d.n - 1)),
        active=rep.active_units(run.z, run.logvar, run.z_samples, ACTIVE_THRESHOLD),
        kl_per_dim=rep.kl_per_dim(run.z, run.logvar) if run.logvar is not None else None,
        source=source,
        mean_posterior_var=float(rep.mean_exp(run.logvar, axis=None)) if run.logvar is not None else None,
    )


# --------------------------------------------------------------------------- findings
def _no_sampling(fid: str, run: EncoderRun, severity: str) -> Finding:
    where = run.path.name if run.path is not None else run.name
    return not_applicable(fid, f"{where} has neither 'z_samples' nor 'logvar': repeated-pass variance cannot be measured", severity)


def _singletons(fid: str, run: EncoderRun, severity: str) -> Finding:
    where = run.path.name if run.path is not None else run.name
    return not_applicable(fid, f"every puzzle id in 'group' of {where} has one row: between and within variance need 2+ demonstrations of some puzzle", severity)


def representation_collapse(m: Measurements) -> Finding:
    d, fid = m.decomposition, "representation_collapse"
    if np.isnan(d.between):
        return _singletons(fid, m.run, "critical")
    share = d.between_share
    ev = {"between_share": share, "icc": d.icc, "between": d.between, "within": d.within,
          "sampling": d.sampling, "threshold": BETWEEN_SHARE_MIN}
    if share < BETWEEN_SHARE_MIN:
        why = (f" mostly because of sampling noise (ICC of the means {d.icc:.2f})"
               if d.icc >= BETWEEN_SHARE_MIN else " and the posterior means themselves barely differ between puzzles")
        msg = f"only {share:.0%} of the embedding variance separates puzzles (< {BETWEEN_SHARE_MIN:.0%}),{why}; a sampled embedding says little about which puzzle it came from."
        return Finding(fid, "detected", "critical", msg, ev)
    return Finding(fid, "not_detected", "info",
                   f"{share:.0%} of the embedding variance separates puzzles (ICC of the means {d.icc:.2f}): tasks get distinct embeddings.", ev)


def dimensional_collapse(m: Measurements) -> Finding:
    fid = "dimensional_collapse"
    if m.effective_rank_max < 2:
        return not_applicable(fid, f"embeddings have at most {m.effective_rank_max} dimension(s) of variation ('z' shape {m.run.z.shape})", "warning")
    ev = {"effective_rank": m.effective_rank, "max_rank": m.effective_rank_max, "rank_share": m.rank_share,
          "threshold": RANK_SHARE_MIN, "variant": "RankMe on centred z, singular values, eps=1e-7"}
    status = "detected" if m.rank_share < RANK_SHARE_MIN else "not_detected"
    verb = "uses only" if status == "detected" else "uses"
    return Finding(fid, status, "warning" if status == "detected" else "info",
                   f"the embedding {verb} {m.effective_rank:.1f} effective dimensions of {m.effective_rank_max} possible ({m.rank_share:.0%}; RankMe).", ev)


def sampling_noise_dominates(m: Measurements) -> Finding:
    fid, d = "sampling_noise_dominates", m.decomposition
    if not m.run.has_sampling:
        return _no_sampling(fid, m.run, "critical")
    if np.isnan(d.between):
        return _singletons(fid, m.run, "critical")
    ratio = m.sampling_over_between
    ev = {"sampling_over_between": ratio, "sampling": d.sampling, "between": d.between,
          "sampling_source": d.sampling_source, "threshold": SAMPLING_OVER_BETWEEN_MAX}
    if ratio > SAMPLING_OVER_BETWEEN_MAX:
        return Finding(fid, "detected", "critical",
                       f"repeat-pass variance is {ratio:.2g}x the between-puzzle variance: two samples of one demonstration differ more than two puzzles.", ev)
    return Finding(fid, "not_detected", "info",
                   f"repeat-pass variance is {ratio:.2g}x the between-puzzle variance: puzzles stand out of the sampling noise.", ev)


def stochasticity_collapsed(m: Measurements) -> Finding:
    fid, d = "stochasticity_collapsed", m.decomposition
    if not m.run.has_sampling:
        return _no_sampling(fid, m.run, "warning")
    share = m.sampling_share
    ev = {"sampling_share": share, "sampling": d.sampling, "sampling_source": d.sampling_source,
          "posterior_sd_over_spread": float(np.sqrt(share / (1 - share))) if share < 1 else float("inf"),
          "threshold": STOCHASTIC_SHARE_MIN}
    if m.run.logvar is not None:
        ev["mean_posterior_var"] = (m.mean_posterior_var if m.mean_posterior_var is not None
                                    else float(rep.mean_exp(m.run.logvar, axis=None)))
    if share < STOCHASTIC_SHARE_MIN:
        return Finding(fid, "detected", "warning",
                       f"sampling is {share:.1%} of the embedding variance (< {STOCHASTIC_SHARE_MIN:.0%}): the variational encoder has collapsed to a deterministic one.", ev)
    return Finding(fid, "not_detected", "info",
                   f"sampling is {share:.1%} of the embedding variance: the encoder is still stochastic.", ev)


def inactive_units(m: Measurements) -> Finding:
    fid, a = "inactive_units", m.active
    ref = "its own marginal variance or the average unit's" if m.run.has_sampling else "the average unit's variance"
    ev = {"active_units": a.n_active, "units": a.n_units, "inactive_share": m.inactive_share,
          "burda_active_units": a.n_burda_active, "threshold": INACTIVE_SHARE_MAX}
    if m.kl_per_dim is not None:
        ev["kl_total_nats"] = float(m.kl_per_dim.sum())
        ev["units_kl_below_0.01_nats"] = int((m.kl_per_dim < 0.01).sum())
    status = "detected" if m.inactive_share > INACTIVE_SHARE_MAX else "not_detected"
    return Finding(fid, status, "warning" if status == "detected" else "info",
                   f"{a.n_active} of {a.n_units} units are active (mean varies by more than 1% of {ref}); "
                   f"{a.n_units - a.n_active} {'carries' if a.n_units - a.n_active == 1 else 'carry'} almost no information about the input.", ev)


def findings_of(m: Measurements) -> list[Finding]:
    """The findings of one encoder's measurements, in FINDING_IDS order, each detected one with
    its action (:func:`actions`)."""
    found = [representation_collapse(m), dimensional_collapse(m), sampling_noise_dominates(m),
             stochasticity_collapsed(m), inactive_units(m)]
    todo = actions(m, {f.id: f for f in found})
    return [replace(f, action=todo[f.id][0], evidence={**f.evidence, "kl_weight_change": todo[f.id][1]})
            if f.detected else f for f in found]


def actions(m: Measurements, f: dict[str, Finding]) -> dict[str, tuple[str, str]]:
    """{finding id: (what to change, which way it moves the KL weight: "raise", "lower" or "")} for
    the detected findings, one consistent story: the KL weight is lowered only when sampling noise
    hides the puzzles and sampling is not negligible, raised only when sampling is negligible."""
    d, out = m.decomposition, {}
    collapsed = f["stochasticity_collapsed"].detected
    noisy = f["sampling_noise_dominates"].detected and not collapsed  # the KL weight is the lever
    ratio, ss = m.sampling_over_between, m.sampling_share
    noise = f"sampling noise is {ratio:.2g}x the between-puzzle variance"
    if f["representation_collapse"].detected:
        means = f"the posterior means {'do' if d.icc >= BETWEEN_SHARE_MIN else 'barely'} separate puzzles (ICC {d.icc:.2f})"
        if m.run.has_sampling and not collapsed and (noisy or d.icc >= BETWEEN_SHARE_MIN):
            limit = ("" if d.icc >= BETWEEN_SHARE_MIN else
                     f" That alone cannot be enough: with no sampling noise at all the between share would be the "
                     f"ICC of the means, {d.icc:.0%}, still below {BETWEEN_SHARE_MIN:.0%}, so the means must also "
                     "come to separate puzzles (this notebook measured no fix for that).")
            out["representation_collapse"] = (
                f"Lower the KL weight: only {d.between_share:.0%} of the variance of a sampled "
                f"embedding separates puzzles, {noise}, and {means}.{limit}", "lower")
        else:
            why = (f"sampling is only {ss:.1%} of the variance, so the KL weight is not the cause" if m.run.has_sampling
                   else "sampling not measured: give 'z_samples' or 'logvar' to see whether noise is part of it")
            out["representation_collapse"] = (
                f"Find why {means}: the between share is {d.between_share:.0%} ({why}); this notebook measured no fix "
                "for that.", "")
    if f["sampling_noise_dominates"].detected:
        out["sampling_noise_dominates"] = (
            (f"Lower the KL weight: {noise}, so two samples of one demonstration differ more "
             "than two puzzles.", "lower") if noisy else
            (f"Do not lower the KL weight for this: {noise} only because the means barely separate puzzles "
             f"(ICC {d.icc:.2f}); sampling is {ss:.1%} of the variance.", ""))
    if collapsed:
        sd = f["stochasticity_collapsed"].evidence["posterior_sd_over_spread"]
        out["stochasticity_collapsed"] = (
            f"Decide whether you need a stochastic latent: sampling is {ss:.1%} of the embedding variance (posterior "
            f"sd {sd:.2f} of the spread), so a sample is the mean plus a rounding error. If you do, raise the KL weight "
            f"until sampling is at least {STOCHASTIC_SHARE_MIN:.0%} (the lab measures its cost in task error); "
            "if not, use the posterior mean and drop the variational head.", "raise")
    if f["dimensional_collapse"].detected:
        spans = (f"the embedding spans {m.effective_rank:.1f} effective dimensions of {m.effective_rank_max} possible "
                 f"({m.rank_share:.0%})")
        out["dimensional_collapse"] = (
            (f"Lower the KL weight: {spans} while {noise}.", "lower") if noisy else
            (f"Only {spans}: if your task has more independent factors, the encoder discards them; this notebook "
             "measured no fix for that" + ("" if m.run.has_sampling else
                                            " (give 'z_samples' or 'logvar' to test the KL weight)") + ".", ""))
    if f["inactive_units"].detected:
        a = m.active
        units = f"{a.n_units - a.n_active} of {a.n_units} units are inactive ({m.inactive_share:.0%})"
        out["inactive_units"] = (
            (f"Lower the KL weight: {units}, switched off while {noise}.", "lower") if noisy else
            (f"{units}: their means barely vary, so a latent of the {a.n_active} active units holds nearly the "
             "same information; this notebook measured no other fix.", ""))
    return out


def findings(diagnosis: Diagnosis) -> list[Finding]:
    """The findings of the main encoder, in FINDING_IDS order."""
    return findings_of(diagnosis.main)


def decision(m: Measurements, found: list[Finding] | None = None) -> dict[str, Any]:
    """The source's decision tree with the right estimators: which of collapsed to deterministic,
    stochastic but not diverse, not diverse (deterministic encoder), healthy."""
    f = {x.id: x for x in (found if found is not None else findings_of(m))}
    d = m.decomposition
    numbers = {"between_share": d.between_share, "icc": d.icc, "sampling_share": m.sampling_share,
               "sampling_over_between": m.sampling_over_between, "effective_rank": m.effective_rank}
    if f["stochasticity_collapsed"].detected:
        label = "collapsed to deterministic"
        reason = f"sampling is {m.sampling_share:.1%} of the variance (< {STOCHASTIC_SHARE_MIN:.0%})"
        if f["representation_collapse"].detected:
            reason += f", and puzzles are only {d.between_share:.0%} of it"
    elif f["sampling_noise_dominates"].detected or (m.run.has_sampling and f["representation_collapse"].detected):
        label = "stochastic but not diverse"
        reason = (f"sampling variance is {m.sampling_over_between:.2g}x the between-puzzle variance; "
                  f"puzzles are {d.between_share:.0%} of the variance")
    elif f["representation_collapse"].detected:
        label = "not diverse"
        reason = f"puzzles are {d.between_share:.0%} of the variance of a deterministic encoder"
    elif f["representation_collapse"].status == "not_applicable":
        label, reason = "undetermined", f["representation_collapse"].message
    else:
        label = "healthy"
        reason = f"puzzles are {d.between_share:.0%} of the variance"
        if m.run.has_sampling:
            reason += f" and sampling {m.sampling_share:.1%}"
        else:
            reason += "; sampling not measured (no 'z_samples' or 'logvar')"
    return {"label": label, "reason": reason, "numbers": numbers}


# --------------------------------------------------------------------------- tables
def metrics(diagnosis: Diagnosis) -> dict[str, Any]:
    """Headline numbers for summary.json: the main encoder's, its decision, its centroid cosines."""
    m = diagnosis.main
    d = m.decomposition
    out = {
        "n": d.n, "n_groups": d.n_groups, "n_singletons": d.n_singletons, "units": d.n_dims,
        "passes": m.run.n_passes, "sampling_source": d.sampling_source,
        "between": d.between, "within": d.within, "sampling": d.sampling,
        "between_share": d.between_share, "icc": d.icc, "within_share": d.share("within"),
        "sampling_share": m.sampling_share, "sampling_over_between": m.sampling_over_between,
        "effective_rank": m.effective_rank, "effective_rank_max": m.effective_rank_max,
        "active_units": m.active.n_active, "burda_active_units": m.active.n_burda_active,
        "source_cross_sample_as_written": m.source["cross_sample_as_written"],
        "source_within_as_written": m.source["within_as_written"],
    }
    if m.kl_per_dim is not None:
        out["kl_total_nats"] = float(m.kl_per_dim.sum())
    out["decision"] = diagnosis.decision["label"]
    out["decision_reason"] = diagnosis.decision["reason"]
    out["centroid_cosine_median_raw"] = float(np.median(diagnosis.centroid_cosines_raw))
    out["centroid_cosine_median_centred"] = float(np.median(diagnosis.centroid_cosines_centred))
    return out


def decomposition_table(m: Measurements) -> pd.DataFrame:
    """Variance per coordinate (mean over units) by source, with shares of the total."""
    d = m.decomposition
    rows = [("between puzzles", d.between, d.between_share, "ANOVA (MSB - MSW) / n0 on z"),
            ("within a puzzle", d.within, d.share("within"), "ANOVA MSW on z (demonstrations)"),
            ("sampling", d.sampling, m.sampling_share, f"repeat passes, ddof=1 ({d.sampling_source})")]
    return pd.DataFrame(rows, columns=["component", "variance", "share", "estimator"])


def source_comparison(m: Measurements) -> pd.DataFrame:
    """The source's two metrics computed as written, next to what they should have measured."""
    d = m.decomposition
    return pd.DataFrame([
        {"metric": "within-puzzle var (source: mean (a - b)^2 of two passes)",
         "as_written": m.source["within_as_written"],
         "estimates": "2 x sampling variance", "correct_value": d.sampling,
         "correct_estimator": "mean over inputs of var over R passes, ddof=1"},
        {"metric": "cross-sample var (source: batch variance of one sampled pass)",
         "as_written": m.source["cross_sample_as_written"],
         "estimates": "between + within + sampling, ddof=0", "correct_value": d.between,
         "correct_estimator": "between-puzzle variance (ANOVA); scale-free: between share"},
    ])


def compare_runs(runs: dict[str, EncoderRun | Measurements]) -> pd.DataFrame:
    """One row per encoder: components, shares, rank, units, the source's metric, the decision."""
    rows = []
    for name, item in runs.items():
        m = item if isinstance(item, Measurements) else measure(item)
        d = m.decomposition
        rows.append({"encoder": name, "between": d.between, "within": d.within, "sampling": d.sampling,
                     "between_share": d.between_share, "icc": d.icc, "sampling_share": m.sampling_share,
                     "effective_rank": m.effective_rank, "active_units": m.active.n_active,
                     "source_cross_sample": m.source["cross_sample_as_written"],
                     "decision": decision(m)["label"]})
    return pd.DataFrame(rows).set_index("encoder")


# --------------------------------------------------------------------------- diagnosis
@dataclass
class Diagnosis:
    """The measurements of every encoder (``measured``, the main one first), the main encoder's
    decision and the cosines between its puzzle centroids (raw and centred)."""

    main: Measurements
    measured: dict[str, Measurements]
    decision: dict[str, Any]
    centroid_cosines_raw: np.ndarray
    centroid_cosines_centred: np.ndarray


def _size(r: EncoderRun) -> int:
    return sum(a.size for a in (r.z, r.z_samples, r.logvar) if a is not None)


def diagnose(run: Run, params: Mapping[str, Any], progress: bool | None = None) -> Diagnosis:
    """Measure every encoder of ``run``; decide on the main one (``params["seed"]`` picks the
    centroids compared when there are too many puzzles). ``progress``: a progress bar naming the step
    (default: when the encoders' arrays hold more than PROGRESS_VALUES values)."""
    from tqdm import tqdm

    show = sum(_size(r) for r in run.encoders.values()) > PROGRESS_VALUES if progress is None else progress
    bar = tqdm(total=len(run.encoders) + 1, unit="step", disable=not show)
    measured = {}
    for name, r in run.encoders.items():
        bar.set_description(f"{name}: variance decomposition, units, KL ({r.n:,} inputs x {r.n_units} units)")
        measured[name] = measure(r)
        bar.update()
    main = measured[run.main.name]
    z, group, seed = run.main.z, run.main.group, params["seed"]
    bar.set_description("centroid cosines")
    c, _ = rep.centroids(z, group)  # once for both kinds of cosine
    bar.update()
    bar.close()
    return Diagnosis(main, measured, decision(main, findings_of(main)),
                     rep.centroid_cosines(z, group, center=False, seed=seed, c=c),
                     rep.centroid_cosines(z, group, center=True, seed=seed, c=c))
