"""Student copies of the notebooks (``workbooks student``)."""

from __future__ import annotations

from pathlib import Path

import nbformat

from helpers.paths import NOTEBOOKS, REPO_ROOT
from helpers.runner.execute import notebook_names


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


