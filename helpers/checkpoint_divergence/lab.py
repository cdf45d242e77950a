"""The inverse model of notebook 03, its data, and its training loop (the mechanism lab; the simulator uses it too).

Profiles are drawn under the nested constraints of the strain-profile
parametrisation (:mod:`helpers.checkpoint_divergence.rocking_curve`), one parameter after the other::

    Dmax1 ~ U(0.004, 0.03)          D01 ~ U(0.001, min(Dmax1, 0.029))   (D01 <= Dmax1)
    L1    ~ U(1500, 7000) Å         Rp1 ~ U(0, 0.7 L1)            (the peak lies inside the layer)
    D02   ~ U(0.001, 0.03 - D01)                                        (D01 + D02 <= 0.03)
    L2    ~ U(300, L1 / 2)          Rp2 ~ U(-L2, 0)

Each step is uniform, the joint density is not: regions where a constraint
squeezes a later parameter (D01 close to Dmax1 with a large Dmax1, D02 against
its ceiling, thick second components) hold few samples. A measured curve is the
forward model's log10 intensity with Poisson counting noise (:func:`measure`).

:class:`InverseMLP` maps a curve to the seven parameters in their physical units;
its input standardisation and output range are buffers, so a checkpoint's
state_dict is all it needs (:func:`make_model` is the ``model_factory``). It is
trained on the range-normalised parameters (MSE, the ``val_loss`` it logs) with a
checkpoint every epoch. Training is seeded and single-threaded: same seed, same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from helpers.checkpoint_divergence import rocking_curve as rc
from helpers.training import FastAdam, deterministic_torch

PARAM_NAMES = rc.PARAM_NAMES
LOW = np.array([0.004, 0.001, 1500.0, 0.0, 0.001, 300.0, -3500.0])
HIGH = np.array([0.03, 0.03, 7000.0, 4900.0, 0.029, 3500.0, 0.0])
# the experiment: a profile close to several constraint edges at once (D01 near Dmax1, D01 + D02 near 0.03,
# a deep peak, a thick second component)
EXPERIMENT = np.array([0.0279, 0.0258, 6700.0, 4000.0, 0.0038, 2800.0, -2000.0])


def sample_parameters(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 7) profiles under the nested constraints (see the module docstring)."""
    u = rng.random((n, 7))
    dmax = 0.004 + u[:, 0] * (0.03 - 0.004)
    d01 = 0.001 + u[:, 1] * (np.minimum(dmax, 0.029) - 0.001)  # leaves room for D02 >= 0.001
    l1 = 1500 + u[:, 2] * 5500
    rp1 = u[:, 3] * 0.7 * l1
    d02 = 0.001 + u[:, 4] * (0.029 - d01)
    l2 = 300 + u[:, 5] * (l1 / 2 - 300)
    rp2 = -u[:, 6] * l2
    return np.stack([dmax, d01, l1, rp1, d02, l2, rp2], axis=1)


def satisfies_constraints(p: np.ndarray) -> np.ndarray:
    """Which rows of (n, 7) profiles obey the nested constraints."""
    p = np.atleast_2d(p)
    dmax, d01, l1, rp1, d02, l2, rp2 = p.T
    return ((dmax >= 0.004) & (dmax <= 0.03) & (d01 >= 0.001) & (d01 <= dmax) & (l1 >= 1500) & (l1 <= 7000)
            & (rp1 >= 0) & (rp1 <= 0.7 * l1) & (d02 >= 0.001) & (d01 + d02 <= 0.03 + 1e-12)
            & (l2 >= 300) & (l2 <= l1 / 2) & (rp2 <= 0) & (rp2 >= -l2))


@dataclass(frozen=True)
class InverseConfig:
    seed: int = 0  # seeds the data and the training (see ``train_seed``)
    n_train: int = 1500
    n_val: int = 300  # distinct validation profiles
    repeats: int = 2  # noisy measurements of each validation profile
    peak_counts: float = 1e5  # counts at relative intensity 1: Poisson noise, sd(log10 I) = 0.434 / sqrt(counts)
    hidden: int = 32
    dropout: float = 0.1
    epochs: int = 30
    batch: int = 64
    lr: float = 3e-3
    experiment: tuple = tuple(EXPERIMENT)


@dataclass
class Dataset:
    train_x: np.ndarray
    train_target: np.ndarray
    val_x: np.ndarray
    target: np.ndarray
    repeat_id: np.ndarray
    experiment_x: np.ndarray
    experiment_target: np.ndarray


def make_dataset(cfg: InverseConfig = InverseConfig()) -> Dataset:
    """Training and validation curves (float32) of profiles drawn under the constraints; seeded."""
    rng = np.random.default_rng(cfg.seed)
    train_t = sample_parameters(cfg.n_train, rng)
    val_t = sample_parameters(cfg.n_val, rng)
    exp_t = np.asarray(cfg.experiment, dtype=np.float64)
    with deterministic_torch(cfg.seed):
        curves = rc.forward(torch.as_tensor(np.concatenate([train_t, val_t, exp_t[None]]), dtype=torch.float32)).numpy()
    train_c, val_c, exp_c = curves[:cfg.n_train], curves[cfg.n_train:-1], curves[-1]
    noisy = lambda c: measure(c, cfg.peak_counts, rng)  # noqa: E731
    val_rep = np.repeat(val_c, cfg.repeats, axis=0)
    return Dataset(noisy(train_c), train_t, noisy(val_rep), np.repeat(val_t, cfg.repeats, axis=0),
                   np.repeat(np.arange(cfg.n_val), cfg.repeats), noisy(exp_c), exp_t)


def measure(curves: np.ndarray, peak_counts: float, rng: np.random.Generator) -> np.ndarray:
    """A measurement of log10 intensity curves: Poisson counting noise (normal approximation on the log scale,
    sd = log10(e) / sqrt(counts)), so the weak tails are noisier than the peaks."""
    counts = peak_counts * 10.0 ** np.asarray(curves, dtype=np.float64)
    return (curves + np.log10(np.e) / np.sqrt(counts) * rng.standard_normal(np.shape(curves))).astype(np.float32)


class InverseMLP(nn.Module):
    """Curve (n, L) -> profile parameters (n, 7) in physical units.

    ``normalised(x)`` is the network's own output (parameters mapped to [0, 1] by the
    ranges ``p_low`` + ``p_span``), on which it is trained.
    """

    def __init__(self, n_inputs: int = rc.N_POINTS, hidden: int = 32, dropout: float = 0.1, n_outputs: int = 7):
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(n_inputs))
        self.register_buffer("x_std", torch.ones(n_inputs))
        self.register_buffer("p_low", torch.zeros(n_outputs))
        self.register_buffer("p_span", torch.ones(n_outputs))
        self.net = nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.x_mean) / self.x_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.p_low + self.p_span * self.normalised(x)


def make_model() -> InverseMLP:
    """The ``model_factory`` of the sample run: an untrained InverseMLP of the sample's shape."""
    return InverseMLP()


@dataclass
class TrainedRun:
    """Per-epoch outputs of one training run (epochs 1..E)."""

    epoch: np.ndarray
    val_loss: np.ndarray
    train_loss: np.ndarray
    pred: np.ndarray  # (E, N, 7) float32 predictions on the validation curves
    experiment_pred: np.ndarray  # (E, 7)
    state_dicts: list = field(default_factory=list, repr=False)


def train(data: Dataset, cfg: InverseConfig = InverseConfig(), seed: int | None = None,
          keep_state_dicts: bool = False) -> TrainedRun:
    """Train an InverseMLP with a checkpoint (predictions, val loss, optionally the weights) after every epoch."""
    seed = cfg.seed if seed is None else seed
    xt, yt = torch.as_tensor(data.train_x), torch.as_tensor(data.train_target, dtype=torch.float32)
    xv, yv = torch.as_tensor(data.val_x), torch.as_tensor(data.target, dtype=torch.float32)
    xe = torch.as_tensor(data.experiment_x)[None]
    low, span = torch.as_tensor(LOW, dtype=torch.float32), torch.as_tensor(HIGH - LOW, dtype=torch.float32)
    epochs, val_loss, train_loss, preds, exp_preds, states = [], [], [], [], [], []
    with deterministic_torch(seed):
        g = torch.Generator().manual_seed(seed + 1)
        model = InverseMLP(xt.shape[1], cfg.hidden, cfg.dropout)
        model.x_mean.copy_(xt.mean(0))
        model.x_std.copy_(xt.std(0).clamp(min=1e-6))
        model.p_low.copy_(low)
        model.p_span.copy_(span)
        opt = FastAdam(model.net.parameters(), lr=cfg.lr)
        for e in range(1, cfg.epochs + 1):
            model.train()
            order = torch.randperm(len(xt), generator=g)
            total = 0.0
            for s in range(0, len(xt), cfg.batch):
                idx = order[s:s + cfg.batch]
                loss = ((model.normalised(xt[idx]) - (yt[idx] - low) / span) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            model.eval()
            with torch.no_grad():
                val_loss.append(float(((model.normalised(xv) - (yv - low) / span) ** 2).mean()))
                preds.append(model(xv).numpy())
                exp_preds.append(model(xe).numpy()[0])
            epochs.append(e)
            train_loss.append(total / len(xt))
            if keep_state_dicts:
                states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return TrainedRun(np.array(epochs), np.array(val_loss), np.array(train_loss), np.stack(preds).astype(np.float32),
                      np.stack(exp_preds).astype(np.float32), states)


def with_seed(seed: int, **changes) -> InverseConfig:
    """A configuration for a run that is not the sample (another seed, other sizes)."""
    return replace(InverseConfig(), seed=seed, **changes)


# the lab's smaller setting (a few seconds per training)
LAB = InverseConfig(n_train=800, n_val=60, repeats=1)


def seed_lab(seeds=(0, 1), cfg: InverseConfig | None = None,
             data: Dataset | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The mechanism lab: the same data, the same model, training seeds differ (initialisation, batch order).

    Returns per-epoch curves (seed, epoch, val_loss, experiment_error) and one row per seed (its val-loss-best
    epoch, experiment-best epoch, final val loss). The experiment error is standardised by the training targets' SD.
    ``data``: :func:`make_dataset` of ``cfg`` when already made.
    """
    from helpers.checkpoint_divergence import checkpoints as ck

    cfg = cfg or LAB
    data = data if data is not None else make_dataset(cfg)
    scale = ck.fit_scaler(data.train_target).scale_
    rows, summary = [], []
    for s in seeds:
        run = train(data, cfg, seed=int(s))
        exp_err = ck.per_sample_errors(run.experiment_pred[:, None], data.experiment_target[None], scale)[:, 0]
        rows.append(pd.DataFrame({"seed": int(s), "epoch": run.epoch, "val_loss": run.val_loss, "experiment_error": exp_err}))
        summary.append({"seed": int(s), "val_best_epoch": int(run.epoch[run.val_loss.argmin()]),
                        "experiment_best_epoch": int(run.epoch[exp_err.argmin()]), "final_val_loss": float(run.val_loss[-1]),
                        "experiment_error_at_val_best": float(exp_err[run.val_loss.argmin()]),
                        "best_experiment_error": float(exp_err.min())})
    curves = pd.concat(rows, ignore_index=True)
    return curves, pd.DataFrame(summary).set_index("seed")


def profiles_near(point: np.ndarray, n: int, reference: np.ndarray, rng: np.random.Generator,
                  pool: int = 20000) -> np.ndarray:
    """``n`` profiles drawn under the constraints: the nearest of ``pool`` draws to ``point``, in the space of
    ``reference`` (the training targets) standardised."""
    from helpers.checkpoint_divergence import checkpoints as ck

    scaler = ck.fit_scaler(reference)
    draws = sample_parameters(pool, rng)
    dist = np.linalg.norm(ck.standardise(draws, scaler) - ck.standardise(np.asarray(point)[None], scaler), axis=1)
    return draws[np.argsort(dist, kind="stable")[:n]]


def with_training_profiles(data: Dataset, extra: np.ndarray, cfg: InverseConfig, rng: np.random.Generator) -> Dataset:
    """``data`` with ``extra`` training profiles added, measured like the others (forward model + counting noise)."""
    curves = rc.forward(torch.as_tensor(extra, dtype=torch.float32)).numpy()
    return replace(data, train_x=np.concatenate([data.train_x, measure(curves, cfg.peak_counts, rng)]),
                   train_target=np.concatenate([data.train_target, extra]))


def coverage_lab(seeds=(0, 1), extra: int = 200, cfg: InverseConfig | None = None,
                 data: Dataset | None = None) -> pd.DataFrame:
    """The fix for a sparsely covered experiment, measured: the lab's training set plus ``extra`` profiles drawn
    near the experiment ("near"), or plus as many drawn from the same constrained prior ("prior"), trained with
    each seed. One row per (seed, arm): the epoch with the lowest val loss, the experiment's error there and the
    validation error there (both standardised MSE, scaled by the base training targets' SD)."""
    from helpers.checkpoint_divergence import checkpoints as ck

    cfg = cfg or LAB
    data = data if data is not None else make_dataset(cfg)
    scale = ck.fit_scaler(data.train_target).scale_
    rng = np.random.default_rng(cfg.seed + 100)
    arms = {"near": profiles_near(data.experiment_target, extra, data.train_target, rng),
            "prior": sample_parameters(extra, rng)}
    rows = []
    for name, profiles in arms.items():
        with deterministic_torch(cfg.seed):
            grown = with_training_profiles(data, profiles, cfg, np.random.default_rng(cfg.seed + 101))
        for s in seeds:
            run = train(grown, cfg, seed=int(s))
            best = int(run.val_loss.argmin())
            exp_err = ck.per_sample_errors(run.experiment_pred[best][None], data.experiment_target[None], scale)[0, 0]
            rows.append({"seed": int(s), "arm": name, "extra_profiles": extra, "val_best_epoch": int(run.epoch[best]),
                         "experiment_error": float(exp_err),
                         "val_error": float(ck.per_sample_errors(run.pred[best], data.target, scale).mean())})
    return pd.DataFrame(rows)


def _listed(values, fmt: str = "", unit: str = "") -> str:
    return " and ".join(f"{v:{fmt}}{unit}" for v in values)


def support(seeds: pd.DataFrame | None = None, coverage: pd.DataFrame | None = None) -> dict[str, str]:
    """What the lab measured for the fixes, one sentence per finding id, from :func:`seed_lab`'s per-seed table
    and :func:`coverage_lab`'s table (the sample's inverse model retrained, not the run under diagnosis)."""
    out = {}
    if seeds is not None and len(seeds):
        adv = seeds["experiment_error_at_val_best"] / seeds["best_experiment_error"]
        moved = (seeds["experiment_best_epoch"] != seeds["val_best_epoch"]).any() or \
            seeds["experiment_best_epoch"].nunique() > 1
        out["swing_within_noise"] = (
            f"the sample's inverse model retrained on the same data with seeds {_listed(seeds.index)} fitted the "
            f"experiment best at epochs {_listed(seeds['experiment_best_epoch'])}, its val-loss-best epochs being "
            f"{_listed(seeds['val_best_epoch'])} ({_listed(adv, '.2f', 'x')} better there than at the val-loss-best); "
            + ("the experiment-best epoch moved with the seed." if moved else "the experiment-best epoch did not move."))
    if coverage is not None and len(coverage):
        t = coverage.pivot(index="seed", columns="arm")
        lower = bool((t["experiment_error", "near"] < t["experiment_error", "prior"]).all())
        n = int(coverage["extra_profiles"].iloc[0])
        out["experiment_sparse_coverage"] = (
            f"the sample's inverse model trained with {n} extra profiles drawn near the experiment instead of {n} from "
            f"the prior had an experiment error of {_listed(t['experiment_error', 'near'], '.3g')} instead of "
            f"{_listed(t['experiment_error', 'prior'], '.3g')} (seeds {_listed(t.index)}; "
            + ("lower with every seed" if lower else "not lower with every seed")
            + f"), at a validation error of {_listed(t['val_error', 'near'], '.3g')} instead of "
            f"{_listed(t['val_error', 'prior'], '.3g')}.")
    return out
