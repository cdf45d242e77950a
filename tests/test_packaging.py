"""Set-up files agree with each other and with the README."""

import re
import tomllib

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
    expected = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"]) | {"-e ."}
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
    for target in ("help", "setup", "run", "test", "lab", "data", "bench", "student", "clean"):
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
