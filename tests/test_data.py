"""`make data` reproduces the committed sample runs.

The file list, integers and strings must match exactly, and numbers from numpy simulators to
float noise. Two samples come from small torch models trained in float32 (02's encoders, 03's
checkpoints): seeded and single-threaded, they give the same bytes twice on one machine, but a
CPU with other vector instructions (AVX-512 or not) rounds the first matrix products differently
in the last bits, and training amplifies that. For those the test asks what a user relies on:
the same arrays, shapes and labels, and the same diagnosis from the notebook's own code.
"""

import json

import numpy as np
import pandas as pd
import pytest

from helpers.paths import DATA_SAMPLES
from helpers.runner.samples import main

# its module fixtures (runs built or trained once) are computed once, on one worker
pytestmark = pytest.mark.xdist_group("test_data")

TRAINED = ("02_encoder_variance", "03_checkpoint_divergence")  # float values differ across CPUs


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    return out, main(out)


def assert_same_array(a: np.ndarray, b: np.ndarray, what: str, values: bool = True) -> None:
    """Same dtype and shape; equal, floats to noise relative to the array's scale (``values``)."""
    assert a.dtype == b.dtype and a.shape == b.shape, what
    if a.dtype.kind not in "fc":
        np.testing.assert_array_equal(a, b, err_msg=what)
    elif values:
        scale = float(np.abs(a).max()) if a.size else 0.0
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(scale, 1.0), err_msg=what)
    else:
        assert np.isfinite(b).all(), what


def test_every_committed_file_is_regenerated(regenerated):
    import torch

    out, written = regenerated
    committed = sorted(p.relative_to(DATA_SAMPLES) for p in DATA_SAMPLES.rglob("*") if p.is_file())
    assert committed == sorted(p.relative_to(out) for p in written)
    for rel in committed:
        a, b = DATA_SAMPLES / rel, out / rel
        values = rel.parts[0] not in TRAINED
        if rel.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b), check_exact=False, rtol=1e-7)
        elif rel.suffix == ".json":
            assert json.loads(a.read_text()) == json.loads(b.read_text())
        elif rel.suffix == ".npz":
            with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
                assert sorted(x.files) == sorted(y.files)
                for k in x.files:
                    assert_same_array(x[k], y[k], f"{rel}:{k}", values)
        elif rel.suffix == ".pt":
            x, y = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
            assert x["epoch"] == y["epoch"] and sorted(x["state_dict"]) == sorted(y["state_dict"]), rel
            for k, v in x["state_dict"].items():
                assert_same_array(v.numpy(), y["state_dict"][k].numpy(), f"{rel}:{k}", values)
        else:
            assert a.read_bytes() == b.read_bytes(), rel


def test_the_trained_samples_give_the_same_diagnosis(regenerated):
    """02 and 03 regenerated on this machine: the notebooks' findings equal the committed sample's."""
    from helpers.checkpoint_divergence import diagnosis as cd
    from helpers.checkpoint_divergence import rocking_curve
    from helpers.encoder_variance import diagnosis as ev

    out, _ = regenerated

    def statuses(found):
        return {f.id: f.status for f in found}

    for name in ("collapsed_variational", "deterministic", "healthy_variational"):
        runs = [ev.load_embeddings("embeddings", root / "02_encoder_variance" / f"{name}.npz") for root in (DATA_SAMPLES, out)]
        found = [ev.findings(ev.diagnose(ev.Run(r), {"seed": 0})) for r in runs]
        assert statuses(found[0]) == statuses(found[1]), name
    diagnoses = []
    for root in (DATA_SAMPLES, out):
        p, run = cd.load_inputs({**cd_defaults(), "checkpoints": str(root / "03_checkpoint_divergence" /
                                                                     "checkpoints.npz")})
        run.forward = rocking_curve.forward  # the sample's model, on the regenerated sample too
        diagnoses.append(cd.diagnose(run, p))
    assert statuses(cd.findings(diagnoses[0])) == statuses(cd.findings(diagnoses[1]))
    assert (diagnoses[0].val_best_epoch, diagnoses[0].ideal_epoch) == (diagnoses[1].val_best_epoch,
                                                                      diagnoses[1].ideal_epoch)


def cd_defaults() -> dict:
    return {"forward_model": "", "checkpoint_files": "", "model_factory": "", "validation": "", "last_k": 5,
            "k_neighbours": 5, "callable_timeout": 60.0, "output_dir": "", "run_demos": False, "seed": 0}


def test_samples_are_small():
    total = sum(p.stat().st_size for p in DATA_SAMPLES.rglob("*") if p.is_file())
    assert total < 10 * 2**20
