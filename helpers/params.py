"""Checks for notebook parameters: types, ranges, and "module:function" callables."""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
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


class CallableTimeout(BaseException):
    """A user's callable ran past ``callable_timeout``.

    A BaseException, not an Exception: neither the user's own ``except Exception`` inside the
    callable nor ours around it can swallow it. Jupyter and papermill show it as one line.
    """

    def __init__(self, param: str, seconds: float):
        self.param, self.seconds = param, seconds
        super().__init__(f"{param}: did not return within {seconds:g} s (callable_timeout); it may loop or wait "
                         "forever: fix it, or raise callable_timeout if it is only slow")

    def _render_traceback_(self) -> list[str]:
        return [f"InputError: {self}"]


@contextmanager
def time_limit(param: str, seconds: float | None):
    """Raise :class:`CallableTimeout` naming ``param`` when the block runs past ``seconds``.

    SIGALRM, so it needs the main thread (a kernel's cells run there; elsewhere it does nothing).
    An enclosing timer (a test's own deadline) is kept: it is re-armed with what it had left.
    """
    import signal
    import threading
    import time

    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise CallableTimeout(param, seconds)

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if outer > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3))


def guarded(fn: Callable, param: str, seconds: float | None) -> Callable:
    """``fn`` under :func:`time_limit`: each call may take ``seconds`` at most."""
    import functools

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with time_limit(param, seconds):
            return fn(*args, **kwargs)

    return call


def load_file_module(path: str | Path, module_name: str | None = None):
    """Import the Python file ``path`` as a module of its own, writing nothing beside it: the file is the
    user's (or the sample run's), so no ``__pycache__`` is left in its folder."""
    import sys

    spec = importlib.util.spec_from_file_location(module_name or Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    before, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = before
    return module


def load_callable(name: str, spec: str, timeout: float | None = None) -> Callable:
    """Import ``"pkg.mod:fn"`` or ``"path/to/file.py:fn"`` and return the callable.

    With ``timeout`` (seconds, the notebook's ``callable_timeout``), importing the module and each
    call of the returned callable are bounded: past it, :class:`CallableTimeout` names ``name``.
    """
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise InputError(name, f"expected 'module:function' or 'path/to/file.py:function', got {spec!r}")
    target, _, attr = spec.rpartition(":")
    from helpers.paths import is_remote

    if is_remote(target) or is_remote(spec):
        raise InputError(name, f"code is imported from local files or installed modules only, not from a URL: {spec!r}")
    try:
        with time_limit(name, timeout):
            if target.endswith(".py"):
                from helpers.io import resolve_path

                module = load_file_module(resolve_path(name, target))
            else:
                module = importlib.import_module(target)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(name, f"cannot import {target!r} ({type(exc).__name__}: {exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InputError(name, f"{target!r} has no callable named {attr!r}")
    return guarded(fn, name, timeout) if timeout else fn


def notebook_defaults(notebook: str) -> dict[str, Any]:
    """The literal defaults of a notebook's ``parameters`` cell (read with ``ast``, nothing executed).

    The parameters cell is the one place a default is written; the companion rule below compares
    a parameter with it to tell whether the user left it at the bundled sample's value.
    """
    import ast
    import json

    from helpers.paths import NOTEBOOKS

    nb = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {node.target.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.AnnAssign)}


def _at_sample(value: Any, default: Any) -> bool:
    """True when ``value`` is the notebook's sample default, or names a file of the bundled sample runs."""
    from helpers.findings import input_files
    from helpers.paths import is_sample

    if isinstance(value, float) and isinstance(default, float) and math.isnan(value) and math.isnan(default):
        return False  # nan: "unknown", never the sample's
    if value == default and value not in ("", [], None):
        return True
    files = list(input_files({"v": value}).values())
    return bool(files) and all(is_sample(f) for f in files)


def _empty(value: Any) -> Any:
    return [] if isinstance(value, list | tuple) else (math.nan if isinstance(value, float) else "")


def drop_sample_companions(params: dict[str, Any], notebook: str, required: Sequence[str],
                           optional: Sequence[str]) -> dict[str, str]:
    """The one rule for the sample's companion files, in every notebook.

    When a ``required`` input is the user's, every ``optional`` input still at the bundled sample's
    default is not used: it is set to its empty value in ``params`` (so the checks that need it are
    not applicable) and returned as ``{parameter: how to give yours}``, for the banner and
    summary.json's ``dropped``. A required input still at the sample while another input (required
    or optional) is the user's is refused in one line: that would diagnose a chimera. With every
    input at the sample (the sample run), nothing changes.
    """
    defaults = notebook_defaults(notebook)

    def given(name: str) -> bool:
        v = params.get(name, "")
        return not (isinstance(v, float) and math.isnan(v)) and str(v).strip() not in ("", "[]")

    yours = [n for n in [*required, *optional] if given(n) and not _at_sample(params[n], defaults.get(n))]
    if not yours:
        return {}  # the bundled sample run, as it ships
    for name in required:
        if given(name) and _at_sample(params[name], defaults.get(name)):
            raise InputError(name, f"still points at the bundled sample run while {yours[0]} is yours: pass your "
                                   f"run's file for '{name}' too")
    mine = [n for n in required if n in yours]
    if not mine:
        return {}
    dropped = {}
    for name in optional:
        if name in params and _at_sample(params[name], defaults.get(name)):
            how = "a number" if isinstance(defaults.get(name), float) else ("a list" if isinstance(defaults.get(name), list)
                                                                            else "your file")
            dropped[name] = (f"left at the bundled sample's value, not used with your {mine[0]}: "
                             f"give {how} with -p {name} ...")
            params[name] = _empty(params[name])
    return dropped
