"""Notebook 05 under papermill: the sample run (executed once per suite, and diagnosed in-process beside it),
one run made up here, and a bad input in one line. Everything else is checked in-process in
test_augmentation_leakage.py."""

import html
import json
import re

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


def rendered(executed, call: str) -> str:
    """The Markdown that the code cell calling ``call`` rendered from the run."""
    cell = next(c for c in executed.cells if c.cell_type == "code" and call in c.source)
    return "".join(o.data["text/markdown"] for o in cell.outputs if "text/markdown" in o.get("data", {}))


def check_what_to_change(summary: dict, executed) -> dict[str, str]:
    """The rendered "What to change" lists exactly the detected findings, each with its action from
    summary.json (no other finding id appears in it); returns {finding id: its rendered item}."""
    text = rendered(executed, "what_to_change(")
    items = {m.group(1): m.group(0) for m in re.finditer(r"^\d+\. \*\*(\w+)\*\*.*$", text, flags=re.M)}
    detected = {k for k, f in summary["findings"].items() if f["status"] == "detected"}
    assert set(items) == detected
    for k, f in summary["findings"].items():
        if k in detected:
            assert f["action"] and html.escape(f["action"]) in items[k]
        else:
            assert f["action"] == "" and k not in text
    if not detected:
        assert text.startswith("**Nothing to change.**")
    return items


@pytest.mark.xdist_group(NAME)
def test_sample_run_from_another_directory(sample_execution):
    summary, executed_path = sample_execution(NAME)
    assert set(status(summary).values()) == {"detected"}
    assert list(summary["findings"]) == list(dx.FINDING_IDS)
    m = summary["metrics"]
    assert m["val_tier_share"]["hard"] == pytest.approx(0.65, abs=0.02)
    assert m["parent_leaked_share"] > 0.95 and m["near_duplicate_leaked_share"] > 0.9
    labs = {(r["arrangement"][:3], r["noise"]): r for r in m["lab"]}
    a, b, c = (labs[(arm, 0.02)] for arm in ("(a)", "(b)", "(c)"))
    assert a["val_over_test"] < 0.3 and labs[("(a)", 0.05)]["val_over_test"] < 0.5
    # the clean arms are validated on enough originals and track the clean test set (before: (b) 0.79 on
    # 54 rows, (c) 1.83 on its augmented copies)
    assert 0.8 <= b["val_over_test"] <= 1.25 and 0.8 <= c["val_over_test"] <= 1.25
    assert b["validated_on"] == c["validated_on"] == "originals" and min(b["val_rows"], c["val_rows"]) >= 300
    assert m["lab_noise_scan"]["detected"]  # the feature-only scan still sees the copies at 5% noise
    assert summary["sample_run"] is True
    assert len(list((executed_path.parent / "figures").glob("*.png"))) == 5
    executed = nbformat.read(executed_path, as_version=4)
    # "What to change": exactly the detected findings, each with its action and the lab's numbers from its table
    items = check_what_to_change(summary, executed)
    for fid in ("parent_leakage", "near_duplicate_leakage"):
        assert "*Measured in the lab:*" in items[fid]
    lab_advice = items["parent_leakage"]
    assert all(f"{r['val_over_test']:.2f}x" in lab_advice for r in (a, b, c, labs[("(a)", 0.05)]))
    assert f"validated on {b['val_rows']} and {c['val_rows']} originals" in lab_advice
    assert "match a clean test set" not in "".join(c.source for c in executed.cells)  # the static advice is gone
    reading = rendered(executed, "lab.reading(")
    assert f"{b['val_over_test']:.2f}x on {b['val_rows']} validation originals: validation tracks the test set" in reading
    # the source's composition arithmetic: its table omits a medium group's worth of rows
    out = "".join(o.get("text", "") for c in executed.cells if "source_composition" in c.source for o in c.outputs)
    assert "its table lists 374,400 of them (88.9%)" in out and "should be 140,400 (33.3%)" in out
    # the first output after the versions line is the banner, loud about the bundled sample
    streams = [o.text for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream"]
    assert streams[0].startswith("python ") and streams[1].startswith(SAMPLE_BANNER)
    assert not any(o.output_type == "error" for c in executed.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.xdist_group(NAME)
def test_sample_run_is_deterministic_and_the_face_gives_the_notebooks_summary(sample_execution, tmp_path):
    """The diagnosis in-process, on the sample's files named one by one, gives the executed notebook's findings
    and metrics; the lab too. Its banner announces the sample, and its numbers reconcile with the logs."""
    summary, _ = sample_execution(NAME)
    losses = json.loads((dx.SAMPLE_DIR / "losses.json").read_text())
    sample = "data_samples/05_augmentation_leakage/"
    r = pipeline(dx, samples=sample + "samples.parquet", feature_columns="[]",
                 declared_copies=sample + "declared_copies.json", group_metrics=sample + "group_metrics.csv",
                 baseline_run="baseline", output_dir=str(tmp_path / "out"), **losses)
    mine = r.summary.to_dict()
    lab_keys = [k for k in summary["metrics"] if k.startswith("lab")]
    assert mine["findings"] == summary["findings"]  # actions included
    assert mine["metrics"] == {k: v for k, v in summary["metrics"].items() if k not in lab_keys}
    assert jsonable(lab.run(lab.LabConfig(seed=0)).to_dict(orient="records")) == summary["metrics"]["lab"]
    written = json.loads((tmp_path / "out" / "summary.json").read_text())["findings"]
    assert {k: f["action"] for k, f in written.items()} == {k: f.action for k, f in r.found.items()}
    assert r.banner.startswith(SAMPLE_BANNER)
    assert list(r.run.inputs) == ["samples", "declared_copies", "group_metrics"]
    assert "samples: 14040 rows (train 11934, val 2106)" in r.banner
    assert f"logged losses: train {losses['train_loss']:g}, val {losses['val_loss']:g}" in r.banner
    assert "declared copies per original: k=4,m=2 0, k=4,m=3 0, k=5,m=2 0, k=4,m=4 1," in r.banner
    d = r.diagnosis
    # the per-group values weighted by validation rows give back the logged val loss (4-decimal rounding)
    assert d.weighted["this"]["row_weighted"] == pytest.approx(losses["val_loss"], abs=1e-3)
    assert all(f.detected for f in r.found.values())
    assert r.summary.metrics["val_metric_row_weighted"] == d.weighted["this"]["row_weighted"]
    # every detected finding carries an action, rendered in "What to change" (test_sample_run_from_another_directory)
    assert all(f.action for f in r.found.values())
    # the actions' numbers are this run's: formatted from the diagnosis, not quoted from the source
    gap = d.gap
    assert f"({gap['clean_split']['val_mse']:.4f} vs {gap['actual_split']['val_mse']:.4f})" in \
        r.found["suspicious_train_val_gap"].action
    w = d.weighted["this"]
    assert f"{w['row_weighted']:.3f} row-weighted, {w['reference_weighted']:.3f} with the share of original rows" in \
        r.found["val_composition_imbalance"].action
    # parent ids and the features alone agree on the leak (one effect, one number)
    assert d.scan.leaked_share == pytest.approx(d.parent[0]["leaked_share"], abs=0.02)


def test_made_up_clean_run_without_parents(tmp_path, elsewhere):
    """A clean real run (scikit-learn's diabetes data, split at random) in a fresh kernel, as a user's run:
    nothing detected."""
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
    # a healthy run: nothing to change, no actions, and no finding named in the rendered advice
    check_what_to_change(summary, nbformat.read(tmp_path / "out" / f"{NAME}.ipynb", as_version=4))


def test_bad_input_fails_with_one_clear_line(tmp_path, elsewhere, warm_kernel):
    """One papermill refusal; the others are checked in-process (test_augmentation_leakage.py)."""
    pd.DataFrame({"x": [1.0, 2.0, np.inf], "split": ["train", "val", "train"]}).to_parquet(elsewhere / "inf.parquet")
    line = failure_line(NAME, {"samples": "inf.parquet", "run_demos": False}, tmp_path / "out", cwd=elsewhere,
                        kernel_manager=warm_kernel)
    assert all(part in line for part in ["samples: ", "inf.parquet", "column 'x' has 1 NaN/inf values"]), line
