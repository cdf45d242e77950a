"""Notebook 01's findings on simulated runs that are not the sample run, driven through its face."""

import html
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from face import defaults, pipeline
from sklearn.metrics import explained_variance_score, r2_score

from helpers.findings import what_to_change
from helpers.io import InputError
from helpers.r2_gap import diagnosis as dx
from helpers.r2_gap.simulate import R2GapConfig, simulate

REPORTED_IDS = ("unsynced_rank_metrics", "rank_averaged_metrics", "batch_averaged_r2", "explained_variance_as_r2",
                "squared_correlation_as_r2", "reported_unexplained")
CLEAN = R2GapConfig(seed=7, sessions=("s1", "s2", "s3", "s4"), samples_per_session=50, n_channels=3, world_size=4,
                    batch_size=10, rank0_only=False, batch_mean=False, explained_variance=False, keep_padding=False)


def diagnosed(tmp_path: Path, table: pd.DataFrame, reported, **params):
    """Write the run's files (``reported``: a dict, the JSON text, or empty for none) and drive the
    notebook's pipeline on them; returns the face's result."""
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    table.to_parquet(d / "predictions.parquet", index=False)
    if reported:
        (d / "reported.json").write_text(reported if isinstance(reported, str) else json.dumps(reported))
    return pipeline(dx, predictions=str(d / "predictions.parquet"),
                    reported=str(d / "reported.json") if reported else "", output_dir=str(d / "out"),
                    **{"n_bootstrap": 200, **params})


def statuses(tmp_path, table, reported):
    r = diagnosed(tmp_path, table, reported)
    return {k: f.status for k, f in r.found.items()}, r.diagnosis


def detected(st):
    return {k for k, v in st.items() if v == "detected"}


def test_the_face():
    assert dx.NOTEBOOK == "01_r2_gap"
    assert set(dx.PARAMETER_TYPES) == set(defaults(dx.NOTEBOOK))
    assert all(isinstance(defaults(dx.NOTEBOOK)[k], t) for k, t in dx.PARAMETER_TYPES.items())
    assert set(REPORTED_IDS) < set(dx.FINDING_IDS) and len(dx.FINDING_IDS) == len(set(dx.FINDING_IDS)) == 8
    assert not hasattr(dx, "headline_metrics") and not hasattr(dx, "check_parameters")


def test_sample_like_run_with_other_sizes_detects_every_planted_bug(tmp_path):
    cfg = R2GapConfig(seed=3, sessions=tuple(range(6)), samples_per_session=45, n_channels=2, world_size=4,
                      batch_size=12)  # 270 samples on 4 ranks: padded to 272
    table, reported = simulate(cfg)
    st, d = statuses(tmp_path, table, reported)
    assert {"unsynced_rank_metrics", "batch_averaged_r2", "explained_variance_as_r2",
            "sampler_padding_duplicates"} <= detected(st)
    assert d.padding["n_duplicate_rows"] == 2 * 2
    assert st["reported_unexplained"] == "not_detected"


def test_clean_run_detects_no_bug(tmp_path):
    table, reported = simulate(replace(CLEAN, session_shift=0.0))
    st, _ = statuses(tmp_path, table, reported)
    assert detected(st) == set(), st


def test_clean_run_with_session_offsets_detects_only_the_real_gap(tmp_path):
    table, reported = simulate(replace(CLEAN, session_shift=1.5))
    st, d = statuses(tmp_path, table, reported)
    assert detected(st) == {"between_session_variance"}
    assert d.sessions["r2_pooled"] - d.sessions["r2_within"] >= dx.MIN_SESSION_GAP


@pytest.mark.parametrize("flags, expected", [
    (dict(rank0_only=True), {"unsynced_rank_metrics"}),
    (dict(batch_mean=True), {"batch_averaged_r2"}),
    (dict(explained_variance=True, prediction_bias=0.8), {"explained_variance_as_r2"}),
    (dict(keep_padding=True), {"sampler_padding_duplicates"}),
])
def test_each_bug_alone_is_attributed_to_itself(tmp_path, flags, expected):
    # 5 x 50 = 250 samples on 4 ranks: padded to 252
    table, reported = simulate(replace(CLEAN, session_shift=0.0, sessions=("a", "b", "c", "d", "e"), **flags))
    st, _ = statuses(tmp_path, table, reported)
    assert detected(st) == expected, st


def test_mean_over_ranks_is_the_source_fix1(tmp_path):
    table, _ = simulate(replace(CLEAN, session_shift=0.0))
    per_rank = [r2_score(t.y_true, t.y_pred) for _, t in table.groupby("rank")]
    st, d = statuses(tmp_path, table, f'{{"r2": {np.mean(per_rank)!s}}}')
    assert detected(st) == {"rank_averaged_metrics"}
    assert d.reconciliation["scope"].iloc[0] == "mean over ranks"


def test_squared_correlation_logged_as_r2(tmp_path):
    table, _ = simulate(replace(CLEAN, session_shift=0.0, prediction_bias=0.5))
    r = np.corrcoef(table.y_true, table.y_pred)[0, 1]
    st, _ = statuses(tmp_path, table, f'{{"r2": {r * r:.4f}}}')
    assert "squared_correlation_as_r2" in detected(st)


def test_numbers_from_elsewhere_are_unexplained(tmp_path):
    table, _ = simulate(replace(CLEAN, session_shift=0.0))
    st, _ = statuses(tmp_path, table, '{"r2": 0.9876, "corr": 0.1234}')
    assert detected(st) == {"reported_unexplained"}


def test_minimal_table_without_optional_columns_or_reported(tmp_path):
    table, _ = simulate(CLEAN)
    minimal = table[table.channel == 0][["y_true", "y_pred"]]
    st, d = statuses(tmp_path, minimal, {})
    assert all(st[k] == "not_applicable" for k in (*REPORTED_IDS, "sampler_padding_duplicates", "between_session_variance"))
    assert d.headline["r2"] == pytest.approx(r2_score(minimal.y_true, minimal.y_pred), abs=1e-12)


def test_reported_but_missing_columns_are_not_applicable(tmp_path):
    table, reported = simulate(R2GapConfig(seed=5))
    st, _ = statuses(tmp_path, table.drop(columns=["rank", "batch"]), reported)
    assert st["unsynced_rank_metrics"] == st["batch_averaged_r2"] == "not_applicable"
    assert st["explained_variance_as_r2"] in ("detected", "not_detected")


def test_single_session_and_tiny_sessions(tmp_path):
    table, _ = simulate(replace(CLEAN, sessions=("only",)))
    st, _ = statuses(tmp_path, table, {})
    assert st["between_session_variance"] == "not_detected"
    t2 = table.copy()
    t2.loc[t2.index[:3], "session"] = "tiny"  # a session of one sample (three channel rows)
    st, d = statuses(tmp_path, t2, {})
    assert "tiny" in set(d.per_session["session"])


def write_reported(tmp_path, obj):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return p


@pytest.mark.parametrize("obj, problem", [
    ([1, 2], "expected a JSON object"),
    ({"r2": "high"}, "'r2' must be a finite number, got 'high'"),
    ({"r2": True}, "'r2' must be a number"),
    ({"per_session": {"zzz": {"r2": 0.1}}}, "per_session has session 'zzz' that is not in the predictions"),
    ({"per_session": {"s1": 0.3}}, "per_session['s1'] must be an object"),
])
def test_load_reported_rejects(tmp_path, obj, problem):
    with pytest.raises(InputError) as e:
        dx.load_reported("reported", write_reported(tmp_path, obj), ["s1", "s2"])
    assert problem in str(e.value) and str(tmp_path) in str(e.value) and str(e.value).startswith("reported: ")


def test_load_reported_keeps_printed_precision(tmp_path):
    rep = dx.load_reported("reported", write_reported(tmp_path, '{"r2": 0.4790, "per_session": {"1": {"corr": 0.6}}}'), [1, 2])
    assert rep == {"r2": "0.4790", "per_session": {"1": {"corr": "0.6"}}}


def test_load_inputs_rejects_bad_parameters():
    base = dict(predictions="data_samples/01_r2_gap/predictions.parquet", reported="", multioutput="flat",
                tolerance=1e-4, n_bootstrap=200, lab_world_size=4, output_dir="", run_demos=False, seed=0)
    with pytest.raises(InputError, match="multioutput: must be one of"):
        dx.load_inputs({**base, "multioutput": "mean"})
    with pytest.raises(InputError, match="lab_world_size: must be in"):
        dx.load_inputs({**base, "lab_world_size": 1})
    p, run = dx.load_inputs(base)
    assert run.reported == {} and len(run.table) == 1696
    assert list(run.inputs) == ["predictions"]  # reported = "": nothing else is read


def test_repeated_samples():
    table, _ = simulate(R2GapConfig())
    rep = dx.repeated_samples(table)
    assert rep["sample_id"].tolist() == [0, 1, 2, 3] and rep["times"].eq(2).all()
    assert rep["ranks"].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert dx.repeated_samples(pd.DataFrame({"y_true": [1.0]})).empty


def test_float_session_ids_match_their_json_keys(tmp_path):
    table, reported = simulate(R2GapConfig(seed=4))
    st_int, _ = statuses(tmp_path, table, reported)
    st_float, d = statuses(tmp_path, table.assign(session=table["session"].astype(float)), reported)
    assert st_int == st_float and d.reconciliation["explained"].all()


def test_per_session_numbers_without_session_column_warn(tmp_path):
    path = write_reported(tmp_path, {"r2": 0.3, "per_session": {"a": {"r2": 0.1}}})
    with pytest.warns(UserWarning, match="per_session numbers are ignored"):
        assert dx.load_reported("reported", path, None) == {"r2": "0.3"}


def test_padding_ranks_do_not_depend_on_row_order(tmp_path):
    table, reported = simulate(R2GapConfig(seed=6, world_size=6, samples_per_session=61, sessions=(1, 2, 3, 4)))
    _, d = statuses(tmp_path, table, reported)
    _, shuffled = statuses(tmp_path, table.sample(frac=1, random_state=0), reported)
    # 244 samples on 6 ranks: samples 0 and 1 are padded onto ranks 4 and 5
    assert d.padding["ranks_with_repeated_samples"] == shuffled.padding["ranks_with_repeated_samples"] == [0, 1, 4, 5]
    assert d.padding["r2_without_duplicates"] == pytest.approx(shuffled.padding["r2_without_duplicates"], abs=1e-12)


def account_sums(acc: pd.DataFrame) -> pd.Series:
    """start + every part: the number each row of the gap account rebuilds."""
    return acc["start"] + acc[list(dx.ACCOUNT_PARTS)].fillna(0).sum(axis=1)


def test_gap_account_has_a_row_per_logged_number_each_reproduced_or_unexplained(tmp_path):
    """Item 2 of the issue: every logged number of the sample, the worst session's 0.127 included."""
    table, reported = simulate(R2GapConfig())
    r = diagnosed(tmp_path, table, reported, n_bootstrap=100)
    d = r.diagnosis
    acc = dx.gap_account(d)
    logged = [("overall", k) for k in ("r2", "corr")] + [(s, k) for s in reported["per_session"] for k in ("r2", "corr")]
    assert acc["number"].tolist() == [f"{'overall' if s == 'overall' else 'session ' + s} {k}" for s, k in logged]
    assert set(acc["status"]) <= {"correct", "bug"}
    assert (acc["rest"].abs() <= acc["tolerance"]).all()  # reproduced within the printed precision
    assert np.allclose(account_sums(acc), acc["logged"], atol=1e-12)  # the parts add up to each number
    dedup = table.drop_duplicates(["sample_id", "channel"])
    pooled = r2_score(dedup.y_true, dedup.y_pred)
    row = acc.set_index("number").loc["session 160819 r2"]
    worst = dedup[dedup.session == 160819]
    assert row["logged"] == 0.127 and row["status"] == "correct" and row["computation"] == 0
    assert row["start"] == pytest.approx(pooled, abs=1e-12)
    # the session's own shortfall is attributed: between sessions, its difficulty, its bias
    assert row["between_sessions"] == pytest.approx(d.sessions["r2_within"] - pooled, abs=1e-12)
    ev = explained_variance_score(worst.y_true, worst.y_pred)
    assert row["session_difficulty"] == pytest.approx(ev - d.sessions["r2_within"], abs=1e-12) and row["session_difficulty"] < -0.1
    assert row["session_bias"] == pytest.approx(r2_score(worst.y_true, worst.y_pred) - ev, abs=1e-12)
    over = acc.set_index("number").loc["overall r2"]
    assert over["status"] == "bug" and over["computation"] + over["rest"] == pytest.approx(0.487 - pooled, abs=1e-12)
    verdict = dx.gap_verdict(d)
    assert "12 logged number(s): 10 reproduced by the correct computation, 2 by a buggy one, 0 unexplained" in verdict
    assert f"{0.487 - 0.127:.3f}" in verdict and f"{-row['session_difficulty']:+.3f}" in verdict
    # the worst session's own shortfall is larger than its sampling noise
    assert f"by {row['session_difficulty'] + row['session_bias']:+.3f}" in verdict
    assert "excludes it, so that difference is larger than the session's sampling noise" in verdict
    m = r.summary.metrics
    assert m == dx.metrics(d) and m["n_logged_unexplained"] == 0
    assert m["gap_from_computation"] == pytest.approx(0.487 - pooled)
    assert m["gap_from_between_sessions"] == pytest.approx(pooled - d.sessions["r2_within"])


def test_gap_account_marks_numbers_logged_elsewhere_as_unexplained(tmp_path):
    table, reported = simulate(replace(CLEAN, session_shift=1.5))
    reported["per_session"]["s2"]["r2"] = 0.9991  # no computation on these predictions gives it
    r = diagnosed(tmp_path, table, reported)
    acc = dx.gap_account(r.diagnosis).set_index("number")
    bad = acc.loc["session s2 r2"]
    assert bad["status"] == "unexplained" and np.isnan(bad["computation"])
    assert bad["rest"] == pytest.approx(0.9991 - r.diagnosis.reconciliation.set_index(["session", "reported"]).loc[
        ("s2", "r2"), "correct_value"], abs=1e-12)
    assert (acc.drop("session s2 r2")["status"] == "correct").all()
    assert np.allclose(account_sums(acc.reset_index()), acc["logged"], atol=1e-12)
    verdict = dx.gap_verdict(r.diagnosis)
    assert "1 unexplained" in verdict and "Not accounted for" in verdict and "session s2 r2 = 0.9991" in verdict
    assert r.found["reported_unexplained"].detected and r.summary.metrics["n_logged_unexplained"] == 1


def test_gap_account_without_logged_numbers(tmp_path):
    table, _ = simulate(CLEAN)
    for t in (table, table[["y_true", "y_pred"]]):
        d = diagnosed(tmp_path, t, {}).diagnosis
        assert dx.gap_account(d).empty and "No logged numbers" in dx.gap_verdict(d)
        assert dx.metrics(d)["gap_from_computation"] is None


def test_user_text_is_escaped_in_rendered_markdown(tmp_path):
    table, reported = simulate(replace(CLEAN, sessions=("<b>s1</b>", "s&2", "s3", "s4")))
    reported["per_session"]["<b>s1</b>"]["r2"] = 0.001
    r = diagnosed(tmp_path, table, reported)
    for text in (dx.symptom(r.diagnosis), dx.gap_verdict(r.diagnosis)):
        assert "<b>" not in text and "&lt;b&gt;s1&lt;/b&gt;" in text


# ----------------------------------------------------------------------------- actions
RUNS = {  # runs that differ from the sample: each a configuration and the findings it must detect
    "sample-like": (R2GapConfig(seed=3, sessions=tuple(range(6)), samples_per_session=45, n_channels=2, world_size=4,
                                batch_size=12), None),
    "clean": (replace(CLEAN, session_shift=0.0), set()),
    "sessions only": (replace(CLEAN, session_shift=1.5), {"between_session_variance"}),
    "rank 0 only": (replace(CLEAN, session_shift=0.0, sessions=tuple("abcde"), rank0_only=True), {"unsynced_rank_metrics"}),
    "padding": (replace(CLEAN, session_shift=0.0, sessions=tuple("abcde"), keep_padding=True),
                {"sampler_padding_duplicates"}),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_what_to_change_lists_exactly_the_detected_actions(tmp_path, name):
    cfg, expected = RUNS[name]
    table, reported = simulate(cfg)
    r = diagnosed(tmp_path, table, reported)
    found = r.found
    det = {k for k, f in found.items() if f.detected}
    if expected is not None:
        assert det == expected
    text = what_to_change(found.values(), checks=len(found))
    for k, f in found.items():
        assert (f"**{k}**" in text) == f.detected, k
        assert bool(f.action) == f.detected, k  # the dataclass forbids the other way round
        if f.detected:
            assert html.escape(f.action) in text
    if not det:
        assert text.startswith("**Nothing to change.**")
    written = json.loads((Path(r.params["output_dir"]) / "summary.json").read_text())["findings"]
    assert {k: v["action"] for k, v in written.items()} == {k: f.action for k, f in found.items()}


def test_actions_quote_this_runs_numbers(tmp_path):
    """Each action carries the measurement behind it, formatted from the run (not the sample's constants)."""
    table, reported = simulate(RUNS["sample-like"][0])
    r = diagnosed(tmp_path, table, reported)
    d, f = r.diagnosis, r.found
    rec = d.reconciliation.iloc[0]
    correct = f"{rec['correct_value']:.4f}"
    assert correct != "0.3435"
    for fid in ("unsynced_rank_metrics", "batch_averaged_r2", "explained_variance_as_r2"):
        assert f[fid].detected and correct in f[fid].action and f"r2={rec['value']:g}" in f[fid].action, fid
    # "this change alone" is the candidate with that one departure corrected
    dedup = table.drop_duplicates(["sample_id", "channel"])
    r0 = table[table["rank"] == 0]
    per_batch_r2 = np.mean([r2_score(b.y_true, b.y_pred) for _, b in r0.groupby("batch") if len(b) > 2])
    assert f"as R², that computation gives {per_batch_r2:.4f}" in f["explained_variance_as_r2"].action
    p = d.padding
    assert f"from {p['r2_without_duplicates']:.4f} to {p['r2_with_duplicates']:.4f}" in f["sampler_padding_duplicates"].action
    assert f"{r2_score(dedup.y_true, dedup.y_pred):.4f}" in f["sampler_padding_duplicates"].action
    ps = d.per_session
    assert f"{ps['r2'].min():.3f}" in f["between_session_variance"].action


def test_lab_support_reads_the_labs_numbers():
    from helpers.r2_gap import lab

    methods = ["rank 0 only", "seed Fix 1: all-reduce mean of per-rank R² and r", "seed Fix 2 with its sums all-reduced",
               "exact: all-reduced sufficient statistics, incl. duplicates",
               "exact: all-reduced sufficient statistics, duplicates removed"]
    table = pd.DataFrame({"method": methods, "r2_error": [0.0123, -0.0045, -0.1567, -0.00089, 2e-9]})
    ranks = pd.DataFrame({"n": [3, 3], "n_duplicates": [0, 1]})
    s = lab.support(table, ranks)
    assert set(s) == {"unsynced_rank_metrics", "rank_averaged_metrics", "batch_averaged_r2", "sampler_padding_duplicates"}
    assert "+0.0123" in s["unsynced_rank_metrics"] and "-0.0045" in s["rank_averaged_metrics"]
    assert "-0.1567" in s["batch_averaged_r2"] and "-8.90e-04" in s["sampler_padding_duplicates"]
    assert all("2.0e-09" in v and "2 processes, 6 rows of which 1 padded" in v for v in s.values())
