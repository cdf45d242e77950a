"""Executing the notebooks: papermill runs, HTML reports, `make run`, and student copies.

``python -m helpers.runner.execute run [MANIFEST] [--scheduler ADDRESS] [--force]`` executes
a manifest's notebooks (default: the sample runs) into ``reports/<run>/<notebook>/``
on dask; ``compare A B`` lists the findings whose status changed between two runs;
``student`` writes copies without ``solution`` cells into ``student/``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat

from helpers.paths import NOTEBOOKS, REPO_ROOT, REPORTS

DEFAULT_MANIFEST = REPO_ROOT / "manifests" / "samples.yaml"

KERNEL = "python3"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def kernel_manager_class():
    """papermill's kernel manager with CurveZMQ transport encryption when the kernel supports it.

    ipykernel >= 7.3 warns on every start of a kernel bound over TCP without encryption; the
    kernel installed by `make setup` declares curve support, so this encrypts and the warning goes.
    """
    from jupyter_client.manager import AsyncKernelManager

    class EncryptedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport_encryption = "auto"

        async def _async_interrupt_kernel(self):
            # jupyter_client sends SIGINT before every shutdown; our kernels are idle by then, and a
            # signal landing in a message handler prints "KeyboardInterrupt caught in kernel" into
            # the runner's output. A timeout's interrupt (nbclient) goes through interrupt_kernel.
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

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
            cwd: str | Path | None = None, progress: bool = False, html: bool = False,
            source: str | Path | None = None) -> dict:
    """Execute ``notebooks/<name>.ipynb`` with papermill; return its summary.json as a dict.

    The executed notebook is written as ``<output_dir>/<name>.ipynb`` (and
    ``.html`` with ``html=True``); ``output_dir`` is passed to the notebook too.
    Raises :class:`NotebookFailed` with the failing cell's error line. ``source``
    executes another notebook file under that name (the bench's import-only floor
    notebooks); one that writes no summary.json returns ``{}``.
    """
    import papermill as pm

    out = Path(output_dir) if output_dir else REPORTS / name
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = {**(parameters or {}), "output_dir": str(out)}
    executed = out / f"{name}.ipynb"
    try:
        # shutdown_kernel="immediate": once the last cell has run (summary.json and figures written), the kernel
        # is killed instead of asked to exit; a graceful exit of a kernel holding torch & co. took 1.5-2.7 s.
        pm.execute_notebook(str(source or NOTEBOOKS / f"{name}.ipynb"), str(executed), parameters=params,
                            kernel_name=KERNEL, cwd=str(cwd) if cwd else None,
                            progress_bar=progress, log_output=False,
                            kernel_manager_class=kernel_manager_class(), shutdown_kernel="immediate")
    except pm.PapermillExecutionError as exc:
        lines = [_ANSI.sub("", t) for t in exc.traceback if t.strip()]
        last = lines[-1].strip().splitlines()[-1] if lines else f"{exc.ename}: {exc.evalue}"
        raise NotebookFailed(name, exc.exec_count, exc.ename, last) from None
    finally:
        if html and executed.exists():
            to_html(executed)
    if source is not None and not (out / "summary.json").exists():
        return {}
    return json.loads((out / "summary.json").read_text())


def to_html(executed: Path, reports: Path | None = None) -> Path:
    """HTML of an executed notebook that renders offline, math included.

    With ``reports`` (a reports root), MathJax is the copy in ``reports/_static/`` linked
    relatively, so the folder can be moved or served; without, the installed copy by file URL.
    """
    from nbconvert import HTMLExporter

    from helpers.runner.reports import mathjax_url

    path = Path(executed).with_suffix(".html")
    if reports is not None:
        url = mathjax_url(path, Path(reports))
    else:
        import jupyter_server_mathjax

        url = (Path(jupyter_server_mathjax.__file__).parent / "static" / "MathJax.js").as_uri() + \
            "?config=TeX-AMS-MML_HTMLorMML-full,Safe"
    # require.js (widgets) and mermaid are never used here; an empty script instead of a CDN fetch
    empty = "data:text/javascript,"
    body, _ = HTMLExporter(mathjax_url=url, require_js_url=empty, mermaid_js_url=empty).from_filename(str(executed))
    path.write_text(body)
    return path


def run_manifest(manifest: str | Path = DEFAULT_MANIFEST, reports: str | Path = REPORTS, scheduler: str | None = None,
                 force: bool = False, workers: int = 2, progress: bool = True) -> int:
    """`make run`: every (run, notebook) of a manifest on dask; pages and findings.csv; 1 if any failed.

    A malformed manifest or an existing report (without ``force``) is refused before anything runs.
    """
    from helpers.runner.batch import (
        ManifestError,
        check_targets,
        load_manifest,
        run_tasks,
        write_record,
    )
    from helpers.runner.reports import write_reports

    reports = Path(reports).resolve()
    try:
        tasks = load_manifest(manifest)
        check_targets(tasks, reports, force)
    except ManifestError as exc:
        print(f"ManifestError: {exc}", file=sys.stderr)
        return 2
    where = f"the cluster at {scheduler}" if scheduler else f"a local cluster of {workers} worker processes"
    print(f"{len(tasks)} notebook executions from {manifest} on {where}", flush=True)
    execution = run_tasks(tasks, reports, scheduler=scheduler, workers=workers, progress=progress)
    results = execution.results
    for r in results:
        if r["status"] == "ok":
            summary = json.loads((Path(r["dir"]) / "summary.json").read_text())
            detected = [k for k, f in summary["findings"].items() if f["status"] == "detected"]
            print(f"  ok      {r['run']}/{r['notebook']} ({r['seconds']} s): detected {', '.join(detected) or 'nothing'}")
        else:
            print(f"  FAILED  {r['run']}/{r['notebook']}: {r['error']}", file=sys.stderr)
    record = write_record(execution, reports, manifest, scheduler)
    pages = write_reports(reports, sorted({t.run for t in tasks}))
    print(f"reports: {pages[-2]} and {pages[-1]}; {record.name}: {execution.finished - execution.started:.0f} s, "
          f"at most {execution.max_concurrency} of {execution.slots} worker threads busy at once")
    failed = [f"{r['run']}/{r['notebook']}" for r in results if r["status"] != "ok"]
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def compare(a: str, b: str, reports: str | Path = REPORTS) -> int:
    """`make compare A=run1 B=run2`: the findings whose status changed between two runs."""
    from helpers.runner.reports import compare_runs

    try:
        table = compare_runs(Path(reports), a, b)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if table.empty:
        print(f"no finding changed status between {a} and {b}")
    else:
        print(table.to_markdown(index=False))
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
    parser = argparse.ArgumentParser(prog="python -m helpers.runner.execute", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="execute a manifest's notebooks into reports/<run>/<notebook>/")
    run.add_argument("manifest", nargs="?", default=str(DEFAULT_MANIFEST), help="manifest YAML (default: the sample runs)")
    run.add_argument("--scheduler", default=None, help="address of an existing dask scheduler (default: a local cluster)")
    run.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster")
    run.add_argument("--force", action="store_true", help="replace existing reports of the same run and notebook")
    run.add_argument("--reports", default=str(REPORTS), help="reports folder")
    cmp = sub.add_parser("compare", help="findings whose status changed between two runs")
    cmp.add_argument("a")
    cmp.add_argument("b")
    cmp.add_argument("--reports", default=str(REPORTS), help="reports folder")
    sub.add_parser("student", help="write student copies without solution cells into student/")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        return run_manifest(args.manifest, args.reports, args.scheduler or None, args.force, args.workers)
    if args.cmd == "compare":
        return compare(args.a, args.b, args.reports)
    for p in write_student_copies():
        print(f"wrote {p.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
