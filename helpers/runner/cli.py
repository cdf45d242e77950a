"""The command line: ``workbooks run|compare|data|course`` (``python -m helpers.runner`` is the same).

``workbooks run [MANIFEST] [--scheduler ADDRESS] [--force]`` executes a manifest's notebooks
(default: the sample runs) into ``reports/<run>/<notebook>/`` on dask; ``workbooks compare A B``
lists the findings whose status changed between two runs; ``workbooks data`` regenerates the
sample runs in ``data_samples/``; ``workbooks course`` builds the nbgrader course in ``course/``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from helpers.paths import DATA_SAMPLES, REPO_ROOT, REPORTS

DEFAULT_MANIFEST = REPO_ROOT / "manifests" / "samples.yaml"


def run_manifest(manifest: str | Path = DEFAULT_MANIFEST, reports: str | Path = REPORTS, scheduler: str | None = None,
                 force: bool = False, workers: int = 2, progress: bool = True, cell_timeout: float | None = None) -> int:
    """`make run`: every (run, notebook) of a manifest on dask; pages and findings.csv; 1 if any failed.

    A malformed manifest or an existing report (without ``force``) is refused before anything runs.
    ``cell_timeout`` (seconds) overrides the manifest's per-cell limit; a task past it is reported
    as failed, and the others go on.
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
        tasks = load_manifest(manifest, cell_timeout)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbooks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="execute a manifest's notebooks into reports/<run>/<notebook>/")
    run.add_argument("manifest", nargs="?", default=str(DEFAULT_MANIFEST), help="manifest YAML (default: the sample runs)")
    run.add_argument("--scheduler", default=None, help="address of an existing dask scheduler (default: a local cluster)")
    run.add_argument("--workers", type=int, default=2, help="worker processes of the local cluster")
    run.add_argument("--force", action="store_true", help="replace existing reports of the same run and notebook")
    run.add_argument("--reports", default=str(REPORTS), help="reports folder")
    run.add_argument("--cell-timeout", type=float, default=None,
                     help="seconds any one cell may run before its notebook fails (default: the manifest's "
                          "cell_timeout, else 1800)")
    cmp = sub.add_parser("compare", help="findings whose status changed between two runs")
    cmp.add_argument("a")
    cmp.add_argument("b")
    cmp.add_argument("--reports", default=str(REPORTS), help="reports folder")
    data = sub.add_parser("data", help="regenerate the sample runs from the seeded simulators")
    data.add_argument("out", nargs="?", default=str(DATA_SAMPLES), help="folder (default: data_samples/)")
    course = sub.add_parser("course", help="build the nbgrader course (source, release without solutions, index) "
                                           "in course/")
    course.add_argument("dest", nargs="?", default=None, help="folder (default: course/)")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        return run_manifest(args.manifest, args.reports, args.scheduler or None, args.force, args.workers,
                            cell_timeout=args.cell_timeout)
    if args.cmd == "compare":
        return compare(args.a, args.b, args.reports)
    if args.cmd == "data":
        from helpers.runner.samples import main as regenerate

        for p in regenerate(Path(args.out)):
            print(f"wrote {p} ({p.stat().st_size / 1024:.1f} KiB)")
        return 0
    from helpers.runner.course import COURSE, build

    dest = build(Path(args.dest) if args.dest else COURSE)
    print(f"course: {dest / 'index.ipynb'}; hand out {dest / 'release'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
