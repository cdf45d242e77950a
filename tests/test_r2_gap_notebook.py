"""Notebook 01 end to end: the sample run (executed once per suite), one new run and one refusal
by papermill; everything else through the face in-process, as the notebook's cells drive it."""

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from face import pipeline
from notebook_checks import failure_line

from helpers.io import InputError
from helpers.r2_gap import diagnosis as dx
from helpers.r2_gap.simulate import R2GapConfig, simulate
from helpers.runner.execute import execute

NAME = "01_r2_gap"
SAMPLE_DETECTED = {"unsynced_rank_metrics", "batch_averaged_r2", "explained_variance_as_r2",
                   "sampler_padding_duplicates", "between_session_variance"}


def status(summary: dict) -> dict:
    return {k: f["status"] for k, f in summary["findings"].items()}


def rendered(executed: Path, call: str) -> str:
    """The Markdown that the code cell calling ``call`` rendered in the executed notebook."""
    nb = json.loads(Path(executed).read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code" and call in "".join(c["source"]))
    return "".join("".join(o["data"]["text/markdown"]) for o in cell["outputs"] if "text/markdown" in o.get("data", {}))


def check_what_to_change(summary: dict, executed: Path) -> str:
    """The rendered "What to change" lists exactly the detected findings' actions, as summary.json carries them."""
    text = rendered(executed, "what_to_change(")
    for fid, f in summary["findings"].items():
        detected = f["status"] == "detected"
        assert bool(f["action"]) == detected, fid
        if detected:
            assert f"**{fid}**" in text and html.escape(f["action"]) in text, fid
        else:
            assert fid not in text, fid
    return text


# ----------------------------------------------------------------------------- the sample run
@pytest.mark.notebook
@pytest.mark.xdist_group(NAME)
def test_sample_run_from_another_directory(sample_execution):
    summary, executed = sample_execution(NAME)
    st = status(summary)
    assert {k for k, v in st.items() if v == "detected"} == SAMPLE_DETECTED
    assert list(st) == list(dx.FINDING_IDS)
    assert summary["metrics"]["reported_r2"] == 0.487
    assert summary["sample_run"] and set(summary["inputs"]) == {"predictions", "reported"}
    assert abs(summary["metrics"]["pooled_r2"] - 0.3435) < 1e-3
    lab = summary["metrics"]["lab"]["r2_abs_error"]
    assert lab["exact: all-reduced sufficient statistics, duplicates removed"] < 1e-6
    assert lab["torchmetrics R2Score + PearsonCorrCoef, duplicates removed"] < 1e-6
    assert lab["seed Fix 1: all-reduce mean of per-rank R² and r"] > 1e-4
    assert executed.exists() and len(list((executed.parent / "figures").glob("*.png"))) >= 4


@pytest.mark.notebook
@pytest.mark.xdist_group(NAME)
def test_sample_run_renders_what_to_change_and_the_gap_account(sample_execution):
    summary, executed = sample_execution(NAME)
    text = check_what_to_change(summary, executed)
    lab = summary["metrics"]["lab"]["r2_abs_error"]
    # the lab's measurements support the fixes it tested, with its own numbers
    assert text.count("*Measured in the lab:*") == 3  # unsynced ranks, batch averaging, padding
    assert f"within {lab['exact: all-reduced sufficient statistics, duplicates removed']:.1e}" in text
    assert f"by {lab['rank 0 only']:+.4f}" in text
    verdict = rendered(executed, "dx.gap_verdict(")
    assert "12 logged number(s): 10 reproduced by the correct computation, 2 by a buggy one, 0 unexplained" in verdict
    assert "against session 160819's 0.127 (a gap of 0.360)" in verdict


def test_no_markdown_cell_states_a_number_of_the_sample_run():
    """Numbers about the run are printed by cells; the source's numbers are labelled as the source's."""
    from helpers.paths import NOTEBOOKS

    nb = json.loads((NOTEBOOKS / f"{NAME}.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    for number in ("0.487", "0.681", "0.127", "0.343", "0.299", "0.045", "0.360", "1696", "160819", "420", "424", "405"):
        assert number not in text, number
    assert "In the source analysis" in text and "0.479" in text and "first_occurrence" not in text


@pytest.mark.notebook
@pytest.mark.xdist_group(NAME)
def test_sample_run_agrees_with_the_in_process_pipeline(sample_execution, tmp_path):
    """What tests measure through the face is what the notebook writes (the lab's numbers aside)."""
    summary, _ = sample_execution(NAME)
    mine = pipeline(dx, output_dir=str(tmp_path)).summary.to_dict()
    assert mine["findings"] == summary["findings"]
    assert mine["metrics"] == {k: v for k, v in summary["metrics"].items() if k != "lab"}
    assert mine["inputs"] == summary["inputs"] and mine["sample_run"]


@pytest.mark.notebook  # a new Python process runs the import cell
def test_the_import_cell_loads_no_torch():
    """Only the lab needs torch (run_demos): the import cell prints its version without importing it."""
    import subprocess
    import sys

    from helpers.paths import NOTEBOOKS

    nb = json.loads((NOTEBOOKS / f"{NAME}.ipynb").read_text())
    cell = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
    probe = f"import matplotlib\nmatplotlib.use('Agg')\n{cell}\nimport sys\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False" and "| torch 2." in out


def test_sample_banner_comes_first_and_says_it_is_the_sample(tmp_path):
    r = pipeline(dx, output_dir=str(tmp_path))
    lines = r.banner.splitlines()
    assert "BUNDLED SAMPLE RUN" in lines[0]
    assert any(line.strip().startswith("predictions: ") for line in lines)
    assert "1696 prediction rows" in r.banner and "logged numbers: {'r2': '0.487'" in r.banner


def test_the_same_inputs_give_the_same_summary(tmp_path):
    a = pipeline(dx, output_dir=str(tmp_path / "a")).summary.to_dict()
    b = pipeline(dx, output_dir=str(tmp_path / "b")).summary.to_dict()
    a["parameters"].pop("output_dir"), b["parameters"].pop("output_dir")
    assert a == b


# ----------------------------------------------------------------------------- other runs
@pytest.mark.notebook
def test_on_a_new_clean_run_with_csv_and_no_channels(tmp_path, elsewhere, warm_kernel):
    cfg = R2GapConfig(seed=11, sessions=("x", "y", "z"), samples_per_session=40, n_channels=1, world_size=3,
                      batch_size=8, session_shift=0.0, rank0_only=False, batch_mean=False, explained_variance=False,
                      keep_padding=False)
    table, reported = simulate(cfg)
    table.drop(columns="channel").to_csv(elsewhere / "preds.csv", index=False)
    (elsewhere / "logged.json").write_text(json.dumps(reported))
    # the minimal call: only the required predictions; the sample's logged numbers are not used
    summary = execute(NAME, {"predictions": "preds.csv", "run_demos": False}, tmp_path / "out", cwd=elsewhere,
                      kernel_manager=warm_kernel)
    assert not [k for k, v in status(summary).items() if v == "detected"]
    assert list(summary["dropped"]) == ["reported"] and summary["parameters"]["reported"] == ""
    assert "lab" not in summary["metrics"]
    text = check_what_to_change(summary, tmp_path / "out" / f"{NAME}.ipynb")
    assert text.startswith("**Nothing to change.** None of this notebook's 8 checks found a problem")
    assert all(not f["action"] for f in summary["findings"].values())
    assert not summary["sample_run"] and summary["inputs"] == {"predictions": str(elsewhere / "preds.csv")}
    # and in-process, through the face, the same call gives the same summary
    minimal = pipeline(dx, predictions="preds.csv", output_dir=str(tmp_path / "minimal"))
    assert minimal.summary.to_dict()["findings"] == summary["findings"]
    assert minimal.summary.to_dict()["metrics"] == summary["metrics"]
    # with the run's own logged numbers: every one reproduced by the correct computation, nothing detected
    mine = pipeline(dx, predictions="preds.csv", reported="logged.json", output_dir=str(tmp_path / "mine"))
    assert not [k for k, f in mine.found.items() if f.detected] and mine.run.dropped == {}


def test_on_predictions_only(tmp_path, elsewhere):
    table, _ = simulate(R2GapConfig(seed=2))
    table[["y_true", "y_pred"]].to_parquet(elsewhere / "p.parquet")
    r = pipeline(dx, predictions=str(elsewhere / "p.parquet"), reported="", output_dir=str(tmp_path / "out"))
    assert {f.status for f in r.found.values()} == {"not_applicable"}
    assert not r.summary.sample_run and set(r.run.inputs) == {"predictions"}


@pytest.mark.parametrize("name, table", [
    ("one_session", pd.DataFrame({"y_true": np.arange(40.0), "y_pred": np.arange(40.0) + 1, "session": "a"})),
    ("constant_within", pd.DataFrame({"y_true": np.repeat([1.0, 2.0], 20), "y_pred": np.arange(40.0) / 20,
                                      "session": np.repeat(["a", "b"], 20)})),
    ("row_per_session", pd.DataFrame({"y_true": [1.0, 2.0, 4.0], "y_pred": [1.5, 2.0, 3.0],
                                      "session": ["a", "b", "c"]})),
])
@pytest.mark.filterwarnings("error::RuntimeWarning")  # no numpy warning reaches the notebook's output
def test_degenerate_but_valid_sessions_are_diagnosed(tmp_path, elsewhere, name, table):
    """One session; sessions whose y_true is constant inside; one row per session: no crash, no claim."""
    table.to_parquet(elsewhere / f"{name}.parquet")
    r = pipeline(dx, predictions=f"{name}.parquet", reported="", output_dir=str(tmp_path / name))
    assert r.found["between_session_variance"].status == "not_detected", name
    assert json.loads((tmp_path / name / "summary.json").read_text())["findings"]["between_session_variance"][
        "status"] == "not_detected"


# ----------------------------------------------------------------------------- bad inputs
def bad_files(d):
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
    ({"predictions": "mine.parquet", "reported": "bad.json"}, ["reported: ", "bad.json", "per_session has session '999'"]),
    ({"reported": "bad.json"}, ["predictions: still points at the bundled sample run while reported is yours"]),
    ({"tolerance": "tight"}, ["tolerance: expected a number, got 'tight'"]),
    ({"predictions": "constant.parquet"}, ["predictions: ", "constant.parquet", "column 'y_true' is constant (2.5"]),
    ({"predictions": "one_row.parquet"}, ["predictions: ", "one_row.parquet", "has 1 row"]),
])
def test_bad_input_fails_with_one_clear_line(tmp_path, elsewhere, params, expected):
    bad_files(elsewhere)
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        pipeline(dx, **{"output_dir": str(out), **params})
    line = str(e.value)
    assert "\n" not in line and all(part in line for part in expected), line
    assert not (out / "summary.json").exists()


@pytest.mark.notebook
def test_bad_input_stops_the_notebook_with_one_line(tmp_path, elsewhere, warm_kernel):
    bad_files(elsewhere)
    line = failure_line(NAME, {"predictions": "no_pred.parquet", "run_demos": False}, tmp_path / "out", cwd=elsewhere,
                        kernel_manager=warm_kernel)
    assert line.startswith("InputError: predictions: ")
    assert all(part in line for part in ("no_pred.parquet", "missing required column 'y_pred'")), line
    assert not (tmp_path / "out" / "summary.json").exists()


def test_the_minimal_call_drops_the_samples_logged_numbers(tmp_path, elsewhere):
    """Only the required input is yours: the sample's reported.json is not used, and the banner and
    summary.json say so (with how to give yours)."""
    bad_files(elsewhere)
    r = pipeline(dx, predictions="mine.parquet", output_dir=str(tmp_path / "out"))
    assert list(r.run.dropped) == ["reported"] and r.run.reported == {} and r.params["reported"] == ""
    assert "not used: reported (left at the bundled sample's value" in r.banner and "-p reported" in r.banner
    assert r.summary.to_dict()["dropped"] == r.run.dropped
    assert r.found["unsynced_rank_metrics"].status == "not_applicable"
