"""The hygiene of the committed notebooks: stripped outputs, one parameters cell, the same face and aliases."""

import nbformat
import pytest
from notebook_checks import check_one_error_line, lab_cell

from helpers.paths import NOTEBOOKS
from helpers.runner.execute import notebook_names


# ----------------------------------------------------------------------------- committed notebooks
@pytest.mark.parametrize("name", notebook_names())
def test_committed_notebook_is_stripped_and_has_one_annotated_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "outputs committed"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for line in params[0].source.strip().splitlines():
        assert ":" in line.split("=")[0] and "  # " in line, f"not annotated+commented: {line}"
    for common in ("output_dir: str", "run_demos: bool", "seed: int"):
        assert common in params[0].source
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("name", notebook_names())
def test_every_notebook_imports_its_own_package_under_the_same_aliases(name):
    """``from helpers.<package> import diagnosis as dx, figures as figs`` (and ``lab``), and the setup
    cells call the face: load_inputs, describe_inputs, diagnose, findings, metrics."""
    import re

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    package = name.split("_", 1)[1]
    packages = {n.stem.split("_", 1)[1] for n in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")}
    imports = [(p, what) for p, what in re.findall(r"from helpers\.(\w+) import ([^\n]+)", code) if p in packages]
    assert {p for p, _ in imports} == {package}, f"{name} imports another notebook's package: {imports}"
    names = {n.strip() for _, what in imports for n in what.split(",")}
    assert {"diagnosis as dx", "figures as figs"} <= names, names
    assert all(n.split(" as ")[-1] == "lab" for n in names if n.startswith("lab")), names
    for call in ("dx.load_inputs(", "dx.describe_inputs(run)", "dx.diagnose(run, params)", "dx.findings(diag)",
                 "dx.metrics(diag)"):
        assert call in code, f"{name}: no {call}"
    assert not re.search(r"\bdx\.[a-z]\w*\.\w+\(", code), f"{name} reaches through the face into another module"


@pytest.mark.notebook
def test_plain_papermill_runs_quiet_and_the_notebook_itself_refuses_a_misspelt_parameter(tmp_path, elsewhere):
    """papermill from the command line, as the README teaches it: the project's kernel asks for an
    encrypted transport itself (helpers/runner/kernel.py), so no kernel warns about plain-text TCP;
    the injected cell reaches the kernel, and the validation cell refuses the unknown name in one line.
    This is notebook 02's papermill refusal (its others are checked in-process, test_hardening.py): one
    error output of one line, and an earlier run's summary.json does not survive."""
    import subprocess
    import sys
    from pathlib import Path

    from jupyter_client.kernelspec import KernelSpecManager

    from helpers.paths import NOTEBOOKS

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.metadata["kernel_provisioner"]["provisioner_name"] == "workbooks-encrypted-provisioner"
    papermill = Path(sys.executable).parent / "papermill"
    out = tmp_path / "o"
    out.mkdir()
    (out / "summary.json").write_text('{"notebook": "an earlier run"}')
    done = subprocess.run([str(papermill), str(NOTEBOOKS / "02_encoder_variance.ipynb"), str(tmp_path / "out.ipynb"),
                           "-p", "embeddingz", "mine.npz", "-p", "run_demos", "False", "-p", "output_dir", str(out),
                           "--no-progress-bar"], capture_output=True, text=True, timeout=300, cwd=elsewhere)
    assert done.returncode != 0
    assert "without encryption" not in done.stderr, done.stderr
    assert "InputError: embeddingz: is not a parameter of this notebook (did you mean 'embeddings'?)" in done.stderr
    assert not (out / "summary.json").exists(), "an earlier run's summary.json survived a failed run"
    check_one_error_line(tmp_path / "out.ipynb")


@pytest.mark.parametrize("name", notebook_names())
def test_the_lab_says_when_it_was_not_run(name):
    """With run_demos False the lab's and the exercises' Markdown stays on the page: the lab's first cell
    prints why nothing is under it (checked executed in the demos-off runs and in the samples below)."""
    from helpers.findings import DEMOS_OFF

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert lab_cell(nb).source.rstrip().endswith("else:\n    print(DEMOS_OFF)")
    assert "run_demos" in DEMOS_OFF and "-p run_demos True" in DEMOS_OFF


@pytest.mark.notebook
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in notebook_names()])
def test_a_sample_execution_runs_its_lab(name, sample_execution):
    from helpers.findings import DEMOS_OFF

    _, executed = sample_execution(name)
    nb = nbformat.read(executed, as_version=4)
    lab = lab_cell(nb)
    assert lab.outputs and DEMOS_OFF not in str(lab.outputs)
