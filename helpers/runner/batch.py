"""Re-executing the notebooks on many runs: manifests, their validation, and dask execution.

A manifest (YAML) names runs and, per run, the notebooks to execute with their
parameter overrides::

    runs:
      run42:                       # reports/run42/
        01_r2_gap:
          predictions: /data/run42/val_predictions.parquet
          reported: /data/run42/logged.json
        04_roc_collapse: {scores: scores.parquet, run_demos: false}

Relative paths are taken from the manifest's folder when a file is there, else
as the notebooks take them (working directory, then repository root). Every
mistake (bad YAML, an unknown notebook or parameter, a missing file) is refused
before anything executes, in one line naming the run, notebook and key. Each
(run, notebook) is one dask task; a failing notebook does not stop the others.
Each task's result records the worker it ran on and its start and end (epoch
seconds), so that how many notebooks executed at once can be computed afterwards
(:func:`max_concurrency`); ``make run`` keeps that record in ``reports/execution.json``.
"""

from __future__ import annotations

import difflib
import glob
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from helpers.paths import NOTEBOOKS, REPORTS, candidates
from helpers.runner.execute import notebook_names

FILE_SUFFIXES = (".parquet", ".csv", ".npz", ".json", ".pt", ".pth", ".ckpt", ".py", ".yaml", ".yml")


class ManifestError(ValueError):
    """A mistake in a manifest, said in one line: file, run, notebook, key, problem."""

    def __init__(self, manifest: str | Path, problem: str, run: str | None = None, notebook: str | None = None,
                 key: str | None = None):
        where = [str(manifest)] + [f"{k} '{v}'" for k, v in (("run", run), ("notebook", notebook), ("key", key)) if v]
        super().__init__(f"{', '.join(where)}: {problem}")

    def _render_traceback_(self) -> list[str]:
        return [f"ManifestError: {self}"]


@dataclass
class Task:
    """One notebook executed on one run."""

    run: str
    notebook: str
    parameters: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # the notebook file to execute, if not notebooks/<notebook>.ipynb (bench/batch.py)
    cell_timeout: float | None = None  # seconds any one cell may run before the task fails

    @property
    def key(self) -> str:
        return f"{self.run}/{self.notebook}"


@cache
def declared_parameters(notebook: str) -> dict[str, dict]:
    """The notebook's parameters cell as papermill reads it: {name: {default, inferred_type_name, help}}."""
    import papermill as pm

    return pm.inspect_notebook(str(NOTEBOOKS / f"{notebook}.ipynb"))


DEFAULT_CELL_TIMEOUT = 1800.0  # seconds per cell: bounds a hang (user code stuck in C, a deadlock) in a batch


def load_manifest(path: str | Path, cell_timeout: float | None = None) -> list[Task]:
    """Parse and validate a manifest; relative file paths become absolute. Raises ManifestError.

    Each task's per-cell timeout is ``cell_timeout`` when given (the command line), else the task's
    own ``cell_timeout`` key (beside its parameters; the runner's, not passed to the notebook), else
    the manifest's top-level ``cell_timeout:`` (seconds), else :data:`DEFAULT_CELL_TIMEOUT`.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, "file not found" if not path.is_dir() else "is a directory, expected a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ManifestError(path, f"is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict) or not data["runs"]:
        raise ManifestError(path, "expected a mapping 'runs:' of run names to {notebook: {parameter: value}}")
    unknown_top = [k for k in data if k not in ("runs", "cell_timeout")]
    if unknown_top:
        raise ManifestError(path, f"unknown top-level key '{unknown_top[0]}' (only 'runs' and 'cell_timeout' are read)")
    timeout = data.get("cell_timeout", DEFAULT_CELL_TIMEOUT) if cell_timeout is None else cell_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ManifestError(path, f"cell_timeout must be a positive number of seconds, got {timeout!r}", key="cell_timeout")
    names = notebook_names()
    tasks = []
    for run, notebooks in data["runs"].items():
        run = str(run)
        if not run or "/" in run or run.startswith(".") or run == "_static":
            raise ManifestError(path, "a run name must be a plain folder name", run=run)
        if not isinstance(notebooks, dict) or not notebooks:
            raise ManifestError(path, "expected a mapping of notebook names to parameter overrides", run=run)
        for nb, overrides in notebooks.items():
            nb = str(nb)
            if nb not in names:
                close = difflib.get_close_matches(nb, names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (notebooks: {', '.join(names)})"
                raise ManifestError(path, f"unknown notebook{hint}", run=run, notebook=nb)
            overrides = {} if overrides is None else overrides
            if not isinstance(overrides, dict):
                raise ManifestError(path, "expected a mapping of parameter overrides", run=run, notebook=nb)
            overrides = dict(overrides)
            own = overrides.pop("cell_timeout", timeout) if cell_timeout is None else timeout  # the runner's, per task
            if isinstance(own, bool) or not isinstance(own, int | float) or not own > 0:
                raise ManifestError(path, f"cell_timeout must be a positive number of seconds, got {own!r}",
                                    run=run, notebook=nb, key="cell_timeout")
            overrides.pop("cell_timeout", None)
            tasks.append(Task(run, nb, {str(k): _check_value(path, run, nb, str(k), v) for k, v in overrides.items()},
                              cell_timeout=float(own)))
    return tasks


def _check_value(manifest: Path, run: str, nb: str, key: str, value: Any) -> Any:
    declared = declared_parameters(nb)
    if key not in declared:
        close = difflib.get_close_matches(key, list(declared), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (parameters: {', '.join(declared)})"
        raise ManifestError(manifest, f"not a parameter of {nb}{hint}", run=run, notebook=nb, key=key)
    if key == "output_dir":
        raise ManifestError(manifest, "is set by the runner (reports/<run>/<notebook>/)", run=run, notebook=nb, key=key)
    if isinstance(value, str) and declared[key].get("inferred_type_name") == "list":
        from helpers.io import InputError
        from helpers.params import parse_list

        try:
            value = parse_list(key, value)
        except InputError as exc:
            raise ManifestError(manifest, exc.problem, run=run, notebook=nb, key=key) from None
    if isinstance(value, list):
        return [_check_value(manifest, run, nb, key, v) if isinstance(v, str) else v for v in value]
    if not isinstance(value, str) or not value.strip() or "://" in value:
        return value
    target, sep, fn = value.rpartition(":") if ".py:" in value else (value, "", "")
    looks_like_file = "/" in target or target.lower().endswith(FILE_SUFFIXES) or any(c in target for c in "*?[")
    if not looks_like_file:
        return value
    found = _resolve(manifest.parent, target)
    if found is None:
        raise ManifestError(manifest, f"file not found: {target}", run=run, notebook=nb, key=key)
    return f"{found}{sep}{fn}"


def _resolve(base: Path, target: str) -> str | None:
    """An absolute path (or glob) for ``target``: the manifest's folder first, then where the notebooks
    look (:func:`helpers.paths.candidates`: working directory, then repository root)."""
    p = Path(target).expanduser()
    for cand in ([] if p.is_absolute() else [base / p]) + candidates(p):
        if any(c in target for c in "*?["):
            if glob.glob(str(cand)):
                return str(cand.absolute())
        elif cand.exists():
            return str(cand.resolve())
    return None


# ----------------------------------------------------------------------------- execution
def check_targets(tasks: list[Task], reports: Path, force: bool) -> None:
    """Refuse to overwrite an existing report unless ``force``."""
    existing = [t for t in tasks if (reports / t.run / t.notebook).exists()]
    if existing and not force:
        t = existing[0]
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ManifestError(reports / t.run / t.notebook, f"a report exists already{more}: pass --force (make run FORCE=1) "
                                                          "to replace it, or use another run name")


def _worker_name() -> str:
    """The dask worker executing this task (its address), else this host and process."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def execute_task(task: Task, reports: str) -> dict:
    """Run one notebook into ``reports/<run>/<notebook>/``; never raises for a failing notebook.

    Runs on a dask worker: it imports what it needs, and returns plain data, with the
    worker and the task's start and end (epoch seconds, this machine's clock).
    """
    start = time.time()
    from helpers.runner.execute import NotebookFailed, execute

    out = Path(reports) / task.run / task.notebook
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    result = {"run": task.run, "notebook": task.notebook, "dir": str(out), "error": None, "worker": _worker_name()}
    try:
        execute(task.notebook, task.parameters, out, html=True, source=task.source, reports=reports,
                cell_timeout=task.cell_timeout)
        result["status"] = "ok"
    except NotebookFailed as exc:
        result.update(status="failed", error=exc.line)
        (out / "error.txt").write_text(f"{exc.line}\n")
    except Exception as exc:  # a kernel that died, a papermill error: keep the one line
        line = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        result.update(status="failed", error=line)
        (out / "error.txt").write_text(f"{line}\n")
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result.update(start=round(start, 3), end=round(time.time(), 3))
    return result


def max_concurrency(results: list[dict]) -> int:
    """The most tasks that executed at the same moment, from their recorded [start, end) intervals."""
    events = sorted([(r["start"], 1) for r in results if r.get("start") is not None]
                    + [(r["end"], -1) for r in results if r.get("start") is not None])  # an end sorts before a start
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def kernel_threads_env(workers: int) -> dict[str, str]:
    """Thread counts for the kernels of a local cluster: this machine's cores shared among the workers.

    dask sets OMP/MKL/OpenBLAS threads to 1 in every worker process, and the kernels inherit it:
    right for many single-threaded tasks per machine, but one notebook per worker would then leave
    all cores but ``workers`` idle. Each kernel gets ``cores // workers`` threads instead.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = str(max(1, cores // max(1, workers)))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}


@dataclass
class Execution:
    """What one :func:`run_tasks` did: each task's result, and how many tasks the cluster could run at once."""

    results: list[dict]
    slots: int  # worker threads of the cluster (the most seen, at submission or at the end): the bound on concurrency
    started: float  # epoch seconds: before the cluster was started or reached
    finished: float  # after it was closed or left

    @property
    def max_concurrency(self) -> int:
        return max_concurrency(self.results)

    def record(self, manifest: str | Path | None = None, scheduler: str | None = None) -> dict:
        """A small JSON-able record; task start and end are seconds from ``started``."""
        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - self.started, 3)

        return {"manifest": str(manifest) if manifest else None, "scheduler": scheduler or "local",
                "slots": self.slots, "max_concurrency": self.max_concurrency,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                "seconds": round(self.finished - self.started, 3),
                "tasks": [{"run": r["run"], "notebook": r["notebook"], "status": r["status"], "worker": r.get("worker"),
                           "start": rel(r.get("start")), "end": rel(r.get("end")), "seconds": r.get("seconds")}
                          for r in self.results]}


def write_record(execution: Execution, reports: Path, manifest: str | Path | None = None,
                 scheduler: str | None = None) -> Path:
    """``reports/execution.json``: the last execution into ``reports`` (workers, start and end of each task)."""
    import json

    path = Path(reports) / "execution.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(execution.record(manifest, scheduler), indent=1) + "\n")
    return path


def run_tasks(tasks: list[Task], reports: Path = REPORTS, scheduler: str | None = None, workers: int = 2,
              progress: bool = True) -> Execution:
    """Execute every task on dask.distributed: an in-process LocalCluster, or the cluster at ``scheduler``.

    Each worker thread executes one notebook at a time (one kernel), so at most ``slots`` execute at once.
    """
    import logging

    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    logging.getLogger("distributed").setLevel(logging.ERROR)
    started = time.time()
    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="20s")
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR, env=kernel_threads_env(workers))
        client = Client(cluster)
    results = []
    try:
        slots = sum(client.nthreads().values())
        futures = [client.submit(execute_task, t, str(reports), key=f"notebook-{t.key}", pure=False) for t in tasks]
        bar = tqdm(total=len(futures), desc="notebooks", unit="nb", disable=not progress)
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except Exception as exc:  # the worker died
                key = fut.key.removeprefix("notebook-")
                run, _, nb = key.partition("/")
                res = {"run": run, "notebook": nb, "status": "failed", "error": f"worker lost: {exc}", "seconds": None,
                       "dir": str(reports / run / nb), "worker": None, "start": None, "end": None}
            results.append(res)
            bar.set_postfix_str(f"{res['run']}/{res['notebook']} {res['status']}")
            bar.update()
        bar.close()
        slots = max(slots, sum(client.nthreads().values()))  # workers of an external cluster may join late
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    order = {t.key: i for i, t in enumerate(tasks)}
    results = sorted(results, key=lambda r: order.get(f"{r['run']}/{r['notebook']}", 0))
    return Execution(results, slots, started, time.time())
