"""Notebook 03 under papermill: the sample run both ways in, made-up runs, bad inputs."""

import json

import numpy as np
import pytest
from notebook_checks import failure_line

from helpers.paths import DATA_SAMPLES
from helpers.runner.execute import execute

pytestmark = pytest.mark.notebook
NAME = "03_checkpoint_divergence"
SAMPLE = DATA_SAMPLES / NAME


def status(summary):
    return {k: f["status"] for k, f in summary["findings"].items()}


SYMPTOM = {"experiment_sparse_coverage": "detected", "experiment_outside_support": "not_detected",
           "swing_within_noise": "detected", "selection_does_not_generalize": "detected", "ensemble_improves": "detected"}


def test_sample_run_from_another_directory(tmp_path, elsewhere):
    s = execute(NAME, {}, tmp_path / "out", cwd=elsewhere)
    assert status(s) == SYMPTOM
    m = s["metrics"]
    assert m["val_best_epoch"] != m["experiment_best_epoch"]
    assert s["sample_run"] is True
    assert len(m["lab"]["best_epochs"]) == 2
    assert len(list((tmp_path / "out" / "figures").glob("*.png"))) >= 7


def test_sample_run_from_the_checkpoint_files(tmp_path, elsewhere):
    params = {"checkpoint_files": "data_samples/03_checkpoint_divergence/checkpoints/*.pt",
              "model_factory": "helpers.checkpoint_divergence.lab:make_model",
              "validation": "data_samples/03_checkpoint_divergence/validation.npz", "run_demos": False}
    s = execute(NAME, params, tmp_path / "out", cwd=elsewhere)
    assert status(s) == SYMPTOM
    assert any(k.startswith("weight average") for k in s["metrics"]["remedies"])
    assert s["metrics"]["source"] == "checkpoint files"
    assert s["sample_run"] and s["parameters"]["checkpoints"] == ""  # the npz is not read on this route
    assert sum(k.startswith("checkpoint_files[") for k in s["inputs"]) == 30 and "validation" in s["inputs"]


@pytest.fixture(scope="module")
def made_up(tmp_path_factory):
    """A healthy real run (linear model on scikit-learn's diabetes data), the same with the experiment outside the
    support, and the same without train_target."""
    from test_checkpoint_divergence import make_diabetes_run

    arrays = make_diabetes_run()
    d = tmp_path_factory.mktemp("runs")
    np.savez(d / "healthy.npz", **arrays)
    np.savez(d / "outside.npz", **dict(arrays, experiment_target=arrays["train_target"].max(0) * np.array([2.0, 3.0])))
    np.savez(d / "no_train.npz", **{k: v for k, v in arrays.items() if k != "train_target"})
    return d


def test_made_up_runs(tmp_path, elsewhere, made_up):
    base = {"forward_model": "", "run_demos": False}
    healthy = execute(NAME, {**base, "checkpoints": str(made_up / "healthy.npz")}, tmp_path / "h", cwd=elsewhere)
    assert set(status(healthy).values()) == {"not_detected"}
    assert healthy["sample_run"] is False
    again = execute(NAME, {**base, "checkpoints": str(made_up / "healthy.npz")}, tmp_path / "h2", cwd=elsewhere)
    healthy["parameters"].pop("output_dir"), again["parameters"].pop("output_dir")
    assert healthy == again  # same inputs, same summary.json
    outside = execute(NAME, {**base, "checkpoints": str(made_up / "outside.npz")}, tmp_path / "o", cwd=elsewhere)
    assert status(outside)["experiment_outside_support"] == "detected"
    bare = execute(NAME, {**base, "checkpoints": str(made_up / "no_train.npz")}, tmp_path / "n", cwd=elsewhere)
    for fid in ("experiment_sparse_coverage", "experiment_outside_support"):
        assert bare["findings"][fid]["status"] == "not_applicable" and "'train_target'" in bare["findings"][fid]["message"]
    json.dumps(bare)


@pytest.mark.parametrize("params, expected", [
    ({"checkpoints": "missing.npz"}, ["InputError: checkpoints: ", "missing.npz", "file not found"]),
    ({"checkpoint_files": "nothing/*.pt", "model_factory": "helpers.checkpoint_divergence.lab:make_model",
      "validation": "data_samples/03_checkpoint_divergence/validation.npz"}, ["checkpoint_files: ", "no file matches"]),
    ({"last_k": 0}, ["InputError: last_k: must be in [2, 1000], got 0"]),
])
def test_bad_input_fails_with_one_clear_line(tmp_path, elsewhere, params, expected):
    line = failure_line(NAME, {**params, "run_demos": False}, tmp_path / "out", cwd=elsewhere)
    assert all(part in line for part in expected), line
