"""Notebook executions with papermill, and the hygiene of the committed notebooks."""

import json

import nbformat
import pytest
from notebook_checks import failure_line

from helpers.paths import NOTEBOOKS
from helpers.r2_gap.simulate import R2GapConfig, simulate
from helpers.runner.execute import execute, notebook_names, strip_solutions

pytestmark = pytest.mark.notebook


def status(summary):
    return {k: f["status"] for k, f in summary["findings"].items()}


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
    assert any("solution" in c.metadata.get("tags", []) for c in nb.cells)


def test_student_copy_removes_solutions():
    nb = nbformat.read(NOTEBOOKS / "01_r2_gap.ipynb", as_version=4)
    n = sum("solution" in c.metadata.get("tags", []) for c in nb.cells)
    student = strip_solutions(nb)
    assert not any("solution" in c.metadata.get("tags", []) for c in student.cells)
    assert sum("answer" in c.metadata.get("tags", []) for c in student.cells) == n


# ----------------------------------------------------------------------------- 01 executions
def test_01_sample_run_from_another_directory(tmp_path, elsewhere):
    out = tmp_path / "out"
    summary = execute("01_r2_gap", {}, out, cwd=elsewhere)
    st = status(summary)
    assert {k for k, v in st.items() if v == "detected"} == {
        "unsynced_rank_metrics", "batch_averaged_r2", "explained_variance_as_r2",
        "sampler_padding_duplicates", "between_session_variance"}
    assert summary["metrics"]["reported_r2"] == 0.487
    assert summary["sample_run"] and set(summary["inputs"]) == {"predictions", "reported"}
    assert abs(summary["metrics"]["pooled_r2"] - 0.3435) < 1e-3
    lab = summary["metrics"]["lab"]["r2_abs_error"]
    assert lab["exact: all-reduced sufficient statistics, duplicates removed"] < 1e-6
    assert lab["torchmetrics R2Score + PearsonCorrCoef, duplicates removed"] < 1e-6
    assert lab["seed Fix 1: all-reduce mean of per-rank R² and r"] > 1e-4
    assert (out / "01_r2_gap.ipynb").exists() and len(list((out / "figures").glob("*.png"))) >= 4
    # determinism: the same inputs give the same summary.json
    again = execute("01_r2_gap", {"run_demos": True}, tmp_path / "again", cwd=elsewhere)
    summary["parameters"].pop("output_dir"), again["parameters"].pop("output_dir")
    assert summary == again


def test_01_on_a_new_clean_run_with_csv_and_no_channels(tmp_path, elsewhere):
    cfg = R2GapConfig(seed=11, sessions=("x", "y", "z"), samples_per_session=40, n_channels=1, world_size=3,
                      batch_size=8, session_shift=0.0, rank0_only=False, batch_mean=False, explained_variance=False,
                      keep_padding=False)
    table, reported = simulate(cfg)
    table.drop(columns="channel").to_csv(elsewhere / "preds.csv", index=False)
    (elsewhere / "logged.json").write_text(json.dumps(reported))
    summary = execute("01_r2_gap", {"predictions": "preds.csv", "reported": "logged.json", "run_demos": False},
                      tmp_path / "out", cwd=elsewhere)
    assert not [k for k, v in status(summary).items() if v == "detected"]
    assert "lab" not in summary["metrics"]
    assert not summary["sample_run"] and summary["inputs"]["predictions"] == str(elsewhere / "preds.csv")


def test_01_on_predictions_only(tmp_path, elsewhere, capfd):
    table, _ = simulate(R2GapConfig(seed=2))
    table[["y_true", "y_pred"]].to_parquet(elsewhere / "p.parquet")
    summary = execute("01_r2_gap", {"predictions": str(elsewhere / "p.parquet"), "reported": "", "run_demos": False},
                      tmp_path / "out", cwd=elsewhere)
    assert set(status(summary).values()) == {"not_applicable"}
    # the kernel's transport warning no longer buries the lines that matter
    assert "without encryption" not in capfd.readouterr().err


# ----------------------------------------------------------------------------- bad inputs
def _bad_files(d):
    table, _ = simulate(R2GapConfig())
    table.drop(columns="y_pred").to_parquet(d / "no_pred.parquet")
    t = table.copy()
    t.loc[5, "y_true"] = float("nan")
    t.to_parquet(d / "nan.parquet")
    (d / "bad.json").write_text('{"r2": 0.5, "per_session": {"999": {"r2": 0.1}}}')
    t = table.copy()
    t["y_true"] = 2.5
    t.to_parquet(d / "constant.parquet")
    table.iloc[:1].to_parquet(d / "one_row.parquet")
    table.to_parquet(d / "mine.parquet")


@pytest.mark.parametrize("params, expected", [
    ({"predictions": "missing.parquet"}, ["predictions: ", "missing.parquet", "file not found"]),
    ({"predictions": "no_pred.parquet"}, ["predictions: ", "no_pred.parquet", "missing required column 'y_pred'"]),
    ({"predictions": "nan.parquet"}, ["predictions: ", "nan.parquet", "column 'y_true' has 1 NaN/inf values"]),
    ({"reported": "bad.json"}, ["reported: ", "bad.json", "per_session has session '999'"]),
    ({"tolerance": "tight"}, ["tolerance: expected a number, got 'tight'"]),
    ({"predictions": "constant.parquet"}, ["predictions: ", "constant.parquet", "column 'y_true' is constant (2.5"]),
    ({"predictions": "one_row.parquet"}, ["predictions: ", "one_row.parquet", "has 1 row"]),
    ({"predictions": "mine.parquet"}, ["reported: still points at the bundled sample run (data_samples/01_r2_gap/reported.json)"
                                       " while predictions is your file"]),
])
def test_01_bad_input_fails_with_one_clear_line(tmp_path, elsewhere, params, expected):
    _bad_files(elsewhere)
    line = failure_line("01_r2_gap", {**params, "run_demos": False}, tmp_path / "out", cwd=elsewhere)
    assert all(part in line for part in expected), line


def test_01_degenerate_but_valid_sessions_are_diagnosed(tmp_path, elsewhere):
    """One session; sessions whose y_true is constant inside; one row per session: no crash, no claim."""
    import numpy as np
    import pandas as pd

    y = np.arange(40.0)
    cases = {
        "one_session": pd.DataFrame({"y_true": y, "y_pred": y + 1, "session": "a"}),
        "constant_within": pd.DataFrame({"y_true": np.repeat([1.0, 2.0], 20), "y_pred": y / 20, "session": np.repeat(["a", "b"], 20)}),
        "row_per_session": pd.DataFrame({"y_true": [1.0, 2.0, 4.0], "y_pred": [1.5, 2.0, 3.0], "session": ["a", "b", "c"]}),
    }
    for name, table in cases.items():
        table.to_parquet(elsewhere / f"{name}.parquet")
        summary = execute("01_r2_gap", {"predictions": f"{name}.parquet", "reported": "", "run_demos": False},
                          tmp_path / name, cwd=elsewhere)
        assert summary["findings"]["between_session_variance"]["status"] == "not_detected", name
