"""`make data` reproduces the committed sample runs."""

import json

import numpy as np
import pandas as pd
import pytest

from helpers.paths import DATA_SAMPLES
from helpers.simulate.__main__ import main


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    return out, main(out)


def test_every_committed_file_is_regenerated_identically(regenerated):
    out, written = regenerated
    committed = sorted(p.relative_to(DATA_SAMPLES) for p in DATA_SAMPLES.rglob("*") if p.is_file())
    assert committed == sorted(p.relative_to(out) for p in written)
    for rel in committed:
        a, b = DATA_SAMPLES / rel, out / rel
        if rel.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b), check_exact=True)
        elif rel.suffix == ".json":
            assert json.loads(a.read_text()) == json.loads(b.read_text())
        elif rel.suffix == ".npz":
            with np.load(a) as x, np.load(b) as y:
                assert sorted(x.files) == sorted(y.files)
                for k in x.files:
                    np.testing.assert_array_equal(x[k], y[k], err_msg=f"{rel}:{k}")
        else:
            assert a.read_bytes() == b.read_bytes(), rel


def test_samples_are_small():
    total = sum(p.stat().st_size for p in DATA_SAMPLES.rglob("*") if p.is_file())
    assert total < 10 * 2**20
