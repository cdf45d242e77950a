"""Sample run for notebook 01: a multi-session, multi-channel regression evaluated
as a DistributedSampler run, with the metrics logged the buggy way.

The evaluation mimics a training script's validation loop: the validation set
(ordered by session) is split over ``world_size`` ranks by
``torch.utils.data.DistributedSampler`` (which pads it by repeating the first
samples), each rank evaluates its shard in batches, and the logged numbers are
computed as the buggy script does (configurable, so clean runs can be made too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps
from sklearn.metrics import explained_variance_score, r2_score
from torch.utils.data import DistributedSampler

NOTEBOOK = "01_r2_gap"


@dataclass
class R2GapConfig:
    # seed 49 reproduces the source's gap: logged r2=0.487, corr=0.681 vs pooled 0.343, 0.592
    seed: int = 49
    sessions: tuple = (160819, 160820, 160821, 160822, 160823)
    samples_per_session: int = 84  # 5 x 84 = 420 validation samples
    n_channels: int = 4
    n_features: int = 8
    world_size: int = 8  # 420 -> padded to 424 = 8 x 53
    batch_size: int = 16
    session_shift: float = 0.8  # sd of session mean offsets, in units of within-session sd
    session_scale: tuple = (0.2, 2.5)  # range of per-session noise sd multipliers
    noise: float = 1.0  # target noise the features cannot explain
    captured_shift: float = 0.8  # share of each session's offset the model predicts
    prediction_bias: float = 0.0  # constant added to every prediction
    # how the training script logged its metrics
    rank0_only: bool = True
    batch_mean: bool = True
    explained_variance: bool = True
    keep_padding: bool = True  # padded duplicates present in the predictions table
    per_session_correct: bool = True


def make_regression_task(n_per_session: int, sessions, n_channels: int, n_features: int,
                         rng: np.random.Generator, session_shift: float, session_scale, noise: float):
    """Features, targets and session ids of a session-structured regression (ordered by session)."""
    k = len(sessions)
    w = rng.normal(size=(n_features, n_channels)) / np.sqrt(n_features)
    # a session offset shared by all channels, plus a smaller per-channel part
    offsets = rng.normal(scale=session_shift, size=(k, 1)) + rng.normal(scale=0.3 * session_shift, size=(k, n_channels))
    scales = rng.uniform(*session_scale, size=k)
    x = rng.normal(size=(k * n_per_session, n_features))
    sess_idx = np.repeat(np.arange(k), n_per_session)
    signal = x @ w
    # sessions differ in mean (offsets) and in how noisy they are (scales)
    y = offsets[sess_idx] + signal + noise * scales[sess_idx, None] * rng.normal(size=signal.shape)
    return x.astype(np.float32), y.astype(np.float32), np.asarray(sessions)[sess_idx], offsets, scales, w


def simulate(cfg: R2GapConfig | None = None) -> tuple[pd.DataFrame, dict]:
    """The predictions table (long format, one row per sample x channel) and the logged JSON."""
    cfg = cfg or R2GapConfig()
    rng = np.random.default_rng(cfg.seed)
    x, y, sess, offsets, scales, w = make_regression_task(
        cfg.samples_per_session, cfg.sessions, cfg.n_channels, cfg.n_features, rng,
        cfg.session_shift, cfg.session_scale, cfg.noise)
    k = len(cfg.sessions)
    sess_idx = np.repeat(np.arange(k), cfg.samples_per_session)
    # a model that learned the signal (with estimation error) and part of each session's offset
    w_hat = w + rng.normal(scale=0.15, size=w.shape)
    pred = cfg.captured_shift * offsets[sess_idx] + x @ w_hat + cfg.prediction_bias
    n = len(y)

    rows = []
    for rank in range(cfg.world_size):
        sampler = DistributedSampler(range(n), num_replicas=cfg.world_size, rank=rank, shuffle=False)
        idx = np.fromiter(iter(sampler), dtype=np.int64)
        for b, start in enumerate(range(0, len(idx), cfg.batch_size)):
            for i in idx[start:start + cfg.batch_size]:
                rows.append((int(i), rank, b))
    ev = pd.DataFrame(rows, columns=["sample_id", "rank", "batch"])
    if not cfg.keep_padding:
        ev = ev.drop_duplicates("sample_id", keep="first").reset_index(drop=True)
    c = cfg.n_channels
    table = pd.DataFrame({
        "sample_id": np.repeat(ev["sample_id"].to_numpy(), c),
        "session": np.repeat(sess[ev["sample_id"]], c),
        "rank": np.repeat(ev["rank"].to_numpy(), c),
        "batch": np.repeat(ev["batch"].to_numpy(), c),
        "channel": np.tile(np.arange(c), len(ev)),
        "y_true": y[ev["sample_id"]].ravel().astype(float),
        "y_pred": pred[ev["sample_id"]].ravel().astype(np.float32).astype(float),
    })
    return table, logged_metrics(table, cfg)


def logged_metrics(table: pd.DataFrame, cfg: R2GapConfig) -> dict:
    """What the training script printed, computed the way its flags say (rounded to 3 decimals)."""
    ev = explained_variance_score if cfg.explained_variance else r2_score

    def metric_pair(rows: pd.DataFrame) -> tuple[float, float]:
        y, p = rows["y_true"].to_numpy(), rows["y_pred"].to_numpy()  # flattened over channels
        return float(ev(y, p)), float(sps.pearsonr(y, p).statistic)

    overall = table[table["rank"] == 0] if cfg.rank0_only else table.drop_duplicates(["sample_id", "channel"])
    if cfg.batch_mean:
        pairs = [metric_pair(b) for _, b in overall.groupby(["rank", "batch"], sort=True) if len(b) > 2]
        r2, corr = float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))
    else:
        r2, corr = metric_pair(overall)
    per_session = {}
    dedup = table.drop_duplicates(["sample_id", "channel"])
    for s, rows in dedup.groupby("session", sort=True):
        y, p = rows["y_true"].to_numpy(), rows["y_pred"].to_numpy()
        if cfg.per_session_correct:
            s_r2 = r2_score(y, p)
        else:
            s_r2 = ev(y, p)
        per_session[str(s)] = {"r2": round(float(s_r2), 3), "corr": round(float(sps.pearsonr(y, p).statistic), 3)}
    return {"r2": round(r2, 3), "corr": round(corr, 3), "per_session": per_session}


def write(out_dir: Path, cfg: R2GapConfig | None = None) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, reported = simulate(cfg or R2GapConfig())
    p1, p2 = out_dir / "predictions.parquet", out_dir / "reported.json"
    table.to_parquet(p1, index=False)
    p2.write_text(json.dumps(reported, indent=2) + "\n")
    return [p1, p2]


# --------------------------------------------------------------------------- small runs for the exercises
# a small run: 3 sessions x 40 samples, one output channel, 4 ranks, batches of 8 (the sample: 5 x 84,
# 4 channels, 8 ranks, batches of 16); simulating and diagnosing one takes well under a second
QUICK = {"sessions": ("a", "b", "c"), "samples_per_session": 40, "n_channels": 1, "world_size": 4, "batch_size": 8}


def quick_config(seed: int, **changes) -> R2GapConfig:
    """The configuration of a small seeded run for the notebook's exercises (:data:`QUICK`); ``changes``
    override any field of :class:`R2GapConfig`, e.g. ``world_size=8`` for a set the sampler pads,
    ``session_shift=0.0`` for sessions with one mean, ``prediction_bias=0.5`` for a biased model."""
    return R2GapConfig(**{**QUICK, "seed": seed, **changes})
