"""Sample run for notebook 05: augmentation applied before the train/val split.

The source's structure at 1/200 of its size: parents in nine (k, m) groups, hard groups given
50 noisy copies, medium 25, easy none (2% noise), while the config's comments claim 2, 1 and 0;
then a row-wise 85/15 split. A model is trained on the training rows; its per-group validation
log2-MSE is written next to a clean baseline's (the same model on the originals, split by
parent, no augmentation), and its final train and validation losses to ``losses.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.augmentation_leakage import lab

NOTEBOOK = "05_augmentation_leakage"


@dataclass
class LeakageConfig:
    seed: int = 5
    per_group: int = 60  # the source had 12,000 parents per group
    noise: float = 0.02
    val_fraction: float = 0.15
    copies: dict = field(default_factory=lambda: dict(lab.COPIES))
    declared: dict = field(default_factory=lambda: dict(lab.DECLARED))
    order: str = "augment_then_split"  # or "split_then_augment", "group_split"


def augmented_split(cfg: LeakageConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of a run and its validation mask, augmented and split in ``cfg.order``."""
    parents = lab.make_parents(cfg.per_group, cfg.seed)
    if cfg.order == "augment_then_split":
        rows = lab.augment(parents, cfg.copies, cfg.noise, cfg.seed + 1)
        return rows, lab.split_rows(rows, cfg.val_fraction, cfg.seed)
    if cfg.order == "split_then_augment":
        p_val = lab.split_rows(parents, cfg.val_fraction, cfg.seed)
        train = lab.augment(parents[~p_val], cfg.copies, cfg.noise, cfg.seed + 1)
        rows = pd.concat([train, parents[p_val].assign(is_augmented=0)], ignore_index=True)
        return rows, np.r_[np.zeros(len(train), bool), np.ones(int(p_val.sum()), bool)]
    if cfg.order == "group_split":
        rows = lab.augment(parents, cfg.copies, cfg.noise, cfg.seed + 1)
        return rows, lab.split_by_parent(rows, cfg.val_fraction, cfg.seed)
    raise ValueError(f"unknown order {cfg.order!r}")


def simulate(cfg: LeakageConfig | None = None) -> dict:
    """{"samples", "group_metrics", "declared_copies", "losses"} of one run."""
    cfg = cfg or LeakageConfig()
    rows, val = augmented_split(cfg)
    parents = lab.make_parents(cfg.per_group, cfg.seed)  # the baseline is trained on the originals, split by parent
    est = lab.fit(rows[~val], cfg.seed)
    run = lab.per_group_mse(est, rows[val])
    p_val = lab.split_by_parent(parents, cfg.val_fraction, cfg.seed)
    base = lab.per_group_mse(lab.fit(parents[~p_val], cfg.seed), parents[p_val])
    metrics = pd.concat([pd.DataFrame({"group": run.index, "run": "this_run", "value": run.to_numpy()}),
                         pd.DataFrame({"group": base.index, "run": "baseline", "value": base.to_numpy()})],
                        ignore_index=True)
    metrics["value"] = metrics["value"].round(4)  # as a training log prints them
    samples = rows.assign(split=np.where(val, "val", "train"))
    samples.insert(0, "sample_id", np.arange(len(samples), dtype=np.int64))
    samples = samples[["sample_id", "split", "group", "tier", "parent_id", "is_augmented", "target", *lab.FEATURES]]
    samples[lab.FEATURES] = samples[lab.FEATURES].astype(np.float32)  # as a training pipeline stores them
    samples["target"] = samples["target"].astype(np.float32)
    declared = {lab.group_name(k, m): cfg.declared[t] for (k, m), t in lab.GROUPS.items()}
    x = samples[lab.FEATURES].to_numpy(np.float64)
    y = samples["target"].to_numpy(np.float64)
    losses = {"train_loss": round(float(np.mean((est.predict(x[~val]) - y[~val]) ** 2)), 6),
              "val_loss": round(float(np.mean((est.predict(x[val]) - y[val]) ** 2)), 6)}
    return {"samples": samples, "group_metrics": metrics, "declared_copies": declared, "losses": losses}


def write(out_dir: Path, cfg: LeakageConfig | None = None) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = simulate(cfg)
    paths = [out_dir / "samples.parquet", out_dir / "group_metrics.csv", out_dir / "declared_copies.json",
             out_dir / "losses.json"]
    run["samples"].to_parquet(paths[0], index=False)
    run["group_metrics"].to_csv(paths[1], index=False, float_format="%.4f")
    paths[2].write_text(json.dumps(run["declared_copies"], indent=2) + "\n")
    paths[3].write_text(json.dumps(run["losses"], indent=2) + "\n")
    return paths


# --------------------------------------------------------------------------- exercises
def rows(cfg: LeakageConfig | None = None) -> pd.DataFrame:
    """The samples table :func:`simulate` makes for ``cfg`` (the same rows and split), without training its
    model: no group metrics and no logged losses, in a fraction of the time. For exercises on the rows only."""
    cfg = cfg or LeakageConfig()
    table, val = augmented_split(cfg)
    samples = table.assign(split=np.where(val, "val", "train"))
    samples.insert(0, "sample_id", np.arange(len(samples), dtype=np.int64))
    samples = samples[["sample_id", "split", "group", "tier", "parent_id", "is_augmented", "target", *lab.FEATURES]]
    samples[lab.FEATURES] = samples[lab.FEATURES].astype(np.float32)
    samples["target"] = samples["target"].astype(np.float32)
    return samples


def unlabelled_pair(seed: int, **changes) -> dict[str, pd.DataFrame]:
    """Two runs' samples tables (:func:`rows`) for an exercise, ``"A"`` and ``"B"``: the same task, one augmented
    before its row-wise split, the other split first and only its training rows augmented. Which is which is
    drawn from ``seed`` and recorded nowhere in the tables (their rows are shuffled, ``sample_id`` numbered
    afresh); ``changes`` set other fields of :class:`LeakageConfig`."""
    orders = np.random.default_rng([seed, 5]).permutation(["augment_then_split", "split_then_augment"])
    out = {}
    for name, order in zip("AB", orders, strict=True):
        table = rows(LeakageConfig(**{"seed": seed, **changes, "order": str(order)}))
        table = table.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        out[name] = table.assign(sample_id=np.arange(len(table), dtype=np.int64))
    return out


def parameters(out_dir: Path, **changes) -> dict:
    """The parameters of ``diagnosis.load_inputs`` for the run in ``out_dir``: its ``samples.parquet`` and, where
    they are there (as :func:`write` writes them), its declared copies, group metrics and logged losses; seed 0,
    no output. ``changes`` set any of them."""
    out_dir = Path(out_dir)
    losses_path = out_dir / "losses.json"
    losses = json.loads(losses_path.read_text()) if losses_path.exists() else {}
    companion = {name: str(out_dir / file) if (out_dir / file).exists() else ""
                 for name, file in (("declared_copies", "declared_copies.json"), ("group_metrics", "group_metrics.csv"))}
    return {"samples": str(out_dir / "samples.parquet"), "feature_columns": [], **companion, "baseline_run": "baseline",
            "train_loss": losses.get("train_loss", float("nan")), "val_loss": losses.get("val_loss", float("nan")),
            "output_dir": "", "run_demos": False, "seed": 0, **changes}
