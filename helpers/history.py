"""The one reader of training logs, for any notebook: per-epoch train loss, val loss and metrics.

A training run leaves its per-epoch log in many forms: a JSON list of per-epoch dicts (or
``{"history": [...]}``, or Keras' ``{"loss": [...], "val_loss": [...]}``), a Hugging Face
``trainer_state.json``, a Lightning or Keras ``CSVLogger`` metrics.csv, a TensorBoard event file
or log directory. :func:`load_history` reads them all into one table, one row per epoch:
``epoch``, ``train_loss``, ``val_loss``, the metric keys (``tpr@fpr1e-4``...), then any other
numeric column.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.io import InputError, fetch, first_line, load_json

METRIC_KEY = re.compile(r"(?P<rate>tpr|fpr)@(?P<at>tpr|fpr)(?P<value>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")
_TRAIN_LOSS = ("train_loss_epoch", "train_loss", "train/loss", "loss/train", "training_loss", "train_loss_step", "loss")
_VAL_LOSS = ("val_loss", "val/loss", "loss/val", "loss/validation", "eval_loss", "eval/loss", "valid_loss",
             "validation_loss", "validation/loss")
_PREFIXES = ("val_", "val/", "valid_", "valid/", "validation_", "validation/", "eval_", "eval/", "test_", "metrics/")


def parse_metric_key(key: str) -> tuple[str, str, float] | None:
    """``"tpr@fpr1e-4"`` -> ``("tpr", "fpr", 1e-4)``; None when ``key`` is not such a metric.

    Known prefixes (``val_``, ``eval_``, ``val/``...) are ignored; the rate and the
    target must differ (``tpr@fpr``, ``fpr@tpr``) and the value must lie in (0, 1).
    """
    name = _strip_prefix(str(key).strip())
    m = METRIC_KEY.match(name)
    if not m or m["rate"] == m["at"]:
        return None
    value = float(m["value"])
    return (m["rate"], m["at"], value) if 0 < value < 1 else None


def _strip_prefix(name: str) -> str:
    for p in _PREFIXES:
        if name.lower().startswith(p):
            return name[len(p):]
    return name


def _canonical_columns(columns) -> dict[str, str]:
    """{original name: history column}: losses to train_loss/val_loss, metric keys without prefixes."""
    cols = [str(c) for c in columns]
    lower = {c.lower(): c for c in cols}
    out = {}
    for target, names in (("train_loss", _TRAIN_LOSS), ("val_loss", _VAL_LOSS)):
        hit = next((lower[n] for n in names if n in lower), None)
        if hit is not None:
            out[hit] = target
    # a validation metric wins over the training metric of the same key (Keras logs both)
    for c in sorted(cols, key=lambda c: _strip_prefix(c) == c):
        if c in out:
            continue
        if parse_metric_key(c) is not None:
            out[c] = _strip_prefix(c)
        elif c.lower() not in _TRAIN_LOSS + _VAL_LOSS:
            out[c] = c
    return {c: out[c] for c in cols if c in out}


def _history_frame(param: str, path: Path, df: pd.DataFrame) -> pd.DataFrame:
    """Group rows by epoch (last logged value of each column), canonical names, checks."""
    if df.empty:
        raise InputError(param, "history has no entries", path)
    if "epoch" not in df.columns:
        df = df.assign(epoch=np.arange(len(df)))
    epoch = pd.to_numeric(df["epoch"], errors="coerce")
    if epoch.isna().all():
        raise InputError(param, "no numeric 'epoch' values", path)
    _refuse_words(param, path, df["epoch"], epoch, "epoch")
    if np.isinf(epoch.to_numpy(dtype=float, na_value=np.nan)).any():
        raise InputError(param, "'epoch' has infinite values", path)
    df = df.loc[epoch.notna()].assign(epoch=epoch[epoch.notna()])
    if not np.allclose(df["epoch"], np.round(df["epoch"])):
        raise InputError(param, "'epoch' must hold whole epochs", path)
    df["epoch"] = np.round(df["epoch"]).astype(np.int64)
    names = _canonical_columns([c for c in df.columns if c != "epoch"])
    numeric = {}
    for orig, new in sorted(names.items(), key=lambda kv: _strip_prefix(kv[0]) == kv[0]):
        if new in numeric:
            continue
        s = pd.to_numeric(df[orig], errors="coerce") if df[orig].dtype == object else df[orig]
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            continue  # text columns are not history values
        if new in ("train_loss", "val_loss") or parse_metric_key(new):  # the values read: a word is no number
            _refuse_words(param, path, df[orig], s, orig)
        if np.isinf(s.to_numpy(dtype=float, na_value=np.nan)).any() and parse_metric_key(new):
            raise InputError(param, f"'{orig}' has infinite values", path)
        numeric[new] = s.astype(float)
    table = pd.DataFrame({"epoch": df["epoch"].to_numpy(), **{k: v.to_numpy() for k, v in numeric.items()}})
    # the last logged value of each column within an epoch (NaN-interleaved CSVLogger rows)
    grouped = table.groupby("epoch", sort=True).last().reset_index()
    for col in ("train_loss", "val_loss"):
        if col not in grouped.columns:
            grouped[col] = np.nan
    metric_cols = sorted((c for c in grouped.columns if parse_metric_key(c)), key=lambda c: parse_metric_key(c))
    for c in metric_cols:
        v = grouped[c].dropna()
        if ((v < 0) | (v > 1)).any():
            raise InputError(param, f"'{c}' must be a rate in [0, 1] (percentages? divide by 100), got {v.max():g}",
                             path)
    others = [c for c in grouped.columns if c not in ("epoch", "train_loss", "val_loss", *metric_cols)]
    return grouped[["epoch", "train_loss", "val_loss", *metric_cols, *others]]


def _read_history_json(param: str, path: Path) -> pd.DataFrame:
    data = load_json(param, path)
    if isinstance(data, dict) and "log_history" in data:
        return _huggingface_history(param, path, data["log_history"])
    if isinstance(data, dict) and "history" in data:
        data = data["history"]
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) != 1:
            raise InputError(param, "history lists have different lengths", path)
        return pd.DataFrame(data)  # Keras' History.history: {"loss": [...], "val_loss": [...]}
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError(param, "expected a list of per-epoch objects, {\"history\": [...]}, or a Hugging Face "
                                "trainer_state.json with log_history", path)
    return pd.DataFrame(data)


def _refuse_words(param: str, path: Path, raw: pd.Series, numbers: pd.Series, name: str) -> None:
    """Refuse a value that is given (not missing, not blank) but is no number."""
    text = raw.astype(str).str.strip()
    bad = numbers.isna() & raw.notna() & (text != "")
    if bad.any():
        raise InputError(param, f"'{name}' must be numeric, found {str(raw[bad].iloc[0])!r} in {int(bad.sum())} "
                                "entries", path)


def _huggingface_history(param: str, path: Path, log: list) -> pd.DataFrame:
    """trainer_state.json: train entries ("loss", fractional epoch) and eval entries ("eval_*") per epoch.

    Epochs are the trainer's (1 = end of the first epoch); the train loss of an epoch is the
    mean of the "loss" entries logged during it. The final summary entry (train_runtime) is skipped.
    """
    if not isinstance(log, list) or not all(isinstance(r, dict) for r in log):
        raise InputError(param, "log_history must be a list of objects", path)
    rows: dict[int, dict] = {}
    train: dict[int, list] = {}

    def number(r: dict, key: str, i: int, finite: bool) -> float:  # a diverged run may log a NaN loss
        v = r[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or (finite and not math.isfinite(v)):
            what = "a finite number" if finite else "a number"
            raise InputError(param, f"log_history entry {i}: '{key}' must be {what}, got {v!r}", path)
        return float(v)

    for i, r in enumerate(log):
        if "epoch" not in r or "train_runtime" in r:
            continue
        e = number(r, "epoch", i, finite=True)
        if any(k.startswith("eval_") for k in r):
            row = rows.setdefault(int(round(e)), {})
            row.update({k: v for k, v in r.items() if k.startswith("eval_")})
        elif "loss" in r:
            train.setdefault(int(math.ceil(e - 1e-9)), []).append(number(r, "loss", i, finite=False))
    for e, losses in train.items():
        rows.setdefault(e, {})["train_loss"] = float(np.mean(losses))
    if not rows:
        raise InputError(param, "log_history has no train or eval entries with an 'epoch'", path)
    return pd.DataFrame([{"epoch": e, **v} for e, v in sorted(rows.items())])


def _tensorboard_history(param: str, path: Path) -> pd.DataFrame:
    """Scalars of a TensorBoard event file or run directory; step is the epoch unless an 'epoch' scalar exists."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    try:
        acc = EventAccumulator(str(path), size_guidance={SCALARS: 0})
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
    except Exception as exc:
        raise InputError(param, f"cannot be read as TensorBoard events ({type(exc).__name__}: {first_line(exc)})",
                         path) from None
    if not tags:
        raise InputError(param, "no TensorBoard scalars found", path)
    series = {t: pd.Series({e.step: e.value for e in acc.Scalars(t)}, dtype=float) for t in tags}
    df = pd.DataFrame(series).sort_index()
    if "epoch" in df.columns:  # Lightning's TensorBoardLogger logs the epoch as a scalar per step
        epoch = df["epoch"].ffill().bfill()
        df = df.drop(columns="epoch").assign(epoch=epoch.to_numpy())
    else:
        df = df.assign(epoch=df.index.to_numpy())
    return df.reset_index(drop=True)


def load_history(param: str, value: str | Path) -> pd.DataFrame:
    """A training run's per-epoch log, whatever wrote it: one row per epoch.

    Columns: ``epoch`` (int), ``train_loss``, ``val_loss`` (NaN where not logged), the metric
    keys ``tpr@fpr<x>`` / ``fpr@tpr<x>`` found (prefixes such as ``val_`` removed; rates in
    [0, 1]), then any other numeric column. See :func:`parse_metric_key`.
    """
    from helpers.paths import candidates, is_remote, locate

    if not isinstance(value, str | Path) or not str(value).strip():
        raise InputError(param, f"expected a file or directory path, got {value!r}")
    path = fetch(param, str(value).strip()) if is_remote(value) else locate(value, "any")
    if path is None:
        raise InputError(param, "file not found", candidates(value)[0])
    if path.is_dir():
        if not any(p.name.startswith("events.out.tfevents") for p in path.iterdir()):
            raise InputError(param, "a directory must hold TensorBoard event files (events.out.tfevents.*)", path)
        df = _tensorboard_history(param, path)
    elif "tfevents" in path.name:
        df = _tensorboard_history(param, path)
    elif path.suffix.lower() == ".json":
        df = _read_history_json(param, path)
    elif path.suffix.lower() == ".csv":
        try:
            df = pd.read_csv(path)
        except Exception as exc:
            raise InputError(param, f"cannot be read as CSV ({type(exc).__name__}: {first_line(exc)})", path) from None
    else:
        raise InputError(param, f"unsupported history file {path.name!r}: expected .json, .csv, a TensorBoard "
                                "event file or log directory", path)
    return _history_frame(param, path, df)
