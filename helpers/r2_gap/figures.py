"""Figures of notebook 01 (each returns a matplotlib Figure)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers.r2_gap import regression as reg
from helpers.r2_gap.diagnosis import Diagnosis

_METRIC_LABEL = {"r2": "R²", "explained_variance": "explained variance", "pearson_r": "Pearson r",
                 "pearson_r_squared": "r² (squared Pearson)"}


def candidates(d: Diagnosis, session=None) -> plt.Figure:
    """Every candidate computation against the logged numbers (overall, or one session)."""
    cand = d.candidates if session is None else reg.candidate_table(d.run, session)
    rec = d.reconciliation
    logged = (rec[rec["session"].isna()] if session is None
              else rec[rec["session"].map(reg.session_label) == reg.session_label(session)])
    scopes = list(dict.fromkeys(cand["scope"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.35 * len(scopes) + 1.8), sharey=True)
    for ax, key, family in ((axes[0], "r2", ("r2", "explained_variance", "pearson_r_squared")),
                            (axes[1], "corr", ("pearson_r",))):
        for i, metric in enumerate(family):
            for agg, marker in (("pooled", "o"), ("batch mean", "x")):
                c = cand[(cand["metric"] == metric) & (cand["aggregation"] == agg)]
                ax.scatter(c["value"], [scopes.index(s) for s in c["scope"]], marker=marker, color=f"C{i}",
                           label=f"{_METRIC_LABEL[metric]}, {agg}", alpha=0.8)
        row = logged[logged["reported"] == key]
        if len(row):
            ax.axvline(row["value"].iloc[0], color="C3", ls="--", label=f"logged {key}")
            ax.axvline(row["correct_value"].iloc[0], color="k", lw=1, label="correct (pooled, deduplicated)")
        ax.set_title(f"candidates for the logged '{key}'")
        ax.set_xlabel("value")
        ax.legend(fontsize="x-small", loc="best")
    axes[0].set_yticks(range(len(scopes)), scopes)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def batches(d: Diagnosis) -> plt.Figure:
    """Per-batch R² against the batch's target variance: why a mean of per-batch values drifts."""
    pb = reg.per_group_metrics(d.run, ["rank", "batch"], dedup=False)
    fig, ax = plt.subplots()
    sc = ax.scatter(pb["target_variance"], pb["r2"], s=10 + 2 * pb["n"] ** 0.8, c=pb["rank"], cmap="viridis", alpha=0.8,
                    linewidths=0)  # no marker edges: a large run has thousands of batches
    ax.axhline(d.headline["r2"], color="k", lw=1, label=f"pooled R² {d.headline['r2']:.3f}")
    ax.axhline(np.nanmean(pb["r2"]), color="C3", ls="--", label=f"mean of per-batch R² {np.nanmean(pb['r2']):.3f}")
    ax.set_xscale("log")
    ax.set(xlabel="target variance within the batch", ylabel="R² of the batch",
           title="each eval batch (marker size = rows, colour = rank)")
    fig.colorbar(sc, ax=ax, label="rank")
    ax.legend(fontsize="small")
    return fig


def decomposition(d: Diagnosis) -> plt.Figure:
    """Total sum of squares split into between-group, explained-within and residual parts."""
    parts = {k: v for k, v in (("sessions", d.sessions), ("eval batches", d.batches)) if v is not None}
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.8 * len(parts)))
    for i, s in enumerate(parts.values()):
        between, within, sse = s["ss_between"], s["ss_within"], s["sse"]
        shares = np.array([between, max(within - sse, 0.0), sse]) / s["ss_total"]
        left = 0.0
        for j, (share, label) in enumerate(zip(shares, ("between groups", "explained within groups",
                                                        "residual (SSE)"), strict=True)):
            ax.barh(i, share, left=left, color=f"C{j}", label=label if i == 0 else None)
            ax.text(left + share / 2, i, f"{100 * share:.0f}%", ha="center", va="center", fontsize="small")
            left += share
    ax.set_yticks(range(len(parts)), [f"by {n}" for n in parts])
    ax.set_xlabel("share of the total sum of squares")
    ax.legend(ncols=3, fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return fig


def sessions(d: Diagnosis) -> plt.Figure:
    """Per-session R² with bootstrap intervals, against the pooled and logged numbers."""
    ps = d.per_session.merge(d.intervals, on="session")
    x = np.arange(len(ps))
    fig, ax = plt.subplots()
    # the interval as drawn from its ends: a percentile interval need not hold the estimate (errorbar refuses that)
    ax.vlines(x, ps["r2_low"], ps["r2_high"], color="C0", label="95% block-bootstrap interval")
    ax.scatter(x, ps["r2"], color="C0", zorder=3, label="per-session R²")
    rec = d.reconciliation
    if len(rec):
        logged = rec[rec["session"].notna() & (rec["reported"] == "r2")]
        pos = {reg.session_label(s): i for i, s in enumerate(ps["session"])}
        ax.scatter([pos[reg.session_label(s)] for s in logged["session"]], logged["value"], marker="_", s=300, color="C3",
                   label="logged per-session r2")
        overall = rec[rec["session"].isna() & (rec["reported"] == "r2")]
        if len(overall):
            ax.axhline(overall["value"].iloc[0], color="C3", ls="--", label="logged overall r2")
    ax.axhline(d.sessions["r2_pooled"], color="k", lw=1, label="pooled R²")
    ax.axhline(d.sessions["r2_within"], color="C2", lw=1, ls=":", label="within-session R²")
    ax.set_xticks(x, ps["session"].astype(str), rotation=30)
    ax.set(xlabel="session", ylabel="R²")
    ax.legend(fontsize="x-small", loc="best")
    return fig


def lab_errors(table: pd.DataFrame) -> plt.Figure:
    """|R² error| of each distributed computation against single-process scikit-learn (log scale)."""
    t = table.iloc[1:].copy()
    t["abs_error"] = t["r2_error"].abs().clip(lower=1e-16)
    fig, ax = plt.subplots(figsize=(7.5, 0.4 * len(t) + 1))
    colors = ["C2" if e < 1e-6 else "C3" for e in t["abs_error"]]
    ax.barh(range(len(t)), t["abs_error"], color=colors)
    ax.axvline(1e-6, color="k", ls=":", lw=1, label="1e-6")
    ax.set_xscale("log")
    ax.set_yticks(range(len(t)), t["method"], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("|R² - scikit-learn R² on the whole set|")
    ax.legend(fontsize="small")
    return fig
