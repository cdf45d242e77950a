"""Speed and memory of notebook 03's diagnosis: 100 checkpoints x 10^5 validation samples x 7 parameters.

The run is synthetic and seeded (float32 predictions whose error shrinks over the checkpoints and wanders per
sample, a training set of 10^5 targets, an experiment, repeated measurements in pairs), and it has no forward
model, so the rows measure the diagnosis proper (``helpers.checkpoint_divergence.diagnosis.diagnose``:
standardised per-sample errors, noise floor, coverage, both selection checks, bins, ensembles), not the lab. Baseline: one numpy pass
computing each checkpoint's validation MSE over the same array. Both are timed in this process, alternating,
best of ``REPEATS``. Peak memory is the VmHWM of a child process that builds the run and diagnoses it, against
the size of the prediction array.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time

import numpy as np

E, N, P = 100, 100_000, 7
TIME_TARGET = 10.0
MEMORY_TARGET = 3.0
REPEATS = 3


def make_run(e: int = E, n: int = N, p: int = P, seed: int = 0):
    from helpers.checkpoint_divergence.diagnosis import CheckpointRun

    rng = np.random.default_rng(seed)
    target = rng.standard_normal((n, p)).astype(np.float32) * np.linspace(0.01, 5000, p, dtype=np.float32)
    scale = np.linspace(0.01, 5000, p, dtype=np.float32)
    pred = np.empty((e, n, p), dtype=np.float32)
    for i in range(e):
        pred[i] = rng.standard_normal((n, p), dtype=np.float32)
        pred[i] *= scale * np.float32(0.3 + 1.0 / (i + 1))
        pred[i] += target
    arrays = {"pred": pred, "target": target, "epoch": np.arange(1, e + 1),
              "val_loss": ((pred[:, :2000] - target[:2000]) / scale).__pow__(2).mean(axis=(1, 2)),
              "train_target": rng.standard_normal((n, p)) * scale, "experiment_target": target[0] * 1.5,
              "experiment_pred": pred[:, 0] * 1.5, "repeat_id": np.arange(n) // 2}
    return CheckpointRun.from_arrays(arrays)


def baseline(run) -> np.ndarray:
    return ((run.pred - run.target) ** 2).mean(axis=(1, 2))


def ours(run):
    from helpers.checkpoint_divergence import diagnosis as dx

    d = dx.diagnose(run, {"last_k": 5, "k_neighbours": 5, "seed": 0}, progress=False)  # no bar in a timed call
    return dx.findings(d)


_CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
import checkpoint_divergence as b
run = b.make_run(int(sys.argv[2]), int(sys.argv[3]))
t0 = time.perf_counter()
b.ours(run)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(run.pred.nbytes, hwm * 1024, time.perf_counter() - t0)
"""


def _timed(fn) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    """The two rows; ``quick`` uses 10 x 2000 x 7 (a smoke test, no verdict)."""
    from pathlib import Path

    e, n = (10, 2000) if quick else (E, N)
    r = make_run(e, n)
    ours(r)  # warm-up (imports, thread pools)
    t_ours, t_base = [], []
    for _ in range(1 if quick else REPEATS):
        t_base.append(_timed(lambda: baseline(r)))
        t_ours.append(_timed(lambda: ours(r)))
    a, b = min(t_ours), min(t_base)
    r = None  # free the run before the child builds its own
    gc.collect()
    child = subprocess.run([sys.executable, "-c", _CHILD, str(Path(__file__).resolve().parent), str(e), str(n)],
                           capture_output=True, text=True, check=True)
    nbytes, hwm, seconds = child.stdout.split()
    ratio = int(hwm) / int(nbytes)
    return [
        {"name": f"03: diagnosis of {e} checkpoints x {n:.0e} samples x {P} / one per-checkpoint MSE pass",
         "value": a / b, "target": TIME_TARGET,
         "detail": f"diagnose+findings {a:.2f} s vs numpy MSE pass {b:.3f} s (best of {len(t_ours)})"},
        {"name": "03: diagnosis peak memory (VmHWM of a child) / prediction array size",
         "value": ratio, "target": MEMORY_TARGET,
         "detail": f"{int(hwm) / 2**20:.0f} MiB peak (interpreter and libraries included) vs "
                   f"{int(nbytes) / 2**20:.0f} MiB array; diagnosis {float(seconds):.1f} s in the child"},
    ]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(f"{row['name']}: {row['value']:.2f} (target <= {row['target']}) - {row['detail']}")
