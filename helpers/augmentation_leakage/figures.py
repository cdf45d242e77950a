"""Figures of notebook 05 (each returns a matplotlib Figure)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers.augmentation_leakage.diagnosis import Diagnosis


def distances(d: Diagnosis) -> plt.Figure:
    """Each validation row's nearest-training-row distance over its distance to the nearest training row
    of another (pseudo-)parent, against the same ratio on clean re-splits (per (pseudo-)parent medians)."""
    s = d.scan
    fig, ax = plt.subplots()
    bins = np.linspace(0, 1, 51)
    unit = "parent" if s.reference_kind == "parent_id" else "cluster"
    for i, (label, v) in enumerate({"validation rows (this split)": s.ratio,
                                    f"clean re-split by {unit}, median per {unit}": s.reference}.items()):
        if len(v):
            ax.hist(np.clip(v, 0, 1), bins=bins, density=True, histtype="step" if i else "stepfilled",
                    alpha=0.5 if i == 0 else 1, lw=1.5, color=f"C{i}", label=label)
    if np.isfinite(s.threshold):
        ax.axvline(s.threshold, color="k", ls="--", lw=1, label=f"reference 1% quantile {s.threshold:.2f}")
    ax.set(xlabel=f"distance to nearest training row / to nearest training row of another {unit} ({s.space})",
           ylabel="density", title=f"estimated leaked share of validation rows: {100 * s.leaked_share:.0f}%")
    ax.legend(fontsize="x-small")
    return fig


def copies(d: Diagnosis) -> plt.Figure:
    """Copies per original row, present in the data vs declared, per group."""
    c = d.copies
    fig, ax = plt.subplots()
    x = np.arange(len(c))
    ax.bar(x - 0.2, c["copies_per_original"], 0.4, label="present in the samples")
    if "declared_copies" in c:
        ax.bar(x + 0.2, c["declared_copies"].fillna(0), 0.4, label="declared")
    ax.set_xticks(x, c["group"], rotation=30)
    ax.set(ylabel="copies per original row")
    ax.legend(fontsize="small")
    return fig


def composition(d: Diagnosis) -> plt.Figure:
    """Each group's weight in the overall validation metric against its reference weight."""
    c = d.composition
    fig, ax = plt.subplots()
    x = np.arange(len(c))
    ax.bar(x - 0.2, c["implicit_weight"], 0.4, label="weight in the overall metric (share of val rows)")
    ax.bar(x + 0.2, c["reference_weight"], 0.4, label=c.attrs.get("reference", "reference"))
    labels = [f"{g}\n{t}" if t else str(g) for g, t in zip(c["group"], c["tier"], strict=True)]
    ax.set_xticks(x, labels, fontsize="small")
    ax.set(ylabel="weight")
    ax.legend(fontsize="small")
    return fig


def group_metrics(d: Diagnosis) -> plt.Figure:
    """Per-group metric of this run and the baseline, with the three ways of combining them."""
    g = d.degradation
    fig, ax = plt.subplots()
    x = np.arange(len(g))
    ax.bar(x - 0.2, g["baseline"], 0.4, label="baseline", color="C0")
    ax.bar(x + 0.2, g["this"], 0.4, label="this run", color="C1")
    for ratio, xi, top in zip(g["ratio"], x, np.maximum(g["this"], g["baseline"]), strict=True):
        ax.text(xi, top * 1.05, f"{ratio:.1f}x", ha="center", fontsize="x-small")
    w = d.weighted["this"]
    for key, ls in (("row_weighted", "-"), ("macro", "--"), ("tier_balanced", ":")):
        if np.isfinite(w[key]):
            ax.axhline(w[key], color="C1", ls=ls, lw=1, label=f"this run, {key.replace('_', '-')} {w[key]:.3f}")
    ax.set_xticks(x, g["group"], rotation=30)
    ax.set(ylabel="metric (lower is better)", title="per-group metric, ratio this run / baseline")
    ax.legend(fontsize="x-small")
    return fig


def lab(table: pd.DataFrame) -> plt.Figure:
    """Validation vs clean-test MSE of each arrangement."""
    labels = [f"{a}\nnoise {n:.0%}" for a, n in zip(table["arrangement"], table["noise"], strict=True)]
    fig, ax = plt.subplots(figsize=(7.5, 0.8 * len(table) + 1))
    y = np.arange(len(table))
    ax.barh(y - 0.2, table["val_mse"], 0.4, label="validation MSE (what the run reports)")
    ax.barh(y + 0.2, table["test_mse"], 0.4, label="clean held-out test MSE")
    ax.set_yticks(y, labels, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("MSE of log2 target")
    ax.legend(fontsize="small")
    return fig
