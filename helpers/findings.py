"""Findings and summary.json: the same schema for every notebook (docs/README.md describes it)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

SCHEMA_VERSION = 2  # 2: each finding carries its action; a top-level 'dropped'
Status = Literal["detected", "not_detected", "not_applicable"]
Severity = Literal["critical", "warning", "info"]
STATUSES = ("detected", "not_detected", "not_applicable")
SEVERITIES = ("critical", "warning", "info")


@dataclass
class Finding:
    """One checked hypothesis: its status, how bad, what to do, and the numbers behind it."""

    id: str
    status: Status
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    action: str = ""  # what to change in the training code, with the number behind it ("" unless detected)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        if self.status == "not_detected" and self.severity != "info":  # severity grades what was found
            raise ValueError(f"{self.id}: a finding that was not detected has severity 'info', got {self.severity!r}")
        if not self.message or "\n" in self.message:
            raise ValueError("message must be one non-empty line")
        if self.status != "detected" and self.action:
            raise ValueError(f"{self.id}: only a detected finding carries an action")

    @property
    def detected(self) -> bool:
        return self.status == "detected"

    def _repr_markdown_(self) -> str:
        """The finding as one Markdown line; the message is escaped (it may quote names from the user's files)."""
        import html

        mark = {"detected": "⚠️" if self.severity != "info" else "ℹ️", "not_detected": "✅", "not_applicable": "➖"}
        return f"{mark[self.status]} **{self.status}** ({self.severity}) `{self.id}`: {html.escape(self.message)}"


def not_applicable(finding_id: str, message: str, severity: Severity = "info") -> Finding:
    """The input lacks what the check needs; ``message`` says which column or file."""
    return Finding(finding_id, "not_applicable", severity, message)


class Summary:
    """Collects a notebook's parameters, findings and headline metrics; writes summary.json.

    ``dropped``: the optional inputs left at the bundled sample's value and not used
    (:func:`helpers.params.drop_sample_companions`), each with how to give yours.
    """

    def __init__(self, notebook: str, parameters: dict[str, Any], dropped: dict[str, str] | None = None):
        self.notebook = notebook
        self.parameters = dict(parameters)
        self.dropped = dict(dropped or {})
        self.findings: dict[str, Finding] = {}
        self.metrics: dict[str, Any] = {}
        self.inputs = input_files(self.parameters)

    @property
    def sample_run(self) -> bool:
        """True when every input read is a file of the bundled sample runs."""
        from helpers.paths import is_sample

        return bool(self.inputs) and all(is_sample(p) for p in self.inputs.values())

    def describe_inputs(self) -> str:
        """Which files this execution reads (see :func:`describe_inputs`)."""
        return describe_inputs(self.inputs)

    def add(self, *findings: Finding) -> None:
        """Record findings; a detected one must say what to change (its ``action``): a diagnosis may
        build a finding first and attach the action from the measurements after, but never records it bare."""
        for f in findings:
            if f.detected and not f.action.strip():
                raise ValueError(f"{f.id}: a detected finding is recorded without an action (what to change)")
            self.findings[f.id] = f

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "notebook": self.notebook,
            "schema_version": SCHEMA_VERSION,
            "parameters": self.parameters,
            "inputs": {k: str(v) for k, v in self.inputs.items()},
            "sample_run": self.sample_run,
            "findings": {k: {kk: vv for kk, vv in asdict(f).items() if kk != "id"} for k, f in self.findings.items()},
            "metrics": self.metrics,
            "dropped": self.dropped,
        })

    def write(self, output_dir: str | Path) -> Path:
        """Write summary.json atomically: a crash never leaves a partial file that looks complete."""
        import os
        import tempfile

        path = Path(output_dir) / "summary.json"
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".summary.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def table(self) -> pd.DataFrame:
        return verdict_table(self.findings.values())


# printed where a notebook's mechanism lab starts when run_demos is False: the Markdown of the lab and
# the exercises stays on the page, so the page says why nothing is under it
DEMOS_OFF = ("Not run (run_demos is False): the mechanism lab and the exercises below say what they show when "
             "they run; execute with -p run_demos True to see their tables and figures.")


SAMPLE_BANNER = (">>> These are the BUNDLED SAMPLE RUN's files, not your run: override the parameters "
                 "(papermill -p NAME FILE) to diagnose yours. <<<")


def describe_inputs(inputs: dict[str, Path | str], details=(), notes=(), dropped: dict[str, str] | None = None) -> str:
    """The one "which files were read" banner every notebook prints first.

    ``inputs`` maps parameters to the files they named (see :func:`input_files`; a list or glob
    parameter appears as ``name[i]``, shown as one line with a count). A file of the bundled
    sample runs is marked; when every input is one, a loud line says so; when only some are, a
    note names them. ``details`` (what was found in the files) and ``notes`` follow.
    """
    from helpers.paths import is_sample

    groups: dict[str, list] = {}
    for key, path in inputs.items():
        groups.setdefault(key.split("[")[0], []).append(path)
    lines = []
    for name, paths in groups.items():
        shown = str(paths[0]) if len(paths) == 1 else f"{paths[0]} ... ({len(paths)} files)"
        lines.append(f"  {name}: {shown}" + ("  [bundled sample]" if all(is_sample(p) for p in paths) else ""))
    sample = [n for n, paths in groups.items() if all(is_sample(p) for p in paths)]
    head = [SAMPLE_BANNER] if sample and len(sample) == len(groups) else []
    tail = [f"note: {', '.join(sample)} still point(s) at the bundled sample run"] if sample and head == [] else []
    body = ["inputs read:", *lines] if lines else ["inputs read: none"]
    unused = [f"not used: {name} ({how})" for name, how in (dropped or {}).items()]
    return "\n".join([*head, *body, *(f"  {d}" for d in details), *tail, *(f"note: {n}" for n in notes), *unused])


WRITTEN = ".written.json"  # in an output directory: the files the last execution wrote there


def record_written(output_dir: str | Path, path: str | Path) -> None:
    """Note that an execution wrote ``path`` into ``output_dir`` (so that the next one removes it)."""
    record = Path(output_dir) / WRITTEN
    try:
        names = json.loads(record.read_text()) if record.exists() else []
    except ValueError:
        names = []
    rel = Path(path).resolve().relative_to(Path(output_dir).resolve()).as_posix()
    if rel not in names:
        record.write_text(json.dumps(names + [rel], indent=0) + "\n")


def _remove_written(out: Path) -> None:
    """Remove the files the previous execution recorded as its own, and nothing else."""
    record = out / WRITTEN
    try:
        names = json.loads(record.read_text()) if record.exists() else []
    except ValueError:
        names = []
    root = out.resolve()
    for name in names if isinstance(names, list) else []:
        path = (root / str(name)).resolve()
        if path.is_relative_to(root) and path.is_file():  # never outside the output directory
            path.unlink()
    record.unlink(missing_ok=True)


def start_output(notebook: str, output_dir: Any = "") -> Path:
    """Where an execution writes summary.json and figures (see :func:`helpers.paths.output_dir_for`),
    with what the previous execution wrote there removed.

    A notebook calls this first, before it checks its inputs: a summary.json in the directory is
    then always this execution's, written by :meth:`Summary.write` when it completes, and a run
    that stops on a bad input leaves none behind (not an older one that looks like its result).
    The figures an earlier execution saved there (recorded in ``.written.json``) go too, so a
    re-run never leaves a stale figure beside the new ones; files it did not write stay.
    """
    from helpers.io import InputError
    from helpers.paths import output_dir_for

    if not isinstance(output_dir, str | Path):
        raise InputError("output_dir", f"expected a directory path (a string), got {output_dir!r}")
    try:
        out = output_dir_for(notebook, output_dir)
        (out / "summary.json").unlink(missing_ok=True)
        _remove_written(out)
    except OSError as exc:
        where = Path(exc.filename) if getattr(exc, "filename", None) else Path(str(output_dir))
        what = "is a file, expected a directory" if where.is_file() else \
            f"cannot be used as the output directory ({type(exc).__name__}: {exc.strerror or exc})"
        raise InputError("output_dir", what, where) from None
    return out


def input_files(parameters: dict[str, Any]) -> dict[str, Path | str]:
    """The files that parameters name: {parameter (or parameter[i] in a list): resolved path}.

    A string counts when it is an existing file, taken from the working directory first and
    then from the repository root (as the loaders do); ``"file.py:function"`` counts its file;
    a remote fsspec URL (``https://``, ``s3://``) counts as given, a ``file://`` URL as its path.
    """
    from helpers.paths import glob_files, is_remote, local_path, resolve_existing

    out = {}
    for name, value in parameters.items():
        items = [(name, value)] if not isinstance(value, list | tuple) else [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        for key, v in items:
            if not isinstance(v, str) or not v.strip() or name == "output_dir":
                continue
            if is_remote(v):
                out[key] = v.strip()
                continue
            v = str(local_path(v))
            if any(c in v for c in "*?[") and not v.lstrip().startswith("["):  # a glob of files
                for i, path in enumerate(glob_files(v)):
                    out[f"{key}[{i}]"] = path
                continue
            path = resolve_existing(v.rsplit(":", 1)[0] if v.count(":") == 1 and ".py:" in v else v)
            if path is not None:
                out[key] = path
    return out


def what_to_change(findings, support: dict[str, str] | None = None, checks: int | None = None) -> str:
    """"What to change in your training code", as Markdown, from the run's DETECTED findings only.

    Ordered by severity; each item is the finding's action (which carries the measurement behind
    it), then ``support[finding_id]`` when given (what the notebook's lab measured for that fix).
    On a run where nothing was detected it says there is nothing to change. Text is escaped: an
    action may quote a group name or a column from the user's files.
    """
    import html

    found = [f for f in findings if f.detected]
    order = {s: i for i, s in enumerate(SEVERITIES)}
    found.sort(key=lambda f: order[f.severity])
    if not found:
        n = f"{checks} " if checks else ""
        return ("**Nothing to change.** None of this notebook's " + n + "checks found a problem in this run; "
                "the verdict table above lists what was checked.")
    lines = []
    for i, f in enumerate(found, 1):
        extra = (support or {}).get(f.id, "")
        lines.append(f"{i}. **{html.escape(f.id)}** ({f.severity}): {html.escape(f.action)}"
                     + (f" *Measured in the lab:* {html.escape(extra)}" if extra else ""))
    return "\n".join(lines)


def verdict_table(findings) -> pd.DataFrame:
    """Findings as a table, detected first and most severe first."""
    rows = [{"finding": f.id, "status": f.status, "severity": f.severity, "message": f.message} for f in findings]
    df = pd.DataFrame(rows, columns=["finding", "status", "severity", "message"])
    order_status = {s: i for i, s in enumerate(STATUSES)}
    order_sev = {s: i for i, s in enumerate(SEVERITIES)}
    df = df.assign(_s=df.status.map(order_status), _v=df.severity.map(order_sev))
    return df.sort_values(["_s", "_v"], kind="stable").drop(columns=["_s", "_v"]).reset_index(drop=True)


def jsonable(obj: Any, digits: int = 10) -> Any:
    """Plain JSON types: numpy scalars and arrays unwrapped, floats rounded, NaN/inf as None.

    Rounding to ``digits`` significant digits keeps summary.json identical across
    runs whose last float bits differ (thread counts, summation order).
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), digits)
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        x = float(obj)
        if not math.isfinite(x):
            return None
        return float(f"{x:.{digits}g}")
    if isinstance(obj, Path):
        return str(obj)
    return obj
