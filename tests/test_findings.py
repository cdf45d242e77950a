import json
import math

import numpy as np
import pytest

from helpers.findings import Finding, Summary, jsonable, not_applicable, verdict_table
from helpers.paths import DATA_SAMPLES


def test_summary_schema_and_json(tmp_path):
    s = Summary("01_r2_gap", {"seed": 0, "path": "x"}, {"reported": "left at the sample's value"})
    s.add(Finding("a", "detected", "critical", "fix it", {"value": np.float32(0.5), "arr": np.arange(2)},
                  action="all-reduce the sums (R² 0.34 instead of 0.49)"),
          not_applicable("b", "no 'rank' column"))
    s.metrics["r2"] = np.float64(math.nan)
    data = json.loads(s.write(tmp_path).read_text())
    assert data == {
        "notebook": "01_r2_gap", "schema_version": 2, "parameters": {"seed": 0, "path": "x"},
        "inputs": {}, "sample_run": False,
        "findings": {
            "a": {"status": "detected", "severity": "critical", "message": "fix it", "evidence": {"value": 0.5, "arr": [0, 1]},
                  "action": "all-reduce the sums (R² 0.34 instead of 0.49)"},
            "b": {"status": "not_applicable", "severity": "info", "message": "no 'rank' column", "evidence": {},
                  "action": ""},
        },
        "metrics": {"r2": None},
        "dropped": {"reported": "left at the sample's value"},
    }


@pytest.mark.parametrize("kwargs", [dict(status="maybe"), dict(severity="high"), dict(message="two\nlines"), dict(message=""),
                                    dict(status="not_detected", action="change something")])
def test_finding_rejects_bad_fields(kwargs):
    base = dict(id="x", status="detected", severity="info", message="m")
    with pytest.raises(ValueError):
        Finding(**{**base, **kwargs})


def test_a_detected_finding_is_never_recorded_without_an_action():
    s = Summary("01_r2_gap", {})
    with pytest.raises(ValueError, match="x: a detected finding is recorded without an action"):
        s.add(Finding("x", "detected", "warning", "m", action="  "))
    assert s.findings == {}
    s.add(Finding("x", "detected", "warning", "m", action="do this (0.3 instead of 0.5)"), Finding("y", "not_detected", "info", "m"))
    assert list(s.findings) == ["x", "y"]


def test_jsonable_rounds_and_is_stable():
    assert jsonable(0.1 + 0.2) == 0.3
    assert jsonable({"a": (np.int64(3), np.bool_(True), float("inf"))}) == {"a": [3, True, None]}


def test_verdict_table_orders_detected_and_severe_first():
    fs = [Finding("i", "not_detected", "info", "m"), Finding("w", "detected", "warning", "m"),
          Finding("c", "detected", "critical", "m"), Finding("n", "not_applicable", "info", "m")]
    assert list(verdict_table(fs)["finding"]) == ["c", "w", "i", "n"]


def test_summary_names_its_inputs_and_says_when_they_are_the_sample(tmp_path, elsewhere):
    from helpers.findings import Summary

    sample = Summary("01_r2_gap", {"predictions": "data_samples/01_r2_gap/predictions.parquet", "reported": "",
                                   "output_dir": "", "seed": 0})
    assert sample.sample_run and "BUNDLED SAMPLE RUN" in sample.describe_inputs()
    assert sample.to_dict()["inputs"] == {"predictions": str(DATA_SAMPLES / "01_r2_gap" / "predictions.parquet")}
    (elsewhere / "mine.parquet").write_bytes(b"x")
    (elsewhere / "fn.py").write_text("def f(): pass\n")
    mine = Summary("02", {"embeddings": "mine.parquet", "fn": "fn.py:f", "output_dir": str(elsewhere),
                          "compare": ["data_samples/02_encoder_variance/deterministic.npz", "missing.npz"]})
    d = mine.to_dict()
    assert not d["sample_run"] and set(d["inputs"]) == {"embeddings", "fn", "compare[0]"}
    assert "compare still point(s) at the bundled sample run" in mine.describe_inputs()
    assert "BUNDLED" not in mine.describe_inputs()


def test_a_rerun_removes_what_the_last_execution_wrote_and_nothing_else(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers.findings import Summary, start_output
    from helpers.plotting import save

    out = start_output("01_r2_gap", str(tmp_path))
    fig = plt.figure()
    old = save(fig, out, "old_figure")
    plt.close(fig)
    Summary("01_r2_gap", {}).write(out)
    mine = out / "figures" / "my_notes.png"
    mine.write_bytes(b"the user's own file")
    (out / "notes.txt").write_text("mine too")
    again = start_output("01_r2_gap", str(tmp_path))
    assert again == out and not old.exists() and not (out / "summary.json").exists()
    assert mine.read_bytes() == b"the user's own file" and (out / "notes.txt").exists()
    # a record that names a file outside the output directory is never followed
    outside = tmp_path.parent / "outside.txt"
    outside.write_text("keep")
    (out / ".written.json").write_text('["../outside.txt", "../../etc/passwd"]')
    start_output("01_r2_gap", str(tmp_path))
    assert outside.read_text() == "keep"


def test_what_to_change_lists_the_detected_actions_by_severity_and_escapes_them():
    from helpers.findings import what_to_change

    fs = [Finding("w", "detected", "warning", "m", action="weigh groups <b>equally</b>"),
          Finding("ok", "not_detected", "info", "m"),
          Finding("c", "detected", "critical", "m", action="all-reduce the sums")]
    text = what_to_change(fs, support={"c": "exact within 1e-8 of scikit-learn"})
    lines = text.splitlines()
    assert lines[0].startswith("1. **c** (critical): all-reduce the sums") and "exact within 1e-8" in lines[0]
    assert lines[1].startswith("2. **w** (warning)") and "&lt;b&gt;equally&lt;/b&gt;" in lines[1] and "<b>" not in text
    assert "ok" not in text
    healthy = what_to_change([Finding("ok", "not_detected", "info", "m")], checks=1)
    assert healthy.startswith("**Nothing to change.**") and "1 checks" in healthy


def test_a_finding_shown_in_a_notebook_escapes_its_message():
    f = Finding("g", "detected", "warning", "group <script>alert(1)</script> got worse", action="reweight")
    shown = f._repr_markdown_()
    assert "<script>" not in shown and "&lt;script&gt;" in shown
