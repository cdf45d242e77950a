"""The lab course: the notebooks' exercises in nbgrader's format, and ``workbooks course``.

The master notebooks in ``notebooks/`` are what papermill runs and what nbgrader takes as its
``source``. Their last section, ``## Exercises``, holds three or four exercises, each made of:

- a Markdown question cell starting ``### Exercise <k>``; tagged ``judgement`` when the exercise
  asks for a judgement (which finding holds, which checkpoint, is this gap real) rather than a number;
- one or more code answer cells (nbgrader ``solution``) whose solution sits between
  ``### BEGIN SOLUTION`` and ``### END SOLUTION`` and binds ``answer_<k>``;
- one graded, locked test cell (nbgrader ``grade`` with ``points``): visible checks of the answer's
  form and range with messages that say what to look at, then the judgement between
  ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``;
- a Markdown solution cell (nbgrader ``solution`` and ``grade``, graded by hand) that explains the answer.

Exercises work on seeded runs made by the notebook's own ``simulate``, never on the run under
diagnosis: every code cell of the section runs under ``if run_demos:`` and reads none of the names the
diagnosis binds (``run``, ``diag``, ``found``, ``params``), so an execution on any run gives the same
answers and never fails. :func:`check_exercises` enforces this; the tests run it on every notebook.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from helpers.paths import NOTEBOOKS, REPO_ROOT
from helpers.runner.execute import notebook_names

HEADING = "## Exercises"
BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
DIAGNOSIS_NAMES = frozenset({"run", "diag", "found", "params"})  # the run under diagnosis: exercises never read it
COURSE = REPO_ROOT / "course"
# per cell, seconds; the longest exercise or lab cell takes well under a minute on 2 cores
CELL_TIMEOUT = 300


@dataclass
class Exercise:
    number: int
    question: nbformat.NotebookNode
    answers: list = field(default_factory=list)
    tests: list = field(default_factory=list)
    explanations: list = field(default_factory=list)
    other: list = field(default_factory=list)

    @property
    def judgement(self) -> bool:
        return "judgement" in self.question.metadata.get("tags", [])

    @property
    def title(self) -> str:
        return self.question.source.splitlines()[0].lstrip("# ").strip()


def grading(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def section(nb) -> list:
    """The cells from the ``## Exercises`` heading to the end."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith(HEADING):
            return nb.cells[i:]
    return []


def exercises(nb) -> list[Exercise]:
    found: list[Exercise] = []
    for cell in section(nb)[1:]:
        m = re.match(r"###\s+Exercise\s+(\d+)", cell.source.lstrip()) if cell.cell_type == "markdown" else None
        if m:
            found.append(Exercise(int(m.group(1)), cell))
            continue
        if not found:
            continue
        g, ex = grading(cell), found[-1]
        if g.get("grade") and cell.cell_type == "code":
            ex.tests.append(cell)
        elif g.get("solution") and cell.cell_type == "code":
            ex.answers.append(cell)
        elif g.get("solution") and cell.cell_type == "markdown":
            ex.explanations.append(cell)
        else:
            ex.other.append(cell)
    return found


def _names_read(source: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}


def check_exercises(nb, name: str = "notebook") -> list[str]:
    """Every way the notebook's exercise section breaks the conventions above, one line each."""
    problems: list[str] = []
    cells = section(nb)
    if not cells:
        return [f"{name}: no '{HEADING}' section"]
    exs = exercises(nb)
    if not 3 <= len(exs) <= 4:
        problems.append(f"{name}: {len(exs)} exercises (3 or 4 wanted)")
    if [e.number for e in exs] != list(range(1, len(exs) + 1)):
        problems.append(f"{name}: exercises are not numbered 1..{len(exs)}")
    if sum(e.judgement for e in exs) < 2:
        problems.append(f"{name}: fewer than two exercises ask for a judgement (tag the question 'judgement')")
    ids = [grading(c)["grade_id"] for c in nb.cells if grading(c).get("grade_id")]
    if len(ids) != len(set(ids)):
        problems.append(f"{name}: duplicate grade_id")
    for c in nb.cells:
        g = grading(c)
        if g and g.get("schema_version") != 3:
            problems.append(f"{name}: cell {g.get('grade_id')!r} is not nbgrader schema 3")
        if g.get("grade") and not g.get("points"):
            problems.append(f"{name}: graded cell {g.get('grade_id')!r} has no points")
    for e in exs:
        where = f"{name}, exercise {e.number}"
        if not e.answers:
            problems.append(f"{where}: no answer cell")
        for a in e.answers:
            if BEGIN_SOLUTION not in a.source or END_SOLUTION not in a.source:
                problems.append(f"{where}: answer cell without {BEGIN_SOLUTION} / {END_SOLUTION}")
        if f"answer_{e.number}" not in "".join(a.source for a in e.answers):
            problems.append(f"{where}: no answer cell binds answer_{e.number}")
        if len(e.tests) != 1:
            problems.append(f"{where}: {len(e.tests)} graded test cells (one wanted)")
        for t in e.tests:
            if not grading(t).get("locked"):
                problems.append(f"{where}: the test cell is not locked")
            if BEGIN_HIDDEN not in t.source or END_HIDDEN not in t.source:
                problems.append(f"{where}: the test cell has no hidden tests")
            visible = re.sub(rf"{BEGIN_HIDDEN}.*?{END_HIDDEN}", "", t.source, flags=re.S)
            if "assert" not in visible:
                problems.append(f"{where}: the test cell has no visible check")
        if not e.explanations:
            problems.append(f"{where}: no Markdown solution cell explaining the answer")
    for c in cells:
        if c.cell_type != "code":
            continue
        src = c.source.strip()
        if src and not src.startswith("if run_demos:"):
            problems.append(f"{name}: an exercise code cell does not start with 'if run_demos:': {src[:50]!r}")
        try:
            read = _names_read(src) & DIAGNOSIS_NAMES
        except SyntaxError as exc:
            problems.append(f"{name}: an exercise cell does not parse: {exc}")
            continue
        if read:
            problems.append(f"{name}: an exercise cell reads the diagnosed run ({', '.join(sorted(read))}): {src[:50]!r}")
    return problems


def solution_lines(nb) -> list[str]:
    """The distinctive lines of every solution and hidden test: none may reach a student."""
    lines = []
    for c in nb.cells:
        g = grading(c)
        if c.cell_type == "markdown" and g.get("solution"):
            lines += [ln.strip() for ln in c.source.splitlines()]
        elif c.cell_type == "code":
            for begin, end in ((BEGIN_SOLUTION, END_SOLUTION), (BEGIN_HIDDEN, END_HIDDEN)):
                for block in re.findall(rf"{begin}\n(.*?){end}", c.source, flags=re.S):
                    lines += [ln.strip() for ln in block.splitlines()]
    return [ln for ln in lines if len(ln) >= 12 and not ln.startswith("#")]


# ----------------------------------------------------------------------------- building the course
CODE_STUB = "raise NotImplementedError('your answer here')"
TEXT_STUB = "YOUR ANSWER HERE: explain it in your own words."
CONFIG = """\
# nbgrader configuration of the course built by `make course` (rewritten each time; edit helpers/runner/course.py)
c = get_config()  # noqa: F821
c.CourseDirectory.root = {root!r}
c.CourseDirectory.db_url = {db_url!r}
c.ExecutePreprocessor.timeout = {timeout}
c.ClearSolutions.code_stub = {{"python": {code_stub!r}}}
c.ClearSolutions.text_stub = {text_stub!r}
"""


def build(dest: Path = COURSE, names: list[str] | None = None, progress: bool = True) -> Path:
    """``course/``: nbgrader's ``source/`` (the master notebooks), ``release/`` (solutions replaced by
    stubs that raise, hidden tests removed), the gradebook in sqlite, and ``index.ipynb``.

    Rebuilt from scratch each time; ``submitted/``, ``autograded/`` and ``feedback/`` (the
    instructor's collected work) and the gradebook are kept.
    """
    import os
    import sys

    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    # nbgrader creates the gradebook by running `alembic`, which lies beside this interpreter
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    dest = Path(dest).resolve()
    names = names or notebook_names()
    for sub in ("source", "release"):
        shutil.rmtree(dest / sub, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    db = dest / "gradebook.db"
    (dest / "nbgrader_config.py").write_text(CONFIG.format(root=str(dest), db_url=f"sqlite:///{db}", timeout=CELL_TIMEOUT,
                                                           code_stub=CODE_STUB, text_stub=TEXT_STUB))
    for name in names:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        problems = check_exercises(nb, name)
        if problems:
            raise ValueError(problems[0])
        (dest / "source" / name).mkdir(parents=True)
        nbformat.write(nb, dest / "source" / name / f"{name}.ipynb")
    config = Config()
    config.CourseDirectory.root = str(dest)
    config.CourseDirectory.db_url = f"sqlite:///{db}"
    config.ExecutePreprocessor.timeout = CELL_TIMEOUT
    config.ClearSolutions.code_stub = {"python": CODE_STUB}
    config.ClearSolutions.text_stub = TEXT_STUB
    api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
    for name in names:
        result = api.generate_assignment(name, force=True, create=True)
        if not result["success"]:
            raise RuntimeError(f"nbgrader generate_assignment {name}: {result.get('error') or result.get('log')}")
        if progress:
            print(f"released {name}: {dest / 'release' / name / (name + '.ipynb')}")
    nbformat.write(index_notebook(names), dest / "index.ipynb")
    shutil.copy(dest / "index.ipynb", dest / "release" / "index.ipynb")
    return dest


def course_metadata(name: str) -> dict:
    nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    return nb["metadata"].get("course", {})


def index_notebook(names: list[str]) -> nbformat.NotebookNode:
    """The course page: order, prerequisites, measured time, objectives and the exercises that practise them."""
    md = ["# The course: diagnosing broken training runs\n",
          "Five notebooks, one diagnosis each, in this order. Each runs its diagnosis on a bundled sample run, "
          "then ends with three or four exercises on small seeded runs of its own; the test cell under each "
          "answer checks its form at once, and your instructor's copy holds the rest of the checks.\n",
          "| # | notebook | prerequisites | time |", "|---|---|---|---|"]
    sections = []
    for i, name in enumerate(names, 1):
        meta = course_metadata(name)
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        title = nb.cells[0].source.splitlines()[0].lstrip("# ").strip()
        secs = meta.get("student_path_seconds")
        time = f"{meta.get('minutes', '?')} min of work; executes to its first exercise in {secs:.0f} s" if secs else \
            f"{meta.get('minutes', '?')} min of work"
        md.append(f"| {i} | [{title}]({name}/{name}.ipynb) | {'; '.join(meta.get('prerequisites', []))} | {time} |")
        exs = {e.number: e for e in exercises(nb)}
        lines = [f"## {i}. {title}\n", "| you will be able to | practised in |", "|---|---|"]
        for obj in meta.get("objectives", []):
            practised = ", ".join(f"Exercise {k} ({exs[k].title.split(':', 1)[-1].strip()})" if k in exs else f"Exercise {k}"
                                  for k in obj.get("exercises", []))
            lines.append(f"| {obj['text']} | {practised} |")
        sections.append("\n".join(lines))
    md.append("\nTimes are measured on a 2-core machine with the project's kernel: the work includes reading; "
              "the execution is the student's copy from the top to its first exercise, where the stub raises "
              "(`make bench` measures it again: the rows named 'course').")
    cells = [nbformat.v4.new_markdown_cell("\n".join(md))] + [nbformat.v4.new_markdown_cell(s) for s in sections]
    return nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                          "language": "python"}})
