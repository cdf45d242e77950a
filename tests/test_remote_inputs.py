"""Inputs given as fsspec URLs: file:// and http:// (a local http.server on 127.0.0.1). A notebook executed
end to end on URLs: test_encoder_variance_notebook.py's new run."""

from __future__ import annotations

import functools
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
from face import defaults, pipeline

from helpers import history, io
from helpers.findings import input_files
from helpers.io import InputError
from helpers.paths import DATA_SAMPLES

DEFAULTS = {
    "01_r2_gap": {"predictions": "predictions.parquet", "reported": "reported.json"},
    "02_encoder_variance": {"embeddings": "collapsed_variational.npz",
                            "compare": ["deterministic.npz", "healthy_variational.npz"]},
    "03_checkpoint_divergence": {"checkpoints": "checkpoints.npz", "forward_model": ""},
    "04_roc_collapse": {"history": "history.json", "scores": "scores.parquet", "seen_ids": "seen_ids.parquet",
                        "roc_function": ""},
    "05_augmentation_leakage": {"samples": "samples.parquet", "declared_copies": "declared_copies.json",
                                "group_metrics": "group_metrics.csv"},
}


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output to what matters
        pass


@pytest.fixture(scope="module")
def http_root():
    """``http://127.0.0.1:<port>/`` serving data_samples/."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(DATA_SAMPLES)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def as_urls(notebook: str, base: str) -> dict:
    def url(v):
        return [url(x) for x in v] if isinstance(v, list) else (f"{base}{notebook}/{v}" if v else v)
    return {k: url(v) for k, v in DEFAULTS[notebook].items()}


def test_a_table_reads_the_same_from_a_path_file_url_and_http(http_root):
    path = DATA_SAMPLES / "01_r2_gap" / "predictions.parquet"
    req = {"y_true": "float", "y_pred": "float"}
    local = io.load_table("predictions", path, req)
    for value in (path.as_uri(), f"{http_root}01_r2_gap/predictions.parquet"):
        pd.testing.assert_frame_equal(io.load_table("predictions", value, req), local)


def test_arrays_json_and_history_read_over_http(http_root):
    npz = "02_encoder_variance/deterministic.npz"
    with np.load(DATA_SAMPLES / npz, allow_pickle=False) as ref:
        got = io.load_arrays("embeddings", http_root + npz, ref.files)
        assert sorted(got) == sorted(ref.files)
        for k in ref.files:
            np.testing.assert_array_equal(got[k], ref[k])
    assert io.load_json("reported", http_root + "01_r2_gap/reported.json") == \
        json.loads((DATA_SAMPLES / "01_r2_gap" / "reported.json").read_text())
    pd.testing.assert_frame_equal(history.load_history("history", http_root + "04_roc_collapse/history.json"),
                                  history.load_history("history", DATA_SAMPLES / "04_roc_collapse" / "history.json"))


@pytest.mark.parametrize("value, fault", [
    ("{root}01_r2_gap/nope.parquet", "file not found"),
    ("{root}01_r2_gap/", "must name a file"),
    ("http://127.0.0.1:9/predictions.parquet", "cannot be fetched"),  # port 9 (discard): refused
    ("{root}01_r2_gap/reported.json", "unsupported file type '.json'"),
])
def test_a_bad_url_is_one_line_naming_parameter_and_url(http_root, value, fault):
    value = value.format(root=http_root)
    with pytest.raises(InputError) as err:
        io.load_table("predictions", value, {"y_true": "float"})
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"predictions: {value}: ") and fault in text


def test_code_is_never_imported_from_a_url(http_root):
    from helpers.params import load_callable

    with pytest.raises(InputError, match="not from a URL"):
        load_callable("roc_function", f"{http_root}04_roc_collapse/roc_naive.py:roc")


def test_a_checkpoint_glob_over_http_fetches_every_match(http_root):
    from helpers.checkpoint_divergence.checkpoint_files import resolve_glob

    local = resolve_glob("checkpoint_files", "data_samples/03_checkpoint_divergence/checkpoints/*.pt")
    remote = resolve_glob("checkpoint_files", f"{http_root}03_checkpoint_divergence/checkpoints/*.pt")
    assert [p.name for p in remote] == [p.name for p in local] and len(local) > 2
    assert all(r.read_bytes() == lo.read_bytes() for r, lo in zip(remote, local, strict=True))


@pytest.mark.parametrize("notebook", sorted(DEFAULTS))
def test_every_notebook_loads_its_run_from_urls(http_root, notebook):
    import importlib

    from helpers.runner.execute import notebook_names

    assert sorted(DEFAULTS) == notebook_names()
    module = importlib.import_module("helpers." + notebook.split("_", 1)[1] + ".diagnosis")
    params = dict(defaults(notebook))
    params.update(as_urls(notebook, http_root))
    out = module.load_inputs(params)
    assert out is not None
    recorded = input_files(params)
    urls = [v for v in as_urls(notebook, http_root).values() if v]
    flat = [u for v in urls for u in (v if isinstance(v, list) else [v])]
    assert sorted(recorded.values()) == sorted(flat)  # the summary names the URLs, not the local copies


def test_a_file_url_is_the_local_file(tmp_path):
    """01 with file:// URLs reads the sample's files; the summary records their paths and calls them the sample."""
    from helpers.r2_gap import diagnosis as dx

    folder = DATA_SAMPLES / "01_r2_gap"
    s = pipeline(dx, predictions=(folder / "predictions.parquet").as_uri(),
                 reported=(folder / "reported.json").as_uri(), output_dir=str(tmp_path)).summary.to_dict()
    assert s["sample_run"] is True
    assert s["inputs"]["predictions"] == str((folder / "predictions.parquet").resolve())
