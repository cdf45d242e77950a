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
    executed = nbformat.read(Path(output_dir) / f"{name}.ipynb", as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert len(errors) == 1 and len(errors[0].traceback) == 1, "not one error line"
    assert exc.value.line.startswith("InputError: "), exc.value.line
    return exc.value.line
