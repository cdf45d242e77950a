"""Notebook 03's diagnosis: findings on runs this repository did not make, both ways in, bad inputs."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes

from helpers.checkpoint_divergence import checkpoints as ck
from helpers.checkpoint_divergence import diagnosis as cd
from helpers.checkpoint_divergence import lab as it
from helpers.io import InputError
from helpers.paths import DATA_SAMPLES

SAMPLE = DATA_SAMPLES / cd.NOTEBOOK
BASE = dict(checkpoints=str(SAMPLE / "checkpoints.npz"), forward_model="helpers.checkpoint_divergence.rocking_curve:forward",
            checkpoint_files="", model_factory="", validation="", last_k=5, k_neighbours=5, output_dir="",
            run_demos=False, seed=0)
FILES = dict(BASE, checkpoint_files=str(SAMPLE / "checkpoints" / "*.pt"),
             model_factory="helpers.checkpoint_divergence.lab:make_model", validation=str(SAMPLE / "validation.npz"))


def status(found):
    return {f.id: f.status for f in found}


@pytest.fixture(scope="module")
def sample():
    p, run, fwd = cd.load_inputs(BASE)
    return run, cd.diagnose(run, fwd, 5, 5)


def make_diabetes_run():
    """A real small torch run: a linear model predicts two diabetes columns (target, bmi) from the other nine
    features, full-batch Adam, smooth convergence; a checkpoint every 10 steps from step 200 on. The experiment is
    a held-out row in the bulk (its target closest to the training median)."""
    data = load_diabetes()
    x = np.delete(data.data, 2, axis=1)
    y = np.c_[data.target, data.data[:, 2]]
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    tr, va, rest = idx[:280], idx[280:430], idx[430:]
    mu, sd = y[tr].mean(0), y[tr].std(0)
    exp_i = rest[np.abs((y[rest] - np.median(y[tr], axis=0)) / sd).sum(axis=1).argmin()]
    torch.manual_seed(0)
    net = torch.nn.Linear(9, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    xt = torch.as_tensor(x, dtype=torch.float32) * 10
    yt = torch.as_tensor((y - mu) / sd, dtype=torch.float32)
    preds, exp_preds, val_loss, epochs = [], [], [], []
    for step in range(1, 401):
        loss = ((net(xt[tr]) - yt[tr]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 200 and step % 10 == 0:
            with torch.no_grad():
                out = net(xt).numpy() * sd + mu
            preds.append(out[va])
            exp_preds.append(out[exp_i])
            val_loss.append(float((((out[va] - y[va]) / sd) ** 2).mean()))
            epochs.append(step)
    return {"pred": np.stack(preds), "target": y[va], "epoch": np.array(epochs), "val_loss": np.array(val_loss),
            "train_target": y[tr], "experiment_pred": np.stack(exp_preds), "experiment_target": y[exp_i],
            "param_names": np.array(["progression", "bmi"])}


@pytest.fixture(scope="module")
def diabetes_run():
    return make_diabetes_run()


# ----------------------------------------------------------------------------- the sample run
def test_sample_run_shows_the_symptom(sample):
    run, d = sample
    assert d.ideal != d.ref  # the val-loss-best epoch is not the experiment-best one
    assert run.val_loss[d.ref] < run.val_loss[d.ideal] and d.experiment_err[d.ideal] < d.experiment_err[d.ref]
    st = status(cd.findings(d))
    assert st == {"experiment_sparse_coverage": "detected", "experiment_outside_support": "not_detected",
                  "swing_within_noise": "detected", "selection_does_not_generalize": "detected",
                  "ensemble_improves": "detected"}
    assert d.coverage.percentile >= cd.SPARSE_PERCENTILE and not d.coverage.outside_range
    assert d.jacobian_method == "autograd" and d.sensitivity.shape[0] == 7
    m = cd.headline_metrics(d)
    assert m["val_best_epoch"] == d.val_best_epoch and m["experiment_best_epoch"] == d.ideal_epoch


def test_sample_run_numbers_match_the_libraries(sample):
    run, d = sample
    from sklearn.metrics import mean_squared_error
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(run.train_target)
    e = d.ref
    assert d.val_mse[e] == pytest.approx(mean_squared_error(sc.transform(run.target), sc.transform(run.pred[e])), rel=1e-5)
    ens = run.pred[-5:].astype(np.float64).mean(0)
    assert d.remedies.iloc[3]["val_error"] == pytest.approx(
        mean_squared_error(sc.transform(run.target), sc.transform(ens)), rel=1e-5)


def test_both_ways_in_give_the_same_diagnosis(sample):
    run, d = sample
    p, frun, fwd = cd.load_inputs(FILES)
    assert frun.source == "checkpoint files" and "val_loss" in frun.val_loss_source
    # float32 forward passes differ in the last bits with thread count; compare in target-std units
    scale = run.target.std(0)
    np.testing.assert_allclose(frun.pred / scale, run.pred / scale, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(frun.epoch, run.epoch)
    fd = cd.diagnose(frun, fwd, 5, 5)
    assert status(cd.findings(fd)) == status(cd.findings(d))
    swa = [i for i in fd.remedies.index if i.startswith("weight average")]
    assert swa and np.isfinite(fd.remedies.loc[swa[0], "val_error"])


def test_weight_average_equals_the_mean_of_the_weights():
    _, run, _ = cd.load_inputs(FILES)
    val_p, _, note = cd.weight_average(run)
    assert "AveragedModel" in note
    model = it.make_model()
    mean_state = {k: torch.stack([s[k].float() for s in run.tail_states]).mean(0) for k in run.tail_states[0]}
    model.load_state_dict(mean_state)
    np.testing.assert_allclose(val_p, cd.predict(model, run.val_x), rtol=1e-4, atol=1e-5)


def test_without_forward_model_and_without_train_target(sample):
    run, _ = sample
    d = cd.diagnose(run, None)
    assert d.sensitivity is None and d.correlation is None and d.experiment_curve_err is None
    assert d.experiment_space == "parameters"
    arrays = {k: getattr(run, k) for k in ("pred", "target", "epoch", "val_loss", "experiment_pred", "experiment_target")}
    bare = cd.CheckpointRun.from_arrays(arrays)
    found = {f.id: f for f in cd.findings(cd.diagnose(bare, None))}
    for fid in ("experiment_sparse_coverage", "experiment_outside_support"):
        assert found[fid].status == "not_applicable" and "'train_target'" in found[fid].message
    assert found["swing_within_noise"].status != "not_applicable"
    no_exp = cd.CheckpointRun.from_arrays({k: arrays[k] for k in ("pred", "target", "epoch", "val_loss")})
    f2 = {f.id: f for f in cd.findings(cd.diagnose(no_exp, None))}
    assert f2["swing_within_noise"].status == "not_applicable" and "'experiment_pred'" in f2["swing_within_noise"].message


def test_experiment_curve_only_is_scored_in_curve_space(sample):
    import helpers.checkpoint_divergence.rocking_curve as rc

    run, _ = sample
    keep = ("pred", "target", "epoch", "val_loss", "experiment_pred", "experiment_curve", "train_target")
    r = cd.CheckpointRun.from_arrays({k: getattr(run, k) for k in keep})
    d = cd.diagnose(r, rc.forward)
    assert d.experiment_space == "curve" and d.noise is not None and "median prediction" in d.location_source
    f = {x.id: x for x in cd.findings(cd.diagnose(r, None))}
    assert f["swing_within_noise"].status == "not_applicable" and "forward_model" in f["swing_within_noise"].message


# ----------------------------------------------------------------------------- runs not made here
def test_healthy_real_run_detects_nothing(diabetes_run):
    d = cd.diagnose(cd.CheckpointRun.from_arrays(diabetes_run), None)
    st = status(cd.findings(d))
    assert set(st.values()) == {"not_detected"}, {f.id: f.message for f in cd.findings(d)}


def test_experiment_outside_the_support(diabetes_run):
    arrays = dict(diabetes_run, experiment_target=diabetes_run["train_target"].max(0) * np.array([2.0, 3.0]))
    found = {f.id: f for f in cd.findings(cd.diagnose(cd.CheckpointRun.from_arrays(arrays), None))}
    assert found["experiment_outside_support"].status == "detected"
    assert "progression" in found["experiment_outside_support"].message
    assert found["experiment_sparse_coverage"].status == "detected"


def test_lab_module_samples_under_the_constraints():
    p = it.sample_parameters(5000, np.random.default_rng(0))
    assert it.satisfies_constraints(p).all() and it.satisfies_constraints(it.EXPERIMENT).all()
    # nested uniform draws are not uniform: D01 piles up at low values
    assert np.mean(p[:, 1] < 0.0155) > 0.6


UNSEEN_FACTORY = '''
import torch

def build():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
'''


@pytest.fixture
def unseen_model(tmp_path):
    """Checkpoint files of a model this project never saw, saved three different ways."""
    (tmp_path / "factory.py").write_text(UNSEEN_FACTORY)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    w = rng.normal(size=(4, 2))
    target = x @ w + 0.1 * rng.normal(size=(60, 2))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    ck_dir = tmp_path / "ckpts"
    ck_dir.mkdir()
    for step in range(1, 7):
        for _ in range(20):
            loss = ((net(torch.as_tensor(x)) - torch.as_tensor(target, dtype=torch.float32)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sd = {k: v.clone() for k, v in net.state_dict().items()}
        if step % 3 == 0:
            torch.save(sd, ck_dir / f"step{step}.pt")  # plain state dict, epoch from the name
        elif step % 3 == 1:
            torch.save({"model": sd, "epoch": step}, ck_dir / f"a{step}.pt")
        else:
            torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": step}, ck_dir / f"b{step}.pt")
    np.savez(tmp_path / "val.npz", x=x, target=target, experiment_x=x[0] + 3, experiment_target=target[0])
    return tmp_path


def test_checkpoint_files_of_an_unseen_model(unseen_model):
    params = dict(BASE, forward_model="", checkpoint_files=str(unseen_model / "ckpts" / "*.pt"),
                  model_factory=f"{unseen_model / 'factory.py'}:build", validation=str(unseen_model / "val.npz"), last_k=3)
    _, run, fwd = cd.load_inputs(params)
    assert run.epoch.tolist() == [1, 2, 3, 4, 5, 6] and run.pred.shape == (6, 60, 2)
    assert "standardised" in run.val_loss_source
    d = cd.diagnose(run, fwd, last_k=3, k=5)
    found = {f.id: f for f in cd.findings(d)}
    assert found["experiment_sparse_coverage"].status == "not_applicable"  # no train_target in val.npz
    assert any(i.startswith("weight average") for i in d.remedies.index)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/_evil_checkpoint_was_executed",))


def test_a_pickled_object_is_refused_never_executed(unseen_model):
    import os

    marker = "/tmp/_evil_checkpoint_was_executed"
    if os.path.exists(marker):
        os.remove(marker)
    torch.save({"epoch": 9, "state_dict": _Evil()}, unseen_model / "ckpts" / "evil9.pt")
    params = dict(BASE, forward_model="", checkpoint_files=str(unseen_model / "ckpts" / "*.pt"),
                  model_factory=f"{unseen_model / 'factory.py'}:build", validation=str(unseen_model / "val.npz"), last_k=3)
    with pytest.raises(InputError) as e:
        cd.load_inputs(params)
    msg = str(e.value)
    assert msg.startswith("checkpoint_files: ") and "evil9.pt" in msg and "pickled" in msg and "\n" not in msg
    assert not os.path.exists(marker)


# ----------------------------------------------------------------------------- bad inputs
def _write(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_bad_inputs_fail_with_one_line(tmp_path, sample):
    run, _ = sample
    good = {k: getattr(run, k) for k in ("pred", "target", "epoch", "val_loss", "experiment_pred", "experiment_target",
                                         "experiment_curve", "train_target")}
    nan_t = good["target"].copy()
    nan_t[3, 2] = np.nan
    cases = [
        (dict(checkpoints="nope.npz"), ["checkpoints: ", "file not found"]),
        (dict(checkpoints=_write(tmp_path, "a.npz", **{k: v for k, v in good.items() if k != "pred"})),
         ["missing required array 'pred'"]),
        (dict(checkpoints=_write(tmp_path, "b.npz", **dict(good, target=nan_t))), ["array 'target' has 1 NaN/inf values"]),
        (dict(checkpoints=_write(tmp_path, "c.npz", **dict(good, target=good["target"][:, :3]))),
         ["array 'target' has shape"]),
        (dict(checkpoints=_write(tmp_path, "d.npz", **dict(good, epoch=np.zeros(30)))), ["repeats an epoch"]),
        (dict(last_k=99), ["last_k: must be at most the number of checkpoints (30)"]),
        (dict(last_k="5"), ["last_k: expected an integer"]),
        (dict(forward_model="helpers.checkpoint_divergence.rocking_curve:nothing"), ["forward_model: ", "no callable named 'nothing'"]),
        (dict(forward_model="numpy:ones_like"), ["forward_model: ", "length"]),
        (dict(validation="x.npz"), ["validation: is only used with checkpoint_files"]),
        (dict(checkpoints=_write(tmp_path, "mine.npz", **good)),
         ["forward_model: is still the sample run's X-ray rocking-curve model", "while your run is mine.npz"]),
        (dict(FILES, checkpoint_files=str(tmp_path / "none*.pt")), ["checkpoint_files: ", "no file matches"]),
        (dict(FILES, model_factory=""), ["model_factory: is required"]),
        (dict(FILES, model_factory="helpers.checkpoint_divergence.checkpoints:fit_scaler"), ["model_factory: raised TypeError"]),
    ]
    for override, expected in cases:
        with pytest.raises(InputError) as e:
            cd.load_inputs(dict(BASE, **override))
        msg = str(e.value)
        assert "\n" not in msg and all(part in msg for part in expected), (override, msg)


def test_a_state_dict_of_another_model_is_one_line(tmp_path):
    torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(3)}}, tmp_path / "e1.pt")
    torch.save({"epoch": 2, "state_dict": {"w": torch.zeros(3)}}, tmp_path / "e2.pt")
    with pytest.raises(InputError) as e:
        cd.load_inputs(dict(FILES, checkpoint_files=str(tmp_path / "*.pt")))
    assert "does not fit the model from model_factory" in str(e.value) and "\n" not in str(e.value)


def test_match_keys_strips_only_a_prefix_that_fits():
    state = {"model.a.weight": 1, "model.b": 2}
    assert cd.match_keys(state, {"a.weight", "b"}) == {"a.weight": 1, "b": 2}
    assert cd.match_keys(state, {"a.weight", "c"}) == state
    assert ck.subsample(10, 20).tolist() == list(range(10))
