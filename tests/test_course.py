"""The lab course: every notebook's exercises follow nbgrader's conventions, the release built by
nbgrader carries no solution, and nbgrader's Validator passes every graded cell on the source and
fails every one on the release (its command line exits 0 either way, so the Python API is used)."""

import nbformat
import pytest

from helpers.paths import NOTEBOOKS
from helpers.runner import course
from helpers.runner.execute import notebook_names

NAMES = notebook_names()


def master(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("name", NAMES)
def test_the_exercises_follow_the_conventions(name):
    nb = master(name)
    assert course.check_exercises(nb, name) == []
    meta = nb.metadata["course"]
    numbers = {e.number for e in course.exercises(nb)}
    practised = {k for obj in meta["objectives"] for k in obj["exercises"]}
    assert meta["prerequisites"] and meta["minutes"] > 0
    assert practised == numbers, "every exercise practises an objective, and every objective is practised"


def test_the_checker_names_what_is_wrong():
    nb = master(NAMES[0])
    exs = course.exercises(nb)
    broken = nbformat.reads(nbformat.writes(nb), as_version=4)  # a copy to spoil
    tests = [c for c in course.section(broken) if course.grading(c).get("grade") and c.cell_type == "code"]
    tests[0].source = tests[0].source.replace(course.BEGIN_HIDDEN, "").replace(course.END_HIDDEN, "")
    answers = [c for c in course.section(broken) if course.grading(c).get("solution") and c.cell_type == "code"]
    answers[0].source = answers[0].source.replace("if run_demos:", "if run_demos and diag is not None:", 1)
    problems = course.check_exercises(broken, "x")
    assert any("exercise 1: the test cell has no hidden tests" in p for p in problems), problems
    assert any("reads the diagnosed run (diag)" in p for p in problems), problems
    assert len(exs) >= 3


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    return course.build(tmp_path_factory.mktemp("course") / "course", progress=False)


@pytest.mark.notebook
@pytest.mark.xdist_group("course")
def test_make_course_builds_source_release_gradebook_and_index(built):
    for name in NAMES:
        source, release = built / "source" / name / f"{name}.ipynb", built / "release" / name / f"{name}.ipynb"
        assert source.exists() and release.exists()
        text = release.read_text()
        leaked = [line for line in course.solution_lines(master(name)) if line in text]
        assert leaked == [], f"{name}: the release shows solution text: {leaked[:3]}"
        assert course.CODE_STUB in text and course.TEXT_STUB in text
    assert (built / "gradebook.db").exists() and "ExecutePreprocessor.timeout" in (built / "nbgrader_config.py").read_text()
    index = (built / "index.ipynb").read_text()
    assert all(f"{name}/{name}.ipynb" in index for name in NAMES) and "Exercise 1" in index
    for name in NAMES:  # the measured student path (bench/course.py), under a minute, on the page
        seconds = course.course_metadata(name)["student_path_seconds"]
        assert 0 < seconds < 60 and f"executes to its first exercise in {seconds:.0f} s" in index
    assert (built / "release" / "index.ipynb").exists()


def graded(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells if course.grading(c).get("grade")]


def exercise_notebook(nb):
    """The notebook's import cell, its parameters and its exercise section: the exercises read nothing else."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = next(c for c in code if "parameters" in c.metadata.get("tags", []))
    return nbformat.v4.new_notebook(cells=[code[0], params, *course.section(nb)], metadata=nb.metadata)


@pytest.mark.notebook
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in NAMES])
def test_the_validator_passes_every_graded_cell_of_the_source(name, sample_execution):
    """The source: the sample execution (papermill, run_demos True) is the master notebook executed; the
    Validator grades its graded cells from their outputs."""
    from nbgrader.preprocessors import CheckCellMetadata
    from nbgrader.validator import Validator

    _, executed = sample_execution(name)
    result = Validator(preprocessors=[CheckCellMetadata]).validate(str(executed))
    assert "failed" not in result and "changed" not in result, result


@pytest.mark.notebook
@pytest.mark.xdist_group("course")
def test_the_validator_fails_every_graded_cell_of_the_release(built, tmp_path, warm_kernel):
    """The release, as nbgrader made it for ``make course``: every graded cell fails when executed (stubs
    raise, nothing answered). The five exercise notebooks run one after the other in the worker's warm
    kernel, every cell even after an error (as nbgrader's own execution: 30 s a cell), the namespace reset
    between them, so no notebook sees another's names; the Validator grades the outputs."""
    from nbclient import NotebookClient
    from nbgrader.preprocessors import CheckCellMetadata
    from nbgrader.utils import compute_checksum
    from nbgrader.validator import Validator

    from helpers.runner.execute import reset_kernel

    cells, owner, code = [], {}, []
    for name in NAMES:
        release = exercise_notebook(nbformat.read(built / "release" / name / f"{name}.ipynb", as_version=4))
        for i, cell in enumerate(release.cells):  # ids and grade ids stay unique in the joined notebook
            cell.id = f"{name[:2]}-{i}"
            if course.grading(cell).get("grade_id"):
                cell.metadata.nbgrader["grade_id"] = f"{name[:2]}-{cell.metadata.nbgrader['grade_id']}"
                if "checksum" in cell.metadata.nbgrader:  # the checksum covers the grade id
                    cell.metadata.nbgrader["checksum"] = compute_checksum(cell)
        cells += [nbformat.v4.new_code_cell("%reset -f"), *release.cells]
        for source in graded(release):
            owner.setdefault(source, []).append(name)
        code += [c.source.strip() for c in release.cells if course.grading(c).get("grade") and c.cell_type == "code"]
    assert len(set(code)) == len(code), "two graded code cells share their text: the check cannot tell them apart"
    joined = nbformat.v4.new_notebook(cells=cells, metadata=release.metadata)
    reset_kernel(warm_kernel, tmp_path)
    NotebookClient(joined, km=warm_kernel, allow_errors=True, timeout=30).execute()
    path = tmp_path / "release.ipynb"
    nbformat.write(joined, path)
    failed = {f["source"] for f in Validator(preprocessors=[CheckCellMetadata]).validate(str(path)).get("failed", [])}
    passing = sorted(f"{', '.join(owner[s])}: {s.splitlines()[0][:60]}" for s in set(owner) - failed)
    assert passing == [], f"graded cells that pass without an answer: {passing}"
