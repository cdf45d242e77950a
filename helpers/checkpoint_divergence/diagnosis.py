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
    experiment_neighbours: dict | None = None
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


def diagnose(run: CheckpointRun, params: Mapping[str, Any]) -> Diagnosis:
    """All measurements of notebook 03 (see the module docstring of :mod:`helpers.checkpoint_divergence.checkpoints`),
    with the forward model ``run.forward`` (None: no curve-space measurements) and the settings
    ``params["last_k"]``, ``params["k_neighbours"]`` and ``params["seed"]``."""
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

    # the experiment across checkpoints, in parameter and in curve space
    ref_curve = _experiment_reference_curve(run)
    if run.has_experiment:
        if run.experiment_target is not None:
            d.experiment_param_err = ck.per_sample_errors(run.experiment_pred[:, None], run.experiment_target[None], scale)[:, 0]
        if ref_curve is not None:
            d.experiment_curve_err = ck.curve_errors(forward, run.experiment_pred, ref_curve[None])
        if d.experiment_param_err is not None:
            d.experiment_space, d.experiment_err = "parameters", d.experiment_param_err
            d.noise = ck.noise_floor(err, d.experiment_err, ref, seed=seed)
        elif d.experiment_curve_err is not None:
            d.experiment_space, d.experiment_err = "curve", d.experiment_curve_err
            cols = ck.subsample(run.n, MAX_CURVE_SAMPLES, seed)
            true_curves = ck.call_forward(forward, run.target[cols])
            val_curve_err = np.stack([ck.curve_errors(forward, run.pred[e, cols], true_curves)
                                      for e in range(run.n_checkpoints)])
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
        d.coverage = ck.coverage(run.train_target, d.location, run.target, scaler, run.param_names, k=k_neighbours,
                                 seed=seed)
        d.raw_distance = float(ck.knn_distances(run.train_target, d.location[None], k_neighbours)[0])

    # selection on the test case
    d.selection = ck.selection_by_neighbours(err, target_z, ref, k=k_neighbours, seed=seed)
    if run.repeat_id is not None and pd.Series(run.repeat_id).duplicated().any():
        d.selection_repeats = ck.selection_by_repeats(err, run.repeat_id, ref, seed=seed)
    if d.location is not None and d.ideal is not None:
        nb = ck.NearestNeighbors(n_neighbors=k_neighbours).fit(target_z).kneighbors(ck.standardise(d.location[None], scaler))[1][0]
        e_ref, e_ideal = float(err[ref, nb].mean()), float(err[d.ideal, nb].mean())
        d.experiment_neighbours = {"k": k_neighbours, "error_val_best": e_ref, "error_ideal": e_ideal,
                                   "ratio": e_ref / e_ideal if e_ideal > 0 else float("nan")}

    # per-parameter errors by bin at the val-best checkpoint
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

    d.remedies = remedies(d, seed)
    return d


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


def experiment_sparse_coverage(d: Diagnosis) -> Finding:
    fid = "experiment_sparse_coverage"
    if d.run.train_target is None:
        return not_applicable(fid, f"{_where(d.run)} has no 'train_target' array: coverage by the training set cannot be measured", "warning")
    if d.coverage is None:
        return not_applicable(fid, f"{_where(d.run)} has no 'experiment_target' or 'experiment_pred' (or 'experiment_x'): there is no experiment to locate", "warning")
    c = d.coverage
    ev = {"knn_distance": c.distance, "knn_distance_percentile": c.percentile, "k": c.k,
          "validation_median_knn_distance": float(np.median(c.reference_distances)),
          "radii": c.radii, "training_samples_within_radii": c.counts, "count_percentiles": c.count_percentiles,
          "location": d.location_source, "unscaled_knn_distance": d.raw_distance, "threshold_percentile": SPARSE_PERCENTILE}
    text = (f"the experiment's mean distance to its {c.k} nearest training samples is {c.distance:.2f} SD, farther than "
            f"for {c.percentile:.1f}% of validation samples; {int(c.counts[1])} training samples lie within the median "
            f"validation radius ({c.count_percentiles[1]:.0f}th percentile)")
    if c.percentile >= SPARSE_PERCENTILE:
        return Finding(fid, "detected", "warning", f"Sparse region: {text}; add training samples around it.", ev)
    return Finding(fid, "not_detected", "info", f"Covered like a typical validation sample: {text}.", ev)


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
              (f"farther from the training set ({c.distance:.2f} SD) than every validation sample "
               f"(max {ev['max_validation_knn_distance']:.2f})" if c.beyond_reference else "")
        return Finding(fid, "detected", "critical", f"The experiment is outside the training support ({why}): every "
                       "checkpoint extrapolates there, and validation loss says nothing about it.", ev)
    return Finding(fid, "not_detected", "info", "The experiment lies inside the training ranges and no farther from the "
                   f"training set than the validation samples (k-NN distance {c.distance:.2f} SD, validation max "
                   f"{ev['max_validation_knn_distance']:.2f}).", ev)


def swing_within_noise(d: Diagnosis) -> Finding:
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
          "median_epoch_to_epoch_change": float(np.median(n.step_change)), "threshold_percentile": NOISE_PERCENTILE}
    if d.ideal == d.ref:
        return Finding(fid, "not_detected", "info", f"The val-loss-best checkpoint (epoch {d.val_best_epoch}) is also the best "
                       "on the experiment: there is no swing to explain.", ev)
    if n.experiment_advantage < MATERIAL_ADVANTAGE:
        return Finding(fid, "not_detected", "info", f"No material swing: the best checkpoint on the experiment (epoch "
                       f"{d.ideal_epoch}) is only {n.experiment_advantage:.3f}x better than the val-loss-best epoch {d.val_best_epoch}.", ev)
    text = (f"epoch {d.ideal_epoch} fits the experiment {n.experiment_advantage:.2f}x better than the val-loss-best epoch "
            f"{d.val_best_epoch} ({d.experiment_space} error); {100 - n.percentile:.0f}% of validation samples have an own best "
            f"epoch at least that much better (median {n.sample_median:.2f}x, 95th percentile {n.sample_p95:.2f}x)")
    if n.percentile <= NOISE_PERCENTILE:
        return Finding(fid, "detected", "warning", f"The swing is inside the noise floor: {text}; the 'ideal' epoch is ordinary "
                       "epoch-to-epoch luck, not a better model.", ev)
    return Finding(fid, "not_detected", "info", f"The swing exceeds the noise floor: {text}; the checkpoints really differ "
                   "on this experiment (look at coverage and sensitivity).", ev)


def selection_does_not_generalize(d: Diagnosis) -> Finding:
    fid = "selection_does_not_generalize"
    s, r = d.selection, d.selection_repeats
    ev = {"method": s.method, "units": s.n, "in_sample_ratio": s.in_sample_ratio, "held_out_ratio": s.held_out_ratio,
          "surviving_share": s.surviving_share, "share_better_on_held_out": s.share_better, "k": d.k_neighbours,
          "threshold": SURVIVING_SHARE_MIN}
    if r is not None:
        ev.update({"repeats_units": r.n, "repeats_surviving_share": r.surviving_share,
                   "repeats_in_sample_ratio": r.in_sample_ratio, "repeats_held_out_ratio": r.held_out_ratio})
    if d.experiment_neighbours is not None:
        ev["experiment_neighbours"] = d.experiment_neighbours
    if not np.isfinite(s.surviving_share) or s.in_sample_ratio < MATERIAL_ADVANTAGE:
        return Finding(fid, "not_detected", "info", f"A sample's own best checkpoint beats the val-loss-best one by "
                       f"{s.in_sample_ratio:.3f}x on average: there is no material per-sample choice to make.", ev)
    text = (f"a checkpoint chosen on one validation sample is {s.in_sample_ratio:.2f}x better than the val-loss-best one on "
            f"that sample but {s.held_out_ratio:.2f}x on its {d.k_neighbours} nearest neighbours ({s.surviving_share:.0%} of the advantage "
            "survives)")
    if r is not None:
        text += f"; on repeated measurements of the same sample {r.surviving_share:.0%} survives"
    if d.experiment_neighbours is not None:
        text += (f"; the experiment's epoch {d.ideal_epoch} is {d.experiment_neighbours['ratio']:.2f}x the val-best epoch on "
                 "the experiment's nearest validation samples")
    if s.surviving_share < SURVIVING_SHARE_MIN:
        return Finding(fid, "detected", "warning", f"Choosing the checkpoint on the test case does not generalise: {text}; "
                       "report the val-loss-best (or an ensemble) and keep the experiment for testing.", ev)
    return Finding(fid, "not_detected", "info", f"Per-sample checkpoint choice carries over to similar samples: {text}.", ev)


def ensemble_improves(d: Diagnosis) -> Finding:
    fid = "ensemble_improves"
    t = d.remedies
    best = t.iloc[0]
    mean_row = t.loc[f"mean of the last {d.last_k} checkpoints"]
    ev = {"last_k": d.last_k, "val_error_val_best": best["val_error"], "val_error_mean_ensemble": mean_row["val_error"],
          "experiment_error_val_best": best["experiment_error"], "experiment_error_mean_ensemble": mean_row["experiment_error"],
          "table": t[["val_error", "experiment_error", "experiment_curve_mse"]].to_dict(orient="index")}
    better_val = mean_row["val_error"] < best["val_error"]
    exp_known = np.isfinite(mean_row["experiment_error"]) and np.isfinite(best["experiment_error"])
    not_worse_exp = (not exp_known) or mean_row["experiment_error"] <= best["experiment_error"]
    exp_text = (f", experiment {mean_row['experiment_error']:.3g} vs {best['experiment_error']:.3g}" if exp_known else "")
    text = (f"the mean of the last {d.last_k} checkpoints scores validation {mean_row['val_error']:.4g} vs "
            f"{best['val_error']:.4g} for the val-loss-best checkpoint{exp_text} (standardised MSE)")
    if better_val and not_worse_exp:
        return Finding(fid, "detected", "info", f"The ensemble improves: {text}; use it instead of picking one epoch.", ev)
    return Finding(fid, "not_detected", "info", f"No gain from the ensemble: {text}.", ev)


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
