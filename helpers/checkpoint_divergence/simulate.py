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

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from helpers.checkpoint_divergence import lab as it
from helpers.checkpoint_divergence import rocking_curve as rc
from helpers.io import save_npz
from helpers.training import deterministic_torch

NOTEBOOK = "03_checkpoint_divergence"


def simulate(cfg: it.InverseConfig | None = None) -> tuple[it.Dataset, it.TrainedRun]:
    cfg = cfg or it.InverseConfig()
    data = it.make_dataset(cfg)
    return data, it.train(data, cfg, keep_state_dicts=True)


def with_experiment(data: it.Dataset, run: it.TrainedRun, profile, seed: int = 0,
                    peak_counts: float = it.InverseConfig().peak_counts) -> tuple[it.Dataset, it.TrainedRun]:
    """The same training and checkpoints with another experiment: the profile ``profile`` (7,) measured once
    (forward model and Poisson counting noise at ``peak_counts``, seeded by ``seed``) and predicted by every
    checkpoint of ``run`` (from its state dicts, which :func:`simulate` keeps).

    Returns ``(data, run)`` with the new experiment (nothing else changes); :func:`checkpoint_arrays` of them
    is the run notebook 03 reads. No training: a few milliseconds (notebook 03's exercises).
    """
    if not run.state_dicts:
        raise ValueError("run holds no state dicts: make it with simulate() (or train(..., keep_state_dicts=True))")
    target = np.asarray(profile, dtype=np.float64).reshape(-1)
    with deterministic_torch(seed), torch.no_grad():
        curve = rc.forward(torch.as_tensor(target[None], dtype=torch.float32)).numpy()
        x = it.measure(curve, peak_counts, np.random.default_rng(seed))
        hidden, n_inputs = run.state_dicts[0]["net.0.weight"].shape
        model = it.InverseMLP(n_inputs, hidden, n_outputs=len(target))
        preds = []
        for state in run.state_dicts:
            model.load_state_dict(state)
            model.eval()
            preds.append(model(torch.as_tensor(x)).numpy()[0])
    return (replace(data, experiment_x=x[0], experiment_target=target),
            replace(run, experiment_pred=np.stack(preds).astype(np.float32)))


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
