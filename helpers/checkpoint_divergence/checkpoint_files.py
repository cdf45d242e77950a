"""Notebook 03's second way in: torch checkpoint files turned into the arrays of a ``checkpoints`` npz.

``checkpoint_files`` (a glob), ``model_factory`` ("module:function" returning the ``nn.Module``)
and ``validation`` (an npz with ``x`` inputs and ``target`` (N, P)). Each file is read with
``torch.load(weights_only=True)``: a checkpoint holding pickled Python objects is refused, never
executed. The validation set (and the experiment) is predicted with every checkpoint; the
diagnosis validates the arrays like a ``checkpoints`` npz
(:meth:`helpers.checkpoint_divergence.diagnosis.CheckpointRun.from_arrays`).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from helpers.checkpoint_divergence import checkpoints as ck
from helpers.io import InputError, first_line, load_arrays, resolve_path
from helpers.params import load_callable

VALIDATION_REQUIRED = ("x", "target")
VALIDATION_OPTIONAL = ("experiment_x", "experiment_target", "train_target", "param_names", "repeat_id", "experiment_curve")


@dataclass
class LoadedCheckpoints:
    """What the checkpoint files give: the npz arrays, and the model with the weights for the weight average."""

    arrays: dict  # pred, target, epoch, val_loss (+ the validation npz's optional arrays)
    paths: list[Path]  # the checkpoint files, as matched
    validation: Path  # the validation npz
    val_x: np.ndarray
    experiment_x: np.ndarray | None
    model: Any
    tail_states: list = field(default_factory=list, repr=False)  # state dicts of the last checkpoints
    val_loss_source: str = "the checkpoints' 'val_loss' entries"


def resolve_glob(param: str, pattern: str) -> list[Path]:
    """Files matching a glob, from the working directory first, then from the repository root.

    A remote fsspec URL pattern (``https://host/run/*.pt``, ``s3://bucket/run/*.pt``) is globbed
    by its filesystem and each match fetched to a local copy.
    """
    from helpers.io import fetch
    from helpers.paths import candidates, glob_files, is_remote

    if is_remote(pattern):
        from fsspec.core import url_to_fs

        try:
            fs, root = url_to_fs(pattern.strip())
            found = sorted(fs.glob(root))
        except Exception as exc:
            raise InputError(param, f"cannot list this URL pattern ({type(exc).__name__}: {first_line(exc)})",
                             pattern) from None
        if not found:
            raise InputError(param, "no file matches this pattern", pattern)
        return [fetch(param, fs.unstrip_protocol(f)) for f in found]
    found = glob_files(pattern)
    if found:
        return found
    roots = candidates(pattern)
    folder = next((r for r in roots if r.is_dir()), None)
    if folder is not None:
        raise InputError(param, f"is a directory: give a glob of its checkpoints, such as {folder / '*.pt'}", folder)
    raise InputError(param, "no file matches this pattern", roots[0])


def read_checkpoint(param: str, path: Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; a pickled object is refused, never executed."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(param, "holds a pickled Python object that torch.load(weights_only=True) refuses to run "
                                f"({first_line(exc)[:120]}); save model.state_dict() instead", path) from None
    except Exception as exc:
        raise InputError(param, f"cannot be read as a torch checkpoint ({type(exc).__name__}: {first_line(exc)})", path) from None


def state_dict_of(param: str, path: Path, obj: Any) -> dict:
    """The state dict in a checkpoint: the object itself, or under 'state_dict', 'model' or 'model_state_dict'."""
    import torch

    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
                return {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    raise InputError(param, "holds no state_dict (expected a dict of tensors, or one under 'state_dict' or 'model')", path)


def match_keys(state: dict, expected: set[str]) -> dict:
    """Strip a prefix such as Lightning's ``model.`` or DDP's ``module.`` when the module's keys lack it."""
    if set(state) == expected or not state:
        return state
    prefixes = sorted({k[:i + 1] for k in state for i, c in enumerate(k) if c == "."}, key=len)
    for pre in prefixes:
        stripped = {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}
        if set(stripped) == expected:
            return stripped
    return state


def epoch_of(param: str, path: Path, obj: Any) -> int:
    """The checkpoint's 'epoch' entry, else the last number in its file name."""
    if isinstance(obj, Mapping) and "epoch" in obj:
        e = obj["epoch"]
        e = e.item() if hasattr(e, "item") else e
        if isinstance(e, int | float) and float(e).is_integer():
            return int(e)
    digits = re.findall(r"\d+", path.stem)
    if digits:
        return int(digits[-1])
    raise InputError(param, "has no 'epoch' entry and no number in its file name to take the epoch from", path)




def load_checkpoint_files(pattern: str, factory_spec: str, validation: str, keep_last: int = 5,
                          timeout: float | None = None) -> LoadedCheckpoints:
    """Load every checkpoint, predict the validation set (and the experiment), build the npz arrays."""
    import torch

    paths = resolve_glob("checkpoint_files", pattern)
    if len(paths) < 2:
        raise InputError("checkpoint_files", f"matches {len(paths)} checkpoint file; need at least 2 to compare "
                                             "checkpoints", paths[0])
    if not factory_spec.strip():
        raise InputError("model_factory", "is required with checkpoint_files: 'module:function' returning the nn.Module")
    if not validation.strip():
        raise InputError("validation", "is required with checkpoint_files: an npz with 'x' inputs and 'target' (N, P)")
    factory = load_callable("model_factory", factory_spec, timeout)
    try:
        model = factory()
    except Exception as exc:
        raise InputError("model_factory", f"raised {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(model, torch.nn.Module):
        raise InputError("model_factory", f"returned {type(model).__name__}, expected a torch.nn.Module")
    vpath = resolve_path("validation", validation, (".npz",))
    v = load_arrays("validation", vpath, VALIDATION_REQUIRED, VALIDATION_OPTIONAL)
    x, target = v["x"], v["target"]
    if x.dtype.kind not in "iuf" or target.dtype.kind not in "iuf":
        raise InputError("validation", "arrays 'x' and 'target' must be numeric", vpath)
    if target.ndim != 2 or len(x) != len(target):
        raise InputError("validation", f"'target' has shape {target.shape} and 'x' {x.shape}: expected (N, P) and (N, ...)", vpath)
    expected = set(model.state_dict())
    loaded = []
    for path in paths:
        obj = read_checkpoint("checkpoint_files", path)
        logged = obj.get("val_loss") if isinstance(obj, Mapping) else None
        logged = logged.item() if hasattr(logged, "item") else logged
        loaded.append((epoch_of("checkpoint_files", path, obj), path,
                       match_keys(state_dict_of("checkpoint_files", path, obj), expected),
                       float(logged) if isinstance(logged, int | float) and np.isfinite(logged) else None))
    loaded.sort(key=lambda t: t[0])
    epochs = [t[0] for t in loaded]
    if len(set(epochs)) != len(epochs):
        dup = next(e for e in epochs if epochs.count(e) > 1)
        raise InputError("checkpoint_files", f"two files are epoch {dup}; each checkpoint needs its own epoch", paths[0].parent)
    exp_x = v.get("experiment_x")
    if exp_x is not None and exp_x.shape != x.shape[1:]:
        raise InputError("validation", f"'experiment_x' has shape {exp_x.shape}, expected {x.shape[1:]} like one row of 'x'", vpath)
    preds, exp_preds = [], []
    for _, path, state, _ in loaded:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise InputError("checkpoint_files", f"does not fit the model from model_factory: {first_line(exc)[:200]}", path) from None
        out = ck.predict(model, x)
        if out.shape != target.shape:
            raise InputError("checkpoint_files", f"the model predicts shape {out.shape} for 'x', but 'target' is {target.shape}", path)
        if not np.isfinite(out).all():
            raise InputError("checkpoint_files", f"with these weights the model predicts {int((~np.isfinite(out)).sum())} "
                                                 "NaN/inf values for 'x' (a diverged checkpoint?)", path)
        preds.append(out)
        if exp_x is not None:
            exp_preds.append(ck.predict(model, exp_x[None])[0])
    pred = np.stack(preds)
    logged = [t[3] for t in loaded]
    if all(x is not None for x in logged):  # the 'val_loss' each checkpoint carries
        val_loss, val_loss_source = np.array(logged), "the checkpoints' 'val_loss' entries"
    else:  # not logged: the standardised validation MSE stands in for it
        scale = ck.fit_scaler(v["train_target"] if v.get("train_target") is not None and np.ndim(v["train_target"]) == 2
                              else target).scale_
        val_loss = ck.checkpoint_mse(ck.per_sample_errors(pred, target, scale))
        val_loss_source = "standardised validation MSE (the checkpoints hold no 'val_loss')"
    arrays = {"pred": pred, "target": target, "epoch": np.array(epochs), "val_loss": val_loss}
    if exp_x is not None:
        arrays["experiment_pred"] = np.stack(exp_preds)
        arrays.setdefault("experiment_curve", v.get("experiment_curve"))
    for key in ("train_target", "experiment_target", "param_names", "repeat_id", "experiment_curve"):
        if v.get(key) is not None:
            arrays[key] = v[key]
    return LoadedCheckpoints({k: a for k, a in arrays.items() if a is not None}, paths, vpath, x, exp_x, model,
                             [t[2] for t in loaded[-keep_last:]], val_loss_source)
