"""helpers.roc_collapse.loader_audit on logs written by a real torch DataLoader (IterableDataset, worker processes)."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from helpers.roc_collapse import loader_audit as la

pytestmark = pytest.mark.notebook  # every log is written by a DataLoader forking its worker processes


class Shards(IterableDataset):
    """Yields (sample_id, worker) for its rank's shard; ``per_worker`` splits the shard across workers."""

    def __init__(self, n, rank, world, per_worker):
        self.n, self.rank, self.world, self.per_worker = n, rank, world, per_worker

    def __iter__(self):
        ids = range(self.rank, self.n, self.world)
        info = get_worker_info()
        wid = info.id if info else 0
        if self.per_worker and info is not None:
            ids = ids[info.id::info.num_workers]
        for i in ids:
            yield i, wid


def log(n, world, workers, per_worker, epochs=2):
    rows = []
    for epoch in range(epochs):
        for rank in range(world):
            dl = DataLoader(Shards(n, rank, world, per_worker), batch_size=7, num_workers=workers,
                            multiprocessing_context="fork" if workers else None)
            for ids, wid in dl:
                rows += [(epoch, rank, int(w), int(i)) for i, w in zip(ids, wid, strict=True)]
    return pd.DataFrame(rows, columns=["epoch", "rank", "worker", "sample_id"])


@pytest.fixture(scope="module")
def buggy():
    return log(60, world=2, workers=3, per_worker=False)


def test_rank_only_sharding_repeats_every_sample_once_per_worker(buggy):
    m = la.multiplicity(buggy)
    assert (m["mean_multiplicity"] == 3).all() and (m["max_multiplicity"] == 3).all() and (m["share_repeated"] == 1).all()
    s = la.summary(buggy, dataset_size=60)
    assert s["effective_epochs"] == 6 and s["n_workers"] == 3 and s["n_ranks"] == 2 and s["coverage"] == 1.0
    src = la.by_source(buggy)
    assert len(src) == 2 * 2 * 3 and (src["share_also_elsewhere"] == 1).all()
    # pandas cross-check: the counts by brute force
    assert buggy.value_counts(["epoch", "sample_id"]).eq(3).all()
    h = la.multiplicity_histogram(buggy)
    assert h.to_dict("records") == [{"times_per_epoch": 3, "samples": 120}]


def test_worker_aware_sharding_sees_each_sample_once():
    good = log(60, world=2, workers=3, per_worker=True)
    m = la.multiplicity(good)
    assert (m["max_multiplicity"] == 1).all() and (m["passes"] == 1).all()
    s = la.summary(good)
    assert s["effective_epochs"] == 2 and s["share_repeated"] == 0 and s["share_also_elsewhere"] == 0


def test_partial_repeats_and_no_source_columns():
    seen = pd.DataFrame({"epoch": [0, 0, 0, 1, 1], "sample_id": [1, 1, 2, 1, 2]})
    m = la.multiplicity(seen).set_index("epoch")
    assert m.loc[0, "share_repeated"] == 0.5 and m.loc[0, "passes"] == 1.5 and m.loc[1, "passes"] == 1
    assert la.by_source(seen) is None
    s = la.summary(seen)
    assert s["effective_epochs"] == 2.5 and "n_workers" not in s
    assert s["mean_multiplicity"] == pytest.approx(5 / 4)
    assert np.isclose(s["share_repeated"], 1 / 4)
    assert torch.__version__  # the loader tests above ran on this torch
