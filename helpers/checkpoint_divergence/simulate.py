"""Sample run for notebook 03: an inverse model of rocking curves, checkpointed every epoch.

Profiles are drawn under the nested constraints of :mod:`helpers.checkpoint_divergence.lab`
(1500 training profiles, 300 validation profiles measured twice each with Poisson
counting noise), an :class:`~helpers.checkpoint_divergence.lab.InverseMLP` is trained for 30
epochs, and every epoch is a checkpoint. The "experiment" is one measured curve of
a profile close to several constraint edges at once. The run is written both
ways notebook 03 reads it:

- ``checkpoints.npz`` (the default input): ``pred`` (E, N, 7) per-checkpoint
  predictions on the validation curves, ``target``, ``epoch``, ``val_loss``,
  ``train_target``, ``experiment_pred``, ``experiment_target``,
  ``experiment_curve`` (its measured log10 intensity), ``param_names`` and
  ``repeat_id`` (rows with one id are repeated measurements of one profile);
- ``checkpoints/epoch_XX.pt`` state dicts saved the way PyTorch Lightning does
  (``{"epoch": e, "val_loss": loss, "state_dict": {"model.<key>": tensor}}``), whose model comes from
  ``helpers.checkpoint_divergence.lab:make_model``, plus ``validation.npz`` (``x``,
  ``target``, ``repeat_id``, ``experiment_x``, ``experiment_target``, ``train_target``).

Seeded and single-threaded: the npz files hold the same arrays and the .pt files
the same bytes on every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from helpers.checkpoint_divergence import lab as it
from helpers.io import save_npz

NOTEBOOK = "03_checkpoint_divergence"


def simulate(cfg: it.InverseConfig | None = None) -> tuple[it.Dataset, it.TrainedRun]:
    cfg = cfg or it.InverseConfig()
    data = it.make_dataset(cfg)
    return data, it.train(data, cfg, keep_state_dicts=True)


def checkpoint_arrays(data: it.Dataset, run: it.TrainedRun) -> dict[str, np.ndarray]:
    """The arrays of notebook 03's ``checkpoints`` npz."""
    return {"pred": run.pred, "target": data.target, "epoch": run.epoch, "val_loss": run.val_loss,
            "train_target": data.train_target, "experiment_pred": run.experiment_pred,
            "experiment_target": data.experiment_target, "experiment_curve": data.experiment_x,
            "param_names": np.array(it.PARAM_NAMES), "repeat_id": data.repeat_id}


def validation_arrays(data: it.Dataset) -> dict[str, np.ndarray]:
    """The arrays of notebook 03's ``validation`` npz (the checkpoint-files way in)."""
    return {"x": data.val_x, "target": data.target, "repeat_id": data.repeat_id, "experiment_x": data.experiment_x,
            "experiment_target": data.experiment_target, "train_target": data.train_target}


def save_checkpoints(run: it.TrainedRun, out_dir: Path, prefix: str = "model.") -> list[Path]:
    """One Lightning-style file per epoch; the same tensors and file name give the same bytes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for epoch, loss, state in zip(run.epoch, run.val_loss, run.state_dicts, strict=True):
        path = out_dir / f"epoch_{int(epoch):02d}.pt"
        torch.save({"epoch": int(epoch), "val_loss": float(loss), "state_dict": {prefix + k: v for k, v in state.items()}}, path)
        paths.append(path)
    return paths


def write(out_dir: Path, cfg: it.InverseConfig | None = None) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data, run = simulate(cfg or it.InverseConfig())
    return [save_npz(out_dir / "checkpoints.npz", checkpoint_arrays(data, run)),
            save_npz(out_dir / "validation.npz", validation_arrays(data)),
            *save_checkpoints(run, out_dir / "checkpoints")]
