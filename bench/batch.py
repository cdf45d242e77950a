"""`make run` as a batch: its wall time against floor notebooks, and bounded concurrency and memory.

* ``make run`` on the sample runs (``manifests/samples.yaml``: all five notebooks, two at a time on
  the default 2-process LocalCluster) against the five floor notebooks (each notebook's own import
  cell, nothing else: ``run.floor_notebook``) executed through the same runner: the same
  ``helpers.runner.batch.run_tasks`` on a LocalCluster of the same size, one papermill execution per task,
  HTML conversion per task. Both sides start and close their own cluster. The real side is
  ``run_manifest`` itself, so the index pages and findings.csv (milliseconds) count on the real side
  only; the start of a Python process for `python -m helpers.runner.execute` is on neither side (both run
  in this process). Interleaved, best of ``REPEATS``; target 2.0.
* A 20-run manifest (the cheap notebooks 01 and 02 in turn, ``run_demos: false``, on the sample
  data, one output folder per run): the most notebooks executing at once, from the task intervals
  the runner records in ``reports/execution.json``, against the bound (the worker count); and the
  peak memory of the execution (summed RSS of the worker processes and their kernels, every
  ``SAMPLE_EVERY`` s with psutil) against the peak of one notebook executed alone on a one-worker
  cluster (one worker + one kernel) in the same bench run. Each worker executes one notebook at a
  time, so the bound is ``WORKERS`` times that; the target ``WORKERS + 0.5`` leaves half a slot
  for what a worker keeps between tasks (caches of imports, allocator) and sampling. Summed RSS
  counts shared library pages once per process, on both sides alike.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

from helpers.runner.batch import Task, max_concurrency, run_tasks
from helpers.runner.cli import DEFAULT_MANIFEST, run_manifest
from helpers.runner.execute import notebook_names

WORKERS = 2  # the default cluster of `make run`
REPEATS = 2
SAMPLE_EVERY = 0.05  # seconds between memory samples
CHEAP = {"01_r2_gap": {"run_demos": False}, "02_encoder_variance": {"run_demos": False}}


class PeakMemory:
    """Peak of the summed RSS of this process's descendants (dask worker processes, their kernels), sampled."""

    def __init__(self, every: float = SAMPLE_EVERY):
        self.every, self.peak, self.kernels, self.samples = every, 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._is_kernel: dict[int, bool] = {}

    def _sample(self) -> None:
        me = psutil.Process()
        while True:
            total = kernels = 0
            for p in me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                    if p.pid not in self._is_kernel:
                        self._is_kernel[p.pid] = any("ipykernel" in a for a in p.cmdline())
                    kernels += self._is_kernel[p.pid]
                except psutil.Error:  # exited between the listing and the read
                    pass
            self.peak, self.kernels, self.samples = max(self.peak, total), max(self.kernels, kernels), self.samples + 1
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def write_manifest(path: Path, runs: dict) -> Path:
    path.write_text(yaml.safe_dump({"runs": runs}, sort_keys=False))
    return path


def make_run(manifest: Path, reports: Path, workers: int = WORKERS) -> dict:
    """`make run MANIFEST` (``--force``) into ``reports``: its execution record; raises if a notebook failed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = run_manifest(manifest, reports, force=True, workers=workers, progress=False)
    if rc != 0:
        raise RuntimeError(f"make run {manifest.name} failed: {out.getvalue().strip().splitlines()[-1]}")
    return json.loads((reports / "execution.json").read_text())


def floor_run(tasks: list[Task], reports: Path) -> None:
    execution = run_tasks(tasks, reports, workers=WORKERS, progress=False)
    failed = [r for r in execution.results if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"floor notebook {failed[0]['notebook']} failed: {failed[0]['error']}")


def bench_make_run(names: list[str], repeat: int, params: dict | None = None) -> dict:
    """The sample runs (``manifests/samples.yaml`` for all notebooks; else these ``names`` with ``params``)."""
    import run as bench  # bench/run.py: floor_notebook

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if names == notebook_names() and not params:
            manifest = DEFAULT_MANIFEST
        else:
            manifest = write_manifest(tmp / "samples.yaml", {"samples": {n: params or {} for n in names}})
        floors = [Task("floor", n, source=str(bench.floor_notebook(n, tmp / f"{n}.floor.ipynb"))) for n in names]
        real, base, busy = [], [], []
        for _ in range(repeat):  # interleaved, so both see the same machine state
            t0 = time.perf_counter()
            floor_run(floors, tmp / "floor")
            base.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            record = make_run(manifest, tmp / "reports")
            real.append(time.perf_counter() - t0)
            busy.append(max_concurrency(record["tasks"]))
    n = f"{len(names)} notebook{'s' if len(names) > 1 else ''}"
    return {"name": f"make run: the sample runs ({n}, {WORKERS} at a time) / {n} floor through the same runner",
            "value": min(real) / min(base), "target": 2.0,
            "detail": f"{min(real):.1f} s vs {min(base):.1f} s (best of {repeat}, interleaved; each side starts its "
                      f"own {WORKERS}-process LocalCluster and converts each notebook to HTML; index pages and "
                      f"findings.csv on the real side only); all runs: {', '.join(f'{t:.1f}' for t in real)} s vs "
                      f"{', '.join(f'{t:.1f}' for t in base)} s; at most {max(busy)} notebooks at once"}


def bench_many_runs(n_runs: int, notebooks: dict[str, dict]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        alone = {}
        for nb, params in notebooks.items():  # one notebook alone: one worker, one kernel
            with PeakMemory() as mem:
                make_run(write_manifest(tmp / f"alone-{nb}.yaml", {"alone": {nb: params}}), tmp / "alone", workers=1)
            alone[nb] = mem.peak
        names = list(notebooks)
        runs = {f"run{i + 1:02d}": {names[i % len(names)]: notebooks[names[i % len(names)]]} for i in range(n_runs)}
        t0 = time.perf_counter()
        with PeakMemory() as mem:
            record = make_run(write_manifest(tmp / "many.yaml", runs), tmp / "reports")
        seconds = time.perf_counter() - t0
        tasks = record["tasks"]
        workers_used = len({t["worker"] for t in tasks})
        if len(tasks) != n_runs or any(t["start"] is None or t["end"] < t["start"] for t in tasks):
            raise RuntimeError(f"execution.json recorded {len(tasks)} tasks of {n_runs}, or an interval is missing")
    base = max(alone.values())
    what = f"{n_runs} runs x 1 notebook ({', '.join(names)} in turn, run_demos false), {WORKERS} workers"
    gb = 2**30
    return [
        {"name": f"make run, {n_runs}-run manifest: most notebooks executing at once (recorded intervals; "
                 f"target = workers)", "value": float(max_concurrency(tasks)), "target": float(WORKERS),
         "detail": f"{what}; {seconds:.0f} s; {workers_used} workers used; kernels alive at once (sampled): "
                   f"{mem.kernels}"},
        {"name": f"make run, {n_runs}-run manifest: peak memory of workers + kernels / one notebook alone "
                 f"(one worker + its kernel)", "value": mem.peak / base, "target": WORKERS + 0.5,
         "detail": f"{mem.peak / gb:.2f} GB vs {base / gb:.2f} GB (summed RSS every {SAMPLE_EVERY} s, "
                   f"{mem.samples} samples; alone: " + ", ".join(f"{k} {v / gb:.2f}" for k, v in alone.items())
                   + " GB)"},
    ]


def run(quick: bool = False) -> list[dict]:
    if quick:  # one notebook, three runs of it: checks that the bench runs
        return [bench_make_run(["01_r2_gap"], repeat=1, params=CHEAP["01_r2_gap"]),
                *bench_many_runs(3, {"01_r2_gap": CHEAP["01_r2_gap"]})]
    return [bench_make_run(notebook_names(), repeat=REPEATS), *bench_many_runs(20, CHEAP)]


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for row in run(quick="--quick" in sys.argv):
        print(f"{row['value']:.2f} (target {row['target']:.2f})  {row['name']}\n      {row['detail']}")
