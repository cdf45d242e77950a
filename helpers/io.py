"""Loading run artifacts with schema checks, and the one error type for bad input.

Every user mistake becomes an :class:`InputError` whose message is one line:
``<parameter>: <file>: <what is wrong>``. In Jupyter and papermill the error
renders as that single line instead of a traceback.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

TABLE_SUFFIXES = (".parquet", ".csv")


class InputError(ValueError):
    """A user mistake in a parameter or an input file, said in one line."""

    def __init__(self, param: str, problem: str, file: str | Path | None = None):
        self.param, self.file, self.problem = param, file, problem
        where = f"{param}: {file}" if file not in (None, "") else param
        super().__init__(f"{where}: {problem}")

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"InputError: {self}"]


def resolve_path(param: str, value: str | Path, suffixes: Sequence[str] = ()) -> Path:
    """An existing file named by a parameter.

    Relative paths are taken from the current working directory first, then
    from the repository root (so the sample-run defaults work from anywhere).
    """
    from helpers.paths import candidates, is_remote, locate

    if not isinstance(value, str | Path) or not str(value).strip():
        raise InputError(param, f"expected a file path, got {value!r}")
    if is_remote(value):
        return fetch(param, str(value).strip(), suffixes)
    found = locate(value, "file")
    if found is None:
        first = candidates(value)[0]
        raise InputError(param, "is a directory, expected a file" if first.is_dir() else "file not found", first)
    if suffixes and found.suffix.lower() not in suffixes:
        raise InputError(param, f"unsupported file type {found.suffix!r}, expected {' or '.join(suffixes)}", found)
    return found


_FETCHED: dict[str, Path] = {}
_FETCH_DIR: Path | None = None
FETCH_TIMEOUT_S = 60  # an HTTP server that stops answering fails in a minute instead of hanging


def fetch(param: str, url: str, suffixes: Sequence[str] = ()) -> Path:
    """A local copy of the file an fsspec URL names (``https://``, ``s3://``...), fetched once per process.

    A name whose suffix is not in ``suffixes`` (when given) is refused before anything is fetched.

    The copy keeps the file's name, so its type is known from the suffix as for a local path,
    and every loader (parquet, npz, torch, TensorBoard) reads it as a local file. Copies live in
    a temporary folder removed when the process exits.
    """
    import atexit
    import hashlib
    import shutil
    import tempfile
    from pathlib import PurePosixPath
    from urllib.parse import urlsplit

    import fsspec

    url_path = urlsplit(url.split("::")[-1]).path
    name = PurePosixPath(url_path).name
    if not name or url_path.endswith("/"):
        raise InputError(param, "a URL must name a file, not a folder", url)
    suffix = PurePosixPath(name).suffix.lower()
    if suffixes and suffix not in suffixes:  # refused before anything is fetched
        raise InputError(param, f"unsupported file type {suffix!r}, expected {' or '.join(suffixes)}", url)
    if url in _FETCHED and _FETCHED[url].is_file():
        return _FETCHED[url]
    global _FETCH_DIR
    if _FETCH_DIR is None:
        _FETCH_DIR = Path(tempfile.mkdtemp(prefix="helpers-inputs-"))
        atexit.register(shutil.rmtree, _FETCH_DIR, ignore_errors=True)
    dest = _FETCH_DIR / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        options = {}
        if url.lower().startswith(("http://", "https://")):
            import aiohttp

            options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(sock_connect=FETCH_TIMEOUT_S,
                                                                         sock_read=FETCH_TIMEOUT_S)}
        with fsspec.open(url, "rb", **options) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    except FileNotFoundError as exc:
        cause = exc.__cause__  # fsspec's HTTP filesystem says "not found" for any failed request
        if cause is None or getattr(cause, "status", None) == 404:
            raise InputError(param, "file not found", url) from None
        raise InputError(param, f"cannot be fetched ({type(cause).__name__}: {first_line(cause)})", url) from None
    except (ImportError, ValueError) as exc:  # no fsspec backend for this protocol (s3fs, gcsfs...)
        raise InputError(param, f"cannot open this URL ({first_line(exc)})", url) from None
    except Exception as exc:  # refused connection, timeout, permission...
        raise InputError(param, f"cannot be fetched ({type(exc).__name__}: {first_line(exc)})", url) from None
    part.replace(dest)
    _FETCHED[url] = dest
    return dest


def load_table(
    param: str,
    value: str | Path,
    required: dict[str, str],
    optional: dict[str, str] | None = None,
    columns: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read a .parquet or .csv table and check its schema.

    ``required`` and ``optional`` map column names to a kind: ``"float"``
    (numeric, finite), ``"int"`` (integer-valued numbers), ``"count"`` (integers >= 0:
    epochs, ranks, worker ids, batch indices), ``"binary"`` (0/1),
    or ``"key"`` (any hashable values, no missing ones). Extra columns are kept.
    """
    path = resolve_path(param, value, TABLE_SUFFIXES)
    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path, columns=list(columns) if columns else None)
        else:
            df = pd.read_csv(path, usecols=list(columns) if columns else None)
    except Exception as exc:  # unreadable, truncated, wrong format
        raise InputError(param, f"cannot be read as a table ({type(exc).__name__}: {first_line(exc)})", path) from None
    if df.empty:
        raise InputError(param, "table has no rows", path)
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns[:12]))
        raise InputError(param, f"missing required column {', '.join(map(repr, missing))} (found: {found})", path)
    for col, kind in {**required, **{k: v for k, v in (optional or {}).items() if k in df.columns}}.items():
        df[col] = check_column(param, path, df[col], col, kind)
    return df


def check_column(param: str, path: Path, s: pd.Series, col: str, kind: str) -> pd.Series:
    if kind == "key":
        if s.isna().any():
            raise InputError(param, f"column '{col}' has {int(s.isna().sum())} missing values", path)
        return s
    if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
        raise InputError(param, f"column '{col}' must be numeric, got dtype {s.dtype}", path)
    values = s.to_numpy(dtype=float, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(param, f"column '{col}' has {int(bad.sum())} NaN/inf values (first at row {first})", path)
    if kind in ("int", "count", "binary") and not np.array_equal(values, np.round(values)):
        raise InputError(param, f"column '{col}' must hold integers", path)
    if kind == "count" and (values < 0).any():
        raise InputError(param, f"column '{col}' must be >= 0, found {values.min():g}", path)
    if kind == "binary" and not np.isin(values, (0, 1)).all():
        raise InputError(param, f"column '{col}' must hold only 0 and 1", path)
    if kind == "float":
        return s.astype(float)
    if kind in ("int", "count", "binary"):
        return s.astype(np.int64)
    raise ValueError(f"unknown column kind {kind!r}")


def load_arrays(param: str, value: str | Path, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Read an .npz file; check required keys are present and numeric arrays are finite.

    Only the ``required`` and ``optional`` arrays are read (extra arrays are ignored); an
    object array among them is refused by name, never unpickled.
    """
    path = resolve_path(param, value, (".npz",))
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            missing = [k for k in required if k not in names]
            if missing:
                raise InputError(param, f"missing required array {', '.join(map(repr, missing))} "
                                        f"(found: {', '.join(names) or 'none'})", path)
            out = {}
            for k in (k for k in names if k in required or k in optional):
                try:
                    out[k] = npz[k]
                except ValueError as exc:
                    if "allow_pickle" not in str(exc):
                        raise
                    raise InputError(param, f"array '{k}' is an object array (pickled Python objects), which is "
                                            "never unpickled: save it as numbers or strings (np.asarray(x, dtype=str))",
                                     path) from None
    except InputError:
        raise
    except Exception as exc:
        raise InputError(param, f"cannot be read as .npz ({type(exc).__name__}: {first_line(exc)})", path) from None
    for k, a in out.items():
        if a.size == 0:
            raise InputError(param, f"array '{k}' is empty", path)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise InputError(param, f"array '{k}' has {int((~np.isfinite(a)).sum())} NaN/inf values", path)
    return out


def check_shape(param: str, path: str | Path, name: str, array: np.ndarray, expected: Sequence[int | None]) -> None:
    """Raise unless ``array.shape`` matches ``expected`` (None matches any size)."""
    ok = array.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, array.shape, strict=False))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise InputError(param, f"array '{name}' has shape {array.shape}, expected {want}", path)


def load_json(param: str, value: str | Path, parse_float=float):
    """Read a JSON file; ``parse_float=str`` keeps numbers as printed."""
    path = resolve_path(param, value, (".json",))
    try:
        return json.loads(path.read_text(), parse_float=parse_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(param, f"is not valid JSON ({first_line(exc)})", path) from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --------------------------------------------------------------------------- training history
# One reader for the per-epoch logs a training run leaves behind: a JSON list of per-epoch
# dicts (or {"history": [...]}, or Keras' {"loss": [...], "val_loss": [...]}), a Hugging Face
# trainer_state.json, a Lightning or Keras CSVLogger metrics.csv, a TensorBoard event file or
# log directory. The result has one row per epoch: epoch, train_loss, val_loss, metric keys.
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
