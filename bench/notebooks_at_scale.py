"""The five whole notebooks on large runs: papermill wall time and kernel peak memory.

Each notebook executes with papermill (``run_demos`` False, only its required input given,
as a user with a real validation set would call it) on an input generated here with numpy
(seeded, written to a temporary folder, never committed):

* 01: 10^7 prediction rows (50 sessions, 8 DDP ranks, 2,000 batches per rank), parquet;
* 02: z 2x10^5 x 64, 4 stochastic passes (``z_samples``) and ``logvar``, 10^4 puzzles, npz;
* 03: 50 checkpoints x 10^5 samples x 7 parameters, 10^6 training targets, an experiment, npz;
* 04: 10 epochs x 10^6 scores (bfloat16 sigmoids of growing logits, and the logits), parquet,
  and a JSON history;
* 05: 10^6 rows x 32 features, 2x10^5 parents with 4 copies each, split row by row, parquet.

Two rows per notebook:

* wall time over a baseline notebook of the irreducible work: the floor notebook (the
  notebook's own import cell, ``run.floor_notebook``) + reading the same input with
  pandas/numpy + one pass of the core library operation at that size (``r2_score`` over the
  rows; ``numpy.cov`` of z; one per-checkpoint MSE pass; one ``roc_curve`` per epoch; one faiss
  IVF search of validation against train). Target 3x. Interleaved, best of ``REPEATS``.
* peak memory of the notebook's kernel above the floor notebook's kernel, over the input's size
  in memory (the arrays' bytes; the table as pandas reads it). Target 3x. The peak is the
  kernel's own VmHWM, read by a cell appended to the executed copy (ru_maxrss would survive the
  kernel's execve and could report the launching process).

The detail names the slowest cells (papermill's per-cell durations). ``--quick`` (tiny sizes)
checks the machinery: every input is generated and read by its notebook's ``load_inputs``, every
baseline's code runs in-process, and one floor notebook goes through papermill with its peak cell (the rows
built from such executions are tested with the executions stood in, in tests/test_bench.py).
``python bench/notebooks_at_scale.py 02 04`` runs the rows of some notebooks only.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TIME_TARGET = 3.0
MEMORY_TARGET = 3.0
REPEATS = 2
QUICK_FLOOR = "01_r2_gap"  # the floor notebook --quick executes through papermill (the lightest import cell)

# appended to every executed copy: the kernel's own peak resident set (kB), printed on one line
PEAK_MARK = "BENCH_PEAK_KB"
PEAK_CELL = f"""\
import resource as _resource
try:
    _hwm = next(int(_l.split()[1]) for _l in open("/proc/self/status") if _l.startswith("VmHWM:"))
except (OSError, StopIteration):
    _hwm = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss
print("{PEAK_MARK}", _hwm)
"""


@dataclass
class Case:
    """One notebook's large input: the papermill parameters, its size in memory, and the baseline's code."""

    notebook: str
    size: str  # what the input is, for the row's name
    params: dict  # papermill parameters naming the generated files
    nbytes: int  # the input's size in memory
    read: str  # code reading the same input with pandas / numpy
    op: str  # code of one pass of the core library operation
    op_name: str


def _table_nbytes(path: Path) -> int:
    """The table's size in memory as pandas reads it (strings included)."""
    df = pd.read_parquet(path)
    n = int(df.memory_usage(index=True, deep=True).sum())
    del df
    return n


# ----------------------------------------------------------------------------- inputs
def make_01(tmp: Path, quick: bool = False) -> Case:
    """A DDP evaluation log: rank r evaluated dataset indices r, r + ranks, ... (DistributedSampler),
    batch by batch; sessions are contiguous in the dataset; each session has its own offset."""
    n, sessions, ranks, batches = (20_000, 5, 4, 10) if quick else (10_000_000, 50, 8, 2000)
    rng = np.random.default_rng(1)
    per_rank = n // ranks
    j = np.tile(np.arange(per_rank), ranks)
    rank = np.repeat(np.arange(ranks), per_rank)
    sample_id = rank + ranks * j
    session = sample_id * sessions // n
    offset = rng.normal(0.0, 0.7, sessions)[session]
    y_true = offset + rng.standard_normal(n)
    y_pred = 0.6 * y_true + 0.3 * offset + 0.8 * rng.standard_normal(n)
    df = pd.DataFrame({"sample_id": sample_id, "session": session, "rank": rank,
                       "batch": j // (per_rank // batches), "y_true": y_true, "y_pred": y_pred})
    del j, rank, sample_id, session, offset, y_true, y_pred
    path = tmp / "predictions.parquet"
    df.to_parquet(path, index=False, row_group_size=1_000_000)
    del df
    return Case("01_r2_gap", f"{n:.0e} rows", {"predictions": str(path)}, _table_nbytes(path),
                f"df = pd.read_parquet({str(path)!r})",
                "from sklearn.metrics import r2_score\nr2_score(df['y_true'], df['y_pred'])", "r2_score")


def make_02(tmp: Path, quick: bool = False) -> Case:
    """A variational task encoder: puzzle means on three quarters of the units (a quarter inactive),
    demonstrations around them, a posterior sd of about 0.3, R passes sampled from the posterior."""
    n, d, r, g = (2000, 16, 4, 100) if quick else (200_000, 64, 4, 10_000)
    rng = np.random.default_rng(2)
    group = np.arange(n) // (n // g)  # the loader goes through the puzzles in order
    scale = np.r_[np.ones(d - d // 4), np.full(d // 4, 0.01)].astype(np.float32)
    centre = rng.standard_normal((g, d), dtype=np.float32) * (0.5 * scale)
    z = centre[group] + rng.standard_normal((n, d), dtype=np.float32) * (0.5 * scale)
    logvar = (np.float32(2 * np.log(0.3)) + 0.1 * rng.standard_normal((n, d), dtype=np.float32))
    z_samples = z[:, None, :] + np.exp(0.5 * logvar)[:, None, :] * rng.standard_normal((n, r, d), dtype=np.float32)
    arrays = {"z": z, "z_samples": z_samples, "logvar": logvar, "group": group.astype(np.int64)}
    path = tmp / "embeddings.npz"
    np.savez(path, **arrays)
    nbytes = sum(a.nbytes for a in arrays.values())
    return Case("02_encoder_variance", f"z {n:.0e} x {d}, {r} passes, {g:.0e} puzzles", {"embeddings": str(path)},
                nbytes, f"with np.load({str(path)!r}) as f:\n    arrays = {{k: f[k] for k in f.files}}",
                "np.cov(arrays['z'], rowvar=False)", "numpy.cov of z")


def make_03(tmp: Path, quick: bool = False) -> Case:
    """Checkpoints whose error shrinks over training and wanders per sample, parameters on the sample
    run's scales (1e-2 to 1e3), repeated measurements in pairs, a training set and an experiment."""
    e, n, p, m = (5, 500, 7, 2000) if quick else (50, 100_000, 7, 1_000_000)
    rng = np.random.default_rng(3)
    scale = np.array([7.6e-3, 6.4e-3, 1.5e3, 1.0e3, 6.9e-3, 7.2e2, 5.4e2])[:p]
    train_target = rng.standard_normal((m, p)) * scale + 2 * scale
    target = train_target[rng.choice(m, n, replace=False)] + 0.05 * scale * rng.standard_normal((n, p))
    pred = np.empty((e, n, p), dtype=np.float32)
    for i in range(e):
        pred[i] = rng.standard_normal((n, p), dtype=np.float32)
        pred[i] *= (scale * (0.2 + 1.0 / (i + 1))).astype(np.float32)
        pred[i] += target.astype(np.float32)
    val_loss = np.array([float((((pred[i] - target) / scale) ** 2).mean()) for i in range(e)])
    experiment_target = target[0] * 1.3
    experiment_pred = (experiment_target + scale * rng.standard_normal((e, p)) * 0.3).astype(np.float32)
    arrays = {"pred": pred, "target": target, "epoch": np.arange(1, e + 1), "val_loss": val_loss,
              "train_target": train_target, "experiment_pred": experiment_pred,
              "experiment_target": experiment_target, "param_names": np.array([f"p{i}" for i in range(p)]),
              "repeat_id": np.arange(n) // 2}
    path = tmp / "checkpoints.npz"
    np.savez(path, **arrays)
    nbytes = sum(a.nbytes for a in arrays.values())
    return Case("03_checkpoint_divergence", f"{e} checkpoints x {n:.0e} x {p}, {m:.0e} training targets",
                {"checkpoints": str(path)}, nbytes,
                f"with np.load({str(path)!r}) as f:\n    arrays = {{k: f[k] for k in f.files}}",
                "((arrays['pred'] - arrays['target']) ** 2).mean(axis=(1, 2))", "one MSE pass")


def make_04(tmp: Path, quick: bool = False) -> Case:
    """Scores as the docs' Trainer callback writes them (int64 epoch, sample_id, label; the float32 logit and
    its sigmoid computed in bfloat16, as under autocast, stored as float32), logits growing over the epochs, and a
    JSON history."""
    import torch

    n, epochs = (20_000, 3) if quick else (1_000_000, 10)
    rng = np.random.default_rng(4)
    label = (rng.random(n) < 0.49).astype(np.int64)
    margin = np.where(label == 1, rng.normal(8, 3, n), rng.normal(-8, 3, n))
    frames, history = [], []
    for e in range(epochs):
        logit = ((1 + 0.15 * e) * margin + rng.normal(0, 0.2, n)).astype(np.float32)
        score = torch.sigmoid(torch.from_numpy(logit).to(torch.bfloat16)).float().numpy()
        frames.append(pd.DataFrame({"epoch": np.full(n, e + 1, np.int64), "sample_id": np.arange(n, dtype=np.int64),
                                    "label": label, "logit": logit, "score": score}))
        neg = np.sort(score[label == 0])
        threshold = neg[int(len(neg) * (1 - 1e-3))]
        history.append({"epoch": e + 1, "train_loss": round(0.3 / (e + 1), 6), "val_loss": round(0.25 / (e + 1) ** 0.5, 6),
                        "tpr@fpr0.001": round(float((score[label == 1] > threshold).mean()), 4)})
    path, hist = tmp / "scores.parquet", tmp / "history.json"
    df = pd.concat(frames, ignore_index=True)
    del frames
    df.to_parquet(path, index=False, row_group_size=1_000_000)
    del df
    hist.write_text(json.dumps(history))
    return Case("04_roc_collapse", f"{epochs} epochs x {n:.0e} scores", {"scores": str(path), "history": str(hist)},
                _table_nbytes(path), f"df = pd.read_parquet({str(path)!r})\nhistory = json.loads(open({str(hist)!r}).read())",
                "import json\nfrom sklearn.metrics import roc_curve\n"
                "for _, g in df.groupby('epoch'):\n    roc_curve(g['label'].to_numpy(), g['score'].to_numpy())",
                "one roc_curve per epoch")


def make_05(tmp: Path, quick: bool = False) -> Case:
    """Augmentation before the split: parents in nine (k, m) groups, 4 noisy copies of each (2% noise),
    then a row-wise 85/15 split, as the sample run but at 10^6 rows of 32 features."""
    n_parents, d, copies = (1000, 8, 4) if quick else (200_000, 32, 4)
    rng = np.random.default_rng(5)
    parent = rng.standard_normal((n_parents, d), dtype=np.float32)
    idx = np.repeat(np.arange(n_parents), copies + 1)
    x = parent[idx]
    is_aug = np.r_[False, idx[1:] == idx[:-1]]
    x += (0.02 * rng.standard_normal(x.shape, dtype=np.float32)) * is_aug[:, None]
    groups = [f"k={k},m={m}" for k, m in ((4, 2), (4, 3), (5, 2), (4, 4), (5, 3), (6, 2), (4, 5), (5, 4), (6, 3))]
    tiers = ["easy"] * 3 + ["medium"] * 3 + ["hard"] * 3
    gi = (idx % len(groups))
    n = len(idx)
    df = pd.DataFrame({"sample_id": np.arange(n, dtype=np.int64),
                       "split": np.where(rng.random(n) < 0.15, "val", "train"),
                       "group": np.array(groups)[gi], "tier": np.array(tiers)[gi],
                       "parent_id": idx.astype(np.int64), "is_augmented": is_aug.astype(np.int64),
                       "target": (x[:, :4].sum(axis=1) + 0.1 * rng.standard_normal(n)).astype(np.float32)})
    df = pd.concat([df, pd.DataFrame(x, columns=[f"f{i:02d}" for i in range(d)])], axis=1)
    del x, parent
    path = tmp / "samples.parquet"
    df.to_parquet(path, index=False, row_group_size=1_000_000)
    del df
    feats = [f"f{i:02d}" for i in range(d)]
    return Case("05_augmentation_leakage", f"{n:.0e} rows x {d} features, {copies} copies per parent",
                {"samples": str(path)}, _table_nbytes(path), f"df = pd.read_parquet({str(path)!r})",
                "import faiss\n"
                f"x = np.ascontiguousarray(df[{feats!r}].to_numpy(np.float32))\n"
                "val = df['split'].to_numpy() == 'val'\n"
                "train, query = np.ascontiguousarray(x[~val]), np.ascontiguousarray(x[val])\n"
                "nlist = int(min(65536, max(16, 4 * np.sqrt(len(train)))))\n"
                "index = faiss.IndexIVFFlat(faiss.IndexHNSWFlat(train.shape[1], 32), train.shape[1], nlist)\n"
                "index.cp.niter = 10\n"
                "index.train(train[np.random.default_rng(0).choice(len(train), min(len(train), 20 * nlist), replace=False)])\n"
                "index.add(train)\n"
                "index.nprobe = 32\n"
                "index.search(query, 1)",
                "one faiss IVF search of validation against train")


MAKERS = {"01_r2_gap": make_01, "02_encoder_variance": make_02, "03_checkpoint_divergence": make_03,
          "04_roc_collapse": make_04, "05_augmentation_leakage": make_05}


# ----------------------------------------------------------------------------- executing
def _import_cell(name: str) -> str:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    return next(c for c in nb.cells if c.cell_type == "code").source


def with_peak_cell(name: str, path: Path) -> Path:
    """A copy of the notebook with the peak-memory cell appended (parameters tag kept)."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PEAK_CELL))
    nbformat.write(nb, path)
    return path


def floor_with_peak(name: str, path: Path) -> Path:
    """The floor notebook (the notebook's own import cell only) with the peak-memory cell."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    cells = [nbformat.v4.new_code_cell(_import_cell(name)), nbformat.v4.new_code_cell(PEAK_CELL)]
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata), path)
    return path


def baseline_notebook(case: Case, path: Path) -> Path:
    """Floor + reading the same input + one pass of the core operation, then the peak-memory cell."""
    nb = nbformat.read(ROOT / "notebooks" / f"{case.notebook}.ipynb", as_version=4)
    cells = [nbformat.v4.new_code_cell(_import_cell(case.notebook)),
             nbformat.v4.new_code_cell("import json\n" + case.read), nbformat.v4.new_code_cell(case.op),
             nbformat.v4.new_code_cell(PEAK_CELL)]
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata), path)
    return path


@dataclass
class Execution:
    seconds: float
    peak_kb: int
    cells: list[tuple[float, str]]  # (seconds, first line of the cell), slowest first


def execute(notebook: Path, out: Path, cwd: Path, params: dict | None = None) -> Execution:
    import papermill as pm

    from helpers.runner.execute import kernel_manager_class

    gc.collect()
    t0 = time.perf_counter()
    pm.execute_notebook(str(notebook), str(out), parameters=params or {}, kernel_name="python3",
                        progress_bar=False, log_output=False, cwd=str(cwd),
                        kernel_manager_class=kernel_manager_class(), shutdown_kernel="immediate",
                        store_widget_state=False)
    seconds = time.perf_counter() - t0
    nb = nbformat.read(out, as_version=4)
    peak = None
    for cell in nb.cells[::-1]:
        text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        if PEAK_MARK in text:
            peak = int(text.split(PEAK_MARK)[1].split()[0])
            break
    if peak is None:
        raise RuntimeError(f"{notebook.name}: no {PEAK_MARK} line in the last cell's output")
    cells = sorted(((c.metadata.get("papermill", {}).get("duration") or 0.0,
                     next((line for line in c.source.splitlines() if line.strip() and not line.startswith("#")), ""))
                    for c in nb.cells if c.cell_type == "code"), reverse=True)
    return Execution(seconds, peak, cells)


def rows_for(case: Case, tmp: Path, repeat: int = REPEATS) -> list[dict]:
    """The wall-time and memory rows of one notebook on its generated input."""
    name = case.notebook
    floor = floor_with_peak(name, tmp / "floor.ipynb")
    base = baseline_notebook(case, tmp / "baseline.ipynb")
    real = with_peak_cell(name, tmp / f"{name}.ipynb")
    params = {**case.params, "run_demos": False, "output_dir": str(tmp / "out")}
    f = execute(floor, tmp / "floor.out.ipynb", tmp)
    b, r = [], []
    for _ in range(repeat):  # interleaved, so both see the same machine state
        b.append(execute(base, tmp / "baseline.out.ipynb", tmp))
        r.append(execute(real, tmp / "real.out.ipynb", tmp, params))
        if not (tmp / "out" / "summary.json").exists():
            raise RuntimeError(f"{name}: no summary.json written")
    best_b, best_r = min(b, key=lambda x: x.seconds), min(r, key=lambda x: x.seconds)
    peak_r = max(x.peak_kb for x in r) * 1024
    above = peak_r - f.peak_kb * 1024
    slow = ", ".join(f"{s:.1f} s `{src[:40]}`" for s, src in best_r.cells[:3])
    short = name[:2]
    return [
        {"name": f"{short}: whole notebook on {case.size} / floor + read + {case.op_name}",
         "value": best_r.seconds / best_b.seconds, "target": TIME_TARGET,
         "detail": f"{best_r.seconds:.1f} s vs {best_b.seconds:.1f} s (floor alone {f.seconds:.1f} s; papermill, "
                   f"run_demos False, best of {repeat}); slowest cells: {slow}"},
        {"name": f"{short}: whole notebook on {case.size}, kernel peak RSS above the floor's / input in memory",
         "value": above / case.nbytes, "target": MEMORY_TARGET,
         "detail": f"peak {peak_r / 2**30:.2f} GiB, floor {f.peak_kb / 2**20:.2f} GiB, input {case.nbytes / 2**20:.0f} MiB "
                   f"(baseline notebook's peak {max(x.peak_kb for x in b) / 2**20:.2f} GiB)"},
    ]


def notebook_rows(name: str, quick: bool = False) -> list[dict]:
    """Generate the input of ``name`` and measure its two rows (tiny sizes with ``quick``)."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name[:2]}-") as tmp:
        tmp = Path(tmp)
        case = MAKERS[name](tmp, quick)
        gc.collect()
        return rows_for(case, tmp, repeat=1 if quick else REPEATS)


def notebook_defaults(name: str) -> dict:
    """The notebook's parameters with their defaults (its parameters cell, executed)."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values: dict = {}
    exec(compile(cell.source, f"<parameters {name}>", "exec"), {}, values)
    return values


def check_inputs(name: str) -> None:
    """--quick: the tiny input is read by the notebook's own load_inputs, and the baseline's code runs."""
    import importlib

    dx = importlib.import_module(f"helpers.{name[3:]}.diagnosis")
    with tempfile.TemporaryDirectory(prefix=f"bench-{name[:2]}-") as tmp:
        case = MAKERS[name](Path(tmp), quick=True)
        dx.load_inputs({**notebook_defaults(name), **case.params, "run_demos": False,
                        "output_dir": str(Path(tmp) / "out")})
        exec(compile("import json\nimport numpy as np\nimport pandas as pd\n" + case.read + "\n" + case.op,
                     f"<baseline {name}>", "exec"), {})


def run(quick: bool = False, only: list[str] | None = None) -> list[dict]:
    """Both rows of every notebook (or of ``only``); ``quick``: see the module's docstring."""
    names = [n for n in MAKERS if only is None or n in only]
    rows = []
    for name in names:
        if quick:
            check_inputs(name)
        else:
            rows += notebook_rows(name)
    if quick and (only is None or QUICK_FLOOR in only):
        with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
            floor = execute(floor_with_peak(QUICK_FLOOR, Path(tmp) / "floor.ipynb"), Path(tmp) / "out.ipynb", Path(tmp))
        rows.append({"name": f"{QUICK_FLOOR[:2]}: floor notebook through papermill, kernel peak RSS (GiB)",
                     "value": floor.peak_kb / 2**20, "target": float("inf"), "detail": f"{floor.seconds:.1f} s"})
    return rows


if __name__ == "__main__":
    picked = [n for n in MAKERS if any(n.startswith(a) for a in sys.argv[1:] if not a.startswith("-"))] or list(MAKERS)
    for name in picked:  # each notebook's rows as soon as they are measured
        for row in run(quick="--quick" in sys.argv, only=[name]):
            print(f"{row['name']}: {row['value']:.2f} (target <= {row['target']}) - {row['detail']}", flush=True)
