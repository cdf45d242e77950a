"""`make bench` runs (tiny sizes, no timing verdict: speed targets live in the bench itself)."""

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

import run as bench  # noqa: E402


@pytest.mark.notebook  # starts the benchmarks' measuring subprocesses
def test_bench_quick_writes_its_table(tmp_path):
    """Every benchmark at tiny sizes, but the batch one (next test): no row broken, the table written."""
    assert bench.main(["--quick", "--skip", "batch", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "bench.md").read_text()
    assert "BROKEN" not in table
    for row in ("candidate computations", "streamed reconciliation", "02 variance decomposition",
                "03: diagnosis", "04: tpr@fpr", "05 near-duplicate scan",
                "01: floor notebook through papermill, kernel peak RSS"):
        assert row in table


@pytest.mark.notebook  # its stand-in executions are child processes
def test_the_batch_benchmark_builds_its_rows_from_the_runners_record(monkeypatch):
    """bench/batch.py with the runner stood in (the runner, its clusters and kernels are tested in
    test_batch.py): each 'execution' is a short child process, so the memory sampler measures real
    processes, and the record holds the intervals a two-worker runner would write."""
    import subprocess

    import batch as bench_batch
    import yaml

    def executions(tasks: list[tuple[str, str]], workers: int) -> dict:
        children = [subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(20 << 20); time.sleep(0.3)"])
                    for _ in tasks[:workers]]
        for child in children:
            child.wait()
        return {"tasks": [{"run": r, "notebook": nb, "status": "ok", "worker": f"w{i % workers}",
                           "start": float(i // workers), "end": float(i // workers) + 1.0}
                          for i, (r, nb) in enumerate(tasks)]}

    def make_run(manifest, reports, workers=bench_batch.WORKERS):
        runs = yaml.safe_load(manifest.read_text())["runs"]
        return executions([(r, nb) for r, nbs in runs.items() for nb in nbs], workers)

    monkeypatch.setattr(bench_batch, "make_run", make_run)
    monkeypatch.setattr(bench_batch, "floor_run", lambda tasks, reports: executions(
        [(t.run, t.notebook) for t in tasks], bench_batch.WORKERS))
    rows = bench_batch.run(quick=True)
    assert len(rows) == 3
    concurrency = next(r for r in rows if "most notebooks executing at once" in r["name"])
    assert concurrency["value"] == 2.0 == concurrency["target"]
    memory = next(r for r in rows if "peak memory of workers + kernels" in r["name"])
    assert 0.5 < memory["value"] < 4 and memory["target"] == 2.5
    wall = next(r for r in rows if "floor through the same runner" in r["name"])
    assert wall["value"] > 0 and wall["target"] == 2.0


def test_eval_log_is_written_batch_by_batch():
    log = bench.eval_log(1000, ranks=4, batch_size=10)
    assert log["rank"].is_monotonic_increasing and log.groupby("rank").size().tolist() == [250] * 4
    assert log.groupby(["rank", "batch"]).size().max() == 10


# ----------------------------------------------------------------------------- whole notebooks on large runs
def test_skip_names_a_benchmark_or_its_family():
    assert bench.skipped("batch", {"batch"}) and not bench.skipped("batch", {"at_scale"})
    label = "at_scale:02 02_encoder_variance on a large run"
    assert bench.skipped(label, {"at_scale"}) and bench.skipped(label, {"at_scale:02"})
    assert not bench.skipped(label, {"at_scale:01"}) and not bench.skipped("02_encoder_variance wall time", {"at_scale"})


@pytest.mark.parametrize("name", ["01_r2_gap", "02_encoder_variance", "03_checkpoint_divergence", "04_roc_collapse",
                                  "05_augmentation_leakage"])
def test_each_large_run_input_meets_its_notebooks_contract(name):
    """The generator of each large run, at tiny size: its notebook's own load_inputs reads the files (the
    parameters as the bench passes them), the baseline's code runs on them, and the size counted is the
    arrays' bytes or the table as pandas reads it."""
    import notebooks_at_scale as at_scale

    at_scale.check_inputs(name)  # raises InputError on a file the notebook refuses
    with tempfile.TemporaryDirectory() as tmp:
        case = at_scale.MAKERS[name](Path(tmp), quick=True)
        files = [Path(v) for v in case.params.values()]
        assert case.notebook == name and all(f.exists() and f.parent == Path(tmp) for f in files)
        if files[0].suffix == ".parquet":
            assert case.nbytes == pd.read_parquet(files[0]).memory_usage(index=True, deep=True).sum()
        else:
            with np.load(files[0]) as f:
                assert case.nbytes == sum(f[k].nbytes for k in f.files)


def test_a_large_run_row_is_the_notebook_over_its_baseline(monkeypatch, tmp_path):
    """rows_for with the executions stood in: the wall-time row is the best notebook time over the best
    baseline time, the memory row the notebook kernel's peak above the floor kernel's over the input's size;
    the notebook runs on the case's files with run_demos False, its copy ending in the peak cell."""
    import nbformat
    import notebooks_at_scale as at_scale

    calls = []

    def execute(notebook, out, cwd, params=None):
        calls.append((Path(notebook).name, params))
        if Path(notebook).name == "02_encoder_variance.ipynb":
            nb = nbformat.read(notebook, as_version=4)
            assert nb.cells[-1].source == at_scale.PEAK_CELL
            assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
            (Path(params["output_dir"])).mkdir(exist_ok=True)
            (Path(params["output_dir"]) / "summary.json").write_text("{}")
            return at_scale.Execution([12.0, 10.0][sum(c[0] == notebook.name for c in calls) - 1], 900 * 1024,
                                      [(8.0, "diag = dx.diagnose(run, params)")])
        if Path(notebook).name == "baseline.ipynb":
            nb = nbformat.read(notebook, as_version=4)
            assert [c.source for c in nb.cells[1:]] == ["import json\nREAD", "OP", at_scale.PEAK_CELL]
            return at_scale.Execution(4.0, 500 * 1024, [])
        return at_scale.Execution(3.0, 300 * 1024, [])  # the floor

    monkeypatch.setattr(at_scale, "execute", execute)
    case = at_scale.Case("02_encoder_variance", "tiny", {"embeddings": "z.npz"}, 200 * 2**20, "READ", "OP", "numpy.cov")
    time_row, memory_row = at_scale.rows_for(case, tmp_path, repeat=2)
    assert [c[0] for c in calls] == ["floor.ipynb", "baseline.ipynb", "02_encoder_variance.ipynb",
                                     "baseline.ipynb", "02_encoder_variance.ipynb"]
    assert calls[2][1] == {"embeddings": "z.npz", "run_demos": False, "output_dir": str(tmp_path / "out")}
    assert time_row["value"] == 10.0 / 4.0 and time_row["target"] == 3.0
    assert "10.0 s vs 4.0 s" in time_row["detail"] and "8.0 s `diag = dx.diagnose(run, params)`" in time_row["detail"]
    assert memory_row["value"] == (900 - 300) / 200 and memory_row["target"] == 3.0
