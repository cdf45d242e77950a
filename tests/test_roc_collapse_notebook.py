"""Notebook 04 on the sample run (executed once per suite), a new run's files, and bad inputs.

Papermill executions: the shared sample execution, one new healthy run, one bad input. The rest
(determinism, the other refusals, the healthy run's findings) is checked in-process through the face.
"""

import json

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from face import pipeline
from notebook_checks import failure_line, lab_cell

from helpers.findings import DEMOS_OFF, SAMPLE_BANNER
from helpers.io import InputError
from helpers.paths import DATA_SAMPLES, NOTEBOOKS
from helpers.roc_collapse import diagnosis as dx
from helpers.runner.execute import execute

NAME = "04_roc_collapse"


def status(summary):
    return {k: f["status"] for k, f in summary["findings"].items()}


def rendered_what_to_change(executed_path) -> str:
    """The Markdown the executed notebook rendered under "What to change in your training code"."""
    cells = json.loads(executed_path.read_text())["cells"]
    cell = next(c for c in cells if c["cell_type"] == "code" and "what_to_change(" in "".join(c["source"]))
    return "".join("".join(o["data"]["text/markdown"]) for o in cell["outputs"] if "text/markdown" in o.get("data", {}))


def check_what_to_change(text: str, summary: dict) -> None:
    """The rendered advice lists exactly the detected findings' actions (as summary.json stores them), one
    numbered item each, and names no other finding; with nothing detected it says there is nothing to change."""
    import html

    found = summary["findings"]
    detected = [k for k, f in found.items() if f["status"] == "detected"]
    for k, f in found.items():
        if k in detected:
            assert f["action"] and f"**{k}**" in text and html.escape(f["action"]) in text, k
        else:
            assert f["action"] == "" and k not in text, k
    if detected:
        assert len(text.strip().splitlines()) == len(detected)
    else:
        assert text.startswith("**Nothing to change.**"), text


def without_lab(summary: dict) -> dict:
    """summary.json without what the lab (run_demos) and the output directory add."""
    s = json.loads(json.dumps(summary))
    s["parameters"].pop("output_dir"), s["parameters"].pop("run_demos")
    s["metrics"] = {k: v for k, v in s["metrics"].items() if not k.startswith("lab_")}
    return s


@pytest.mark.notebook
@pytest.mark.xdist_group(NAME)
def test_04_sample_run_from_another_directory(sample_execution):
    summary, executed_path = sample_execution(NAME)
    st = status(summary)
    assert {k for k, v in st.items() if v == "detected"} == {
        "score_saturation_ties", "too_few_negatives", "worker_duplication", "roc_implementation_mismatch",
        "late_collapse", "logits_recover_ranking"}
    assert st["logged_metric_mismatch"] == "not_detected" and st["paired_control_shortcut"] == "not_detected"
    assert list(summary["findings"]) == list(dx.FINDING_IDS)
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
    # one resolution rule: tpr@fpr1e-4 (6 negatives) breaks it at the late epochs, tpr@fpr1e-3 (65) meets it
    neg = summary["findings"]["too_few_negatives"]
    rows = {r["metric"]: r for r in neg["evidence"]["per_target"]}
    assert rows["tpr@fpr1e-4"]["width"] > dx.MAX_CI_WIDTH >= rows["tpr@fpr0.001"]["width"]
    assert f"about {rows['tpr@fpr1e-4']['negatives_needed']:,} negatives" in neg["action"]
    # what to change: the detected findings' actions, with what the lab measured where it speaks to them
    text = rendered_what_to_change(executed_path)
    check_what_to_change(text, summary)
    late = next(line for line in text.splitlines() if "**late_collapse**" in line)
    assert f"test tpr@fpr0.01 {es['kept_test']:.3f}" in late and "*Measured in the lab:*" in late
    assert len(list((executed_path.parent / "figures").glob("*.png"))) >= 8
    executed = nbformat.read(executed_path, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # the banner is the first thing the inputs cell prints, and it says loudly that this is the sample
    banner = next(o.text for c in executed.cells if c.cell_type == "code" for o in c.outputs
                  if o.output_type == "stream" and "inputs read:" in o.text)
    assert banner.startswith(SAMPLE_BANNER)
    assert "12 epochs x 128,000 rows" in banner


@pytest.mark.xdist_group(NAME)
@pytest.mark.notebook
def test_04_the_face_gives_the_notebooks_summary_and_is_deterministic(sample_execution, tmp_path, elsewhere):
    """The sample's diagnosis in-process equals the executed notebook's (but the lab): two executions in
    two processes give the same summary, so the same inputs give the same summary.json."""
    summary, _ = sample_execution(NAME)
    first = pipeline(dx, output_dir=str(tmp_path / "a"))
    assert without_lab(first.summary.to_dict()) == without_lab(summary)
    assert first.banner.splitlines()[0] == SAMPLE_BANNER and first.banner.count("[bundled sample]") == 4
    assert set(first.run.inputs) == {"scores", "history", "seen_ids", "roc_function"}


def healthy_run(d, epochs=5, n_pos=3000, n_neg=30000, seed=1):
    rng = np.random.default_rng(seed)
    margin = np.r_[rng.normal(-3, 1, n_neg), rng.normal(3, 1, n_pos)]
    label = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    frames, log = [], []
    from sklearn.metrics import roc_curve

    for e in range(epochs):
        logit = (1 + 0.1 * e) * margin
        score = torch.sigmoid(torch.from_numpy(logit)).numpy()  # float64
        frames.append(pd.DataFrame({"epoch": e + 1, "sample_id": np.arange(len(label)), "label": label, "score": score}))
        fpr, tpr, _ = roc_curve(label, score, drop_intermediate=False)
        log += [{"epoch": float(e + 0.5), "loss": 0.5 / (e + 1), "step": 10 * e + 5},
                {"epoch": float(e + 1), "eval_loss": 0.3, "eval_tpr@fpr0.01": round(float(tpr[fpr <= 0.01].max()), 4),
                 "step": 10 * e + 10}]
    pd.concat(frames).to_csv(d / "scores.csv", index=False)
    (d / "trainer_state.json").write_text(json.dumps({"log_history": log, "global_step": 10 * epochs}))


HEALTHY = {"scores": "scores.csv", "history": "trainer_state.json", "fpr_targets": "[0.01, 0.05]",
           "tpr_targets": "[0.5]", "seen_ids": "", "roc_function": "", "run_demos": False}


def check_healthy(summary: dict):
    st = status(summary)
    assert not [k for k, v in st.items() if v == "detected"], st
    assert st["logged_metric_mismatch"] == "not_detected" and st["duplicated_eval_rows"] == "not_detected"
    assert {k for k, v in st.items() if v == "not_applicable"} == {
        "worker_duplication", "roc_implementation_mismatch", "logits_recover_ranking", "paired_control_shortcut"}
    assert summary["parameters"]["fpr_targets"] == [0.01, 0.05]


@pytest.mark.notebook
def test_04_on_a_new_healthy_run(tmp_path, elsewhere, capfd):
    """The minimal call (only the required scores, from another directory) under papermill, in a fresh kernel: the sample's
    history, loader log and ROC code are not used, and the run says so; in-process with the run's own
    history, nothing is detected and the logged metrics are recomputed."""
    healthy_run(elsewhere)
    summary = execute(NAME, {"scores": "scores.csv", "run_demos": False}, tmp_path / "out", cwd=elsewhere)
    # the fresh kernel's transport warning (jupyter_client over TCP) no longer buries the lines that matter
    assert "without encryption" not in capfd.readouterr().err
    assert set(summary["dropped"]) == {"history", "seen_ids", "roc_function"} and not summary["sample_run"]
    assert summary["schema_version"] == 2
    check_what_to_change(rendered_what_to_change(tmp_path / "out" / f"{NAME}.ipynb"), summary)
    assert summary["findings"]["logged_metric_mismatch"]["status"] == "not_applicable"
    executed = nbformat.read(tmp_path / "out" / f"{NAME}.ipynb", as_version=4)  # the lab's place says it did not run
    assert [o.text.strip() for o in lab_cell(executed).outputs] == [DEMOS_OFF]
    minimal = pipeline(dx, scores="scores.csv", output_dir=str(tmp_path / "minimal"))
    assert without_lab(minimal.summary.to_dict()) == without_lab(summary)
    assert all(f"not used: {k}" in minimal.banner for k in summary["dropped"])
    # the same files in-process, through the face, with the run's own history
    r = pipeline(dx, **HEALTHY, output_dir=str(tmp_path / "face"))
    check_healthy(r.summary.to_dict())
    assert SAMPLE_BANNER not in r.banner and "5 epochs x 33,000 rows" in r.banner


BAD_INPUTS = [
    ({"scores": "missing.parquet"}, ["scores: ", "missing.parquet", "file not found"]),
    ({"fpr_targets": "[1e-4, 2]"}, ["fpr_targets: every rate must be a number in (0, 1), got 2"]),
    ({"scores": "scores.parquet", "history": "bad.json"}, ["history: ", "bad.json", "is not valid JSON"]),
    ({"history": "bad.json"}, ["scores: still points at the bundled sample run while history is yours"]),
]


@pytest.mark.parametrize("params, expected", BAD_INPUTS)
def test_04_bad_input_is_refused_in_one_line(tmp_path, elsewhere, params, expected):
    (elsewhere / "bad.json").write_text("{oops")
    pd.read_parquet(DATA_SAMPLES / NAME / "scores.parquet").query("epoch <= 2").to_parquet(elsewhere / "scores.parquet")
    with pytest.raises(InputError) as exc:
        pipeline(dx, **params, output_dir=str(tmp_path / "out"))
    line = str(exc.value)
    assert all(part in line for part in expected) and "\n" not in line, line
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.notebook
def test_04_a_looping_roc_function_stops_the_notebook_in_one_line(tmp_path, elsewhere, warm_kernel):
    """papermill on the minimal call plus a roc_function that never returns: the notebook stops about
    callable_timeout after the call, with one line naming roc_function (its own except cannot swallow it)."""
    import time

    healthy_run(elsewhere, epochs=1)
    (elsewhere / "roc.py").write_text("def roc(scores, labels):\n    while True:\n        try:\n"
                                      "            pass\n        except Exception:\n            return None\n")
    t0 = time.monotonic()
    line = failure_line(NAME, {"scores": "scores.csv", "roc_function": "roc.py:roc", "callable_timeout": 2,
                               "run_demos": False}, tmp_path / "out", cwd=elsewhere, kernel_manager=warm_kernel)
    took = time.monotonic() - t0
    assert line.startswith("InputError: roc_function: did not return within 2 s (callable_timeout)"), line
    assert took < 60, took  # a kernel start, the diagnosis up to the audit, and the 2 s limit


def test_04_markdown_states_no_number_about_the_run():
    """The committed notebook's Markdown quotes the source's numbers as the source's and states none of the
    run's (those are printed by cells); the resolution rule lives in the code (dx.RESOLUTION_RULE), which the
    exercise's solution uses, not a number typed into the exercise."""
    cells = json.loads((NOTEBOOKS / f"{NAME}.ipynb").read_text())["cells"]
    markdown = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    for text in markdown:
        for number in ("65,090", "62,910", "six of", "seventh", "6.25", "16.64", "0.023", "100,000", "0.05"):
            assert number not in text, (number, text[:80])
        if "80%" in text or "epoch 5" in text:
            assert "the source's numbers, not this run's" in text
    solution = next("".join(c["source"]) for c in cells
                    if c["metadata"].get("nbgrader", {}).get("grade_id") == "ex2_answer")  # the resolution exercise
    assert "dx.resolution_table" in solution and "dx.MAX_CI_WIDTH" in solution and "0.05" not in solution
