"""Notebook 05 under papermill: the sample run, runs made up here, and bad inputs in one line."""

import numpy as np
import pandas as pd
import pytest
from notebook_checks import failure_line
from sklearn import datasets

from helpers.runner.execute import execute

pytestmark = pytest.mark.notebook
NAME = "05_augmentation_leakage"
NONE = {"declared_copies": "", "group_metrics": "", "train_loss": float("nan"), "val_loss": float("nan")}


def status(summary):
    return {k: f["status"] for k, f in summary["findings"].items()}


def test_sample_run_from_another_directory_and_deterministic(tmp_path, elsewhere):
    summary = execute(NAME, {}, tmp_path / "out", cwd=elsewhere)
    assert set(status(summary).values()) == {"detected"}
    m = summary["metrics"]
    assert m["val_tier_share"]["hard"] == pytest.approx(0.65, abs=0.02)
    assert m["parent_leaked_share"] > 0.95 and m["near_duplicate_leaked_share"] > 0.9
    lab = {(r["arrangement"][:3], r["noise"]): r for r in m["lab"]}
    assert lab[("(a)", 0.02)]["val_over_test"] < 0.3 and lab[("(a)", 0.05)]["val_over_test"] < 0.5
    assert lab[("(c)", 0.02)]["val_over_test"] > 0.8
    assert m["lab_noise_5pct_scan"]["with parent_id"]["detected"]
    assert summary["sample_run"] is True
    assert len(list((tmp_path / "out" / "figures").glob("*.png"))) == 5
    again = execute(NAME, {}, tmp_path / "again", cwd=elsewhere)
    summary["parameters"].pop("output_dir"), again["parameters"].pop("output_dir")
    assert summary == again


def test_made_up_clean_run_without_parents(tmp_path, elsewhere):
    data = datasets.load_diabetes(as_frame=True).frame
    rng = np.random.default_rng(0)
    data["split"] = np.where(rng.random(len(data)) < 0.2, "val", "train")
    data["group"] = np.where(data["sex"] > 0, "a", "b")
    data.to_csv(elsewhere / "rows.csv", index=False)
    summary = execute(NAME, {"samples": "rows.csv", "feature_columns": "[age, bmi, bp, s1, s2, s3, s4, s5, s6]",
                             "run_demos": False, **NONE}, tmp_path / "out", cwd=elsewhere)
    st = status(summary)
    assert "detected" not in st.values(), st
    assert st["parent_leakage"] == "not_applicable"
    assert summary["sample_run"] is False and "lab" not in summary["metrics"]


def _bad(d):
    pd.DataFrame({"x": [1.0, 2.0, np.inf], "split": ["train", "val", "train"]}).to_parquet(d / "inf.parquet")
    pd.DataFrame({"x": [1.0, 2.0], "split": ["train", "train"]}).to_parquet(d / "noval.parquet")


@pytest.mark.parametrize("params, expected", [
    ({"samples": "missing.parquet"}, ["samples: ", "missing.parquet", "file not found"]),
    ({"samples": "inf.parquet"}, ["samples: ", "inf.parquet", "column 'x' has 1 NaN/inf values"]),
    ({"samples": "noval.parquet"}, ["no rows with split == 'val'"]),
    ({"feature_columns": "[n, nope]"}, ["feature column 'nope' not found"]),
])
def test_bad_input_fails_with_one_clear_line(tmp_path, elsewhere, params, expected):
    _bad(elsewhere)
    line = failure_line(NAME, {**params, "run_demos": False}, tmp_path / "out", cwd=elsewhere)
    assert all(part in line for part in expected), line
