"""Notebook 04 executed with papermill: the sample run, new runs' files, bad inputs."""

import json

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from notebook_checks import failure_line

from helpers.runner.execute import execute

pytestmark = pytest.mark.notebook
NAME = "04_roc_collapse"


def status(summary):
    return {k: f["status"] for k, f in summary["findings"].items()}


def test_04_sample_run_from_another_directory(tmp_path, elsewhere):
    out = tmp_path / "out"
    summary = execute(NAME, {}, out, cwd=elsewhere)
    st = status(summary)
    assert {k for k, v in st.items() if v == "detected"} == {
        "score_saturation_ties", "too_few_negatives", "worker_duplication", "roc_implementation_mismatch",
        "late_collapse", "logits_recover_ranking"}
    assert st["logged_metric_mismatch"] == "not_detected" and st["paired_control_shortcut"] == "not_detected"
    m = summary["metrics"]
    assert m["score_dtype"] == "bfloat16" and m["saturation_logit"] == 6.25 and m["allowed_negatives@fpr1e-4"] == 6
    assert m["tpr@fpr1e-4_last_score"] == 0 and m["tpr@fpr1e-4_last_logit"] > 0.5 and m["kept_epoch"] == 3
    ev = summary["findings"]["score_saturation_ties"]["evidence"]
    assert ev["predicted_cliff_epoch"] == {"1e-4": 5, "0.001": 7}
    lab = m["lab_sigmoid_dtypes"]
    assert lab[0]["tpr@fpr1e-4"] == 0 and lab[2]["tpr@fpr1e-4"] > 0.5  # bfloat16 vs float32
    assert [r["times each sample is yielded"] for r in m["lab_loader"]] == [4.0, 1.0]
    es = m["lab_early_stopping"]
    assert es["kept_test"] > es["last_test"]
    assert len(list((out / "figures").glob("*.png"))) >= 8
    executed = nbformat.read(out / f"{NAME}.ipynb", as_version=4)
    first = next(o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream"
                 and "SAMPLE RUN" in o.text)
    assert first is not None
    # determinism: the same inputs give the same diagnosis
    again = execute(NAME, {"run_demos": False}, tmp_path / "again", cwd=elsewhere)
    for s in (summary, again):
        s["parameters"].pop("output_dir"), s["parameters"].pop("run_demos")
        for k in [k for k in s["metrics"] if k.startswith("lab_")]:
            s["metrics"].pop(k)
    assert summary == again


def healthy_run(d, epochs=5, n_pos=3000, n_neg=30000, seed=1):
    rng = np.random.default_rng(seed)
    margin = np.r_[rng.normal(-3, 1, n_neg), rng.normal(3, 1, n_pos)]
    label = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    frames, log = [], []
    from sklearn.metrics import roc_curve

    for e in range(epochs):
        logit = (1 + 0.1 * e) * margin
        score = torch.sigmoid(torch.from_numpy(logit)).numpy()  # float64
        frames.append(pd.DataFrame({"epoch": e + 1, "label": label, "score": score}))
        fpr, tpr, _ = roc_curve(label, score, drop_intermediate=False)
        log += [{"epoch": float(e + 0.5), "loss": 0.5 / (e + 1), "step": 10 * e + 5},
                {"epoch": float(e + 1), "eval_loss": 0.3, "eval_tpr@fpr0.01": round(float(tpr[fpr <= 0.01].max()), 4),
                 "step": 10 * e + 10}]
    pd.concat(frames).to_csv(d / "scores.csv", index=False)
    (d / "trainer_state.json").write_text(json.dumps({"log_history": log, "global_step": 10 * epochs}))


def test_04_on_a_new_healthy_run(tmp_path, elsewhere):
    healthy_run(elsewhere)
    summary = execute(NAME, {"scores": "scores.csv", "history": "trainer_state.json", "fpr_targets": "[0.01, 0.05]",
                             "tpr_targets": "[0.5]", "seen_ids": "", "roc_function": "", "run_demos": False},
                      tmp_path / "out", cwd=elsewhere)
    st = status(summary)
    assert not [k for k, v in st.items() if v == "detected"], st
    assert st["logged_metric_mismatch"] == "not_detected"
    assert {k for k, v in st.items() if v == "not_applicable"} == {
        "worker_duplication", "roc_implementation_mismatch", "logits_recover_ranking", "paired_control_shortcut"}
    assert summary["parameters"]["fpr_targets"] == [0.01, 0.05]


@pytest.mark.parametrize("params, expected", [
    ({"scores": "missing.parquet"}, ["scores: ", "missing.parquet", "file not found"]),
    ({"fpr_targets": "[1e-4, 2]"}, ["fpr_targets: every rate must be a number in (0, 1), got 2"]),
    ({"history": "bad.json"}, ["history: ", "bad.json", "is not valid JSON"]),
])
def test_04_bad_input_fails_with_one_clear_line(tmp_path, elsewhere, params, expected):
    (elsewhere / "bad.json").write_text("{oops")
    line = failure_line(NAME, {**params, "run_demos": False}, tmp_path / "out", cwd=elsewhere)
    assert all(part in line for part in expected), line
