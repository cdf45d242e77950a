"""The mechanism lab of notebook 01: a real gloo evaluation across processes."""

import numpy as np
import pandas as pd
import pytest

from helpers.r2_gap import lab

# its module fixtures (runs built or trained once) are computed once, on one worker; the lab imports
# torchmetrics (see conftest.TORCHMETRICS)
pytestmark = pytest.mark.xdist_group("torchmetrics")


def task():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(203, 5)).astype(np.float32)  # 203 on 3 ranks: padded to 204
    y = (x @ rng.normal(size=5) + np.repeat([0.0, 3.0, -2.0], [70, 70, 63]) + rng.normal(size=203)).astype(np.float32)
    return x, y


def run_lab():
    x, y = task()
    model = lab.fit_small_model(x, y, seed=0, steps=50)
    return lab.evaluate(model, x, y, world_size=3, batch_size=16)


@pytest.fixture(scope="module")
def evaluated():  # forks a gloo process group: the tests that use it are marked notebook
    table, ranks = run_lab()
    return table.set_index("method"), ranks


@pytest.mark.notebook
def test_exact_fixes_match_single_process_sklearn(evaluated):
    table, _ = evaluated
    for method in ("exact: all-reduced sufficient statistics, duplicates removed",
                   "torchmetrics R2Score + PearsonCorrCoef, duplicates removed"):
        assert abs(table.loc[method, "r2_error"]) < 1e-6
        assert abs(table.loc[method, "r_error"]) < 1e-6


@pytest.mark.notebook
def test_buggy_computations_differ(evaluated):
    table, ranks = evaluated
    for method in ("rank 0 only", "seed Fix 1: all-reduce mean of per-rank R² and r",
                   "seed Fix 2 with its sums all-reduced", "exact: all-reduced sufficient statistics, incl. duplicates"):
        assert abs(table.loc[method, "r2_error"]) > 1e-5, method
    assert ranks["n"].tolist() == [68, 68, 68] and ranks["n_duplicates"].sum() == 1
    # Fix 2 drops between-batch variance from the denominator, so it can only be lower here
    assert table.loc["seed Fix 2 with its sums all-reduced", "r2_error"] < 0


@pytest.mark.notebook
def test_the_lab_is_deterministic(evaluated):
    """The lab's errors go into summary.json: the same seed gives the same numbers."""
    table, ranks = run_lab()
    pd.testing.assert_frame_equal(table.set_index("method"), evaluated[0], check_exact=True)
    pd.testing.assert_frame_equal(ranks, evaluated[1], check_exact=True)


# ----------------------------------------------------------------------------- the fix notebook 01 prints
def _fix_worker(rank: int, world: int, init_file: str, n: int, shuffle: bool, out: str) -> None:
    """One rank of a validation loop on a DistributedSampler shard, with the fix of helpers.r2_gap.fix."""
    import json

    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from helpers.r2_gap.fix import pooled_r2, unique_rows, validation_r2

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        y, p = fix_data(n)
        ds = TensorDataset(torch.from_numpy(p), torch.from_numpy(y), torch.arange(n))
        loader = DataLoader(ds, batch_size=2, sampler=DistributedSampler(ds, world, rank, shuffle=shuffle, seed=3))
        preds, targets, ids = [], [], []
        for pb, yb, ib in loader:  # the "model" output is the stored prediction
            preds.append(pb), targets.append(yb), ids.append(ib)
        pred, target, sample_id = torch.cat(preds), torch.cat(targets), torch.cat(ids)
        keep = unique_rows(sample_id)
        mine = {"fixed": pooled_r2(pred, target, keep), "naive": pooled_r2(pred, target),
                "step": validation_r2(torch.nn.Identity(), loader),  # the whole step, the model a pass-through
                "kept": sample_id[keep].tolist(), "rows": len(sample_id)}
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(everyone, f)
    finally:
        dist.destroy_process_group()


def fix_data(n: int):
    """Two output channels, targets far from 0 (the sums must stay accurate there)."""
    rng = np.random.default_rng(1)
    y = rng.normal(size=(n, 2)) + 50.0
    return y, 50.0 + 0.8 * (y - 50.0) + rng.normal(scale=0.3, size=(n, 2))


@pytest.mark.notebook
@pytest.mark.parametrize("shuffle", [False, True])
def test_the_printed_fix_counts_each_sample_once_on_gloo(tmp_path, shuffle):
    """7 samples on 2 ranks: DistributedSampler pads to 8, the repeat sits on the other rank.
    unique_rows + pooled_r2 (and validation_r2, the whole step) give scikit-learn's R² and scipy's r
    of the 7 unique rows, on every rank."""
    import json
    import sys

    import torch.multiprocessing as mp
    from scipy import stats as sps
    from sklearn.metrics import r2_score

    n, world = 7, 2
    mp.start_processes(_fix_worker, args=(world, str(tmp_path / "rendezvous"), n, shuffle, str(tmp_path / "out.json")),
                       nprocs=world, join=True, start_method="fork" if sys.platform == "linux" else "spawn")
    ranks = json.loads((tmp_path / "out.json").read_text())
    y, p = fix_data(n)
    r2, r = r2_score(y.ravel(), p.ravel()), sps.pearsonr(y.ravel(), p.ravel()).statistic
    assert [k["rows"] for k in ranks] == [4, 4]
    assert sorted(i for k in ranks for i in k["kept"]) == list(range(n))  # each sample once
    for k in ranks:
        for got in (k["fixed"], k["step"]):
            assert got[0] == pytest.approx(r2, abs=1e-12) and got[1] == pytest.approx(r, abs=1e-12)
        assert abs(k["naive"][0] - r2) > 1e-4  # without the mask the repeat counts twice


def test_the_notebook_prints_the_tested_fix():
    """The code under "What to change" is this module's file, read without importing it (it needs torch)."""
    import inspect
    import json
    from importlib.util import find_spec
    from pathlib import Path

    from helpers.paths import NOTEBOOKS
    from helpers.r2_gap import fix

    code = "\n".join("".join(c["source"]) for c in json.loads((NOTEBOOKS / "01_r2_gap.ipynb").read_text())["cells"]
                     if c["cell_type"] == "code")
    assert 'print(Path(find_spec("helpers.r2_gap.fix").origin).read_text())' in code and "first_occurrence" not in code
    assert Path(find_spec("helpers.r2_gap.fix").origin).read_text() == inspect.getsource(fix)
    assert "def unique_rows" in inspect.getsource(fix) and "def pooled_r2" in inspect.getsource(fix)
