"""The mechanism lab of notebook 02: small encoders trained live (see :mod:`helpers.encoder_variance.simulate`).

- :func:`kl_sweep` trains one variational encoder per KL weight and diagnoses each: the KL
  weight moves an encoder between "collapsed to deterministic" and "stochastic but not diverse".
- :func:`repeat_pass_variance` shows that ``model.eval()`` turns dropout off but samples nothing:
  repeated eval-mode passes are identical even for a stochastic encoder.

Seeded and single-threaded; with ``seed=0`` the sweep retrains exactly the sample's encoders.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from helpers.encoder_variance import representation as rep
from helpers.encoder_variance import simulate as sim
from helpers.encoder_variance.diagnosis import EncoderRun, compare_runs

KL_WEIGHTS = (1e-4, 1e-3, 1e-2, 1.0)
PASS_MODES = ("train", "eval", "eval+sample")


@dataclass
class KLSweep:
    """One row per KL weight (``table``: task MSE and :func:`compare_runs` columns), the trained
    encoders by weight, and the evaluation demonstrations and configuration they were run on."""

    table: pd.DataFrame
    encoders: dict[float, sim.TaskEncoder]
    demos: torch.Tensor
    cfg: sim.EncoderConfig


def kl_sweep(seed: int = 0, weights=KL_WEIGHTS) -> KLSweep:
    """Train a variational encoder per KL weight on puzzles of ``seed`` and diagnose each."""
    cfg = sim.with_seed(seed)
    demos, puzzle = sim.evaluation_set(cfg)
    encoders, runs, task_mse = {}, {}, {}
    for w in weights:
        encoders[w], log = sim.train_encoder(w, True, cfg)
        embedded = sim.embed(encoders[w], demos, cfg.n_passes, seed=cfg.seed + 3)
        runs[w], task_mse[w] = EncoderRun.from_arrays({**embedded, "group": puzzle}, f"KL {w:g}"), log["mse"]
    table = compare_runs(runs).rename_axis("kl_weight")
    table.insert(0, "task_mse", pd.Series(task_mse))
    return KLSweep(table, encoders, demos, cfg)


def repeat_pass_variance(sweep: KLSweep, seed: int = 0) -> pd.DataFrame:
    """Mean repeat-pass variance of a deterministic encoder (trained here) and of the sweep's
    KL 1e-3 encoder, in each of :data:`PASS_MODES` (rows: encoder, columns: mode)."""
    cfg, demos = sweep.cfg, sweep.demos
    det, _ = sim.train_encoder(0.0, False, cfg)
    rows = []
    for name, enc in {"deterministic": det, "variational, KL 1e-3": sweep.encoders[1e-3]}.items():
        for mode in PASS_MODES:
            p = sim.repeated_passes(enc, demos, cfg.n_passes, mode, seed=seed)
            rows.append({"encoder": name, "mode": mode, "repeat-pass variance": rep.sampling_variance(p).mean()})
    return pd.DataFrame(rows).pivot(index="encoder", columns="mode", values="repeat-pass variance")
