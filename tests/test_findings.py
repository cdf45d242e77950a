import json
import math

import numpy as np
import pytest

from helpers.findings import Finding, Summary, jsonable, not_applicable, verdict_table


def test_summary_schema_and_json(tmp_path):
    s = Summary("01_r2_gap", {"seed": 0, "path": "x"})
    s.add(Finding("a", "detected", "critical", "fix it", {"value": np.float32(0.5), "arr": np.arange(2)}),
          not_applicable("b", "no 'rank' column"))
    s.metrics["r2"] = np.float64(math.nan)
    data = json.loads(s.write(tmp_path).read_text())
    assert data == {
        "notebook": "01_r2_gap", "schema_version": 1, "parameters": {"seed": 0, "path": "x"},
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
