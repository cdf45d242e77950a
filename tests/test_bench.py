"""`make bench` runs (tiny sizes, no timing verdict: speed targets live in the bench itself)."""

import sys

from helpers.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))

import run as bench  # noqa: E402


def test_bench_quick_writes_its_table(tmp_path):
    assert bench.main(["--quick", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "bench.md").read_text()
    assert "BROKEN" not in table
    for row in ("candidate computations", "streamed reconciliation", "variance decomposition",
                "floor through the same runner", "most notebooks executing at once",
                "peak memory of workers + kernels"):
        assert row in table


def test_eval_log_is_written_batch_by_batch():
    log = bench.eval_log(1000, ranks=4, batch_size=10)
    assert log["rank"].is_monotonic_increasing and log.groupby("rank").size().tolist() == [250] * 4
    assert log.groupby(["rank", "batch"]).size().max() == 10
