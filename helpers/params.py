"""Checks for notebook parameters: types, ranges, and "module:function" callables."""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from helpers.io import InputError

_TYPE_NAMES = {bool: "a bool (True/False)", int: "an integer", float: "a number", str: "a string", list: "a list"}


def check_types(params: Mapping[str, Any], spec: Mapping[str, type]) -> dict[str, Any]:
    """Check each parameter against its declared type; return them with ints widened to float where declared.

    bool is not accepted for int/float (``True`` as a seed is a mistake), but an
    int is accepted for a float parameter, and a list parameter accepts the text of a
    YAML/JSON list. A name papermill injected that ``spec`` does not declare is refused.
    """
    check_injected(spec)
    out = dict(params)
    for name, kind in spec.items():
        if name not in params:
            raise InputError(name, "parameter is missing")
        v = params[name]
        if kind is list and isinstance(v, str):  # papermill's -p passes a list as its text
            out[name] = v = parse_list(name, v)
        ok = isinstance(v, kind) and not (kind in (int, float) and isinstance(v, bool))
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            out[name], ok = float(v), True
        if not ok:
            raise InputError(name, f"expected {_TYPE_NAMES.get(kind, kind.__name__)}, got {v!r} ({type(v).__name__})")
    return out


def parse_list(name: str, text) -> list:
    """A list parameter: a list as given, or the YAML/JSON text of one (``"[1e-4, 1e-3]"``, ``"[]"``,
    ``"[a.npz, b.npz]"``), since papermill's ``-p`` passes lists as text. The one parser for lists."""
    import yaml

    if isinstance(text, list | tuple):
        return list(text)
    if not isinstance(text, str):
        raise InputError(name, f"expected a list like [1e-4, 1e-3], got {text!r} ({type(text).__name__})")

    try:
        value = yaml.safe_load(text) if text.strip() else []
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise InputError(name, f"expected a list like [1e-4, 1e-3], could not parse {text!r} ({problem})") from None
    if not isinstance(value, list):
        raise InputError(name, f"expected a list like [1e-4, 1e-3], got {text!r}")
    # YAML 1.1 reads 1e-4 (no dot) as a string: take such items as the numbers they spell
    return [_number_or_text(v) for v in value]


def _number_or_text(v):
    if isinstance(v, str):
        try:
            return float(v) if any(c in v.lower() for c in ".e") and not v.lower().startswith(("inf", "nan")) else v
        except ValueError:
            return v
    return v


PAPERMILL_INJECTED_HEADER = "# Parameters"


def check_injected(declared, notebook: str = "this notebook") -> None:
    """Refuse a parameter that papermill injected but the notebook does not declare.

    papermill puts the ``-p`` values in a cell of its own that starts with ``# Parameters``;
    under IPython its source is in the input history, so a misspelt ``predictionz`` is caught
    here instead of silently diagnosing the bundled sample run. Outside IPython, or when no
    parameters were injected (JupyterLab), this does nothing.
    """
    import ast
    import difflib

    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    history = ip.user_ns.get("In", []) if ip is not None else []
    source = next((s for s in reversed(history) if s.lstrip().startswith(PAPERMILL_INJECTED_HEADER)), None)
    if source is None:
        return
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return
    injected = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                if isinstance(t, ast.Name)]
    declared = list(declared)
    for name in injected:
        if name not in declared:
            close = difflib.get_close_matches(name, declared, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(name, f"is not a parameter of {notebook}{hint}; its parameters are: "
                                   f"{', '.join(declared)}")


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
    from helpers.paths import is_remote

    if is_remote(target) or is_remote(spec):
        raise InputError(name, f"code is imported from local files or installed modules only, not from a URL: {spec!r}")
    try:
        if target.endswith(".py"):
            from helpers.io import resolve_path

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


def check_not_mixed(params: Mapping[str, Any], names) -> None:
    """Refuse a run that mixes the user's files with the bundled sample run's.

    When the user points one input (of ``names``, the parameters this execution reads) at their
    own file but leaves another at its sample default, the notebook would diagnose a chimera,
    e.g. the user's predictions against the sample's logged numbers. One line names the
    parameter still at the sample and the one that is the user's.
    """
    from helpers.findings import input_files
    from helpers.paths import DATA_SAMPLES, is_sample

    files = input_files({k: params[k] for k in names if k in params})
    mine = [k for k, p in files.items() if not is_sample(p)]
    sample = [k for k, p in files.items() if is_sample(p)]
    if mine and sample:
        name = sample[0]
        rel = files[name].relative_to(DATA_SAMPLES.resolve().parent)
        raise InputError(name.split("[")[0], f"still points at the bundled sample run ({rel}) while {mine[0]} is your "
                                             f"file: pass your run's file for '{name.split('[')[0]}' too, or \"\" / [] "
                                             "if you have none")
