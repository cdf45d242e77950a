"""Set-up files agree with each other and with the README."""

import re
import tomllib

import pytest

from helpers.paths import REPO_ROOT


def env_pip_requirements():
    lines = (REPO_ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = []
    for line in lines[start + 1:]:
        m = re.match(r"^\s+-\s+(.+)$", line)
        if not m:
            break
        reqs.append(m.group(1).strip())
    return reqs


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    expected = set(project["dependencies"]) | set(extras["dev"]) | set(extras["teaching"]) | {"-e ."}
    assert set(env_pip_requirements()) == expected
    assert "- python=3.11" in (REPO_ROOT / "environment.yml").read_text()


def test_torch_is_pinned_to_the_cpu_build():
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch==2.13.0" in deps


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in (REPO_ROOT / "README.md").read_text()


def test_makefile_has_the_documented_targets():
    text = (REPO_ROOT / "Makefile").read_text()
    for target in ("help", "setup", "run", "test", "lab", "data", "bench", "course", "student", "clean"):
        assert re.search(rf"^{target}:", text, re.M), target
    assert ".DEFAULT_GOAL := help" in text


def test_user_docs_stand_alone_and_cover_every_notebook():
    from helpers.runner.execute import notebook_names

    texts = [(REPO_ROOT / "README.md").read_text()] + [p.read_text() for p in (REPO_ROOT / "docs").glob("*.md")]
    for text in texts:
        assert "../shared" not in text and "DESIGN.md" not in text
    index = (REPO_ROOT / "docs" / "README.md").read_text()
    for name in notebook_names():
        assert (REPO_ROOT / "docs" / f"{name}.md").is_file(), name
        assert f"({name}.md)" in index, name


def test_every_notebook_parameter_is_documented():
    import papermill as pm

    from helpers.paths import NOTEBOOKS
    from helpers.runner.execute import notebook_names

    common = {"output_dir", "run_demos", "seed"}
    for name in notebook_names():
        doc = (REPO_ROOT / "docs" / f"{name}.md").read_text()
        for param in set(pm.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))) - common:
            assert f"`{param}`" in doc, f"docs/{name}.md does not document parameter '{param}'"


DOTTED = re.compile(r"\bhelpers(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
WHERE_PATHS_ARE_NAMED = ("README.md", "Makefile", "pyproject.toml", "docs/*.md", "notebooks/*.ipynb", "tests/*.py",
                         "bench/*.py", "manifests/*.yaml", "data_samples/**/*.py", "helpers/**/*.py")


def test_every_named_helpers_path_exists():
    """Every dotted ``helpers`` path the README, docs, Makefile, notebooks, tests and bench name is importable
    (a module, or an attribute of one): nothing points at a module path that no longer exists."""
    import importlib

    named = set()
    for pattern in WHERE_PATHS_ARE_NAMED:
        for path in REPO_ROOT.glob(pattern):
            named |= {(m, path.relative_to(REPO_ROOT)) for m in DOTTED.findall(path.read_text())}
    missing = []
    for dotted, where in sorted(named):
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable module, then attributes of it
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            if obj is None and i < len(parts) and parts[i] not in ("__version__",):
                missing.append(f"{where}: {dotted}")
            break
        else:
            missing.append(f"{where}: {dotted}")
    assert len(named) > 20 and not missing, missing


def test_the_console_command_is_declared_and_the_makefile_uses_it():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["workbooks"] == "helpers.runner.cli:main"
    text = (REPO_ROOT / "Makefile").read_text()
    for command in ("workbooks run", "workbooks compare", "workbooks data", "lint-imports"):
        assert command in text, command


def test_import_contracts_cover_the_design_rules():
    """independence, layers, forbidden (one per notebook package) and no cycles, each a contract."""
    contracts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    kinds = [c["type"] for c in contracts]
    assert kinds.count("independence") == 1 and kinds.count("layers") == 1
    assert kinds.count("forbidden") == 5 and kinds.count("acyclic_siblings") == 1


@pytest.mark.xdist_group("xdist-check")
def test_tests_of_one_group_run_on_one_worker(request):
    """Under pytest-xdist, --dist loadgroup must tag grouped tests (the suite shares each notebook's sample
    execution between the tests of its group; a pytest/xdist pair that ignores groups executes it twice)."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER") and request.config.getoption("dist", None) == "loadgroup":
        assert request.node.nodeid.endswith("@xdist-check"), request.node.nodeid


def test_collection_leaves_torchmetrics_to_the_tests_that_use_it():
    """No test module imports torchmetrics (or lightning, transformers) when it is collected: the import costs
    each worker 4-6 s of CPU, and only the tests of the group "torchmetrics" need it."""
    from conftest import COLLECTION_IMPORTED

    assert not COLLECTION_IMPORTED, f"imported while collecting: {sorted(COLLECTION_IMPORTED)}"
