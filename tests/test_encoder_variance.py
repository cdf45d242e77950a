"""Notebook 02: findings on simulated runs that are not the sample, bad inputs, notebook executions."""

import subprocess
import sys

import numpy as np
import pytest

from helpers.encoder_variance import diagnosis as ev
from helpers.encoder_variance import simulate as sim
from helpers.io import InputError
from helpers.paths import DATA_SAMPLES, REPO_ROOT

NAME = ev.NOTEBOOK
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
    m, found, verdict = ev.diagnose(ev.EncoderRun.from_arrays(arrays, name))
    return {f.id: f.status for f in found}, verdict, m


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
    assert ev.STOCHASTIC_SHARE_MIN < m.sampling_share < 0.5


def test_collapsed_variational_is_deterministic_not_collapsed(new_runs):
    st, verdict, m = statuses(new_runs["collapsed_variational"])
    assert st["stochasticity_collapsed"] == "detected"
    assert st["representation_collapse"] == "not_detected"
    assert st["sampling_noise_dominates"] == "not_detected"
    assert verdict["label"] == "collapsed to deterministic"
    assert m.sampling_share < ev.STOCHASTIC_SHARE_MIN


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
        ev.load_embeddings("embeddings", path)
    msg = str(exc.value)
    assert msg.startswith("embeddings: ") and "bad.npz" in msg and problem in msg and "\n" not in msg


def test_bad_parameters():
    good = {"embeddings": "x.npz", "compare": [], "output_dir": "", "run_demos": True, "seed": 0}
    with pytest.raises(InputError, match="seed: expected an integer"):
        ev.check_parameters({**good, "seed": "zero"})
    with pytest.raises(InputError, match=r"compare\[1\]: expected a file path"):
        ev.check_parameters({**good, "compare": ["a.npz", 3]})
    with pytest.raises(InputError, match="embeddings: .*missing.npz: file not found"):
        ev.load_inputs({**good, "embeddings": "missing.npz"})


def test_simulator_is_deterministic_and_small(tmp_path):
    first = sim.write(tmp_path / "a", names=("collapsed_variational",))[0]
    again = sim.write(tmp_path / "b", names=("collapsed_variational",))[0]
    assert first.read_bytes() == again.read_bytes()  # no timestamps; tests/test_data.py compares with the sample
    total = sum(p.stat().st_size for p in (DATA_SAMPLES / NAME).glob("*.npz"))
    assert total < 3 * 2**20


def test_diagnostics_do_not_import_the_simulators():
    code = "import sys, helpers.encoder_variance.diagnosis, helpers.encoder_variance.representation; print('helpers.encoder_variance.simulate' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- notebook executions
def execute(parameters, output_dir, cwd=None):
    from helpers.runner.execute import execute as run_notebook

    return run_notebook(NAME, parameters, output_dir, cwd=cwd)


def failure_line(parameters, output_dir, cwd):
    from notebook_checks import failure_line as one_line

    return one_line(NAME, parameters, output_dir, cwd)


@pytest.mark.notebook
def test_notebook_on_the_sample(tmp_path, elsewhere):
    s = execute({}, tmp_path / "out", cwd=elsewhere)
    f = s["findings"]
    assert set(ev.FINDING_IDS) <= set(f)
    assert f["stochasticity_collapsed"]["status"] == "detected"
    assert {f[k]["status"] for k in ("representation_collapse", "sampling_noise_dominates",
                                     "dimensional_collapse", "inactive_units")} == {"not_detected"}
    assert s["metrics"]["decision"] == "collapsed to deterministic"
    assert s["metrics"]["sampling_share"] < ev.STOCHASTIC_SHARE_MIN < 0.5 < s["metrics"]["between_share"]
    sweep = {round(r["kl_weight"], 6): r["decision"] for r in s["metrics"]["lab_kl_sweep"]}
    assert sweep[1e-4] == "collapsed to deterministic" and sweep[1.0] == "stochastic but not diverse"
    lab = s["metrics"]["lab_repeat_pass_variance"]
    assert lab["eval"]["variational, KL 1e-3"] == 0.0 < lab["eval+sample"]["variational, KL 1e-3"]
    assert (tmp_path / "out" / "figures" / "kl_sweep.png").exists()


@pytest.mark.notebook
def test_notebook_on_new_runs(tmp_path, elsewhere, new_runs):
    healthy = write_npz(tmp_path / "healthy.npz", **new_runs["healthy_variational"])
    s = execute({"embeddings": healthy, "compare": [], "run_demos": False}, tmp_path / "o1", cwd=elsewhere)
    assert {v["status"] for v in s["findings"].values()} == {"not_detected"}
    assert s["metrics"]["decision"] == "healthy"

    z = new_runs["kl_1"]["z"]
    tokens = write_npz(tmp_path / "tokens.npz", z=z.reshape(len(z), 4, 8),
                       group=np.array([f"puzzle {g}" for g in new_runs["kl_1"]["group"]]))
    s = execute({"embeddings": tokens, "compare": [healthy], "run_demos": False}, tmp_path / "o2", cwd=elsewhere)
    f = s["findings"]
    assert f["sampling_noise_dominates"]["status"] == f["stochasticity_collapsed"]["status"] == "not_applicable"
    assert "neither 'z_samples' nor 'logvar'" in f["stochasticity_collapsed"]["message"]
    # the KL=1 means alone: tiny but still ordered by puzzle, squeezed into a few directions;
    # without the posterior variance, units can only be compared with each other
    assert f["dimensional_collapse"]["status"] == "detected"
    assert f["inactive_units"]["status"] == "not_detected" and "average unit" in f["inactive_units"]["message"]
    assert s["metrics"]["units"] == 32 and "sampling not measured" in s["metrics"]["decision_reason"]


@pytest.mark.notebook
def test_notebook_bad_inputs(tmp_path, elsewhere):
    line = failure_line({"embeddings": "no_such_run.npz", "run_demos": False}, tmp_path / "o1", elsewhere)
    assert "embeddings" in line and "no_such_run.npz" in line and "file not found" in line
    no_z = write_npz(tmp_path / "no_z.npz", group=np.arange(4))
    line = failure_line({"embeddings": no_z, "run_demos": False}, tmp_path / "o2", elsewhere)
    assert "embeddings" in line and "no_z.npz" in line and "missing required array 'z'" in line
    line = failure_line({"seed": "zero", "run_demos": False}, tmp_path / "o3", elsewhere)
    assert line.startswith("InputError: seed: expected an integer")
