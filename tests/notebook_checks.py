"""A check every notebook's bad-input tests share: the execution stops with one clear line."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from helpers.runner.execute import NotebookFailed, execute


def failure_line(name: str, parameters: dict, output_dir: Path, cwd: Path | None = None, kernel_manager=None) -> str:
    """Execute ``name`` with papermill (in ``kernel_manager``'s kernel when given: the worker's warm kernel)
    expecting it to fail; return its ``InputError: ...`` line.

    The executed notebook must hold exactly one error output, of one line: no traceback; and an
    earlier run's summary.json in ``output_dir`` must not survive (it would look like this run's result).
    """
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "summary.json").write_text('{"notebook": "an earlier run"}')
    with pytest.raises(NotebookFailed) as exc:
        execute(name, parameters, output_dir, cwd=cwd, kernel_manager=kernel_manager)
    assert not (Path(output_dir) / "summary.json").exists(), "an earlier run's summary.json survived a failed run"
    assert not list(Path(output_dir).glob(".summary.*")), "a partial summary is left behind"
    check_one_error_line(Path(output_dir) / f"{name}.ipynb")
    assert exc.value.line.startswith("InputError: "), exc.value.line
    return exc.value.line


def check_one_error_line(executed: Path) -> None:
    """The executed notebook holds exactly one error output, of one line: no traceback."""
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert len(errors) == 1 and len(errors[0].traceback) == 1, "not one error line"


def lab_cell(nb):
    """The notebook's first cell that runs only with run_demos: where its mechanism lab starts."""
    return next(c for c in nb.cells if c.cell_type == "code" and "if run_demos" in c.source)
