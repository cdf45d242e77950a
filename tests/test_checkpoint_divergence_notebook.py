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
           "swing_within_noise": "detected", "selection_does_not_generalize": "detected", "ensemble_improves": "detected"}


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
    """A healthy real run (linear model on scikit-learn's diabetes data): nothing detected, not the sample."""
    from test_checkpoint_divergence import make_diabetes_run

    np.savez(elsewhere / "healthy.npz", **make_diabetes_run())
    # the minimal call: only the required checkpoints; the sample's forward model is not applied to them
    healthy = execute(NAME, {"run_demos": False, "checkpoints": "healthy.npz"}, tmp_path / "h", cwd=elsewhere)
    assert set(status(healthy).values()) == {"not_detected"}
    assert healthy["sample_run"] is False and list(healthy["dropped"]) == ["forward_model"]
    assert healthy["parameters"]["forward_model"] == ""


def test_bad_input_fails_with_one_clear_line(tmp_path, elsewhere):
    line = failure_line(NAME, {"checkpoints": "missing.npz", "run_demos": False}, tmp_path / "out", cwd=elsewhere)
    assert all(part in line for part in ["InputError: checkpoints: ", "missing.npz", "file not found"]), line
