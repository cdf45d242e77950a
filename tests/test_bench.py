"""`make bench` runs (tiny sizes, no timing verdict: speed targets live in the bench itself)."""

import sys

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
                "03: diagnosis", "04: tpr@fpr", "05 near-duplicate scan"):
        assert row in table


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
