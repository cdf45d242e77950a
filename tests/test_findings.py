import json
import math

import numpy as np
import pytest

from helpers.findings import Finding, Summary, jsonable, not_applicable, verdict_table
from helpers.paths import DATA_SAMPLES


def test_summary_schema_and_json(tmp_path):
    s = Summary("01_r2_gap", {"seed": 0, "path": "x"})
    s.add(Finding("a", "detected", "critical", "fix it", {"value": np.float32(0.5), "arr": np.arange(2)}),
          not_applicable("b", "no 'rank' column"))
    s.metrics["r2"] = np.float64(math.nan)
    data = json.loads(s.write(tmp_path).read_text())
    assert data == {
        "notebook": "01_r2_gap", "schema_version": 1, "parameters": {"seed": 0, "path": "x"},
        "inputs": {}, "sample_run": False,
        "findings": {
            "a": {"status": "detected", "severity": "critical", "message": "fix it", "evidence": {"value": 0.5, "arr": [0, 1]}},
            "b": {"status": "not_applicable", "severity": "info", "message": "no 'rank' column", "evidence": {}},
        },
        "metrics": {"r2": None},
    }


@pytest.mark.parametrize("kwargs", [dict(status="maybe"), dict(severity="high"), dict(message="two\nlines"), dict(message="")])
def test_finding_rejects_bad_fields(kwargs):
    base = dict(id="x", status="detected", severity="info", message="m")
    with pytest.raises(ValueError):
        Finding(**{**base, **kwargs})


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
