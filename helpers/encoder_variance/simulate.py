"""Sample run for notebook 02: small task encoders trained on synthetic puzzles.

A puzzle is a task with a hidden parameter ``theta`` (``n_factors`` numbers); a
demonstration of it is a few (x, y) pairs with ``y = x + A theta + noise``. An
encoder maps one demonstration to a task embedding; a decoder must predict the
outputs of new query inputs of the same puzzle from that embedding. Three
encoders are trained the same way and differ only in the latent:

- ``deterministic``: the embedding is the encoder output;
- ``collapsed_variational``: a Gaussian posterior (logvar head initialised at 0,
  32-d latent) with KL weight 1e-4: the posterior variance shrinks towards 0;
- ``healthy_variational``: the same with KL weight 1e-3.

The exported npz follows the input contract of notebook 02: ``z`` (posterior
means, eval mode), ``group`` (puzzle ids), and for the variational encoders
``z_samples`` (R passes with the latent sampled explicitly) and ``logvar``.
Everything is seeded and single-threaded, so the files are identical each run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from helpers.io import save_npz
from helpers.training import FastAdam, deterministic_torch

NOTEBOOK = "02_encoder_variance"


@dataclass(frozen=True)
class EncoderConfig:
    seed: int = 0
    n_factors: int = 8  # hidden task parameters per puzzle
    x_dim: int = 8
    pairs: int = 3  # (x, y) pairs per demonstration
    noise: float = 0.7  # sd of the output noise in a demonstration
    latent: int = 32
    hidden: int = 64
    dropout: float = 0.1
    steps: int = 200
    batch: int = 64  # puzzles per training step
    queries: int = 8  # query inputs per puzzle per step
    lr: float = 5e-3
    logvar_init: float = 0.0  # the logvar head's initial bias (0, a posterior variance of 1, as in the source)
    # the exported evaluation set
    n_puzzles: int = 64
    n_demos: int = 6
    n_passes: int = 8


# name -> (variational, KL weight)
ENCODERS = {
    "collapsed_variational": (True, 1e-4),
    "deterministic": (False, 0.0),
    "healthy_variational": (True, 1e-3),
}


class PuzzleTask:
    """Puzzles ``theta ~ N(0, I)``; demonstrations ``(x, x + A theta + noise)``."""

    def __init__(self, cfg: EncoderConfig):
        self.cfg = cfg
        g = torch.Generator().manual_seed(10_000 + cfg.seed)
        self.A = torch.randn(cfg.x_dim, cfg.n_factors, generator=g) / cfg.n_factors**0.5

    def puzzles(self, n: int, g: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.cfg.n_factors, generator=g)

    def shift(self, theta: torch.Tensor) -> torch.Tensor:
        return theta @ self.A.T

    def demonstrations(self, theta: torch.Tensor, n_demos: int, g: torch.Generator) -> torch.Tensor:
        """(n, n_demos, pairs * 2 * x_dim): each demonstration's pairs, flattened."""
        c = self.cfg
        x = torch.randn(len(theta), n_demos, c.pairs, c.x_dim, generator=g)
        y = x + self.shift(theta)[:, None, None, :] + c.noise * torch.randn(x.shape, generator=g)
        return torch.cat([x, y], dim=-1).flatten(-2)

    def queries(self, theta: torch.Tensor, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(len(theta), n, self.cfg.x_dim, generator=g)
        return x, x + self.shift(theta)[:, None, :]


class TaskEncoder(nn.Module):
    """Demonstration -> posterior mean (and logvar if variational). Has dropout, so
    ``train()`` and ``eval()`` passes differ; the latent is *not* sampled here."""

    def __init__(self, cfg: EncoderConfig, variational: bool):
        super().__init__()
        d_in = cfg.pairs * 2 * cfg.x_dim
        self.variational = variational
        self.body = nn.Sequential(nn.Linear(d_in, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU())
        self.mu = nn.Linear(cfg.hidden, cfg.latent)
        self.logvar = nn.Linear(cfg.hidden, cfg.latent) if variational else None
        if self.logvar is not None:  # logvar starts at cfg.logvar_init for every input (0 in the source)
            nn.init.zeros_(self.logvar.weight)
            nn.init.constant_(self.logvar.bias, cfg.logvar_init)

    def forward(self, demos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.body(demos)
        return self.mu(h), (self.logvar(h) if self.logvar is not None else None)

    def sample(self, demos: torch.Tensor) -> torch.Tensor:
        """One stochastic embedding per demonstration: the latent sampled explicitly,
        whatever the module's train/eval mode (eval only turns dropout off)."""
        mu, logvar = self(demos)
        if logvar is None:
            return mu
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


class Decoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cfg.latent + cfg.x_dim, cfg.hidden), nn.ReLU(),
                                 nn.Linear(cfg.hidden, cfg.x_dim))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z[:, None, :].expand(-1, x.shape[1], -1), x], dim=-1))


def train_encoder(kl_weight: float, variational: bool = True, cfg: EncoderConfig = EncoderConfig(),
                  seed: int | None = None) -> tuple[TaskEncoder, dict]:
    """Train encoder + decoder on fresh puzzles each step (MSE + kl_weight * KL); returns the
    encoder in eval mode and the last losses. Seeded; about a second on one CPU thread."""
    enc, _, log = train(kl_weight, variational, cfg, seed)
    return enc, log


def train(kl_weight: float, variational: bool = True, cfg: EncoderConfig = EncoderConfig(),
          seed: int | None = None) -> tuple[TaskEncoder, Decoder, dict]:
    """:func:`train_encoder`, returning the decoder too (in eval mode) for :func:`task_error`."""
    seed = cfg.seed if seed is None else seed
    task = PuzzleTask(cfg)
    with deterministic_torch(seed):
        g = torch.Generator().manual_seed(seed + 1)
        enc, dec = TaskEncoder(cfg, variational), Decoder(cfg)
        opt = FastAdam([*enc.parameters(), *dec.parameters()], lr=cfg.lr)
        enc.train()
        for _ in range(cfg.steps):
            theta = task.puzzles(cfg.batch, g)
            demos = task.demonstrations(theta, 1, g)[:, 0]
            xq, yq = task.queries(theta, cfg.queries, g)
            mu, logvar = enc(demos)
            if logvar is not None:
                z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
                kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(dim=1).mean()
            else:
                z, kl = mu, torch.zeros(())
            mse = ((dec(z, xq) - yq) ** 2).mean()
            loss = mse + kl_weight * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
    enc.eval()
    dec.eval()
    return enc, dec, {"mse": float(mse.detach()), "kl": float(kl.detach()), "kl_weight": kl_weight}


def task_error(enc: TaskEncoder, dec: Decoder, cfg: EncoderConfig = EncoderConfig(), n_puzzles: int = 4096,
               sample: bool = True) -> np.ndarray:
    """Per-puzzle squared error of the decoder's predictions on ``n_puzzles`` fresh puzzles (one
    demonstration each, ``cfg.queries`` queries; never seen in training nor in the evaluation set).
    ``sample``: decode a sampled latent, as in training; else the posterior mean. Seeded."""
    task = PuzzleTask(cfg)
    g = torch.Generator().manual_seed(cfg.seed + 4)
    theta = task.puzzles(n_puzzles, g)
    demos = task.demonstrations(theta, 1, g)[:, 0]
    xq, yq = task.queries(theta, cfg.queries, g)
    with deterministic_torch(cfg.seed + 5), torch.no_grad():
        z = enc.sample(demos) if sample else enc(demos)[0]
        return ((dec(z, xq) - yq) ** 2).mean(dim=(1, 2)).numpy().astype(np.float64)


def evaluation_set(cfg: EncoderConfig = EncoderConfig(), seed: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Demonstrations (n_puzzles * n_demos, d_in) of fresh puzzles and their puzzle ids."""
    seed = cfg.seed if seed is None else seed
    task = PuzzleTask(cfg)
    g = torch.Generator().manual_seed(seed + 2)
    theta = task.puzzles(cfg.n_puzzles, g)
    demos = task.demonstrations(theta, cfg.n_demos, g).reshape(cfg.n_puzzles * cfg.n_demos, -1)
    group = np.repeat(np.arange(1000, 1000 + cfg.n_puzzles), cfg.n_demos)
    return demos, group


def embed(enc: TaskEncoder, demos: torch.Tensor, n_passes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The notebook-02 arrays: eval-mode posterior means, and for a variational encoder
    ``n_passes`` explicit samples of the latent plus the logvar."""
    with deterministic_torch(seed), torch.no_grad():
        enc.eval()
        mu, logvar = enc(demos)
        out = {"z": mu.numpy().astype(np.float32)}
        if logvar is not None:
            eps = torch.randn(mu.shape[0], n_passes, mu.shape[1])
            samples = mu[:, None, :] + torch.exp(0.5 * logvar)[:, None, :] * eps
            out["z_samples"] = samples.numpy().astype(np.float32)
            out["logvar"] = logvar.numpy().astype(np.float32)
    return out


def repeated_passes(enc: TaskEncoder, demos: torch.Tensor, n_passes: int, mode: str, seed: int = 0) -> np.ndarray:
    """(N, n_passes, latent) repeated passes of the same inputs, the three ways a script might do it:
    ``"train"`` (dropout on, latent sampled), ``"eval"`` (the usual ``model.eval()`` forward that
    returns the mean: dropout off, nothing sampled), ``"eval+sample"`` (dropout off, latent sampled
    explicitly - the right way to measure sampling variance)."""
    if mode not in ("train", "eval", "eval+sample"):
        raise ValueError(f"mode must be 'train', 'eval' or 'eval+sample', got {mode!r}")
    was_training = enc.training
    with deterministic_torch(seed), torch.no_grad():
        enc.train(mode == "train")
        passes = [enc(demos)[0] if mode == "eval" else enc.sample(demos) for _ in range(n_passes)]
    enc.train(was_training)
    return torch.stack(passes, dim=1).numpy()


def simulate(name: str, cfg: EncoderConfig = EncoderConfig()) -> dict[str, np.ndarray]:
    """Train encoder ``name`` (a key of :data:`ENCODERS`) and return its npz arrays."""
    variational, kl_weight = ENCODERS[name]
    enc, _ = train_encoder(kl_weight, variational, cfg)
    demos, group = evaluation_set(cfg)
    return {**embed(enc, demos, cfg.n_passes, seed=cfg.seed + 3), "group": group}


def write(out_dir: Path, cfg: EncoderConfig = EncoderConfig(), names=tuple(ENCODERS)) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [save_npz(out_dir / f"{name}.npz", simulate(name, cfg)) for name in names]


def with_seed(seed: int, **changes) -> EncoderConfig:
    """A configuration for a run that is not the sample (another seed, other sizes)."""
    return replace(EncoderConfig(), seed=seed, **changes)


# --------------------------------------------------------------------------- quick runs for the exercises
# a quick run: 60 training steps of 32 puzzles (about a third of a second on one CPU thread), evaluated on
# 32 puzzles x 4 demonstrations; the sample's encoders train 200 steps of 64 puzzles
QUICK = {"steps": 60, "batch": 32, "n_puzzles": 32, "n_demos": 4}


def quick_config(seed: int, **changes) -> EncoderConfig:
    """A configuration for a quick seeded run of the notebook's exercises (:data:`QUICK`); ``changes``
    override any field, e.g. ``noise=3.0, pairs=1`` for demonstrations that say little about the puzzle,
    ``n_factors=1`` for puzzles that differ in one hidden number, ``n_demos=1`` for one demonstration each."""
    return with_seed(seed, **{**QUICK, **changes})


def arrays_of(enc: TaskEncoder, cfg: EncoderConfig = EncoderConfig(), seed: int | None = None) -> dict[str, np.ndarray]:
    """The notebook-02 arrays of a trained encoder on the evaluation set of ``cfg`` (fresh puzzles of its
    task), as :func:`simulate` exports them: ``z``, ``group``, and for a variational encoder ``z_samples``
    and ``logvar``. ``seed`` picks another evaluation set of the same task (default ``cfg.seed``)."""
    seed = cfg.seed if seed is None else seed
    demos, group = evaluation_set(cfg, seed)
    return {**embed(enc, demos, cfg.n_passes, seed=seed + 3), "group": group}
