"""Checks for notebook parameters: types, ranges, and "module:function" callables."""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .io import InputError

_TYPE_NAMES = {bool: "a bool (True/False)", int: "an integer", float: "a number", str: "a string", list: "a list"}


def check_types(params: Mapping[str, Any], spec: Mapping[str, type]) -> dict[str, Any]:
    """Check each parameter against its declared type; return them with ints widened to float where declared.

    bool is not accepted for int/float (``True`` as a seed is a mistake), but an
    int is accepted for a float parameter.
    """
    out = dict(params)
    for name, kind in spec.items():
        if name not in params:
            raise InputError(name, "parameter is missing")
        v = params[name]
        ok = isinstance(v, kind) and not (kind in (int, float) and isinstance(v, bool))
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            out[name], ok = float(v), True
        if not ok:
            raise InputError(name, f"expected {_TYPE_NAMES.get(kind, kind.__name__)}, got {v!r} ({type(v).__name__})")
    return out


def check_range(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
    """Raise unless ``low <= value <= high`` (either bound may be None)."""
    if isinstance(value, float) and math.isnan(value):
        raise InputError(name, "must not be NaN")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise InputError(name, f"must be in [{lo}, {hi}], got {value!r}")


def load_callable(name: str, spec: str) -> Callable:
    """Import ``"pkg.mod:fn"`` or ``"path/to/file.py:fn"`` and return the callable."""
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise InputError(name, f"expected 'module:function' or 'path/to/file.py:function', got {spec!r}")
    target, _, attr = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            from .io import resolve_path

            path = resolve_path(name, target)
            mod_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(name, f"cannot import {target!r} ({type(exc).__name__}: {exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InputError(name, f"{target!r} has no callable named {attr!r}")
    return fn
