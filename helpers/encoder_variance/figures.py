"""Figures of notebook 02 (each returns a matplotlib Figure)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers.encoder_variance import representation as rep
from helpers.encoder_variance.diagnosis import (
    BETWEEN_SHARE_MIN,
    STOCHASTIC_SHARE_MIN,
    EncoderRun,
    Measurements,
    decomposition_table,
)


def variance_shares(measured: dict[str, Measurements]) -> plt.Figure:
    """Each encoder's variance split into between, within and sampling shares."""
    tables = {name: decomposition_table(m) for name, m in measured.items()}
    shares = pd.DataFrame({name: t.set_index("component")["share"] for name, t in tables.items()}).T.fillna(0.0)
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.5 * len(shares)))
    shares.plot.barh(stacked=True, ax=ax, width=0.7)
    ax.axvline(BETWEEN_SHARE_MIN, color="k", ls="--", lw=1)
    ax.set(xlabel="share of a sampled embedding's variance", xlim=(0, 1), ylabel="")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, frameon=False)
    return fig


def per_unit_variance(run: EncoderRun, m: Measurements) -> plt.Figure:
    """Between, within and sampling variance of every unit, units sorted by between variance."""
    d = m.decomposition
    order = np.argsort(d.between_per_dim)[::-1]
    fig, ax = plt.subplots()
    for label, values in (("between", d.between_per_dim), ("within", d.within_per_dim),
                          ("sampling", d.sampling_per_dim)):
        ax.plot(np.arange(d.n_dims), np.clip(values[order], 1e-8, None), marker="o", ms=3, lw=1, label=label)
    ax.set(yscale="log", xlabel="unit (sorted by between-puzzle variance)", ylabel="variance", title=run.name)
    ax.legend()
    return fig


def spectrum(measured: dict[str, Measurements]) -> plt.Figure:
    """Normalised singular-value spectrum of each encoder's centred means, with its RankMe."""
    fig, ax = plt.subplots()
    for name, m in measured.items():
        sv = m.decomposition.singular_values
        ax.plot(np.arange(1, len(sv) + 1), sv / sv.sum(), marker="o", ms=3, lw=1,
                label=f"{name} (RankMe {rep.rankme(sv):.1f})")
    ax.set(yscale="log", xlabel="singular value index", ylabel="share of the singular-value sum")
    ax.legend()
    return fig


def centroid_cosines(raw: np.ndarray, centred: np.ndarray, title: str) -> plt.Figure:
    """Cosine similarities between puzzle centroids, raw and after removing the grand mean."""
    fig, ax = plt.subplots()
    bins = np.linspace(-1, 1, 41)
    ax.hist(raw, bins=bins, alpha=0.6, label=f"raw (median {np.median(raw):.2f})")
    ax.hist(centred, bins=bins, alpha=0.6, label=f"centred (median {np.median(centred):.2f})")
    ax.set(xlabel="cosine similarity of two puzzle centroids", ylabel="pairs", title=title)
    ax.legend()
    return fig


def active_units(m: Measurements) -> plt.Figure:
    """Variance of each unit's posterior mean (red: inactive), and its KL to the prior when known."""
    a = m.active
    ncols = 2 if m.kl_per_dim is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7.5 if ncols == 1 else 11, 3.5), squeeze=False)
    order = np.argsort(a.var_mean)[::-1]
    axes[0, 0].bar(np.arange(a.n_units), a.var_mean[order], color=np.where(a.active[order], "C0", "C3"))
    axes[0, 0].set(yscale="log", xlabel="unit (sorted)", ylabel="variance of the posterior mean",
                   title=f"{a.n_active} of {a.n_units} active (Burda count {a.n_burda_active})")
    if m.kl_per_dim is not None:
        axes[0, 1].bar(np.arange(a.n_units), m.kl_per_dim[order])
        axes[0, 1].set(xlabel="unit (same order)", ylabel="KL to N(0, 1), nats",
                       title=f"total KL {m.kl_per_dim.sum():.1f} nats")
    return fig


def kl_sweep(sweep: pd.DataFrame) -> plt.Figure:
    """Between share, sampling share, active units and held-out task MSE against the KL weight."""
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    for ax, col, label in zip(axes, ["between_share", "sampling_share", "active_units", "task_mse"],
                              ["between-puzzle share", "sampling share", "active units", "held-out task MSE"],
                              strict=True):
        ax.plot(sweep.index, sweep[col], marker="o")
        ax.set(xscale="log", xlabel="KL weight", ylabel=label)
    axes[0].axhline(BETWEEN_SHARE_MIN, color="k", ls="--", lw=1)
    axes[1].axhline(STOCHASTIC_SHARE_MIN, color="k", ls="--", lw=1)
    axes[3].set(yscale="log")
    return fig
