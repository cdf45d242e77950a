import atexit
import gc
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the venv's python3 kernel wins over any user-level kernelspec of that name
os.environ.setdefault("JUPYTER_PATH", str(Path(sys.prefix) / "share" / "jupyter"))
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")


# pytest-xdist runs one worker per core, and each worker's kernels and torch run beside the others': the
# cores are shared among the workers as the runner shares them among its dask workers. Two processes with an
# OpenMP pool as wide as the machine each spin-wait on the other's cores, and small torch steps slow down.
# Set in the workers only: the controlling process loads this file too, before it knows how many workers it
# will start, and the workers inherit its environment (a value it set would win over theirs).
def _share_cores() -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    from helpers.runner.batch import kernel_threads_env

    for var, n in kernel_threads_env(int(os.environ["PYTEST_XDIST_WORKER_COUNT"])).items():
        os.environ.setdefault(var, n)


_share_cores()


# After its last test a worker's interpreter takes 1 to 2 s to tear down what the tests imported (torch,
# scikit-learn, pandas: some 5,000 modules), and the controller waits for it before it reports. Once a worker's
# session has ended (pytest_unconfigure) and the exit handlers registered after this file have run (temporary
# folders, torch, the tests' own), the worker ends without that teardown. The two registered before this file,
# logging's shutdown and execnet's group cleanup, are skipped: a worker logs to memory, has sent its results
# and started no gateways. Only in workers, only after a normal end.
_WORKER_DONE = False


def _end_worker_without_teardown() -> None:
    if _WORKER_DONE:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if "PYTEST_XDIST_WORKER" in os.environ:
    atexit.register(_end_worker_without_teardown)


def pytest_unconfigure(config):
    """Before pytest's end-of-session search for unraisable exceptions (five full collections): one full
    collection, then what survived it is frozen, so the five walk only what finalizers created since."""
    global _WORKER_DONE
    gc.collect()
    gc.freeze()
    _WORKER_DONE = "PYTEST_XDIST_WORKER" in os.environ


# Collection imports torch, scikit-learn, pandas and the rest (some 500,000 objects that live as long as the
# process), and the collector walks all of them six times on the way (about 1 s a worker). It is off from here
# until collection ends, where what was imported is frozen (pytest_collection_finish). pytest-xdist's
# controlling process collects nothing: it turns the collector back on at once (pytest_configure).
gc.disable()


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        gc.enable()
    config.addinivalue_line("markers", "notebook: starts a kernel (papermill), a dask cluster or other worker "
                                       "processes (torch.distributed, the benchmarks); `-m 'not notebook'` is the fast set")


# torchmetrics imports transformers, scipy.signal and matplotlib when it is imported (4-6 s of CPU); lightning
# imports torchmetrics, and torch._dynamo (2 s), which any torch.optim optimizer imports when it is built.
# Test modules import them inside the tests that use them, and those tests share the xdist group
# "torchmetrics", so one worker pays the import and the other never does.
TORCHMETRICS = ("torchmetrics", "lightning", "transformers", "torch._dynamo")
COLLECTION_IMPORTED: set[str] = set()
_MODULES_FROZEN = 0  # len(sys.modules) at the last gc.freeze()


def pytest_collection_finish(session):
    """What collection imported (torch, scikit-learn, pandas, ...: some 500,000 objects) is never garbage:
    it is moved out of the collector's reach and the collector is turned on again. Each full collection during
    the tests, and the five at the end (pytest looks for unraisable exceptions), no longer walks it; what the
    tests create is collected as before."""
    COLLECTION_IMPORTED.update(m for m in TORCHMETRICS if m in sys.modules)
    global _MODULES_FROZEN
    gc.freeze()
    gc.enable()
    _MODULES_FROZEN = len(sys.modules)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The same for a test that imports a library of its own (lightning, transformers, torch._dynamo: thousands
    of modules): once it has run, the modules' objects are frozen too, else every later full collection
    walks them again (about 0.15 s each). Only after an import of that size (once or twice a worker): what is
    alive then is frozen with them, and is still freed when its last reference goes, but a reference cycle
    among it would never be collected."""
    global _MODULES_FROZEN
    yield
    if len(sys.modules) - _MODULES_FROZEN > 500:
        gc.freeze()
        _MODULES_FROZEN = len(sys.modules)


def pytest_collection_modifyitems(config, items):
    """The tests that start kernels, clusters or processes first, the quick ones after: xdist hands out work
    in this order (groups first, the largest first), so quick tests fill the cores at the end instead of one
    worker finishing a long execution alone."""
    items.sort(key=lambda item: item.get_closest_marker("notebook") is None)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from an unrelated working directory."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


@pytest.fixture(scope="session")
def sample_execution(tmp_path_factory, warm_kernel):
    """``sample_execution(name)``: the notebook executed once per worker on its bundled sample run
    (defaults, demos on), from an unrelated working directory, in the worker's warm kernel; returns
    (summary dict, executed .ipynb path).

    Mark the tests that use it ``@pytest.mark.xdist_group("<notebook>")`` so that, under
    ``--dist loadgroup``, one worker executes each sample once and shares it.
    """
    from helpers.runner.execute import execute

    cache: dict[str, tuple[dict, Path]] = {}

    def get(name: str) -> tuple[dict, Path]:
        if name not in cache:
            out = tmp_path_factory.mktemp(f"sample-{name}")
            cwd = tmp_path_factory.mktemp(f"cwd-{name}")
            cache[name] = (execute(name, {}, out, cwd=cwd, kernel_manager=warm_kernel), out / f"{name}.ipynb")
            check_clean_outputs(cache[name][1])
        return cache[name]

    return get


@pytest.fixture(scope="session")
def warm_kernel():
    """One kernel per worker for the sample executions, most executions on new, degenerate or made-up runs
    and the papermill refusals: each is executed by papermill into it (``execute(..., kernel_manager=
    warm_kernel)``), its namespace and input history reset and its working directory set first, so the
    libraries are imported once per worker, not once per run.

    Each notebook also runs whole in a fresh kernel of its own, as a user's run does: 01 and 02 in the batch
    (01 again on the external dask worker), 03 and 05 on their made-up runs, 04 on its new healthy run; the
    plain papermill command starts one too."""
    from helpers.runner.execute import start_kernel

    km = start_kernel()
    yield km
    km.shutdown_kernel(now=True)


def check_clean_outputs(executed: Path) -> None:
    """No executed notebook opens with a red warning: ipywidgets is installed, so tqdm has its widgets
    (no "IProgress not found"), and no widget state is stored (no page loads a widget manager)."""
    import json

    nb = json.loads(Path(executed).read_text())
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    for warning in ("IProgress not found", "TqdmWarning", "without encryption"):
        assert warning not in text, f"{executed.name}: an output carries '{warning}'"
    assert "widgets" not in nb["metadata"], f"{executed.name}: widget state was stored"
