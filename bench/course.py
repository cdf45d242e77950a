"""The course's student path: a release notebook executed from the top until its first exercise stub raises.

A student opens the release (solutions replaced by stubs that raise) in JupyterLab on the project's
kernel and runs it from the top: the diagnosis of the bundled sample run, the demos, then the first
exercise, where the stub raises. Each row is that wall time under papermill (kernel start included),
against a target of one minute. The failing cell is checked to be the first exercise's answer cell.
``--quick`` measures nothing: the release executions themselves are tested in tests/test_course.py.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

TARGET = 60.0


def student_path(release: Path, cwd: Path) -> tuple[float, str]:
    """Seconds from the kernel's start to the first failing cell, and that cell's source."""
    import papermill as pm

    from helpers.runner.execute import KERNEL, kernel_manager_class

    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(release), str(cwd / "executed.ipynb"), kernel_name=KERNEL, cwd=str(cwd),
                            progress_bar=False, log_output=False, kernel_manager_class=kernel_manager_class(),
                            shutdown_kernel="immediate", store_widget_state=False)
    except pm.PapermillExecutionError as exc:
        import nbformat

        nb = nbformat.read(cwd / "executed.ipynb", as_version=4)
        failed = next(c for c in nb.cells if c.cell_type == "code" and c.get("execution_count") == exc.exec_count)
        return time.perf_counter() - t0, failed.source
    raise RuntimeError(f"{release.name}: ran to the end; the first exercise stub did not raise")


def run(quick: bool = False) -> list[dict]:
    if quick:
        return []
    import nbformat

    from helpers.runner import course

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-course-") as tmp:
        built = course.build(Path(tmp) / "course", progress=False)
        for name in course.notebook_names():
            release = built / "release" / name / f"{name}.ipynb"
            seconds, source = student_path(release, release.parent)
            first = course.exercises(nbformat.read(release, as_version=4))[0]
            if course.CODE_STUB.splitlines()[0] not in source:
                raise RuntimeError(f"{name}: the first failing cell is not an exercise stub: {source[:60]!r}")
            rows.append({"name": f"course: {name} from the top to its first exercise's stub (s)", "value": seconds,
                         "target": TARGET, "detail": f"papermill on the release, kernel start included; stops at "
                                                     f"'{first.title}'"})
    return rows


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(f"{row['name']}: {row['value']:.1f} (target <= {row['target']}) - {row['detail']}", flush=True)
