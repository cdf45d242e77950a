"""Batch re-execution: manifests refused before anything runs, dask execution, report pages."""

import contextlib
import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from helpers.paths import DATA_SAMPLES
from helpers.runner.batch import ManifestError, check_targets, load_manifest, max_concurrency
from helpers.runner.cli import main, run_manifest


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, expected", [
    ("runs: [oops", "is not valid YAML"),
    ("notruns: {}", "expected a mapping 'runs:'"),
    ("runs:\n  r1:\n    01_r2_gapp: {}\n", "run 'r1', notebook '01_r2_gapp': unknown notebook (did you mean '01_r2_gap'?)"),
    ("runs:\n  r1:\n    01_r2_gap: {predictionz: x.parquet}\n",
     "run 'r1', notebook '01_r2_gap', key 'predictionz': not a parameter of 01_r2_gap (did you mean 'predictions'?)"),
    ("runs:\n  r1:\n    01_r2_gap: {predictions: missing/p.parquet}\n",
     "run 'r1', notebook '01_r2_gap', key 'predictions': file not found: missing/p.parquet"),
    ("runs:\n  r1:\n    01_r2_gap: {output_dir: elsewhere}\n", "key 'output_dir': is set by the runner"),
    ("runs:\n  r1:\n    01_r2_gap: [1, 2]\n", "run 'r1', notebook '01_r2_gap': expected a mapping of parameter overrides"),
    ("runs:\n  ../up:\n    01_r2_gap: {}\n", "run '../up': a run name must be a plain folder name"),
])
def test_malformed_manifest_is_refused_in_one_line(tmp_path, text, expected):
    m = write(tmp_path / "m.yaml", text)
    with pytest.raises(ManifestError) as e:
        load_manifest(m)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(m)) and expected in msg, msg


def test_manifest_paths_are_taken_from_its_folder(tmp_path, elsewhere):
    (tmp_path / "run42").mkdir()
    shutil.copy(DATA_SAMPLES / "01_r2_gap" / "predictions.parquet", tmp_path / "run42" / "p.parquet")
    m = write(tmp_path / "m.yaml", "runs:\n  run42:\n    01_r2_gap: {predictions: run42/p.parquet, reported: '', "
                                   "run_demos: false}\n    02_encoder_variance: {compare: []}\n")
    tasks = load_manifest(m)
    assert [t.key for t in tasks] == ["run42/01_r2_gap", "run42/02_encoder_variance"]
    assert tasks[0].parameters == {"predictions": str(tmp_path / "run42" / "p.parquet"), "reported": "",
                                   "run_demos": False}
    (tmp_path / "reports" / "run42" / "01_r2_gap").mkdir(parents=True)
    with pytest.raises(ManifestError, match="a report exists already: pass --force"):
        check_targets(tasks, tmp_path / "reports", force=False)
    check_targets(tasks, tmp_path / "reports", force=True)


@pytest.fixture(scope="session")
def batch(tmp_path_factory):
    """One manifest on the default local cluster (two workers), shared by the tests below (session scope:
    under xdist the ``dask`` group runs on one worker, but not necessarily in a row): four tasks in three
    runs; one fails on a broken file, one hangs past its cell timeout."""
    tmp = tmp_path_factory.mktemp("batch")
    (tmp / "broken.parquet").write_bytes(b"PAR1 this is not a parquet file")
    # a task whose user code hangs where no Python-level limit reaches (a sleep far past callable_timeout):
    # the runner's per-cell timeout ends it, and the others go on
    rng = np.random.default_rng(0)
    pd.DataFrame({"epoch": 1, "label": np.r_[np.zeros(300, int), np.ones(300, int)],
                  "score": np.r_[rng.uniform(0, 0.6, 300), rng.uniform(0.4, 1, 300)]}).to_csv(tmp / "scores.csv", index=False)
    (tmp / "roc.py").write_text("import time\n\ndef roc(scores, labels):\n    time.sleep(3600)\n")
    m = write(tmp / "m.yaml", f"""
runs:
  good:
    01_r2_gap: {{run_demos: false}}
  bad:
    01_r2_gap: {{predictions: {tmp / 'broken.parquet'}, run_demos: false}}
    02_encoder_variance: {{run_demos: false, compare: "[]"}}
  hang:
    04_roc_collapse: {{scores: {tmp / 'scores.csv'}, roc_function: "{tmp / 'roc.py'}:roc", callable_timeout: 3600,
                       run_demos: false, cell_timeout: 10}}
""")
    reports = tmp / "reports"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_manifest(m, reports, progress=False)
    record = json.loads((reports / "execution.json").read_text())
    first = {nb: (reports / nb / "summary.json").read_bytes() for nb in ("good/01_r2_gap",)}
    return {"tmp": tmp, "manifest": m, "reports": reports, "code": code, "out": out.getvalue(), "err": err.getvalue(),
            "record": record, "first": first, "index": (reports / "index.html").read_text()}


@pytest.mark.notebook
@pytest.mark.xdist_group("dask")
def test_a_manifest_runs_on_a_local_cluster_and_one_failure_does_not_stop_the_others(batch, capsys):
    reports, err = batch["reports"], batch["err"]
    assert batch["code"] == 1
    assert "FAILED  bad/01_r2_gap: InputError: predictions: " in err and "cannot be read as a table" in err
    assert "2 notebook(s) failed: bad/01_r2_gap, hang/04_roc_collapse" in err
    assert "FAILED  hang/04_roc_collapse: CellTimeoutError" in err and "10 seconds" in err
    assert "FAILED: CellTimeoutError" in (reports / "hang" / "index.html").read_text()
    for nb in ("good/01_r2_gap", "bad/02_encoder_variance"):
        assert (reports / nb / "summary.json").exists() and (reports / nb / f"{nb.split('/')[1]}.html").exists()
    assert not (reports / "bad" / "01_r2_gap" / "summary.json").exists()
    page = (reports / "bad" / "index.html").read_text()
    assert "FAILED: InputError: predictions: " in page and "stochasticity_collapsed" in page
    index = (reports / "index.html").read_text()
    assert "good/index.html" in index
    # the runs x findings grid: a cell per (run, finding), coloured by status and severity, linking to the page
    # a row per run in the list (good, bad, hang) and per run with findings in the grid (good, bad)
    assert 'class="grid"' in index and index.count("<tr><td><a href=") == 3 + 2
    assert 'class="c critical"><a href="good/01_r2_gap/01_r2_gap.html"' in index
    assert 'class="c absent"' in index  # bad/01 failed: no report, so no link
    table = pd.read_csv(reports / "findings.csv")
    assert set(table["run"]) == {"good", "bad"}  # the timed-out task left no summary
    assert table.query("run == 'good' and finding == 'unsynced_rank_metrics'")["status"].item() == "detected"
    # a second execution into the same reports is refused before anything runs
    assert run_manifest(batch["manifest"], reports, progress=False) == 2
    assert "a report exists already" in capsys.readouterr().err


@pytest.mark.notebook
@pytest.mark.xdist_group("dask")
def test_compare_lists_the_findings_whose_status_changed(batch, capsys):
    reports = batch["reports"]
    # 01 ran in 'good' only (it failed in 'bad'), so all its findings changed (present vs absent)
    assert main(["compare", "good", "bad", "--reports", str(reports)]) == 0
    cmp = capsys.readouterr().out
    assert "unsynced_rank_metrics" in cmp and "absent" in cmp
    assert main(["compare", "good", "nope", "--reports", str(reports)]) == 2
    assert main(["compare", "good", "good", "--reports", str(reports)]) == 2


@pytest.mark.notebook
@pytest.mark.xdist_group("dask")
def test_the_runner_bounds_concurrency(batch):
    """Four tasks (three runs) on the default two workers: each recorded, never more than two at once."""
    record = batch["record"]
    tasks = record["tasks"]
    assert sorted(f"{t['run']}/{t['notebook']}" for t in tasks) == sorted(
        ["good/01_r2_gap", "bad/01_r2_gap", "bad/02_encoder_variance", "hang/04_roc_collapse"])
    assert sorted(t["status"] for t in tasks) == ["failed", "failed", "ok", "ok"]
    assert all(t["worker"] and 0 <= t["start"] < t["end"] <= record["seconds"] for t in tasks)
    assert record["slots"] == 2 and len({t["worker"] for t in tasks}) <= 2
    assert max_concurrency(tasks) == record["max_concurrency"] == 2, tasks  # both workers busy, never more
    assert "at most 2 of 2 worker threads busy at once" in batch["out"]
    assert "last execution: 4 notebooks in " in batch["index"]


@pytest.mark.notebook
@pytest.mark.xdist_group("dask")
def test_a_forced_reexecution_on_an_external_dask_scheduler_gives_the_same_summary(batch, tmp_path):
    """A real `dask scheduler` and a `dask worker` process on 127.0.0.1 re-execute one task of the batch
    into the same reports with --force: summary.json is byte for byte the same."""
    bin_dir = os.path.dirname(sys.executable)
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen([os.path.join(bin_dir, "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "the dask scheduler did not start"
        procs.append(subprocess.Popen([os.path.join(bin_dir, "dask"), "worker", "--scheduler-file", str(sched_file),
                                       "--nthreads", "1", "--no-dashboard"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path))
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        reports = batch["reports"]
        again = write(batch["tmp"] / "again.yaml", "runs:\n  good:\n    01_r2_gap: {run_demos: false}\n")
        assert main(["run", str(again), "--reports", str(reports), "--force", "--scheduler", address]) == 0
        record = json.loads((reports / "execution.json").read_text())
        assert [(t["run"], t["notebook"]) for t in record["tasks"]] == [("good", "01_r2_gap")]
        assert record["scheduler"] == address and record["max_concurrency"] == record["slots"] == 1
        assert (reports / "good/01_r2_gap/summary.json").read_bytes() == batch["first"]["good/01_r2_gap"], \
            "summary.json differs after re-execution"
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_max_concurrency_counts_overlapping_intervals():
    iv = [{"start": a, "end": b} for a, b in [(0, 10), (1, 3), (2, 4), (3, 5)]]
    assert max_concurrency(iv) == 3  # (0,10), (1,3), (2,4) at 2.5; an interval ending at 3 does not overlap one starting at 3
    assert max_concurrency([{"start": 0, "end": 1}, {"start": 1, "end": 2}]) == 1
    assert max_concurrency([{"start": None, "end": None}]) == 0 and max_concurrency([]) == 0


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def headless(*args, cwd):
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={cwd / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.notebook
@pytest.mark.xdist_group("dask")
@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_reports_render_offline_in_a_real_browser(batch, tmp_path):
    from PIL import Image

    reports = batch["reports"]
    shot = tmp_path / "index.png"
    headless("--window-size=1200,1600", f"--screenshot={shot}", (reports / "good" / "index.html").as_uri(), cwd=tmp_path)
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 1600)
    hist = image.histogram()
    assert max(hist) < 0.97 * sum(hist), "the page rendered blank"
    dom = headless("--dump-dom", (reports / "good" / "index.html").as_uri(), cwd=tmp_path).stdout
    assert "unsynced_rank_metrics" in dom and "<img" in dom
    # the whole reports folder travels: copied elsewhere (the original removed) and served over HTTP,
    # the notebook's HTML typesets its math with the MathJax copy in reports/_static
    moved = tmp_path / "elsewhere" / "reports"
    shutil.copytree(reports, moved)
    hidden = reports.with_name("reports-hidden")
    reports.rename(hidden)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(moved))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/good/01_r2_gap/01_r2_gap.html"
        dom = headless("--virtual-time-budget=15000", "--dump-dom", url, cwd=tmp_path).stdout
    finally:
        server.shutdown()
        hidden.rename(reports)
    assert 'class="MathJax_Display' in dom, "math not typeset"
    # no page loads anything from file:// or a CDN, and no script imports one
    for page in moved.rglob("*.html"):
        text = page.read_text()
        loads = re.findall(r'<(?:script|link|img)[^>]*(?:src|href)="((?:https?|file)://[^"]+)"', text)
        imports = re.findall(r'import\(\s*["\']((?:https?|file)://[^"\']+)', text)
        urls = re.findall(r'=\s*"((?:https?|file)://[^"]+\.m?js)"', text)
        assert loads == imports == urls == [], f"{page.relative_to(moved)} loads {loads + imports + urls}"
        assert "file:///" not in text or page.suffix != ".html" or "file:///" not in "".join(loads), page



def test_samples_manifest_runs_every_notebook_on_its_defaults():
    from helpers.runner.cli import DEFAULT_MANIFEST
    from helpers.runner.execute import notebook_names

    tasks = load_manifest(DEFAULT_MANIFEST)
    assert [t.notebook for t in tasks] == notebook_names()
    assert all(t.run == "samples" and t.parameters == {} for t in tasks)


def test_each_pytest_worker_and_its_kernels_get_their_share_of_the_cores():
    """Under pytest-xdist, each worker's torch and BLAS pools (and its kernels', which inherit the
    environment) are as wide as the runner gives each dask worker's kernels: two workers with pools as wide
    as the machine spin-wait on each other's cores."""
    from threadpoolctl import threadpool_info

    from helpers.runner.batch import kernel_threads_env

    if "PYTEST_XDIST_WORKER_COUNT" not in os.environ:
        pytest.skip("not under pytest-xdist")
    import torch

    n = int(kernel_threads_env(int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))["OMP_NUM_THREADS"])
    assert torch.get_num_threads() == n
    assert {pool["num_threads"] for pool in threadpool_info()} == {n}


@pytest.mark.notebook
def test_execute_into_a_warm_kernel_resets_it_first(tmp_path):
    """``execute(..., kernel_manager=...)``: no name and no input history of the notebook before, the
    working directory the caller gives, and a kernel that died is started again. A kernel of its own
    (``start_kernel``, as the worker's warm kernel): killing the worker's would make the next notebook
    import the libraries again."""
    import signal

    import nbformat

    from helpers.runner.execute import execute, start_kernel

    def notebook(path, source):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
        nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, path)
        return path

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = notebook(tmp_path / "first.ipynb", "leftover = 1\nprint('first')")
    second = notebook(tmp_path / "second.ipynb", "import os, json\njson.dump({'names': sorted(dir()), 'cwd': os.getcwd(), "
                                                  "'history': len(In)}, open('seen.json', 'w'))")
    km = start_kernel()
    try:
        assert execute("first", {}, tmp_path / "o1", cwd=tmp_path / "a", source=first, kernel_manager=km) == {}
        os.kill(km.provisioner.process.pid, signal.SIGKILL)  # as if the first notebook had crashed it
        deadline = time.time() + 10
        while km.is_alive() and time.time() < deadline:
            time.sleep(0.05)
        execute("second", {}, tmp_path / "o2", cwd=tmp_path / "b", source=second, kernel_manager=km)
    finally:
        km.shutdown_kernel(now=True)
    seen = json.loads((tmp_path / "b" / "seen.json").read_text())
    assert "leftover" not in seen["names"] and seen["cwd"] == str(tmp_path / "b")
    assert seen["history"] <= 4  # the reset, the injected parameters and this cell: nothing of the first notebook
