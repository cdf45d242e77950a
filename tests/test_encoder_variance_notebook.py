"""Notebook 02 executed with papermill: the sample run (once per suite), one new run, one bad input.

Everything else about the pipeline is checked in-process in test_encoder_variance.py.
"""

import nbformat
import numpy as np
import pytest
from notebook_checks import failure_line

from helpers.encoder_variance import diagnosis as dx
from helpers.encoder_variance import simulate as sim
from helpers.io import save_npz
from helpers.runner.execute import execute

pytestmark = pytest.mark.notebook
NAME = dx.NOTEBOOK


@pytest.mark.xdist_group(NAME)
def test_notebook_on_the_sample(sample_execution):
    s, executed_path = sample_execution(NAME)
    f = s["findings"]
    assert list(f) == list(dx.FINDING_IDS)
    assert f["stochasticity_collapsed"]["status"] == "detected"
    assert {f[k]["status"] for k in ("representation_collapse", "sampling_noise_dominates",
                                     "dimensional_collapse", "inactive_units")} == {"not_detected"}
    assert s["metrics"]["decision"] == "collapsed to deterministic"
    assert s["metrics"]["sampling_share"] < dx.STOCHASTIC_SHARE_MIN < 0.5 < s["metrics"]["between_share"]
    # the lab
    sweep = {round(r["kl_weight"], 6): r["decision"] for r in s["metrics"]["lab_kl_sweep"]}
    assert sweep[1e-4] == "collapsed to deterministic" and sweep[1.0] == "stochastic but not diverse"
    lab = s["metrics"]["lab_repeat_pass_variance"]
    assert lab["eval"]["variational, KL 1e-3"] == 0.0 < lab["eval+sample"]["variational, KL 1e-3"]
    assert (executed_path.parent / "figures" / "kl_sweep.png").exists()
    # the banner is the first thing the diagnosis prints; no cell fails, the solutions included
    executed = nbformat.read(executed_path, as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    load = next(c for c in executed.cells if "dx.load_inputs(" in c.source)
    assert load.outputs[0].text.startswith(">>> These are the BUNDLED SAMPLE RUN's files")
    assert any("findings unchanged: True" in o.text for o in outputs if o.output_type == "stream")


def test_notebook_on_a_new_run(tmp_path, elsewhere):
    """Seed 7 (not the sample's): the KL-1 encoder's means alone, as (N, T, D) tokens with string
    puzzle ids, compared with a healthy encoder; the lab off."""
    cfg = sim.with_seed(7)
    enc, _ = sim.train_encoder(1.0, True, cfg)
    demos, group = sim.evaluation_set(cfg)
    z = sim.embed(enc, demos, cfg.n_passes, seed=7)["z"]
    np.savez(elsewhere / "tokens.npz", z=z.reshape(len(z), 4, 8), group=np.array([f"puzzle {g}" for g in group]))
    save_npz(elsewhere / "healthy.npz", sim.simulate("healthy_variational", cfg))
    s = execute(NAME, {"embeddings": "tokens.npz", "compare": "[healthy.npz]", "run_demos": False},
                tmp_path / "out", cwd=elsewhere)
    f = s["findings"]
    assert f["sampling_noise_dominates"]["status"] == f["stochasticity_collapsed"]["status"] == "not_applicable"
    assert "neither 'z_samples' nor 'logvar'" in f["stochasticity_collapsed"]["message"]
    assert f["dimensional_collapse"]["status"] == "detected"
    assert f["inactive_units"]["status"] == "not_detected" and "average unit" in f["inactive_units"]["message"]
    assert s["metrics"]["units"] == 32 and "sampling not measured" in s["metrics"]["decision_reason"]
    assert not s["sample_run"] and set(s["inputs"]) == {"embeddings", "compare[0]"}
    assert "lab_kl_sweep" not in s["metrics"]


def test_notebook_bad_input(tmp_path, elsewhere):
    line = failure_line(NAME, {"embeddings": "no_such_run.npz", "run_demos": False}, tmp_path / "out", elsewhere)
    assert "embeddings" in line and "no_such_run.npz" in line and "file not found" in line
    assert not (tmp_path / "out" / "summary.json").exists()
