"""Loading run artifacts with schema checks, and the one error type for bad input.

Every user mistake becomes an :class:`InputError` whose message is one line:
``<parameter>: <file>: <what is wrong>``. In Jupyter and papermill the error
renders as that single line instead of a traceback.
"""

from __future__ import annotations

import json
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
    from .paths import REPO_ROOT

    if not isinstance(value, str | Path) or not str(value).strip():
        raise InputError(param, f"expected a file path, got {value!r}")
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, REPO_ROOT / path]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        what = "is a directory, expected a file" if candidates[0].is_dir() else "file not found"
        raise InputError(param, what, candidates[0])
    if suffixes and found.suffix.lower() not in suffixes:
        raise InputError(param, f"unsupported file type {found.suffix!r}, expected {' or '.join(suffixes)}", found)
    return found.resolve()


def load_table(
    param: str,
    value: str | Path,
    required: dict[str, str],
    optional: dict[str, str] | None = None,
    columns: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Read a .parquet or .csv table and check its schema.

    ``required`` and ``optional`` map column names to a kind: ``"float"``
    (numeric, finite), ``"int"`` (integer-valued numbers), ``"binary"`` (0/1),
    or ``"key"`` (any hashable values, no missing ones). Extra columns are kept.
    """
    path = resolve_path(param, value, TABLE_SUFFIXES)
    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path, columns=list(columns) if columns else None)
        else:
            df = pd.read_csv(path, usecols=list(columns) if columns else None)
    except Exception as exc:  # unreadable, truncated, wrong format
        raise InputError(param, f"cannot be read as a table ({type(exc).__name__}: {_first_line(exc)})", path) from None
    if df.empty:
        raise InputError(param, "table has no rows", path)
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns[:12]))
        raise InputError(param, f"missing required column {', '.join(map(repr, missing))} (found: {found})", path)
    for col, kind in {**required, **{k: v for k, v in (optional or {}).items() if k in df.columns}}.items():
        df[col] = _check_column(param, path, df[col], col, kind)
    return df


def _check_column(param: str, path: Path, s: pd.Series, col: str, kind: str) -> pd.Series:
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
    if kind in ("int", "binary") and not np.array_equal(values, np.round(values)):
        raise InputError(param, f"column '{col}' must hold integers", path)
    if kind == "binary" and not np.isin(values, (0, 1)).all():
        raise InputError(param, f"column '{col}' must hold only 0 and 1", path)
    if kind == "float":
        return s.astype(float)
    if kind in ("int", "binary"):
        return s.astype(np.int64)
    raise ValueError(f"unknown column kind {kind!r}")


def load_arrays(param: str, value: str | Path, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Read an .npz file; check required keys are present and numeric arrays are finite."""
    path = resolve_path(param, value, (".npz",))
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise InputError(param, f"cannot be read as .npz ({type(exc).__name__}: {_first_line(exc)})", path) from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise InputError(param, f"missing required array {', '.join(map(repr, missing))} (found: {', '.join(arrays) or 'none'})", path)
    out = {k: v for k, v in arrays.items() if k in required or k in optional}
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
        raise InputError(param, f"is not valid JSON ({_first_line(exc)})", path) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
