"""Notebook 03 under papermill: the sample run (executed once per suite), one made-up run, one bad input.

Everything else these executions used to check (the checkpoint-files route, the other made-up runs,
determinism, the other bad inputs) is asserted in-process through the face in test_checkpoint_divergence.py.
"""

import nbformat
import numpy as np
import pytest
from notebook_checks import failure_line

from helpers.runner.execute import execute

pytestmark = pytest.mark.notebook
NAME = "03_checkpoint_divergence"


def status(summary):
    return {k: f["status"] for k, f in summary["findings"].items()}


SYMPTOM = {"experiment_sparse_coverage": "detected", "experiment_outside_support": "not_detected",
           "swing_within_noise": "detected", "selection_does_not_generalize": "detected",
           "ensemble_improves": "not_detected"}


def what_to_change_output(executed) -> str:
    """The Markdown the executed notebook rendered under "What to change in your training code"."""
    nb = nbformat.read(executed, as_version=4)
    i = next(i for i, c in enumerate(nb.cells)
             if c.cell_type == "markdown" and c.source.strip() == "### What to change in your training code")
    return "".join(o.data["text/markdown"] for o in nb.cells[i + 1].outputs if "text/markdown" in o.get("data", {}))


def check_what_to_change(summary: dict, executed) -> str:
    """The rendered list holds exactly the detected findings' actions (as summary.json stores them), no other id."""
    import html

    text = what_to_change_output(executed)
    assert text
    found = summary["findings"]
    for fid, f in found.items():
        assert (f["status"] == "detected") == bool(f["action"]), fid
        assert (fid in text) == (f["status"] == "detected"), fid
        if f["action"]:
            assert html.escape(f["action"]) in text, fid
    return text


@pytest.mark.xdist_group(NAME)
def test_sample_run_from_another_directory(sample_execution):
    s, executed = sample_execution(NAME)
    assert status(s) == SYMPTOM
    m = s["metrics"]
    assert m["val_best_epoch"] != m["experiment_best_epoch"]
    assert s["sample_run"] is True
    assert len(m["lab"]["best_epochs"]) == 2
    assert len(m["sensitivity_curve_rms_per_sd"]) == 7
    assert len(list((executed.parent / "figures").glob("*.png"))) >= 7


@pytest.mark.xdist_group(NAME)
def test_the_sample_notebook_prints_the_banner_first(sample_execution):
    _, executed = sample_execution(NAME)
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    start = next(i for i, c in enumerate(nb.cells) if "dx.load_inputs(" in c.source)
    first = nb.cells[start].outputs[0]
    assert first.output_type == "stream" and first.text.startswith(">>> These are the BUNDLED SAMPLE RUN's files")


def test_made_up_run(tmp_path, elsewhere):
    """A healthy real run (linear model on scikit-learn's diabetes data): nothing detected, not the sample.
    In a fresh kernel, as a user's run (the sample executions share the worker's warm kernel)."""
    from test_checkpoint_divergence import make_diabetes_run

    np.savez(elsewhere / "healthy.npz", **make_diabetes_run())
    # the minimal call: only the required checkpoints; the sample's forward model is not applied to them
    healthy = execute(NAME, {"run_demos": False, "checkpoints": "healthy.npz"}, tmp_path / "h", cwd=elsewhere)
    assert set(status(healthy).values()) == {"not_detected"}
    assert healthy["sample_run"] is False and list(healthy["dropped"]) == ["forward_model"]
    text = check_what_to_change(healthy, tmp_path / "h" / f"{NAME}.ipynb")
    assert text.startswith("**Nothing to change.** None of this notebook's 5 checks found a problem")
    assert healthy["parameters"]["forward_model"] == ""


def test_bad_input_fails_with_one_clear_line(tmp_path, elsewhere, warm_kernel):
    line = failure_line(NAME, {"checkpoints": "missing.npz", "run_demos": False}, tmp_path / "out", cwd=elsewhere,
                        kernel_manager=warm_kernel)
    assert all(part in line for part in ["InputError: checkpoints: ", "missing.npz", "file not found"]), line


@pytest.mark.xdist_group(NAME)
def test_the_sample_renders_what_to_change_from_its_findings(sample_execution):
    """The rendered "What to change" lists the detected findings' actions, ordered by severity, with what the lab
    measured for coverage and for the seed; summary.json carries the same actions."""
    s, executed = sample_execution(NAME)
    text = check_what_to_change(s, executed)
    assert s["schema_version"] == 2 and "ensemble_improves" not in text
    lines = text.splitlines()
    assert len(lines) == sum(f["status"] == "detected" for f in s["findings"].values())
    cover = next(line for line in lines if "experiment_sparse_coverage" in line)
    assert "*Measured in the lab:*" in cover and "extra profiles drawn near the experiment" in cover
    lab = s["metrics"]["lab"]["coverage"]
    near = [r for r in lab if r["arm"] == "near"]
    assert f"{near[0]['experiment_error']:.3g}" in cover
    swing = next(line for line in lines if "swing_within_noise" in line)
    assert "*Measured in the lab:*" in swing and "seeds" in swing
