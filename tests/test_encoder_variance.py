"""Notebook 02 in-process, through the face of its diagnosis module: findings on simulated runs
that are not the sample, the sample's pipeline, bad inputs (papermill: test_encoder_variance_notebook.py)."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from face import defaults, pipeline

from helpers.encoder_variance import diagnosis as dx
from helpers.encoder_variance import lab
from helpers.encoder_variance import simulate as sim
from helpers.findings import what_to_change
from helpers.io import InputError
from helpers.paths import DATA_SAMPLES

# its module fixtures (runs built or trained once) are computed once, on one worker
pytestmark = pytest.mark.xdist_group("test_encoder_variance")

NAME = dx.NOTEBOOK
SEED = 7  # not the sample's seed (0)


@pytest.fixture(scope="module")
def new_runs():
    """A new run: the three encoders plus one with KL weight 1 (posterior collapse), seed 7."""
    cfg = sim.with_seed(SEED)
    runs = {name: sim.simulate(name, cfg) for name in sim.ENCODERS}
    enc, _ = sim.train_encoder(1.0, True, cfg)
    demos, group = sim.evaluation_set(cfg)
    runs["kl_1"] = {**sim.embed(enc, demos, cfg.n_passes, seed=SEED), "group": group}
    return runs


def statuses(arrays, name="run"):
    """Diagnose one encoder's arrays: (finding statuses, decision, the encoder's measurements)."""
    diag = dx.diagnose(dx.Run(dx.EncoderRun.from_arrays(arrays, name)), {"seed": 0})
    return {f.id: f.status for f in dx.findings(diag)}, diag.decision, diag.main


def scaled(arrays, k=10.0):
    out = {**arrays, "z": arrays["z"] * k}
    if "z_samples" in arrays:
        out["z_samples"] = arrays["z_samples"] * k
    if "logvar" in arrays:
        out["logvar"] = arrays["logvar"] + 2 * np.log(k)
    return out


# --------------------------------------------------------------------------- findings on new runs
def test_healthy_run_has_nothing_critical(new_runs):
    st, verdict, m = statuses(new_runs["healthy_variational"])
    assert all(v == "not_detected" for v in st.values()), st
    assert verdict["label"] == "healthy"
    assert dx.STOCHASTIC_SHARE_MIN < m.sampling_share < 0.5


def test_collapsed_variational_is_deterministic_not_collapsed(new_runs):
    st, verdict, m = statuses(new_runs["collapsed_variational"])
    assert st["stochasticity_collapsed"] == "detected"
    assert st["representation_collapse"] == "not_detected"
    assert st["sampling_noise_dominates"] == "not_detected"
    assert verdict["label"] == "collapsed to deterministic"
    assert m.sampling_share < dx.STOCHASTIC_SHARE_MIN


def test_large_kl_weight_is_stochastic_but_not_diverse(new_runs):
    st, verdict, m = statuses(new_runs["kl_1"])
    assert st["representation_collapse"] == "detected"
    assert st["sampling_noise_dominates"] == "detected"
    assert st["inactive_units"] == "detected"
    assert st["stochasticity_collapsed"] == "not_detected"
    assert verdict["label"] == "stochastic but not diverse"
    # the source's batch variance calls this encoder the most "diverse" of all
    others = [statuses(new_runs[k])[2].source["cross_sample_as_written"] for k in ("deterministic", "healthy_variational")]
    assert m.source["cross_sample_as_written"] > max(others)


def test_deterministic_run_without_samples_is_not_applicable(new_runs):
    arrays = new_runs["deterministic"]
    assert "z_samples" not in arrays and "logvar" not in arrays
    st, verdict, _ = statuses(arrays)
    assert st["sampling_noise_dominates"] == st["stochasticity_collapsed"] == "not_applicable"
    assert st["representation_collapse"] == "not_detected"
    assert verdict["label"] == "healthy"


@pytest.mark.parametrize("name", ["collapsed_variational", "healthy_variational", "kl_1", "deterministic"])
def test_scale_x10_changes_no_finding(new_runs, name):
    a, va, _ = statuses(new_runs[name])
    b, vb, _ = statuses(scaled(new_runs[name], 10.0))
    c, _, _ = statuses(scaled(new_runs[name], 0.1))
    assert a == b == c
    assert va["label"] == vb["label"]


def test_tokens_string_ids_and_groups_of_one(new_runs):
    arrays = new_runs["healthy_variational"]
    ref, _, mref = statuses(arrays)
    n = len(arrays["z"])
    tokens = {"z": arrays["z"].reshape(n, 4, 8), "group": np.array([f"task-{g}" for g in arrays["group"]]),
              "z_samples": arrays["z_samples"].reshape(n, -1, 4, 8), "logvar": arrays["logvar"].reshape(n, 4, 8)}
    st, _, m = statuses(tokens)
    assert st == ref
    assert m.decomposition.between_share == pytest.approx(mref.decomposition.between_share)
    # keep one demonstration of half the puzzles: groups of one mixed with larger groups
    g = arrays["group"]
    keep = np.ones(n, dtype=bool)
    for pid in np.unique(g)[::2]:
        keep[np.flatnonzero(g == pid)[1:]] = False
    st2, _, m2 = statuses({k: v[keep] for k, v in arrays.items()})
    assert m2.decomposition.n_singletons == len(np.unique(g)) // 2
    assert st2 == ref
    # one demonstration of every puzzle: the between/within checks cannot be made
    first = np.unique(g, return_index=True)[1]
    st3, v3, _ = statuses({"z": arrays["z"][first], "group": g[first], "logvar": arrays["logvar"][first]})
    assert st3["representation_collapse"] == st3["sampling_noise_dominates"] == "not_applicable"
    assert v3["label"] == "undetermined"


def test_dimensional_collapse_on_a_low_rank_encoder(new_runs):
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(50), 4)
    z = (rng.normal(size=(50, 2))[g] + 0.1 * rng.normal(size=(200, 2))) @ rng.normal(size=(2, 32))
    st, _, m = statuses({"z": z, "group": g})
    assert st["dimensional_collapse"] == "detected" and m.effective_rank < 3
    assert statuses(new_runs["healthy_variational"])[0]["dimensional_collapse"] == "not_detected"


# --------------------------------------------------------------------------- bad inputs
def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("arrays, problem", [
    ({"group": np.arange(4)}, "missing required array 'z'"),
    ({"z": np.ones((4, 3)), "group": np.arange(3)}, "array 'group' has shape (3,), expected (4,)"),
    ({"z": np.array([[1.0, np.nan], [0.0, 1.0]]), "group": np.arange(2)}, "NaN/inf"),
    ({"z": np.ones((4, 3)), "group": np.zeros(4, int)}, "need at least 2 puzzles"),
    ({"z": np.ones((4, 3)), "group": np.arange(4), "z_samples": np.ones((4, 1, 3))}, "need R >= 2"),
    ({"z": np.ones((4, 3)), "group": np.arange(4), "z_samples": np.ones((4, 2, 5))}, "array 'z_samples' has shape"),
    ({"z": np.ones((4, 3)), "group": np.arange(4), "logvar": np.ones((4, 2))}, "array 'logvar' has shape"),
    ({"z": np.ones(4), "group": np.arange(4)}, "expected (N, D) or (N, T, D)"),
    ({"z": np.array([["a", "b"], ["c", "d"]]), "group": np.arange(2)}, "must be numeric"),
])
def test_bad_files_fail_with_one_line(tmp_path, arrays, problem):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError) as exc:
        dx.load_embeddings("embeddings", path)
    msg = str(exc.value)
    assert msg.startswith("embeddings: ") and "bad.npz" in msg and problem in msg and "\n" not in msg


def test_bad_parameters():
    good = {"embeddings": "x.npz", "compare": [], "output_dir": "", "run_demos": True, "seed": 0}
    with pytest.raises(InputError, match="seed: expected an integer"):
        dx.load_inputs({**good, "seed": "zero"})
    with pytest.raises(InputError, match=r"compare\[1\]: expected a file path"):
        dx.load_inputs({**good, "compare": ["a.npz", 3]})
    with pytest.raises(InputError, match="embeddings: .*missing.npz: file not found"):
        dx.load_inputs({**good, "embeddings": "missing.npz"})


@pytest.mark.parametrize("overrides, where, problem", [
    ({"embeddings": "no_such_run.npz"}, "no_such_run.npz", "file not found"),
    ({"embeddings": "no_z.npz"}, "no_z.npz", "missing required array 'z'"),
    ({"seed": "zero"}, None, "expected an integer"),
    ({"seed": -1}, None, "seed"),
])
def test_bad_inputs_are_refused_by_the_pipeline_with_one_line(tmp_path, elsewhere, overrides, where, problem):
    np.savez(elsewhere / "no_z.npz", group=np.arange(4))
    with pytest.raises(InputError) as exc:
        pipeline(dx, output_dir=str(tmp_path / "out"), **overrides)
    msg = str(exc.value)
    assert msg.startswith(f"{next(iter(overrides))}: ") and problem in msg and "\n" not in msg
    if where is not None:
        assert where in msg
    assert not (tmp_path / "out" / "summary.json").exists()


def test_simulator_is_deterministic_and_small(tmp_path):
    cfg = sim.with_seed(0, steps=20)  # the sample's training, cut short: the same code, a tenth of the steps
    first = sim.write(tmp_path / "a", cfg, names=("collapsed_variational",))[0]
    again = sim.write(tmp_path / "b", cfg, names=("collapsed_variational",))[0]
    assert first.read_bytes() == again.read_bytes()  # no timestamps; tests/test_data.py compares with the sample
    total = sum(p.stat().st_size for p in (DATA_SAMPLES / NAME).glob("*.npz"))
    assert total < 3 * 2**20


# --------------------------------------------------------------------------- the pipeline, through the face
def test_the_face():
    assert set(dx.PARAMETER_TYPES) == set(defaults(NAME))
    assert dx.FINDING_IDS == ("representation_collapse", "dimensional_collapse", "sampling_noise_dominates",
                              "stochasticity_collapsed", "inactive_units")
    assert not hasattr(dx, "check_parameters") and not hasattr(dx, "headline_metrics")


def test_pipeline_on_the_sample(tmp_path, elsewhere):
    r = pipeline(dx, output_dir=str(tmp_path / "out"))
    f, m = r.found, r.summary.metrics
    assert f["stochasticity_collapsed"].status == "detected"
    assert {f[k].status for k in ("representation_collapse", "sampling_noise_dominates",
                                  "dimensional_collapse", "inactive_units")} == {"not_detected"}
    assert m["decision"] == "collapsed to deterministic" == r.diagnosis.decision["label"]
    assert m["decision_reason"] == r.diagnosis.decision["reason"]
    assert m["sampling_share"] < dx.STOCHASTIC_SHARE_MIN < 0.5 < m["between_share"]
    # raw centroids share an offset; centring removes it
    assert -1 <= m["centroid_cosine_median_centred"] < m["centroid_cosine_median_raw"] <= 1
    assert (tmp_path / "out" / "summary.json").exists()
    # every encoder is measured, the main one first; the banner names the files and what they hold
    assert list(r.diagnosis.measured) == ["collapsed_variational", "deterministic", "healthy_variational"]
    assert list(r.run.encoders) == list(r.diagnosis.measured) and r.diagnosis.main is r.diagnosis.measured[r.run.main.name]
    assert set(r.run.inputs) == {"embeddings", "compare[0]", "compare[1]"}
    lines = r.banner.splitlines()
    assert "BUNDLED SAMPLE RUN" in lines[0]
    assert "deterministic: z (384, 32), 64 puzzles, no z_samples, no logvar" in [line.strip() for line in lines]
    assert not any(re.search(r"\bNone\b", line) for line in lines), r.banner  # words, not Python's None
    comparison = dx.compare_runs(r.diagnosis.measured)
    assert comparison.loc["collapsed_variational", "decision"] == "collapsed to deterministic"
    assert comparison.loc["healthy_variational", "decision"] == "healthy"


def test_pipeline_is_deterministic(tmp_path):
    a = pipeline(dx, output_dir=str(tmp_path / "a")).summary.to_dict()
    b = pipeline(dx, output_dir=str(tmp_path / "b")).summary.to_dict()
    a["parameters"].pop("output_dir"), b["parameters"].pop("output_dir")
    assert a == b


def test_pipeline_on_new_runs(tmp_path, elsewhere, new_runs):
    healthy = write_npz(tmp_path / "healthy.npz", **new_runs["healthy_variational"])
    r = pipeline(dx, embeddings=healthy, compare=[], output_dir=str(tmp_path / "o1"))
    assert {f.status for f in r.found.values()} == {"not_detected"}
    assert r.summary.metrics["decision"] == "healthy"
    assert "BUNDLED" not in r.banner and list(r.run.others) == []

    z = new_runs["kl_1"]["z"]
    tokens = write_npz(tmp_path / "tokens.npz", z=z.reshape(len(z), 4, 8),
                       group=np.array([f"puzzle {g}" for g in new_runs["kl_1"]["group"]]))
    r = pipeline(dx, embeddings=tokens, compare=f"[{healthy}]", output_dir=str(tmp_path / "o2"))
    f = r.found
    assert f["sampling_noise_dominates"].status == f["stochasticity_collapsed"].status == "not_applicable"
    assert "neither 'z_samples' nor 'logvar'" in f["stochasticity_collapsed"].message
    assert f["dimensional_collapse"].status == "detected"
    assert f["inactive_units"].status == "not_detected" and "average unit" in f["inactive_units"].message
    assert r.summary.metrics["units"] == 32 and "sampling not measured" in r.summary.metrics["decision_reason"]
    assert list(r.diagnosis.measured) == ["tokens", "healthy"]


def test_compared_files_of_the_same_name_are_kept_apart(tmp_path, new_runs):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_npz(tmp_path / d / "run.npz", **new_runs["deterministic"])
    params, run = dx.load_inputs({**defaults(NAME), "embeddings": str(tmp_path / "a" / "run.npz"),
                                  "compare": [str(tmp_path / "b" / "run.npz"), str(tmp_path / "a" / "run.npz")]})
    assert list(run.encoders) == ["run", "run[0]", "run[1]"]
    assert params["compare"] == [str(tmp_path / "b" / "run.npz"), str(tmp_path / "a" / "run.npz")]


# --------------------------------------------------------------------------- actions: what to change
def contradiction_free(found) -> bool:
    """The detected findings never move the KL weight both ways."""
    changes = {f.evidence.get("kl_weight_change", "") for f in found if f.detected}
    return not {"raise", "lower"} <= changes


@pytest.mark.parametrize("name", ["collapsed_variational", "healthy_variational", "kl_1", "deterministic"])
def test_every_detected_finding_carries_one_consistent_action(new_runs, name):
    diag = dx.diagnose(dx.Run(dx.EncoderRun.from_arrays(new_runs[name], name)), {"seed": 0})
    found = dx.findings(diag)
    for f in found:
        assert bool(f.action) == f.detected and "\n" not in f.action
        if f.detected:  # the action quotes a number measured on this run
            assert any(ch.isdigit() for ch in f.action)
    assert contradiction_free(found)
    if name == "kl_1":  # sampling noise hides the puzzles: every action lowers the KL weight
        assert {f.evidence["kl_weight_change"] for f in found if f.detected} == {"lower"}
        assert "Lower the KL weight" in {f.id: f for f in found}["representation_collapse"].action


def test_noise_over_between_with_negligible_sampling_does_not_lower_the_kl_weight():
    """Sampling exceeds the between-puzzle variance (3x) yet is under 5% of the total: the means barely
    separate puzzles. Lowering the KL weight would not help; raising it is the stochasticity question."""
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(100), 6)
    z = 0.1 * rng.normal(size=(100, 16))[g] + rng.normal(size=(600, 16))
    samples = z[:, None] + np.sqrt(0.03) * rng.normal(size=(600, 8, 16))
    diag = dx.diagnose(dx.Run(dx.EncoderRun.from_arrays({"z": z, "group": g, "z_samples": samples})), {"seed": 0})
    f = {x.id: x for x in dx.findings(diag)}
    assert f["sampling_noise_dominates"].detected and f["stochasticity_collapsed"].detected
    assert f["representation_collapse"].detected
    assert contradiction_free(f.values())
    assert f["sampling_noise_dominates"].action.startswith("Do not lower the KL weight")
    assert "measured no fix" in f["representation_collapse"].action


def test_lowering_the_kl_weight_says_its_limit_when_the_means_barely_separate_puzzles():
    """Sampling noise is large (lowering the KL weight helps) but the means' ICC is under one half:
    even with no noise at all the between share stays under the threshold, and the action says so."""
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(100), 6)
    z = 0.6 * rng.normal(size=(100, 16))[g] + rng.normal(size=(600, 16))  # ICC of the means about 0.26
    samples = z[:, None] + 1.5 * rng.normal(size=(600, 8, 16))
    diag = dx.diagnose(dx.Run(dx.EncoderRun.from_arrays({"z": z, "group": g, "z_samples": samples})), {"seed": 0})
    f = {x.id: x for x in dx.findings(diag)}
    icc = diag.main.decomposition.icc
    assert 0.1 < icc < dx.BETWEEN_SHARE_MIN
    assert f["sampling_noise_dominates"].detected and not f["stochasticity_collapsed"].detected
    action = f["representation_collapse"].action
    assert action.startswith("Lower the KL weight") and "cannot be enough" in action
    assert f"{icc:.0%}" in action
    assert contradiction_free(f.values())


def test_a_healthy_run_renders_nothing_to_change(tmp_path, new_runs):
    r = pipeline(dx, embeddings=write_npz(tmp_path / "healthy.npz", **new_runs["healthy_variational"]), compare=[],
                 output_dir=str(tmp_path / "out"))
    assert what_to_change(r.found.values(), checks=len(r.found)).startswith("**Nothing to change.**")
    assert all(f["action"] == "" for f in r.summary.to_dict()["findings"].values())


def test_the_summary_carries_the_actions(tmp_path, new_runs):
    r = pipeline(dx, embeddings=write_npz(tmp_path / "kl_1.npz", **new_runs["kl_1"]), compare=[],
                 output_dir=str(tmp_path / "out"))
    written = json.loads((tmp_path / "out" / "summary.json").read_text())["findings"]
    assert {k for k, f in written.items() if f["action"]} == {f.id for f in r.found.values() if f.detected} != set()
    text = what_to_change(r.found.values())
    assert all(f"**{f.id}**" in text for f in r.found.values() if f.detected)
    assert not [f.id for f in r.found.values() if not f.detected and f.id in text]


def fake_sweep(task_mse, decisions, se=0.001):
    """A KL sweep's table without training: the columns :func:`lab.support` reads."""
    w = [1e-4, 1e-3, 1e-2, 1.0]
    table = pd.DataFrame({"task_mse": task_mse, "task_mse_se": se, "task_mse_at_mean": task_mse,
                          "between": [0.8, 0.6, 0.3, 0.0], "between_share": [0.86, 0.74, 0.33, 0.0],
                          "sampling_share": [0.015, 0.14, 0.6, 1.0], "icc": [0.87, 0.87, 0.86, 0.82],
                          "effective_rank": [12.0, 12.0, 12.0, 4.0], "active_units": [32, 32, 32, 0],
                          "decision": decisions}, index=pd.Index(w, name="kl_weight"))
    return lab.KLSweep(table, {}, None, 0.161, None, None, sim.EncoderConfig())


COLLAPSED = dx.Finding("stochasticity_collapsed", "detected", "warning", "m", {"kl_weight_change": "raise"}, "a")


def test_lab_support_states_the_measured_trade_off():
    decisions = ["collapsed to deterministic", "healthy", "stochastic but not diverse", "stochastic but not diverse"]
    s = lab.support(fake_sweep([0.16, 0.181, 0.25, 1.1], decisions), [COLLAPSED])["stochasticity_collapsed"]
    assert "KL 1e-3 is the smallest weight" in s and "at task MSE 0.1810: +13% against the best of the sweep" in s
    assert "Raise the weight only if you need the samples" in s
    # a cost within the evaluation noise is no cost
    s = lab.support(fake_sweep([0.160, 0.161, 0.25, 1.1], decisions, se=0.002), [COLLAPSED])["stochasticity_collapsed"]
    assert "no worse than the best of the sweep" in s and "+1%" not in s
    # no weight keeps the encoder stochastic and diverse
    s = lab.support(fake_sweep([0.16, 0.18, 0.25, 1.1], [decisions[0]] * 2 + decisions[2:]), [COLLAPSED])
    assert "drop the variational head" in s["stochasticity_collapsed"]
    # lowering the weight: read from the table, both ways
    lower = dx.Finding("inactive_units", "detected", "warning", "m", {"kl_weight_change": "lower"}, "a")
    s = lab.support(fake_sweep([0.16, 0.18, 0.25, 1.1], decisions), [lower])["inactive_units"]
    assert s == ("from KL 1 down to 1e-4, between share 0.0%, 33.0%, 74.0%, 86.0%, active units 0, 32, 32, 32; task MSE "
                 "1.1000, 0.2500, 0.1800, 0.1600. KL 1e-3 is the largest weight whose encoder is healthy (between share "
                 "74%, sampling 14.0%, task MSE 0.1800); at KL 1e-4 it collapses to deterministic.")
    assert lab.support(fake_sweep([0.16, 0.18, 0.25, 1.1], decisions), [dx.Finding("inactive_units", "not_detected", "info", "m")]) == {}


# --------------------------------------------------------------------------- large runs (issue 17)
def test_a_large_run_says_which_step_the_diagnosis_is_on(capsys):
    run = dx.Run(dx.load_embeddings("embeddings", DATA_SAMPLES / NAME / "collapsed_variational.npz"))
    shown = dx.diagnose(run, {"seed": 0}, progress=True)
    err = capsys.readouterr().err
    assert "collapsed_variational: variance decomposition, units, KL (384 inputs x 32 units)" in err
    assert "centroid cosines" in err and "2/2" in err
    quiet = dx.diagnose(run, {"seed": 0})  # the sample is small: nothing shown
    assert capsys.readouterr().err == ""
    assert dx.metrics(quiet) == dx.metrics(shown)
