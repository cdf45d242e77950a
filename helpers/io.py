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

    ``required`` and ``optional`` map column names to a kind: ``"float"`` (numeric, finite, as float64),
    ``"real"`` (numeric, finite, its dtype kept: float32 stays float32), ``"int"`` (integer-valued numbers),
    ``"count"`` (integers >= 0: epochs, ranks, worker ids, batch indices), ``"binary"`` (0/1), or ``"key"``
    (any hashable values, no missing ones). Extra columns are kept.
    """
    path = resolve_path(param, value, TABLE_SUFFIXES)
    try:
        if path.suffix.lower() == ".parquet":
            df = pd.read_parquet(path, columns=list(columns) if columns else None)
        else:
            df = pd.read_csv(path, usecols=list(columns) if columns else None)
    except Exception as exc:  # unreadable, truncated, wrong format
        raise InputError(param, f"cannot be read as a table ({type(exc).__name__}: {first_line(exc)})", path) from None
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa

        pa.default_memory_pool().release_unused()  # the Arrow buffers the conversion freed go back to the system
    if df.empty:
        raise InputError(param, "table has no rows", path)
    missing = [c for c in required if c not in df.columns]
    if missing:
        found = ", ".join(map(str, df.columns[:12]))
        raise InputError(param, f"missing required column {', '.join(map(repr, missing))} (found: {found})", path)
    check_columns(param, path, df, {**required, **{k: v for k, v in (optional or {}).items() if k in df.columns}})
    return df


def check_columns(param: str, path: Path, df: pd.DataFrame, kinds: dict[str, str]) -> None:
    """Check the columns ``kinds`` names (:func:`check_column`), putting a column back only when checking changed it:
    assigning one column of a 2-D block splits the block, which copies the table (a large run's float32 features
    would be copied column by column)."""
    for col, kind in kinds.items():
        s = df[col]
        checked = check_column(param, path, s, col, kind)
        if checked is not s:
            df[col] = checked


def check_column(param: str, path: Path, s: pd.Series, col: str, kind: str) -> pd.Series:
    if kind == "key":
        if s.isna().any():
            raise InputError(param, f"column '{col}' has {int(s.isna().sum())} missing values", path)
        return s
    if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
        raise InputError(param, f"column '{col}' must be numeric, got dtype {s.dtype}", path)
    if kind not in ("float", "real", "int", "count", "binary"):
        raise ValueError(f"unknown column kind {kind!r}")
    # a plain numpy column is checked in place (no float64 copy of a large column); nullable ones are converted
    values = s.to_numpy() if isinstance(s.dtype, np.dtype) and s.dtype.kind in "iufb" else \
        s.to_numpy(dtype=float, na_value=np.nan)
    whole = values.dtype.kind in "iub"  # integers and booleans are finite and integral by type
    bad = None if whole else ~np.isfinite(values)
    if bad is not None and bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(param, f"column '{col}' has {int(bad.sum())} NaN/inf values (first at row {first})", path)
    del bad
    if kind in ("int", "count", "binary") and not whole and not np.array_equal(values, np.round(values)):
        raise InputError(param, f"column '{col}' must hold integers", path)
    if kind == "count" and (values < 0).any():
        raise InputError(param, f"column '{col}' must be >= 0, found {values.min():g}", path)
    if kind == "binary" and not ((values == 0) | (values == 1)).all():
        raise InputError(param, f"column '{col}' must hold only 0 and 1", path)
    if kind == "real":
        return s if isinstance(s.dtype, np.dtype) else s.astype(float)
    target = np.dtype(float if kind == "float" else np.int64)
    return s if s.dtype == target else s.astype(target)


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


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez`` without timestamps: the same arrays give the same bytes (the simulators' writer)."""
    import io as _bytes
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            buf = _bytes.BytesIO()
            np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    return path
