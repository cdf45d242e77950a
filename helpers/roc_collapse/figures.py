"""Figures of notebook 04 (each returns a matplotlib Figure)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers.history import parse_metric_key
from helpers.roc_collapse import low_fpr as lf
from helpers.roc_collapse.diagnosis import Diagnosis


def metrics_over_epochs(d: Diagnosis, history: pd.DataFrame | None = None) -> plt.Figure:
    """tpr@fpr per epoch: logged, recomputed from the scores, from the logits, with 95% order-statistic bands."""
    n = len(d.fpr_targets)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 3.8), sharey=True, squeeze=False)
    for ax, t in zip(axes[0], d.fpr_targets, strict=True):
        name = f"tpr@fpr{lf.rate_str(t)}"
        for i, src in enumerate(d.sources):
            v = d.value(src, name)
            b = d.intervals[(d.intervals["source"] == src) & (d.intervals["fpr_target"] == t)].set_index("epoch")
            ax.plot(v.index, v.to_numpy(), "o-", color=f"C{i}", label=f"from {src}s (scikit-learn)")
            ax.fill_between(b.index, b["low"], b["high"], color=f"C{i}", alpha=0.2, lw=0)
        if history is not None:
            col = next((c for c in history.columns if parse_metric_key(c) == ("tpr", "fpr", t)), None)
            if col is not None:
                ax.plot(history["epoch"], history[col], "x--", color="C3", label="logged")
        ax.set(title=name, xlabel="epoch", ylim=(-0.03, 1.03))
        ax.legend(fontsize="small", loc="lower left")
    axes[0, 0].set_ylabel("TPR (95% interval band)")
    fig.tight_layout()
    return fig


def tie_audit(d: Diagnosis) -> plt.Figure:
    """Negatives tied at the top score per epoch against each target's allowance; positives in that tie."""
    a = d.audit
    fig, ax = plt.subplots()
    ax.plot(a["epoch"], a["negatives_at_top"], "o-", color="C3", label="negatives at the top score")
    for i, t in enumerate(d.fpr_targets):
        ax.axhline(a[f"allowed@fpr{lf.rate_str(t)}"].iloc[-1], color="k", ls=[":", "--", "-."][i % 3], lw=1,
                   label=f"allowed at fpr {lf.rate_str(t)}: {int(a[f'allowed@fpr{lf.rate_str(t)}'].iloc[-1])}")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set(xlabel="epoch", ylabel="negatives tied at the top")
    ax2 = ax.twinx()
    ax2.plot(a["epoch"], a["positives_at_top"] / d.n_pos, "s-", color="C0", alpha=0.6, label="share of positives at the top")
    ax2.set(ylabel="share of positives at the top", ylim=(0, 1.02))
    ax2.grid(False)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize="small", loc="center right")
    ax.set_title(f"top {d.sources[0]}: {a['top_score'].iloc[-1]:g} at the last epoch")
    return fig


def top_levels(scores: pd.DataFrame, epoch: int, source: str = "score", levels: int = 8) -> plt.Figure:
    """The highest distinct score values of one epoch and how many of each class hold them."""
    g = scores[scores["epoch"] == epoch]
    top = np.sort(g[source].unique())[::-1][:levels]
    counts = g[g[source].isin(top)].groupby([source, "label"]).size().unstack(fill_value=0).reindex(top, fill_value=0)
    fig, ax = plt.subplots()
    x = np.arange(len(top))
    ax.bar(x - 0.2, counts.get(0, 0), 0.4, color="C3", label="negatives")
    ax.bar(x + 0.2, counts.get(1, 0), 0.4, color="C0", label="positives")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{v:.8g}" for v in top], rotation=30, fontsize="small")
    ax.set(xlabel=f"{source} value (highest first)", ylabel="samples", title=f"epoch {epoch}: the top {source} levels")
    ax.legend(fontsize="small")
    return fig


# a ROC step curve is drawn through at most about this many points (steps_to_draw)
MAX_STEP_POINTS = 8000


def steps_to_draw(fpr: np.ndarray, tpr: np.ndarray, max_points: int = MAX_STEP_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """The points of a ROC step curve to draw on a log FPR axis from 1e-6: all of them up to ``max_points``;
    beyond, the first and the last point of each of ``max_points // 2`` equal bins of log FPR, so every
    vertical extent is kept and only steps narrower than a bin (under a pixel) merge. A million distinct
    scores would otherwise take half a minute to draw."""
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    if len(fpr) <= max_points:
        return fpr, tpr
    x = np.log10(np.maximum(fpr, 1e-6))
    span = x[-1] - x[0]
    bins = np.floor((x - x[0]) / span * (max_points // 2 - 1)).astype(np.int64) if span > 0 else np.zeros(len(x), int)
    edge = np.flatnonzero(np.diff(bins))
    keep = np.unique(np.r_[0, edge, edge + 1, len(fpr) - 1])
    return fpr[keep], tpr[keep]


def roc_low_fpr(scores: pd.DataFrame, epochs: list[int], sources: list[str], fpr_targets) -> plt.Figure:
    """ROC curves on a log FPR axis for a few epochs, on scores and on logits."""
    fig, ax = plt.subplots()
    for i, e in enumerate(epochs):
        g = scores[scores["epoch"] == e]
        for src, ls in zip(sources, ("-", "--"), strict=False):
            c = lf.curve(g["label"].to_numpy(), g[src].to_numpy())
            fpr, tpr = steps_to_draw(np.maximum(c.fpr, 1e-6), c.tpr)
            ax.step(fpr, tpr, where="post", color=f"C{i}", ls=ls, label=f"epoch {e}, {src}")
    for t in fpr_targets:
        ax.axvline(t, color="k", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set(xlim=(1e-5, 1), xlabel="FPR (log)", ylabel="TPR", title="ROC at low FPR (dotted: targets)")
    ax.legend(fontsize="x-small", ncols=2)
    return fig


def intervals(d: Diagnosis, max_width: float | None = None) -> plt.Figure:
    """Width of the 95% interval of tpr@fpr per epoch: order statistics (the rule's) and the bootstrap beside it."""
    src = "logit" if "logit" in d.sources else d.sources[0]
    b = d.intervals[d.intervals["source"] == src]
    fig, ax = plt.subplots()
    for i, t in enumerate(d.fpr_targets):
        bt = b[b["fpr_target"] == t]
        label = f"tpr@fpr{lf.rate_str(t)} ({int(bt['allowed_negatives'].iloc[0])} negatives set it)"
        ax.plot(bt["epoch"], bt["width"], "o-", color=f"C{i}", label=f"{label}: order statistics")
        ax.plot(bt["epoch"], bt["boot_width"], "x:", color=f"C{i}", label=f"{label}: bootstrap")
    if max_width is not None:
        ax.axhline(max_width, color="k", lw=1, ls="--", label=f"rule: at most {max_width:g}")
    ax.set(xlabel="epoch", ylabel=f"width of the 95% interval (on {src}s)", ylim=(0, None),
           title="how well the negatives resolve tpr@fpr")
    ax.legend(fontsize="x-small")
    return fig


def multiplicity(d: Diagnosis) -> plt.Figure:
    """How many times each logged sample was yielded per epoch, by epoch."""
    m = d.loader_epochs
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    ax.bar(m["epoch"].astype(str), m["mean_multiplicity"], color="C3")
    ax.axhline(1, color="k", lw=1, label="once per epoch")
    ax.set(xlabel="epoch (logged)", ylabel="times each sample is yielded")
    ax.legend(fontsize="small")
    return fig


def paired_tail(d: Diagnosis) -> plt.Figure:
    p = d.paired
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(["paired controls", "unpaired negatives"], [p["tail_rate_paired"], p["tail_rate_unpaired"]],
           color=["C1", "C2"])
    ax.set(ylabel="share in the top 1% of negatives", title=f"epoch {p['epoch']}, ranked by {p['ranked_by']}")
    return fig


def lab_dtypes(table: pd.DataFrame) -> plt.Figure:
    """Lab (a): tpr@fpr from the same logits, with the sigmoid in each dtype."""
    fig, ax = plt.subplots()
    cols = [c for c in table.columns if c.startswith("tpr@")]
    x = np.arange(len(table))
    for i, c in enumerate(cols):
        ax.bar(x + (i - (len(cols) - 1) / 2) * 0.35, table[c], 0.35, label=c)
    ax.set_xticks(x, table["computed as"], fontsize="small")
    ax.set(ylabel="TPR", ylim=(0, 1.05))
    ax.legend(fontsize="small")
    return fig


def lab_early_stopping(curve: pd.DataFrame, kept: int) -> plt.Figure:
    """Lab (d): validation partial AUC and tpr@fpr per epoch; the checkpoint early stopping keeps."""
    fig, ax = plt.subplots()
    for i, c in enumerate([c for c in curve.columns if c != "epoch"]):
        ax.plot(curve["epoch"], curve[c], "o-", color=f"C{i}", label=c)
    ax.axvline(kept, color="k", ls="--", lw=1, label=f"kept checkpoint (epoch {kept})")
    ax.set(xlabel="epoch", ylabel="validation metric")
    ax.legend(fontsize="small")
    return fig
