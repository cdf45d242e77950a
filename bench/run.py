"""`make bench`: speed and memory targets as ratios against baselines measured in the same run.

Prints a table and writes it to reports/bench.md (and .json): ratio, target, and pass or
FAIL per row. Exits non-zero only when a benchmark is broken, not on a slow machine.
``--quick`` runs tiny sizes (a smoke test of this script, no verdict).

Rows: each notebook on its sample against its floor notebook; each whole notebook on a large
generated run against the irreducible work (bench/notebooks_at_scale.py: wall time and kernel
peak memory, ``--skip at_scale`` leaves them out, ``--skip at_scale:05`` one); the statistics
modules at scale (bench/<notebook package>.py) and the batch runner (bench/batch.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # bench modules of other notebooks (bench/<name>.py)


def best_of(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls after one warm-up call (timeit's convention)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# ----------------------------------------------------------------------------- notebooks
def floor_notebook(name: str, path: Path) -> Path:
    """The notebook's own import cell and nothing else: kernel start plus the same libraries."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    floor = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(first_code.source)],
                                     metadata=nb.metadata)
    nbformat.write(floor, path)
    return path


def papermill_seconds(notebook: Path, out_dir: Path, params: dict | None = None) -> float:
    import papermill as pm

    from helpers.runner.execute import kernel_manager_class

    t0 = time.perf_counter()
    pm.execute_notebook(str(notebook), str(out_dir / "out.ipynb"), parameters=params or {},
                        kernel_name="python3", progress_bar=False, cwd=str(out_dir),
                        kernel_manager_class=kernel_manager_class())
    return time.perf_counter() - t0


# wall-time limit over the floor notebook; notebooks not listed get DEFAULT_NOTEBOOK_TARGET
DEFAULT_NOTEBOOK_TARGET = 2.0
NOTEBOOK_TARGETS = {"03_checkpoint_divergence": 2.5, "04_roc_collapse": 2.5}


def bench_notebook(name: str, repeat: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        floor = floor_notebook(name, tmp / "floor.ipynb")
        real, base = [], []
        for _ in range(repeat):  # interleaved, so both see the same machine state
            base.append(papermill_seconds(floor, tmp))
            real.append(papermill_seconds(ROOT / "notebooks" / f"{name}.ipynb", tmp, {"output_dir": str(tmp / "o")}))
    return {"name": f"{name}: papermill wall time / floor notebook", "value": min(real) / min(base),
            "target": NOTEBOOK_TARGETS.get(name, DEFAULT_NOTEBOOK_TARGET),
            "detail": f"{min(real):.1f} s vs {min(base):.1f} s (best of {repeat}, defaults)"}


# ----------------------------------------------------------------------------- 01 reconciliation
def eval_log(n: int, ranks: int = 8, batch_size: int = 64, sessions: int = 10, seed: int = 0) -> pd.DataFrame:
    """An evaluation log as a DDP run writes it: each rank's rows, batch by batch."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n)
    i = np.arange(n)
    per_rank = -(-n // ranks)
    return pd.DataFrame({"y_true": y, "y_pred": 0.6 * y + rng.normal(size=n),
                         "session": ((i % per_rank) * sessions // per_rank).astype(np.int64),
                         "rank": (i // per_rank).astype(np.int64), "batch": ((i % per_rank) // batch_size).astype(np.int64)})


def bench_reconciliation(n: int) -> dict:
    from sklearn.metrics import r2_score

    from helpers.r2_gap import regression as reg

    df = eval_log(n)
    t_ref = best_of(lambda: r2_score(df["y_true"], df["y_pred"]), repeat=5)
    t_all = best_of(lambda: reg.candidate_table(reg.group_run(df)), repeat=5)
    n_cand = len(reg.candidate_table(reg.group_run(df)))
    return {"name": f"01: all {n_cand} candidate computations on {n:.0e} rows / one r2_score", "value": t_all / t_ref,
            "target": 3.0, "detail": f"{t_all * 1e3:.0f} ms vs {t_ref * 1e3:.0f} ms (best of 5, warm)"}


# Peak memory of the child's own address space: VmHWM (ru_maxrss survives execve on Linux and
# would report the forked copy of this process, which holds the 10^7-row frame).
_STREAM_CHILD = """
import resource, sys, time
from helpers.r2_gap import regression as reg
t0 = time.perf_counter()
run = reg.group_run_streamed(sys.argv[1], chunk_rows=int(sys.argv[2]), progress=False)
cand = reg.candidate_table(run)
try:
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
except OSError:
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(run.n_rows, len(cand), time.perf_counter() - t0, hwm)
"""


def bench_streaming(n: int, chunk: int = 5_000_000) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.parquet"
        step = min(n, 10_000_000)
        writer = None
        for start in range(0, n, step):
            part = eval_log(min(step, n - start), seed=start)
            part["batch"] += start // 64  # keep batches distinct across parts
            table = pa.Table.from_pandas(part, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=1_000_000)
        writer.close()
        size = path.stat().st_size
        res = subprocess.run([sys.executable, "-c", _STREAM_CHILD, str(path), str(chunk)],
                             capture_output=True, text=True, check=True)
    rows, n_cand, seconds, maxrss_kb = res.stdout.split()
    peak_gb = int(maxrss_kb) / 2**20
    return {"name": f"01: streamed reconciliation of a {int(rows):.0e}-row parquet, peak RSS (GB)", "value": peak_gb,
            "target": 1.5, "detail": f"{float(seconds):.0f} s, file {size / 2**30:.1f} GiB, chunks of {chunk:.0e} rows"}


# ----------------------------------------------------------------------------- main
def skipped(label: str, skip: set[str]) -> bool:
    """A job is left out when ``--skip`` names its first word ("batch", "at_scale:01") or that word's family
    before a colon ("at_scale": all five notebooks on large runs)."""
    key = label.split(" ")[0]
    return key in skip or key.split(":")[0] in skip


def main(argv=None) -> int:
    """Run every benchmark; write reports/bench.md. Non-zero only when a benchmark is broken (raised)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the bench runs")
    parser.add_argument("--out", default=str(ROOT / "reports"), help="folder for bench.md and bench.json")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out (e.g. batch, "
                                                   "at_scale for the five large-run notebook rows, at_scale:01 for one)")
    args = parser.parse_args(argv)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    import notebooks_at_scale as at_scale

    from helpers.runner.execute import notebook_names

    jobs = []
    if not args.quick:
        jobs += [(f"{name} wall time", lambda name=name: [bench_notebook(name)]) for name in notebook_names()]
        # each whole notebook on a large generated run: `--skip at_scale` leaves all five out, `--skip at_scale:01` one
        jobs += [(f"at_scale:{name[:2]} {name} on a large run", lambda name=name: at_scale.notebook_rows(name))
                 for name in at_scale.MAKERS]
    else:
        jobs.append(("at_scale (tiny inputs; one floor notebook through papermill)", lambda: at_scale.run(quick=True)))
    jobs.append(("reconciliation", lambda: [bench_reconciliation(10**5 if args.quick else 10**7)]))
    jobs.append(("streaming", lambda: [bench_streaming(10**6 if args.quick else 10**8,
                                                       chunk=10**5 if args.quick else 5_000_000)]))
    for module in sorted(p.stem for p in HERE.glob("[a-z]*.py") if p.stem not in ("run", "notebooks_at_scale")):
        # every bench/<module>.py exposes run(quick) -> rows
        jobs.append((module, lambda module=module: __import__(module).run(quick=args.quick)))
    jobs = [(label, job) for label, job in jobs if not skipped(label, skip)]
    rows, broken = [], []
    for label, job in jobs:
        print(f"{label} ...", flush=True)
        started = time.perf_counter()
        try:
            rows += job()
            print(f"{label}: {time.perf_counter() - started:.1f} s", flush=True)
        except Exception as exc:  # a broken benchmark is reported, and the others still run
            broken.append(label)
            rows.append({"name": f"{label}: BROKEN", "value": float("nan"), "target": float("nan"),
                         "detail": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
    table = pd.DataFrame(rows)
    table["verdict"] = ["broken" if r["name"].endswith("BROKEN") else ("pass" if r["value"] <= r["target"] else "FAIL")
                        for _, r in table.iterrows()]
    text = table.assign(value=table["value"].map("{:.2f}".format)).to_markdown(index=False) \
        if _has_tabulate() else table.to_string(index=False)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(("(quick mode: tiny sizes, no verdict)\n\n" if args.quick else "") + text + "\n")
    (out / "bench.json").write_text(json.dumps(rows, indent=2, default=float) + "\n")
    print(f"wrote {out / 'bench.md'}")
    if broken:
        print(f"broken benchmark(s): {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
