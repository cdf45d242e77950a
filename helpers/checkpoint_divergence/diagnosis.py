"""The diagnosis behind notebook 03: a later checkpoint has the lower val loss but fits my experiment worse.

Two ways in (see docs/03_checkpoint_divergence.md): the ``checkpoints`` npz of per-checkpoint
predictions, or the checkpoint files themselves (``checkpoint_files`` glob + ``model_factory``
+ ``validation`` npz), which :mod:`helpers.checkpoint_divergence.checkpoint_files` loads with
``torch.load(weights_only=True)`` and turns into the same arrays. Optional arrays in either npz:
``train_target`` (coverage), ``experiment_*`` (the experiment), ``param_names``, and ``repeat_id``
(N,) marking rows that are repeated measurements of one sample.

The statistics live in :mod:`helpers.checkpoint_divergence.checkpoints`; this module validates the
inputs, runs them and turns them into the findings. Every error is standardised
by the training targets' SD (the validation targets' when ``train_target`` is
absent), so no parameter dominates because of its units.

The face: ``load_inputs(params) -> (params, run)``, ``describe_inputs(run)``,
``diagnose(run, params)``, ``findings(diagnosis)``, ``metrics(diagnosis)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from helpers.checkpoint_divergence import checkpoint_files as cf
from helpers.checkpoint_divergence import checkpoints as ck
from helpers.findings import Finding, input_files, not_applicable
from helpers.findings import describe_inputs as describe_files
from helpers.io import InputError, check_shape, first_line, load_arrays, resolve_path
from helpers.params import check_range, check_types, drop_sample_companions, load_callable

NOTEBOOK = "03_checkpoint_divergence"
PARAMETER_TYPES = {
    "checkpoints": str, "forward_model": str, "checkpoint_files": str, "model_factory": str, "validation": str,
    "last_k": int, "k_neighbours": int, "callable_timeout": float, "output_dir": str, "run_demos": bool, "seed": int,
}
FINDING_IDS = ("experiment_sparse_coverage", "experiment_outside_support", "swing_within_noise",
               "selection_does_not_generalize", "ensemble_improves")

# experiment_sparse_coverage: the experiment's k-NN distance to the training set exceeds that of 90% of the
# validation samples (it sits where the model saw fewer examples than for nine in ten validation samples).
SPARSE_PERCENTILE = 90.0
# swing_within_noise: the experiment's "ideal" advantage is at or below the 95th percentile of the validation
# samples' own advantages (every sample has a lucky epoch; 1 in 20 a luckier one than this).
NOISE_PERCENTILE = 95.0
# selection_does_not_generalize: less than half of the in-sample advantage of a per-sample choice survives on
# held-out samples.
SURVIVING_SHARE_MIN = 0.5
# a per-checkpoint advantage under 10% is no swing worth explaining (swing_within_noise, selection_does_not_generalize)
MATERIAL_ADVANTAGE = 1.1
# curve-space errors of validation samples are computed on at most this many samples (one forward pass each per
# checkpoint); the parameter-vs-curve correlation and the nearest-neighbour baseline on at most these many.
MAX_CURVE_SAMPLES = 64
MAX_CORRELATION_SAMPLES = 120
# diagnose shows which step it is on (a progress bar) when the predictions hold more than this many values
PROGRESS_VALUES = 10_000_000

CHECKPOINT_REQUIRED = ("pred", "target", "epoch", "val_loss")
CHECKPOINT_OPTIONAL = ("train_target", "experiment_pred", "experiment_target", "experiment_curve", "param_names",
                       "repeat_id")


# --------------------------------------------------------------------------- inputs
@dataclass
class CheckpointRun:
    """A run's checkpoints as arrays, validated and ordered by epoch."""

    pred: np.ndarray  # (E, N, P)
    target: np.ndarray  # (N, P)
    epoch: np.ndarray  # (E,)
    val_loss: np.ndarray  # (E,)
    param_names: list[str]
    train_target: np.ndarray | None = None
    experiment_pred: np.ndarray | None = None  # (E, P)
    experiment_target: np.ndarray | None = None  # (P,)
    experiment_curve: np.ndarray | None = None  # (L,)
    repeat_id: np.ndarray | None = None
    source: str = "arrays"  # what was read, for the first output and summary.json
    val_loss_source: str = "'val_loss' array"
    inputs: dict = field(default_factory=dict)  # parameter (or parameter[i]) -> the file it named
    forward: Callable | None = field(default=None, repr=False)  # the forward model: parameters (n, P) -> curves
    forward_model: str = ""  # the forward_model parameter it came from
    dropped: dict = field(default_factory=dict)  # optional inputs left at the sample's value, not used
    # the checkpoint-files way in
    val_x: np.ndarray | None = None
    experiment_x: np.ndarray | None = None
    model: Any = None
    tail_states: list = field(default_factory=list, repr=False)  # state dicts of the last checkpoints

    @property
    def n_checkpoints(self) -> int:
        return int(self.pred.shape[0])

    @property
    def n(self) -> int:
        return int(self.pred.shape[1])

    @property
    def n_params(self) -> int:
        return int(self.pred.shape[2])

    @property
    def has_experiment(self) -> bool:
        return self.experiment_pred is not None

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], param: str = "checkpoints",
                    path: str | Path | None = None, source: str = "arrays") -> CheckpointRun:
        """Validate in-memory arrays like a file (errors name ``param`` and ``path``)."""
        where = path if path is not None else "<arrays>"
        for key in CHECKPOINT_REQUIRED:
            if key not in arrays:
                raise InputError(param, f"missing required array '{key}' (found: {', '.join(arrays) or 'none'})", where)
        a = {k: np.asarray(v) for k, v in arrays.items() if k in CHECKPOINT_REQUIRED + CHECKPOINT_OPTIONAL}
        for k, v in a.items():
            if k in ("param_names", "repeat_id"):
                continue
            if v.dtype.kind not in "iuf":
                raise InputError(param, f"array '{k}' must be numeric, got dtype {v.dtype}", where)
            if v.size == 0:
                raise InputError(param, f"array '{k}' is empty", where)
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                raise InputError(param, f"array '{k}' has {int((~np.isfinite(v)).sum())} NaN/inf values", where)
        pred = a["pred"]
        if pred.ndim != 3:
            raise InputError(param, f"array 'pred' has shape {pred.shape}, expected (checkpoints, samples, parameters)", where)
        e, n, p = pred.shape
        if e < 2:
            raise InputError(param, f"array 'pred' holds {e} checkpoint; need at least 2 to compare checkpoints", where)
        if n < 8:
            raise InputError(param, f"array 'pred' holds {n} validation samples; need at least 8", where)
        check_shape(param, where, "target", a["target"], (n, p))
        check_shape(param, where, "epoch", a["epoch"], (e,))
        check_shape(param, where, "val_loss", a["val_loss"], (e,))
        epoch = a["epoch"]
        if not np.array_equal(epoch, np.round(epoch)):
            raise InputError(param, "array 'epoch' must hold integers", where)
        if (epoch < 0).any():
            raise InputError(param, f"array 'epoch' must be >= 0, got {epoch.min():g}", where)
        if len(np.unique(epoch)) != e:
            raise InputError(param, "array 'epoch' repeats an epoch; each checkpoint needs its own", where)
        if "train_target" in a:
            tt = a["train_target"]
            if tt.ndim != 2 or tt.shape[1] != p:
                raise InputError(param, f"array 'train_target' has shape {tt.shape}, expected (M, {p})", where)
            if len(tt) < 8:
                raise InputError(param, f"array 'train_target' has {len(tt)} rows; need at least 8", where)
        if "experiment_pred" in a:
            check_shape(param, where, "experiment_pred", a["experiment_pred"], (e, p))
        if "experiment_target" in a:
            check_shape(param, where, "experiment_target", a["experiment_target"].reshape(-1)
                        if a["experiment_target"].size == p else a["experiment_target"], (p,))
        if "experiment_curve" in a and a["experiment_curve"].ndim != 1:
            raise InputError(param, f"array 'experiment_curve' has shape {a['experiment_curve'].shape}, expected (L,)", where)
        names = [f"p{j}" for j in range(p)]
        if "param_names" in a:
            pn = a["param_names"]
            if pn.shape != (p,):
                raise InputError(param, f"array 'param_names' has shape {pn.shape}, expected ({p},)", where)
            names = [str(x) for x in pn.tolist()]
        rid = a.get("repeat_id")
        if rid is not None:
            if rid.shape != (n,):
                raise InputError(param, f"array 'repeat_id' has shape {rid.shape}, expected ({n},)", where)
            if rid.dtype.kind == "f" and not np.isfinite(rid).all():
                raise InputError(param, "array 'repeat_id' has NaN/inf values", where)
        order = np.argsort(epoch, kind="stable")
        sort = (lambda x: x[order]) if not np.array_equal(order, np.arange(e)) else (lambda x: x)
        exp_t = a.get("experiment_target")
        return cls(
            pred=sort(pred), target=a["target"].astype(np.float64), epoch=sort(epoch).astype(np.int64),
            val_loss=sort(a["val_loss"]).astype(np.float64), param_names=names,
            train_target=a["train_target"].astype(np.float64) if "train_target" in a else None,
            experiment_pred=sort(a["experiment_pred"]).astype(np.float64) if "experiment_pred" in a else None,
            experiment_target=exp_t.reshape(-1).astype(np.float64) if exp_t is not None else None,
            experiment_curve=a["experiment_curve"].astype(np.float64) if "experiment_curve" in a else None,
            repeat_id=rid, source=source, inputs={param: Path(path)} if path is not None else {},
        )


def _check_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """Types and ranges of the notebook parameters (files are checked by :func:`load_inputs`)."""
    p = check_types(params, PARAMETER_TYPES)
    check_range("last_k", p["last_k"], 2, 1000)
    check_range("k_neighbours", p["k_neighbours"], 1, 100)
    check_range("seed", p["seed"], 0, None)
    check_range("callable_timeout", p["callable_timeout"], 0.1, None)
    return p


def load_inputs(params: Mapping[str, Any]) -> tuple[dict, CheckpointRun]:
    """Check the parameters and load the run: (parameters, run); the forward model is ``run.forward`` (or None).

    With ``checkpoint_files`` set, the run comes from the files (``checkpoints`` is ignored).
    Raises one-line :class:`~helpers.io.InputError` on any mistake.
    """
    p = _check_parameters(params)
    route = ["checkpoint_files", "validation"] if p["checkpoint_files"].strip() else ["checkpoints"]
    if p["checkpoint_files"].strip():
        run = _from_checkpoint_files(p["checkpoint_files"], p["model_factory"], p["validation"], p["last_k"],
                                     p["callable_timeout"])
        p["checkpoints"] = ""  # not read on this route: the summary records what was used
        read = ("checkpoint_files", "model_factory", "validation", "forward_model")
    else:
        for name in ("model_factory", "validation"):
            if p[name].strip():
                raise InputError(name, "is only used with checkpoint_files; set checkpoint_files too (or leave it empty)")
        path = resolve_path("checkpoints", p["checkpoints"], (".npz",))
        arrays = load_arrays("checkpoints", path, CHECKPOINT_REQUIRED, CHECKPOINT_OPTIONAL)
        run = CheckpointRun.from_arrays(arrays, "checkpoints", path, source="checkpoints npz")
        read = ("checkpoints", "forward_model")
    if p["last_k"] > run.n_checkpoints:
        raise InputError("last_k", f"must be at most the number of checkpoints ({run.n_checkpoints}), got {p['last_k']}")
    if p["k_neighbours"] >= run.n:
        raise InputError("k_neighbours", f"must be below the number of validation samples ({run.n}), got {p['k_neighbours']}")
    # the run's own files are checked first (their faults say more); then the sample's forward model is
    # not applied to your checkpoints, and your forward model not to the sample's
    dropped = drop_sample_companions(p, NOTEBOOK, route, ["forward_model"])
    forward = (load_callable("forward_model", p["forward_model"], p["callable_timeout"])
               if p["forward_model"].strip() else None)
    if forward is not None:
        check_forward(forward, run)
    run.forward, run.forward_model = forward, p["forward_model"]
    run.inputs = input_files({k: p[k] for k in read})
    run.dropped = dropped
    return p, run


def _from_checkpoint_files(pattern: str, factory_spec: str, validation: str, keep_last: int,
                           timeout: float | None = None) -> CheckpointRun:
    """The run the checkpoint files give (:func:`helpers.checkpoint_divergence.checkpoint_files.load_checkpoint_files`),
    validated like a ``checkpoints`` npz; the model and the last ``keep_last`` state dicts ride along for the
    weight average."""
    loaded = cf.load_checkpoint_files(pattern, factory_spec, validation, keep_last, timeout)
    run = CheckpointRun.from_arrays(loaded.arrays, "validation", loaded.validation, source="checkpoint files")
    run.val_x, run.experiment_x, run.model = loaded.val_x, loaded.experiment_x, loaded.model
    run.tail_states = loaded.tail_states
    run.val_loss_source = loaded.val_loss_source
    return run


SAMPLE_FORWARD_MODEL = "helpers.checkpoint_divergence.rocking_curve:forward"


def check_forward(forward: Callable, run: CheckpointRun) -> None:
    """Call the forward model on two validation targets: (2, L) finite curves matching ``experiment_curve``."""
    try:
        curves = ck.call_forward(forward, run.target[:2], fast=False)
    except Exception as exc:
        raise InputError("forward_model", f"failed on two validation targets ({type(exc).__name__}: {first_line(exc)})") from None
    if curves.shape[0] != 2 or curves.ndim != 2 or not np.isfinite(curves).all():
        raise InputError("forward_model", f"must map (n, {run.n_params}) parameters to finite (n, L) curves; "
                                          f"got shape {curves.shape} for n=2")
    if run.experiment_curve is not None and curves.shape[1] != len(run.experiment_curve):
        raise InputError("forward_model", f"returns curves of length {curves.shape[1]} but 'experiment_curve' has "
                                          f"{len(run.experiment_curve)} points")


# --------------------------------------------------------------------------- the diagnosis
@dataclass
class Diagnosis:
    """Everything notebook 03 measures on a run."""

    run: CheckpointRun
    scale: np.ndarray
    scale_source: str
    err: np.ndarray = field(repr=False)  # (E, N) standardised per-sample errors
    val_mse: np.ndarray = field(repr=False)  # (E,) standardised validation MSE
    ref: int  # index of the val-loss-best checkpoint
    last_k: int
    k_neighbours: int
    experiment_space: str | None = None  # "parameters" or "curve"
    experiment_err: np.ndarray | None = None  # (E,) in experiment_space
    experiment_param_err: np.ndarray | None = None
    experiment_curve_err: np.ndarray | None = None
    noise: ck.NoiseFloor | None = None
    coverage: ck.Coverage | None = None
    location: np.ndarray | None = None
    location_source: str = ""
    raw_distance: float | None = None
    selection: ck.SelectionCheck | None = None
    selection_repeats: ck.SelectionCheck | None = None
    split: ck.AdvantageSplit | None = None  # a per-sample advantage: measurement noise, profile-specific, regional
    regional: ck.Regional | None = None  # the experiment's chosen epoch on its nearest validation profiles
    coverage_effect: ck.CoverageEffect | None = None  # do sparsely covered validation profiles fare worse?
    ensemble_gain: dict = field(default_factory=dict)  # space -> ck.Paired: mean of the last k vs val-loss best
    ensemble_experiment: dict = field(default_factory=dict)  # the experiment's own change, in its space
    codes: np.ndarray | None = field(default=None, repr=False)  # row -> validation profile
    space_err: np.ndarray | None = field(default=None, repr=False)  # (E, N') validation errors in experiment_space
    space_rows: np.ndarray | None = field(default=None, repr=False)  # the rows of space_err
    bins: pd.DataFrame | None = None
    jacobian: np.ndarray | None = None
    jacobian_method: str = ""
    sensitivity: pd.DataFrame | None = None
    correlation: dict | None = None
    error_pairs: pd.DataFrame | None = None
    remedies: pd.DataFrame | None = None
    notes: list = field(default_factory=list)

    @property
    def ideal(self) -> int | None:
        return int(np.argmin(self.experiment_err)) if self.experiment_err is not None else None

    @property
    def val_best_epoch(self) -> int:
        return int(self.run.epoch[self.ref])

    @property
    def ideal_epoch(self) -> int | None:
        return int(self.run.epoch[self.ideal]) if self.ideal is not None else None


def _experiment_reference_curve(run: CheckpointRun) -> np.ndarray | None:
    forward = run.forward
    if forward is None:
        return None
    if run.experiment_curve is not None:
        return run.experiment_curve
    if run.experiment_target is not None:
        return ck.call_forward(forward, run.experiment_target[None], fast=False)[0]
    return None


class _Steps:
    """A progress bar naming the step a long computation is on (tqdm; disabled: nothing shown)."""

    def __init__(self, total: int, show: bool):
        from tqdm import tqdm

        self.bar, self.started = tqdm(total=total, unit="step", disable=not show), False

    def next(self, what: str) -> None:
        if self.started:
            self.bar.update()
        self.started = True
        self.bar.set_description(what)

    def close(self) -> None:
        self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()


def diagnose(run: CheckpointRun, params: Mapping[str, Any], progress: bool | None = None) -> Diagnosis:
    """All measurements of notebook 03 (see the module docstring of :mod:`helpers.checkpoint_divergence.checkpoints`),
    with the forward model ``run.forward`` (None: no curve-space measurements) and the settings
    ``params["last_k"]``, ``params["k_neighbours"]`` and ``params["seed"]``. ``progress``: show the steps
    (default: when ``pred`` holds more than PROGRESS_VALUES values)."""
    steps = _Steps(6, run.pred.size > PROGRESS_VALUES if progress is None else progress)
    steps.next(f"standardised errors of {run.n_checkpoints} checkpoints x {run.n:,} samples")
    forward = run.forward
    last_k, k_neighbours, seed = params["last_k"], params["k_neighbours"], params["seed"]
    if run.train_target is not None:
        scaler, scale_source = ck.fit_scaler(run.train_target), "train_target"
    else:
        scaler, scale_source = ck.fit_scaler(run.target), "target (no train_target)"
    scale = scaler.scale_
    err = ck.per_sample_errors(run.pred, run.target, scale)
    np.maximum(err, ck.error_floor(err), out=err)  # floored once, in place: a perfect fit is not a division by 0
    ref = int(np.argmin(run.val_loss))
    d = Diagnosis(run, scale, scale_source, err, ck.checkpoint_mse(err), ref, last_k, k_neighbours)
    target_z = ck.standardise(run.target, scaler)
    d.codes = ck.profile_codes(run.n, run.repeat_id)

    # the experiment across checkpoints, in parameter and in curve space
    steps.next("the experiment's errors against the noise floor")
    ref_curve = _experiment_reference_curve(run)
    if run.has_experiment:
        if run.experiment_target is not None:
            d.experiment_param_err = ck.per_sample_errors(run.experiment_pred[:, None], run.experiment_target[None], scale)[:, 0]
        if ref_curve is not None:
            d.experiment_curve_err = ck.curve_errors(forward, run.experiment_pred, ref_curve[None])
        if d.experiment_param_err is not None:
            d.experiment_space, d.experiment_err = "parameters", d.experiment_param_err
            d.space_err, d.space_rows = err, np.arange(run.n)
            d.noise = ck.noise_floor(err, d.experiment_err, ref, seed=seed)
        elif d.experiment_curve_err is not None:
            d.experiment_space, d.experiment_err = "curve", d.experiment_curve_err
            cols = ck.subsample(run.n, MAX_CURVE_SAMPLES, seed)
            true_curves = ck.call_forward(forward, run.target[cols])
            val_curve_err = np.stack([ck.curve_errors(forward, run.pred[e, cols], true_curves)
                                      for e in range(run.n_checkpoints)])
            d.space_err, d.space_rows = val_curve_err, cols
            d.noise = ck.noise_floor(val_curve_err, d.experiment_err, ref, seed=seed)
            d.notes.append(f"no 'experiment_target': the experiment is scored in curve space, against {len(cols)} "
                           "validation samples' curve errors")

    # where the experiment sits
    if run.experiment_target is not None:
        d.location, d.location_source = run.experiment_target, "experiment_target"
    elif run.has_experiment:
        d.location = ck.ensemble(run.experiment_pred, last_k, "median")
        d.location_source = f"median prediction of the last {last_k} checkpoints (no 'experiment_target')"
    if d.location is not None and run.train_target is not None:
        steps.next(f"coverage: k-d tree of {len(run.train_target):,} training targets, neighbours and counts")
        d.coverage = ck.coverage(run.train_target, d.location, run.target, scaler, run.param_names, k=k_neighbours,
                                 seed=seed)
        d.raw_distance = float(ck.knn_distances(run.train_target, d.location[None], k_neighbours)[0])
        d.coverage_effect = ck.coverage_effect(err[ref], d.coverage, d.codes, percentile=SPARSE_PERCENTILE)

    # selection on the test case: what of a per-sample advantage is noise, specific to the profile, regional
    steps.next("selection on the test case: neighbouring profiles and repeats")
    d.selection = ck.selection_by_neighbours(err, target_z, ref, k=k_neighbours, seed=seed, groups=d.codes)
    if run.repeat_id is not None and pd.Series(run.repeat_id).duplicated().any():
        d.selection_repeats = ck.selection_by_repeats(err, run.repeat_id, ref, seed=seed)
    d.split = ck.split_advantage(d.selection, d.selection_repeats)
    if d.location is not None and d.ideal is not None:  # the experiment's epoch on its nearest validation profiles
        d.regional = ck.regional_gain(d.space_err, target_z[d.space_rows], ck.standardise(d.location, scaler), ref,
                                      d.ideal, d.codes[d.space_rows], k=k_neighbours)

    # per-parameter errors by bin at the val-best checkpoint
    steps.next("errors by bin and sensitivity")
    d.bins = ck.error_by_bin(run.pred[ref], run.target, scale, run.param_names, bins=4, point=d.location)

    # sensitivity of the curve to each parameter at the experiment, and parameter vs curve error
    if forward is not None and d.location is not None:
        d.jacobian, d.jacobian_method = ck.jacobian(forward, d.location)
        exp_error = (run.experiment_pred[ref] - run.experiment_target) if run.experiment_target is not None else None
        d.sensitivity = ck.sensitivity(d.jacobian, scale, run.param_names, exp_error)
    if forward is not None:
        cols = ck.subsample(run.n, MAX_CORRELATION_SAMPLES, seed)
        curve_err = ck.curve_errors(forward, run.pred[ref, cols], ck.call_forward(forward, run.target[cols]))
        d.correlation = ck.error_correlation(err[ref, cols], curve_err)
        d.error_pairs = pd.DataFrame({"parameter_error": err[ref, cols], "curve_error": curve_err})

    steps.next("remedies: ensembles, weight average, k-NN baseline")
    d.remedies = remedies(d, seed)
    _ensemble_gain(d, seed)
    steps.close()
    return d


def _ensemble_gain(d: Diagnosis, seed: int) -> None:
    """The mean of the last k checkpoints against the val-loss-best one, paired across validation profiles:
    in parameter space on every row, in curve space (with a forward model) on MAX_CORRELATION_SAMPLES rows; and
    the experiment's own change (log ratio) with its percentile among the validation profiles' changes."""
    run, ref = d.run, d.ref
    ens = ck.ensemble(run.pred, d.last_k, "mean")
    e_ref = ck.per_sample_errors(run.pred[ref], run.target, d.scale)[0]
    e_ens = ck.per_sample_errors(ens, run.target, d.scale)[0]
    rows = {"parameters": (e_ref, e_ens, np.arange(run.n))}
    if run.forward is not None:
        cols = ck.subsample(run.n, MAX_CORRELATION_SAMPLES, seed)
        truth = ck.call_forward(run.forward, run.target[cols])
        rows["curve"] = (ck.curve_errors(run.forward, run.pred[ref, cols], truth),
                         ck.curve_errors(run.forward, ens[cols], truth), cols)
    for space, (a, b, idx) in rows.items():
        d.ensemble_gain[space] = ck.paired_by_profile(a - b, d.codes[idx])
    column = {"parameters": "experiment_error", "curve": "experiment_curve_mse"}.get(d.experiment_space or "")
    if column is None or d.experiment_space not in rows:
        return
    t = d.remedies
    mean_row = t.loc[f"mean of the last {d.last_k} checkpoints", column]
    first = t.iloc[0][column]
    if np.isfinite(mean_row) and np.isfinite(first) and mean_row > 0 and first > 0:
        a, b, idx = rows[d.experiment_space]
        floor = ck.error_floor(a)
        val_log = ck.profile_mean(np.log(np.maximum(a, floor) / np.maximum(b, floor)),
                                  pd.factorize(pd.Series(d.codes[idx]))[0])
        change = float(np.log(first / mean_row))
        d.ensemble_experiment = {"space": d.experiment_space, "val_best": float(first), "ensemble": float(mean_row),
                                 "log_ratio": change, "percentile": ck.percentile_of(val_log, change)}


def remedies(d: Diagnosis, seed: int = 0) -> pd.DataFrame:
    """Each way of choosing or combining checkpoints, scored on validation and on the experiment."""
    run, scale, k = d.run, d.scale, d.last_k
    forward = run.forward
    rows = []
    ref_curve = _experiment_reference_curve(run)

    def score(name: str, val_pred: np.ndarray | None, exp_pred: np.ndarray | None, note: str = "") -> None:
        row = {"remedy": name, "val_error": float(ck.per_sample_errors(val_pred, run.target, scale).mean())
               if val_pred is not None else np.nan, "experiment_error": np.nan, "experiment_curve_mse": np.nan, "note": note}
        if exp_pred is not None and run.experiment_target is not None:
            row["experiment_error"] = float(ck.per_sample_errors(exp_pred[None], run.experiment_target[None], scale)[0, 0])
        if exp_pred is not None and ref_curve is not None:
            row["experiment_curve_mse"] = float(ck.curve_errors(forward, exp_pred[None], ref_curve[None])[0])
        rows.append(row)

    ep = run.experiment_pred
    score(f"val-loss-best checkpoint (epoch {d.val_best_epoch})", run.pred[d.ref], ep[d.ref] if ep is not None else None)
    if d.ideal is not None:
        score(f"experiment-best checkpoint (epoch {d.ideal_epoch})", run.pred[d.ideal], ep[d.ideal],
              "chosen on the experiment itself: its experiment score is optimistic")
    score(f"last checkpoint (epoch {int(run.epoch[-1])})", run.pred[-1], ep[-1] if ep is not None else None)
    for how in ("mean", "median"):
        score(f"{how} of the last {k} checkpoints", ck.ensemble(run.pred, k, how),
              ck.ensemble(ep, k, how) if ep is not None else None, "prediction ensemble")
    if run.model is not None and run.tail_states:
        val_p, exp_p, note = ck.weight_average(run.model, run.tail_states, run.val_x, run.experiment_x)
        score(f"weight average of the last {len(run.tail_states)} checkpoints", val_p, exp_p, note)
    if forward is not None and run.train_target is not None:
        val_p, exp_p, note = ck.nearest_neighbour_baseline(
            forward, run.train_target, run.target, d.k_neighbours, seed, val_x=run.val_x,
            experiment_curve=run.experiment_curve, experiment_x=run.experiment_x, experiment_target=run.experiment_target)
        sub = val_p[1]
        rows_before = len(rows)
        score(f"nearest-neighbour baseline (k={d.k_neighbours})", None, exp_p, note)
        rows[rows_before]["val_error"] = float(ck.per_sample_errors(val_p[0], run.target[sub], scale).mean())
    return pd.DataFrame(rows).set_index("remedy")


# --------------------------------------------------------------------------- findings
def _where(run: CheckpointRun) -> str:
    path = run.inputs.get("checkpoints") or run.inputs.get("validation")
    return Path(path).name if path is not None else "the input"


def _space(d: Diagnosis) -> str:
    return {"parameters": "parameter"}.get(d.experiment_space or "", d.experiment_space or "")


def _pct(x: float) -> str:
    return f"{x:.0%}" if np.isfinite(x) else "n/a"


def _split_text(d: Diagnosis) -> str:
    """What part of a validation sample's own-best-epoch advantage is noise, specific to its profile, regional."""
    sp, k = d.split, d.k_neighbours
    if sp is None or not np.isfinite(sp.regional):
        return ""
    if np.isfinite(sp.noise):
        return (f"a validation sample's own-best-epoch advantage is {_pct(sp.noise)} measurement noise (lost on a "
                f"re-measurement), {_pct(sp.profile)} specific to that profile (kept on a re-measurement, not on the {k} "
                f"nearest other profiles) and {_pct(sp.regional)} regional (kept on them)")
    return (f"{_pct(sp.regional)} of a validation sample's own-best-epoch advantage carries over to its {k} nearest "
            f"other profiles (regional), {_pct(sp.specific)} does not (measurement noise and profile-specific luck: "
            "without 'repeat_id' they cannot be told apart)")


def _regional_verdict(r: ck.Regional) -> str:
    return "beyond noise" if r.log_gain.better else "worse, beyond noise" if r.log_gain.worse else "within noise"


def _regional_text(d: Diagnosis) -> str:
    """The experiment's chosen epoch against the val-loss-best one on the experiment's nearest validation profiles."""
    r = d.regional
    if r is None:
        return ""
    lo, hi = r.ratio_interval
    return (f"on the experiment's {r.k} nearest validation profiles (mean distance {r.distance:.2f} SD) the {_space(d)} "
            f"error ratio of epoch {d.val_best_epoch} to epoch {d.ideal_epoch} is {r.ratio:.2f} (95% CI "
            f"{lo:.2f}-{hi:.2f}, {_regional_verdict(r)})")


def _regional_evidence(d: Diagnosis) -> dict:
    ev = {}
    if d.split is not None:
        ev["advantage_split"] = {"noise": d.split.noise, "profile": d.split.profile, "regional": d.split.regional}
    if d.regional is not None:
        r = d.regional
        ev["experiment_regional"] = {"k": r.k, "mean_distance": r.distance, "ratio": r.ratio,
                                     "ratio_ci95": list(r.ratio_interval), "p": r.log_gain.p,
                                     "beyond_noise": r.log_gain.better}
    return ev


def _edges(c: ck.Coverage) -> str:
    r = c.ranges
    edge = r[(r["percentile"] < 5) | (r["percentile"] > 95)]
    return ", ".join(f"{name} at training percentile {row.percentile:.0f}" for name, row in edge.iterrows())


def experiment_sparse_coverage(d: Diagnosis) -> Finding:
    fid = "experiment_sparse_coverage"
    if d.run.train_target is None:
        return not_applicable(fid, f"{_where(d.run)} has no 'train_target' array: coverage by the training set cannot be measured", "warning")
    if d.coverage is None:
        return not_applicable(fid, f"{_where(d.run)} has no 'experiment_target' or 'experiment_pred' (or 'experiment_x'): there is no experiment to locate", "warning")
    c, ce = d.coverage, d.coverage_effect
    ev = {"knn_distance": c.distance, "knn_distance_percentile": c.percentile, "k": c.k,
          "validation_median_knn_distance": float(np.median(c.reference_distances)),
          "radii": c.radii, "training_samples_within_radii": c.counts, "count_percentiles": c.count_percentiles,
          "location": d.location_source, "unscaled_knn_distance": d.raw_distance, "threshold_percentile": SPARSE_PERCENTILE}
    text = (f"the experiment's mean distance to its {c.k} nearest training samples is {c.distance:.2f} SD, farther than "
            f"for {c.percentile:.1f}% of validation samples; training samples within the median "
            f"validation radius: {int(c.counts[1])} (percentile {c.count_percentiles[1]:.0f} among validation samples)")
    effect = ""
    if ce is not None:
        ev["sparse_validation_profiles"] = {"percentile": ce.percentile, "knn_distance_threshold": ce.threshold,
                                            "n_sparse": ce.n_sparse, "n_rest": ce.n_rest, "error_sparse": ce.error_sparse,
                                            "error_rest": ce.error_rest, "ratio": ce.ratio, "mannwhitney_p": ce.p}
        effect = (f"the sparsest {100 - ce.percentile:.0f}% of validation profiles (k-NN distance >= {ce.threshold:.2f} SD) "
                  f"have {ce.ratio:.2f}x the error of the others at the val-loss-best checkpoint (Mann-Whitney p={ce.p:.2g})")
    if c.percentile < SPARSE_PERCENTILE:
        return Finding(fid, "not_detected", "info", f"Covered like a typical validation sample: {text}"
                       + (f"; {effect}" if effect else "") + ".", ev)
    where = f" ({_edges(c)})" if _edges(c) else ""
    if ce is None:
        action = (f"Measure before adding training profiles near the experiment{where}: it is farther from the training set "
                  f"than {c.percentile:.1f}% of validation samples, but too few validation profiles are as sparse to tell "
                  "whether sparse coverage costs accuracy.")
    elif ce.worse:
        action = (f"Add training profiles around the experiment{where}: it is farther from the training set than "
                  f"{c.percentile:.1f}% of validation samples, and on this run {effect}.")
    else:
        action = (f"Coverage does not explain the experiment's error on this run, so adding training profiles near it is "
                  f"not shown to help: it is farther from the training set than {c.percentile:.1f}% of validation samples, "
                  f"but {effect}.")
    return Finding(fid, "detected", "warning", f"Sparse region: {text}" + (f"; {effect}" if effect else "") + ".", ev,
                   action=action)


def experiment_outside_support(d: Diagnosis) -> Finding:
    fid = "experiment_outside_support"
    if d.run.train_target is None:
        return not_applicable(fid, f"{_where(d.run)} has no 'train_target' array: the training support is unknown", "critical")
    if d.coverage is None:
        return not_applicable(fid, f"{_where(d.run)} has no experiment to place ('experiment_target' / 'experiment_pred')", "critical")
    c = d.coverage
    outside = c.outside_range
    ev = {"outside_range": outside, "knn_distance": c.distance,
          "max_validation_knn_distance": float(c.reference_distances.max()), "beyond_every_validation_sample": c.beyond_reference,
          "positions": c.ranges["position"].to_dict(), "location": d.location_source}
    if outside or c.beyond_reference:
        why = (f"{', '.join(outside)} outside the training range" if outside else "") + \
              ("; " if outside and c.beyond_reference else "") + \
              (f"{c.distance:.2f} SD from the training set, farther than every validation sample "
               f"(max {ev['max_validation_knn_distance']:.2f} SD)" if c.beyond_reference else "")
        return Finding(fid, "detected", "critical", f"The experiment is outside the training support ({why}): every "
                       "checkpoint extrapolates there, and validation loss says nothing about it.", ev,
                       action=f"Widen the training distribution to cover the experiment ({why}): until it does, no "
                              "validation score can vouch for any checkpoint there.")
    return Finding(fid, "not_detected", "info", "The experiment lies inside the training ranges and no farther from the "
                   f"training set than the validation samples (k-NN distance {c.distance:.2f} SD, validation max "
                   f"{ev['max_validation_knn_distance']:.2f}).", ev)


def swing_within_noise(d: Diagnosis) -> Finding:
    """The experiment's swing against the validation samples' own swings, and against its nearest validation profiles.

    Detected when the swing is material but no larger than the validation samples' (at or below the
    NOISE_PERCENTILE-th percentile) and the experiment's nearest validation profiles do not confirm it beyond noise:
    then nothing measured separates the 'ideal' epoch from luck. A swing the neighbours confirm is regional."""
    fid = "swing_within_noise"
    if not d.run.has_experiment:
        return not_applicable(fid, f"{_where(d.run)} has no 'experiment_pred' (or 'experiment_x'): no experiment to follow across checkpoints", "warning")
    if d.noise is None:
        return not_applicable(fid, f"{_where(d.run)} has neither 'experiment_target' nor 'experiment_curve' with a forward_model: "
                              "the experiment's error cannot be computed", "warning")
    n = d.noise
    ev = {"val_best_epoch": d.val_best_epoch, "experiment_best_epoch": d.ideal_epoch, "space": d.experiment_space,
          "experiment_advantage": n.experiment_advantage, "advantage_percentile": n.percentile,
          "validation_median_advantage": n.sample_median, "validation_p95_advantage": n.sample_p95,
          "median_epoch_to_epoch_change": float(np.median(n.step_change)), "threshold_percentile": NOISE_PERCENTILE,
          **_regional_evidence(d)}
    if d.ideal == d.ref:
        return Finding(fid, "not_detected", "info", f"The val-loss-best checkpoint (epoch {d.val_best_epoch}) is also the best "
                       "on the experiment: there is no swing to explain.", ev)
    if n.experiment_advantage < MATERIAL_ADVANTAGE:
        return Finding(fid, "not_detected", "info", f"No material swing: the best checkpoint on the experiment (epoch "
                       f"{d.ideal_epoch}) is only {n.experiment_advantage:.3f}x better than the val-loss-best epoch {d.val_best_epoch}.", ev)
    size = (f"epoch {d.ideal_epoch} fits the experiment {n.experiment_advantage:.2f}x better than the val-loss-best epoch "
            f"{d.val_best_epoch} ({_space(d)} error); {100 - n.percentile:.0f}% of validation samples have an own best "
            f"epoch at least that much better (median {n.sample_median:.2f}x, 95th percentile {n.sample_p95:.2f}x)")
    if d.experiment_space == "parameters" and d.experiment_curve_err is not None:
        c = d.experiment_curve_err
        ratio = c[d.ref] / c[d.ideal] if c[d.ideal] > 0 else float("nan")
        size += f"; in curve space the error ratio of epoch {d.val_best_epoch} to epoch {d.ideal_epoch} is {ratio:.2f}"
        ev["experiment_curve_ratio"] = ratio
    parts = "; ".join(x for x in (size, _regional_text(d), _split_text(d)) if x)
    regional_real = d.regional is not None and d.regional.log_gain.better
    if n.percentile > NOISE_PERCENTILE:
        return Finding(fid, "not_detected", "info", f"The swing exceeds the noise floor: {parts}; the checkpoints really "
                       "differ on this experiment (look at coverage and sensitivity).", ev)
    if regional_real:
        return Finding(fid, "not_detected", "info", f"The swing is ordinary in size but regional: {parts}. The nearby "
                       f"validation profiles, not the experiment, are the fair ground to choose epoch {d.ideal_epoch} on.", ev)
    near = ""
    if d.regional is not None:
        lo, hi = d.regional.ratio_interval
        near = (f", and on the experiment's {d.regional.k} nearest validation profiles the error ratio is "
                f"{d.regional.ratio:.2f} (95% CI {lo:.2f}-{hi:.2f}, {_regional_verdict(d.regional)})")
    confirm = (f"the experiment's {d.regional.k} nearest validation profiles do not confirm" if d.regional is not None
               else "no validation profiles near the experiment can test")
    return Finding(fid, "detected", "warning", f"The swing is within the validation samples' own (at or below their 95th percentile): {parts}. So "
                   f"{confirm} that epoch {d.ideal_epoch} is a better model for the experiment's region.", ev,
                   action=f"Do not switch to epoch {d.ideal_epoch} for the experiment; choose the checkpoint on validation "
                          f"data: its {n.experiment_advantage:.2f}x advantage is no larger than that of "
                          f"{100 - n.percentile:.0f}% of validation samples' own best epochs{near}.")


def selection_does_not_generalize(d: Diagnosis) -> Finding:
    fid = "selection_does_not_generalize"
    s, r = d.selection, d.selection_repeats
    ev = {"method": s.method, "units": s.n, "in_sample_ratio": s.in_sample_ratio, "held_out_ratio": s.held_out_ratio,
          "surviving_share": s.surviving_share, "share_better_on_held_out": s.share_better, "k": d.k_neighbours,
          "threshold": SURVIVING_SHARE_MIN, **_regional_evidence(d)}
    if r is not None:
        ev.update({"repeats_units": r.n, "repeats_surviving_share": r.surviving_share,
                   "repeats_in_sample_ratio": r.in_sample_ratio, "repeats_held_out_ratio": r.held_out_ratio})
    if not np.isfinite(s.surviving_share) or s.in_sample_ratio < MATERIAL_ADVANTAGE:
        return Finding(fid, "not_detected", "info", f"A sample's own best checkpoint beats the val-loss-best one by "
                       f"{s.in_sample_ratio:.3f}x on average: there is no material per-sample choice to make.", ev)
    text = f"a checkpoint chosen on one validation sample is {s.in_sample_ratio:.2f}x better than the val-loss-best one there"
    if r is not None:
        text += f", {r.held_out_ratio:.2f}x on a repeated measurement of it"
    text += f" and {s.held_out_ratio:.2f}x on its {d.k_neighbours} nearest other profiles"
    text = "; ".join(x for x in (text, _split_text(d), _regional_text(d)) if x)
    if s.surviving_share < SURVIVING_SHARE_MIN:
        return Finding(fid, "detected", "warning", f"A checkpoint chosen on one sample does not carry over to other "
                       f"samples: {text}.", ev,
                       action=f"Choose checkpoints on the mean validation error, never on the one case you report: only "
                              f"{_pct(d.split.regional)} of a per-sample choice's advantage carries over to the "
                              f"{d.k_neighbours} nearest other validation profiles ({s.in_sample_ratio:.2f}x where chosen, "
                              f"{s.held_out_ratio:.2f}x there).")
    return Finding(fid, "not_detected", "info", f"Per-sample checkpoint choice carries over to similar samples: {text}.", ev)


def _gain_text(g: ck.Paired, fmt: str) -> str:
    lo, hi = g.interval
    return f"paired gain {g.mean:{fmt}}, 95% CI {lo:{fmt}} to {hi:{fmt}} over {g.n} profiles"


def ensemble_improves(d: Diagnosis) -> Finding:
    """The mean of the last k checkpoints against the val-loss-best one, paired across validation profiles.

    Detected only when it is better beyond noise in the space the experiment is scored in (parameters without an
    experiment), not worse beyond noise in the other space measured, and the experiment's own change is not below
    the 5th percentile of the validation profiles' changes."""
    fid = "ensemble_improves"
    t, k = d.remedies, d.last_k
    best = t.iloc[0]
    mean_row = t.loc[f"mean of the last {k} checkpoints"]
    space = d.experiment_space if d.experiment_space in d.ensemble_gain else "parameters"
    main = d.ensemble_gain[space]
    others = {s: g for s, g in d.ensemble_gain.items() if s != space}
    ev = {"last_k": k, "val_error_val_best": best["val_error"], "val_error_mean_ensemble": mean_row["val_error"],
          "experiment_error_val_best": best["experiment_error"], "experiment_error_mean_ensemble": mean_row["experiment_error"],
          "space": space, "experiment": d.ensemble_experiment,
          "paired": {s: {"gain": g.mean, "ci95": list(g.interval), "p": g.p, "profiles": g.n}
                     for s, g in d.ensemble_gain.items()},
          "table": t[["val_error", "experiment_error", "experiment_curve_mse"]].to_dict(orient="index")}
    fmt = {"parameters": ".2g", "curve": ".3g"}
    where = {"parameters": "parameter space", "curve": "curve space"}
    parts = [f"the mean of the last {k} checkpoints scores validation {mean_row['val_error']:.4g} vs {best['val_error']:.4g} "
             f"for the val-loss-best checkpoint (standardised MSE; {_gain_text(d.ensemble_gain['parameters'], '.2g')})"]
    if "curve" in d.ensemble_gain:
        parts.append(f"validation curve MSE {_gain_text(d.ensemble_gain['curve'], '.3g')}")
    x = d.ensemble_experiment
    if x:
        parts.append(f"the experiment {x['ensemble']:.4g} vs {x['val_best']:.4g} ({_space(d)} error), a change at "
                     f"percentile {x['percentile']:.0f} of the validation profiles' changes")
    text = "; ".join(parts)
    reasons = []
    if not main.better:
        scored = ", where the experiment is scored," if d.experiment_space == space else ""
        reasons.append(f"in {where[space]}{scored} the gain is within noise" if not main.worse
                       else f"in {where[space]}{scored} it is worse beyond noise")
    reasons += [f"in {where[s]} it is worse beyond noise" for s, g in others.items() if g.worse]
    if x and x["percentile"] < 5:
        reasons.append("it fares worse on the experiment than on 95% of validation profiles")
    if not reasons:
        lo, hi = main.interval
        cost = f"{k} model evaluations per prediction"
        if x:
            cost += (f"; on the experiment its {_space(d)} error is {x['ensemble']:.4g} vs {x['val_best']:.4g}, a change "
                     f"at percentile {x['percentile']:.0f} of the validation profiles' changes")
        return Finding(fid, "detected", "info", f"The ensemble improves beyond noise: {text}.", ev,
                       action=f"Average the predictions of the last {k} checkpoints instead of keeping epoch "
                              f"{d.val_best_epoch}: validation error gain in {where[space]} {main.mean:{fmt[space]}} "
                              f"(95% CI {lo:{fmt[space]}} to {hi:{fmt[space]}} over {main.n} profiles), at the cost of "
                              f"{cost}.")
    return Finding(fid, "not_detected", "info", f"The ensemble is not shown to improve ({'; '.join(reasons)}): {text}.", ev)


def findings(d: Diagnosis) -> list[Finding]:
    return [experiment_sparse_coverage(d), experiment_outside_support(d), swing_within_noise(d),
            selection_does_not_generalize(d), ensemble_improves(d)]


# --------------------------------------------------------------------------- tables and metrics
def metrics(d: Diagnosis) -> dict[str, Any]:
    """Headline numbers for summary.json."""
    run = d.run
    m = {"source": run.source, "n_checkpoints": run.n_checkpoints, "n_validation": run.n, "n_params": run.n_params,
         "scale_from": d.scale_source, "val_best_epoch": d.val_best_epoch,
         "val_loss_at_val_best": float(run.val_loss[d.ref]), "val_error_std_at_val_best": float(d.val_mse[d.ref])}
    if d.experiment_err is not None:
        i = d.ideal
        m.update({"experiment_best_epoch": d.ideal_epoch, "experiment_space": d.experiment_space,
                  "val_loss_at_experiment_best": float(run.val_loss[i]),
                  "experiment_error_at_val_best": float(d.experiment_err[d.ref]),
                  "experiment_error_at_experiment_best": float(d.experiment_err[i])})
    if d.noise is not None:
        m.update({"experiment_advantage": d.noise.experiment_advantage, "advantage_percentile": d.noise.percentile,
                  "validation_p95_advantage": d.noise.sample_p95})
    if d.coverage is not None:
        m.update({"knn_distance": d.coverage.distance, "knn_distance_percentile": d.coverage.percentile,
                  "outside_range": d.coverage.outside_range})
    m.update({"selection_surviving_share": d.selection.surviving_share, "selection_method": d.selection.method})
    if d.selection_repeats is not None:
        m["selection_surviving_share_repeats"] = d.selection_repeats.surviving_share
    if d.split is not None:
        m["advantage_split"] = {"noise": d.split.noise, "profile": d.split.profile, "regional": d.split.regional}
    if d.regional is not None:
        m["experiment_regional_ratio"] = d.regional.ratio
        m["experiment_regional_ratio_ci95"] = list(d.regional.ratio_interval)
    m["ensemble_paired_gain"] = {s: {"gain": g.mean, "ci95": list(g.interval), "profiles": g.n}
                                 for s, g in d.ensemble_gain.items()}
    if d.correlation is not None:
        m["param_curve_error_spearman"] = d.correlation["spearman_rho"]
    m["remedies"] = d.remedies[["val_error", "experiment_error", "experiment_curve_mse"]].to_dict(orient="index")
    if d.sensitivity is not None:
        m["sensitivity_curve_rms_per_sd"] = d.sensitivity["curve_rms_per_sd"].to_dict()
    return m


def checkpoint_table(d: Diagnosis) -> pd.DataFrame:
    """One row per checkpoint: logged val loss, standardised val error, the experiment's errors."""
    t = pd.DataFrame({"epoch": d.run.epoch, "val_loss": d.run.val_loss, "val_error_std": d.val_mse})
    if d.experiment_param_err is not None:
        t["experiment_error_std"] = d.experiment_param_err
    if d.experiment_curve_err is not None:
        t["experiment_curve_mse"] = d.experiment_curve_err
    mark = np.full(len(t), "", dtype=object)
    mark[d.ref] = "val-loss best"
    if d.ideal is not None:
        mark[d.ideal] = (mark[d.ideal] + " + " if mark[d.ideal] else "") + "experiment best"
    t["mark"] = mark
    return t.set_index("epoch")


def describe_inputs(run: CheckpointRun) -> str:
    """The notebook's first output: which files were read (and whether they are the bundled sample), what they hold."""
    details = [f"{run.n_checkpoints} checkpoints (epochs {run.epoch[0]}-{run.epoch[-1]}), {run.n} validation samples, "
               f"{run.n_params} parameters: {', '.join(run.param_names)}; val loss from {run.val_loss_source}",
               f"experiment: {'yes' if run.has_experiment else 'none'}; train_target: "
               f"{'none' if run.train_target is None else run.train_target.shape}; forward model: "
               f"{run.forward_model or ('given' if run.forward is not None else 'none')}"]
    return describe_files(run.inputs, dropped=run.dropped, details=details)
