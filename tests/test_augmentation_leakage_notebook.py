"""Notebook 05 under papermill: the sample run (executed once per suite), one run made up here, and a
bad input in one line. Everything else is checked in-process in test_augmentation_leakage.py."""

import nbformat
import numpy as np
import pandas as pd
import pytest
from face import pipeline
from notebook_checks import failure_line
from sklearn import datasets

from helpers.augmentation_leakage import diagnosis as dx
from helpers.augmentation_leakage import lab
from helpers.findings import SAMPLE_BANNER, jsonable
from helpers.runner.execute import execute

pytestmark = pytest.mark.notebook
NAME = "05_augmentation_leakage"


def status(summary):
    return {k: f["status"] for k, f in summary["findings"].items()}


@pytest.mark.xdist_group(NAME)
def test_sample_run_from_another_directory(sample_execution):
    summary, executed_path = sample_execution(NAME)
    assert set(status(summary).values()) == {"detected"}
    assert list(summary["findings"]) == list(dx.FINDING_IDS)
    m = summary["metrics"]
    assert m["val_tier_share"]["hard"] == pytest.approx(0.65, abs=0.02)
    assert m["parent_leaked_share"] > 0.95 and m["near_duplicate_leaked_share"] > 0.9
    labs = {(r["arrangement"][:3], r["noise"]): r for r in m["lab"]}
    assert labs[("(a)", 0.02)]["val_over_test"] < 0.3 and labs[("(a)", 0.05)]["val_over_test"] < 0.5
    assert labs[("(c)", 0.02)]["val_over_test"] > 0.8
    assert m["lab_noise_5pct_scan"]["with parent_id"]["detected"]
    assert summary["sample_run"] is True
    assert len(list((executed_path.parent / "figures").glob("*.png"))) == 5
    # the first output after the versions line is the banner, loud about the bundled sample
    executed = nbformat.read(executed_path, as_version=4)
    streams = [o.text for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream"]
    assert streams[0].startswith("python ") and streams[1].startswith(SAMPLE_BANNER)
    assert not any(o.output_type == "error" for c in executed.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.xdist_group(NAME)
def test_sample_run_is_deterministic_and_the_face_gives_the_notebooks_summary(sample_execution, tmp_path):
    """The diagnosis in-process gives the executed notebook's findings and metrics; the lab too."""
    summary, _ = sample_execution(NAME)
    r = pipeline(dx, output_dir=str(tmp_path / "out"), write=False)
    mine = r.summary.to_dict()
    lab_keys = [k for k in summary["metrics"] if k.startswith("lab")]
    assert mine["findings"] == summary["findings"]
    assert mine["metrics"] == {k: v for k, v in summary["metrics"].items() if k not in lab_keys}
    assert jsonable(lab.run(lab.LabConfig(seed=0)).to_dict(orient="records")) == summary["metrics"]["lab"]


def test_made_up_clean_run_without_parents(tmp_path, elsewhere):
    data = datasets.load_diabetes(as_frame=True).frame
    rng = np.random.default_rng(0)
    data["split"] = np.where(rng.random(len(data)) < 0.2, "val", "train")
    data["group"] = np.where(data["sex"] > 0, "a", "b")
    data.to_csv(elsewhere / "rows.csv", index=False)
    # the minimal call (the samples, and which columns are features); the sample's companions are not used
    summary = execute(NAME, {"samples": "rows.csv", "feature_columns": "[age, bmi, bp, s1, s2, s3, s4, s5, s6]",
                             "run_demos": False}, tmp_path / "out", cwd=elsewhere)
    assert set(summary["dropped"]) == {"declared_copies", "group_metrics", "train_loss", "val_loss"}
    st = status(summary)
    assert "detected" not in st.values(), st
    assert st["parent_leakage"] == "not_applicable"
    assert summary["sample_run"] is False and "lab" not in summary["metrics"]


def test_bad_input_fails_with_one_clear_line(tmp_path, elsewhere):
    """One papermill refusal; the others are checked in-process (test_augmentation_leakage.py)."""
    pd.DataFrame({"x": [1.0, 2.0, np.inf], "split": ["train", "val", "train"]}).to_parquet(elsewhere / "inf.parquet")
    line = failure_line(NAME, {"samples": "inf.parquet", "run_demos": False}, tmp_path / "out", cwd=elsewhere)
    assert all(part in line for part in ["samples: ", "inf.parquet", "column 'x' has 1 NaN/inf values"]), line
