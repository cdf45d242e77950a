"""Figures of notebook 03 (each returns a matplotlib Figure)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers.checkpoint_divergence import checkpoints as ck
from helpers.checkpoint_divergence.diagnosis import Diagnosis

# the training scatter of the coverage figure draws at most this many points (a seeded subsample, said in its
# legend): a million points take half a minute to draw and look the same
MAX_SCATTER = 20_000


def errors_across_checkpoints(d: Diagnosis) -> plt.Figure:
    """Val loss and the experiment's errors per checkpoint, relative to the val-loss-best checkpoint, over the
    band of validation samples' own relative errors (the noise floor)."""
    ep = d.run.epoch
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    if d.noise is not None:
        q = d.noise.band
        ax.fill_between(ep, q[:, 0], q[:, -1], color="0.85", label="validation samples, 5-95%")
        ax.fill_between(ep, q[:, 1], q[:, -2], color="0.7", label="validation samples, 25-75%")
        ax.plot(ep, q[:, len(d.noise.quantiles) // 2], color="0.4", lw=1, label="validation samples, median")
    ax.plot(ep, d.run.val_loss / d.run.val_loss[d.ref], "k-", lw=2, label="val loss")
    if d.experiment_param_err is not None:
        ax.plot(ep, d.experiment_param_err / d.experiment_param_err[d.ref], "C3o-", ms=4, label="experiment, parameter error")
    if d.experiment_curve_err is not None:
        ax.plot(ep, d.experiment_curve_err / d.experiment_curve_err[d.ref], "C0s--", ms=3, label="experiment, curve error")
    ax.axvline(d.val_best_epoch, color="k", ls=":", lw=1)
    if d.ideal is not None:
        ax.axvline(d.ideal_epoch, color="C3", ls=":", lw=1)
    ax.set(yscale="log", xlabel="epoch", ylabel=f"error / error at epoch {d.val_best_epoch} (val-loss best)")
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


def coverage(d: Diagnosis) -> plt.Figure:
    """k-NN distances of validation samples to the training set with the experiment's; each parameter's
    percentile in the training marginal; the two most extreme parameters as a scatter."""
    c, run = d.coverage, d.run
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].hist(c.reference_distances, bins=40, color="0.6")
    axes[0].axvline(c.distance, color="C3", lw=2, label=f"experiment ({c.percentile:.1f}th pct)")
    axes[0].set(xlabel=f"mean distance to {c.k} nearest training samples (SD units)", ylabel="validation samples")
    axes[0].legend(fontsize="small")
    r = c.ranges
    colors = np.where(r["outside"], "C3", np.where((r["percentile"] < 5) | (r["percentile"] > 95), "C1", "C0"))
    axes[1].barh(r.index, r["percentile"], color=colors)
    axes[1].axvline(50, color="k", lw=0.8)
    axes[1].set(xlim=(0, 100), xlabel="experiment's percentile in the training marginal")
    axes[1].invert_yaxis()
    extreme = (r["percentile"] - 50).abs().sort_values(ascending=False).index[:2].tolist()
    i, j = (run.param_names.index(n) for n in extreme)
    m = len(run.train_target)
    rows = ck.subsample(m, MAX_SCATTER)
    shown = "training" if len(rows) == m else f"training ({len(rows):,} of {m:,} shown)"
    axes[2].scatter(run.train_target[rows, i], run.train_target[rows, j], s=3, color="0.6", label=shown)
    axes[2].scatter([d.location[i]], [d.location[j]], marker="*", s=250, color="C3", label="experiment")
    axes[2].set(xlabel=extreme[0], ylabel=extreme[1])
    axes[2].legend(fontsize="small")
    fig.tight_layout()
    return fig


def error_by_bin(d: Diagnosis) -> plt.Figure:
    """Per-parameter mean absolute error by quantile bin of the true value (relative to the parameter's
    overall error), at the val-loss-best checkpoint; the experiment's bins boxed."""
    t = d.bins
    grid = t.pivot(index="parameter", columns="bin", values="vs_overall").reindex(d.run.param_names)
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(grid) + 1.2))
    im = ax.imshow(grid.to_numpy(), cmap="RdBu_r", vmin=0.5, vmax=1.5, aspect="auto")
    for (y, x), v in np.ndenumerate(grid.to_numpy()):
        if np.isfinite(v):
            ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize="small")
    here = t[t["experiment_here"]]
    for _, row in here.iterrows():
        y = d.run.param_names.index(row["parameter"])
        ax.add_patch(plt.Rectangle((row["bin"] - 0.5, y - 0.5), 1, 1, fill=False, lw=2.5, ec="k"))
    ax.set(xticks=range(grid.shape[1]), xticklabels=[f"Q{b + 1}" for b in grid.columns], yticks=range(len(grid)),
           yticklabels=grid.index, xlabel="quantile bin of the true value (boxed: the experiment's)")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="MAE / parameter's overall MAE")
    return fig


def sensitivity(d: Diagnosis) -> plt.Figure:
    """Curve change per training SD of each parameter (the Jacobian at the experiment), and the curve change
    that the val-loss-best checkpoint's error in each parameter causes; parameter vs curve error of validation samples."""
    s = d.sensitivity
    ncols = 2 if d.error_pairs is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(12 if ncols == 2 else 7, 3.8), squeeze=False)
    cols = [c for c in ("curve_rms_per_sd", "curve_rms_from_error") if c in s.columns]
    s[cols].rename(columns={"curve_rms_per_sd": "per 1 SD of the parameter",
                            "curve_rms_from_error": "from the experiment's error at the val-best epoch"}).plot.bar(ax=axes[0, 0])
    axes[0, 0].set(ylabel="RMS change of the curve (linearised)", xlabel="")
    axes[0, 0].legend(fontsize="small")
    if d.error_pairs is not None:
        e = d.error_pairs
        axes[0, 1].scatter(e["parameter_error"], e["curve_error"], s=8, alpha=0.6)
        axes[0, 1].set(xscale="log", yscale="log", xlabel="parameter error (standardised MSE)", ylabel="curve MSE",
                       title=f"validation samples: Spearman rho = {d.correlation['spearman_rho']:.2f}")
    fig.tight_layout()
    return fig


def selection(d: Diagnosis) -> plt.Figure:
    """Per unit: the advantage of its own best checkpoint where it was chosen vs on held-out data."""
    checks = [c for c in (d.selection, d.selection_repeats) if c is not None]
    fig, axes = plt.subplots(1, len(checks), figsize=(5.5 * len(checks), 4), squeeze=False)
    for ax, c in zip(axes[0], checks, strict=True):
        ax.scatter(np.exp(c.in_sample), np.exp(c.held_out), s=6, alpha=0.5)
        top = float(np.exp(c.in_sample).max())
        ax.plot([1, top], [1, top], "k--", lw=1, label="all of it survives")
        ax.axhline(1, color="C3", lw=1, label="none survives")
        held = "its nearest other validation profiles" if c.method == "neighbours" else "the other half of its repeats"
        ax.set(xscale="log", xlabel="chosen checkpoint's advantage where chosen", ylabel=f"advantage on {held}",
               title=f"{c.method}: {c.surviving_share:.0%} of the advantage survives")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def remedies(d: Diagnosis) -> plt.Figure:
    """Validation and experiment error of each way to choose or combine checkpoints."""
    t = d.remedies
    cols = [c for c in ("val_error", "experiment_error", "experiment_curve_mse") if t[c].notna().any()]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.3 * len(cols), 0.45 * len(t) + 1.5), sharey=True, squeeze=False)
    labels = {"val_error": "validation (standardised MSE)", "experiment_error": "experiment (standardised MSE)",
              "experiment_curve_mse": "experiment curve MSE"}
    for ax, c in zip(axes[0], cols, strict=True):
        ax.barh(t.index, t[c], color=["C3" if "experiment-best" in i else "C0" for i in t.index])
        ax.axvline(t[c].iloc[0], color="k", ls=":", lw=1)
        ax.set(xlabel=labels[c])
    axes[0, 0].invert_yaxis()
    fig.tight_layout()
    return fig


def lab_seeds(curves: pd.DataFrame) -> plt.Figure:
    """Val loss and experiment error per epoch for several training seeds, with each seed's best epochs."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for i, (seed, g) in enumerate(curves.groupby("seed")):
        color = f"C{i}"
        axes[0].plot(g["epoch"], g["val_loss"], color=color, label=f"seed {seed}")
        axes[1].plot(g["epoch"], g["experiment_error"], color=color, marker="o", ms=3, label=f"seed {seed}")
        axes[0].axvline(g.loc[g["val_loss"].idxmin(), "epoch"], color=color, ls=":")
        axes[1].axvline(g.loc[g["experiment_error"].idxmin(), "epoch"], color=color, ls=":")
    axes[0].set(xlabel="epoch", ylabel="val loss", yscale="log", title="val loss (dotted: each seed's best epoch)")
    axes[1].set(xlabel="epoch", ylabel="experiment error (standardised MSE)",
                title="experiment error (dotted: each seed's best epoch)")
    for ax in axes:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
