"""Executing the notebooks: papermill runs, HTML reports, `make run`, and student copies.

``python -m helpers.notebooks run [NAME ...]`` executes notebooks on their
sample runs into ``reports/<name>/``; ``python -m helpers.notebooks student``
writes copies without ``solution`` cells into ``student/``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import nbformat

from .paths import NOTEBOOKS, REPO_ROOT, REPORTS

KERNEL = "python3"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _kernel_manager_class():
    """papermill's kernel manager with CurveZMQ transport encryption when the kernel supports it.

    ipykernel >= 7.3 warns on every start of a kernel bound over TCP without encryption; the
    kernel installed by `make setup` declares curve support, so this encrypts and the warning goes.
    """
    from jupyter_client.manager import AsyncKernelManager

    class EncryptedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport_encryption = "auto"

    return EncryptedKernelManager


class NotebookFailed(Exception):
    """A notebook cell raised. ``line`` is the last line the cell's error showed."""

    def __init__(self, name: str, cell: int | None, ename: str, line: str):
        self.name, self.cell, self.ename, self.line = name, cell, ename, line
        where = f"cell {cell}" if cell is not None else "a cell"
        super().__init__(f"{name}: {where} failed: {line}")


def notebook_names() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def execute(name: str, parameters: dict | None = None, output_dir: str | Path | None = None,
            cwd: str | Path | None = None, progress: bool = False, html: bool = False) -> dict:
    """Execute ``notebooks/<name>.ipynb`` with papermill; return its summary.json as a dict.

    The executed notebook is written as ``<output_dir>/<name>.ipynb`` (and
    ``.html`` with ``html=True``); ``output_dir`` is passed to the notebook too.
    Raises :class:`NotebookFailed` with the failing cell's error line.
    """
    import papermill as pm

    out = Path(output_dir) if output_dir else REPORTS / name
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = {**(parameters or {}), "output_dir": str(out)}
    executed = out / f"{name}.ipynb"
    try:
        pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(executed), parameters=params,
                            kernel_name=KERNEL, cwd=str(cwd) if cwd else None,
                            progress_bar=progress, log_output=False,
                            kernel_manager_class=_kernel_manager_class())
    except pm.PapermillExecutionError as exc:
        lines = [_ANSI.sub("", t) for t in exc.traceback if t.strip()]
        last = lines[-1].strip().splitlines()[-1] if lines else f"{exc.ename}: {exc.evalue}"
        raise NotebookFailed(name, exc.exec_count, exc.ename, last) from None
    finally:
        if html and executed.exists():
            to_html(executed)
    return json.loads((out / "summary.json").read_text())


def to_html(executed: Path) -> Path:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(executed))
    path = executed.with_suffix(".html")
    path.write_text(body)
    return path


def run_all(names: list[str] | None = None) -> int:
    """`make run`: every notebook on its sample run; exit status 1 naming the notebook that failed."""
    names = names or notebook_names()
    failed = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            summary = execute(name, output_dir=REPORTS / name, progress=True, html=True)
        except NotebookFailed as exc:
            print(f"FAILED {exc}", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        detected = [k for k, f in summary["findings"].items() if f["status"] == "detected"]
        print(f"    done in {time.perf_counter() - t0:.1f} s -> {(REPORTS / name).relative_to(REPO_ROOT)}/"
              f" (detected: {', '.join(detected) or 'nothing'})", flush=True)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def strip_solutions(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A student copy: ``solution`` cells replaced by an empty cell asking for an answer."""
    cells = []
    for cell in nb.cells:
        if "solution" in cell.get("metadata", {}).get("tags", []):
            placeholder = "# Your answer here\n" if cell.cell_type == "code" else "*Your answer here.*"
            new = (nbformat.v4.new_code_cell if cell.cell_type == "code" else nbformat.v4.new_markdown_cell)(placeholder)
            new.metadata["tags"] = ["answer"]
            cells.append(new)
        else:
            cells.append(cell)
    nb.cells = cells
    return nb


def write_student_copies(dest: Path = REPO_ROOT / "student") -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in notebook_names():
        nb = strip_solutions(nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4))
        path = dest / f"{name}.ipynb"
        nbformat.write(nb, path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.notebooks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="execute notebooks on their sample runs into reports/")
    run.add_argument("names", nargs="*", help="notebook stems (default: all)")
    sub.add_parser("student", help="write student copies without solution cells into student/")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        return run_all(args.names)
    for p in write_student_copies():
        print(f"wrote {p.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
