"""The diagnosis behind notebook 01: inputs, measurements and findings for the R² gap.

The statistics live in :mod:`helpers.r2_gap.regression`; this module turns a run's
files into those measurements and the findings (docs/01_r2_gap.md).

The face every notebook's diagnosis shares: ``load_inputs(params) -> (params, R2Run)``,
``describe_inputs(run)``, ``diagnose(run, params)``, ``findings(diagnosis)`` and
``metrics(diagnosis)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.findings import Finding, input_files, not_applicable
from helpers.findings import describe_inputs as describe_files
from helpers.io import InputError, load_json, load_table, resolve_path
from helpers.params import check_range, check_types, drop_sample_companions
from helpers.r2_gap import regression as reg

NOTEBOOK = "01_r2_gap"
PARAMETER_TYPES = {
    "predictions": str, "reported": str, "multioutput": str, "tolerance": float, "n_bootstrap": int,
    "lab_world_size": int, "output_dir": str, "run_demos": bool, "seed": int,
}
MULTIOUTPUTS = ("flat", "uniform", "variance_weighted")
FINDING_IDS = ("unsynced_rank_metrics", "rank_averaged_metrics", "batch_averaged_r2", "explained_variance_as_r2",
               "squared_correlation_as_r2", "sampler_padding_duplicates", "between_session_variance",
               "reported_unexplained")
REQUIRED = {"y_true": "float", "y_pred": "float"}
OPTIONAL = {"session": "key", "batch": "int", "rank": "int", "sample_id": "key", "channel": "key"}
# between_session_variance: pooled R² must exceed within-session R² by this much,
# with session means different at this ANOVA significance level.
MIN_SESSION_GAP = 0.02
ANOVA_ALPHA = 0.01
# sampler padding matters for the headline when it moves pooled R² by this much
PADDING_EFFECT = 1e-3


def load_predictions(param: str, path: str | Path) -> pd.DataFrame:
    """The predictions table, schema-checked (docs/01_r2_gap.md)."""
    df = load_table(param, path, REQUIRED, OPTIONAL)
    file = resolve_path(param, path)
    for col in ("rank", "batch"):
        if col in df.columns and (df[col] < 0).any():
            raise InputError(param, f"column '{col}' must be >= 0", file)
    if len(df) < 2:
        raise InputError(param, f"has {len(df)} row: R² compares errors with the spread of y_true, which needs at "
                                "least 2 rows", file)
    if df["y_true"].nunique() == 1:
        raise InputError(param, f"column 'y_true' is constant ({float(df['y_true'].iloc[0]):g} in every row): R² = "
                                "1 - SSE/SST is undefined when SST = 0", file)
    return df


def load_reported(param: str, path: str | Path, sessions: list | None) -> dict:
    """The logged metrics JSON with numbers kept as printed (to know their precision).

    ``sessions``: the predictions' session values (None: no session column).
    """
    file = resolve_path(param, path, (".json",))
    data = load_json(param, file, parse_float=str)
    if not isinstance(data, dict):
        raise InputError(param, "expected a JSON object like {\"r2\": 0.48, \"corr\": 0.70, \"per_session\": {...}}", file)

    def number(value, where: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InputError(param, f"{where} must be a number, got {value!r}", file)
        try:
            ok = math.isfinite(float(Decimal(str(value))))
        except InvalidOperation:
            ok = False
        if not ok:
            raise InputError(param, f"{where} must be a finite number, got {value!r}", file)
        return str(value)

    out = {k: number(data[k], f"'{k}'") for k in ("r2", "corr") if k in data}
    per = data.get("per_session") or {}
    if not isinstance(per, dict):
        raise InputError(param, "'per_session' must be an object {session: {\"r2\": ..., \"corr\": ...}}", file)
    if per and sessions is not None:
        known = {reg.session_label(s) for s in sessions}
        unknown = [s for s in per if s not in known]
        if unknown:
            raise InputError(param, f"per_session has session {unknown[0]!r} that is not in the predictions "
                                    f"(sessions: {', '.join(sorted(known)[:8])})", file)
    if per and sessions is None:
        warnings.warn(f"{param}: {file}: per_session numbers are ignored: the predictions have no 'session' column",
                      stacklevel=2)
    if per and sessions is not None:
        out["per_session"] = {}
        for s, d in per.items():
            if not isinstance(d, dict):
                raise InputError(param, f"per_session['{s}'] must be an object with 'r2' and/or 'corr'", file)
            out["per_session"][s] = {k: number(d[k], f"per_session['{s}']['{k}']") for k in ("r2", "corr") if k in d}
    return out


@dataclass
class R2Run:
    """A run's evaluation as notebook 01 reads it.

    ``table``: the predictions, schema-checked; ``reported``: the logged numbers as printed
    (``{}`` when none were given); ``inputs``: the files read, for the banner.
    """

    table: pd.DataFrame
    reported: dict
    inputs: dict
    dropped: dict = field(default_factory=dict)  # optional inputs left at the sample's value, not used


def load_inputs(params: Mapping) -> tuple[dict, R2Run]:
    """Check the notebook's parameters and load its files: (parameters, run).

    Raises :class:`~helpers.io.InputError` (one line: parameter, file, problem) on any mistake.
    """
    p = check_types(params, PARAMETER_TYPES)
    if p["multioutput"] not in MULTIOUTPUTS:
        raise InputError("multioutput", f"must be one of {', '.join(MULTIOUTPUTS)}, got {p['multioutput']!r}")
    check_range("tolerance", p["tolerance"], 0.0, 0.5)
    check_range("n_bootstrap", p["n_bootstrap"], 50, 1_000_000)
    check_range("lab_world_size", p["lab_world_size"], 2, 16)
    dropped = drop_sample_companions(p, NOTEBOOK, ["predictions"], ["reported"])
    table = load_predictions("predictions", p["predictions"])
    sessions = sorted(table["session"].unique().tolist(), key=str) if "session" in table.columns else None
    reported = load_reported("reported", p["reported"], sessions) if p["reported"].strip() else {}
    return p, R2Run(table, reported, input_files({k: p[k] for k in ("predictions", "reported")}), dropped)


def describe_inputs(run: R2Run) -> str:
    """Which files were read, and what they hold."""
    t = run.table
    return describe_files(run.inputs, dropped=run.dropped, details=[f"{len(t)} prediction rows, columns: {', '.join(t.columns)}",
                                               f"logged numbers: {run.reported or 'none'}"])


@dataclass
class Diagnosis:
    """Everything notebook 01 measures on a run."""

    table: pd.DataFrame
    run: reg.GroupedRun  # the predictions' sufficient statistics, grouped
    reported: dict
    candidates: pd.DataFrame
    reconciliation: pd.DataFrame
    per_session: pd.DataFrame | None = None
    intervals: pd.DataFrame | None = None
    sessions: dict | None = None  # variance decomposition by session
    batches: dict | None = None  # variance decomposition by (rank, batch)
    anova: tuple[float, float] = (np.nan, np.nan)
    padding: dict = field(default_factory=dict)

    @property
    def headline(self) -> pd.Series:
        """Correct pooled values on the deduplicated rows (flat multi-output convention)."""
        c = self.candidates
        return c[c["correct"] & (c["multioutput"] == "flat")].set_index("metric")["value"]


def diagnose(run: R2Run, params: Mapping) -> Diagnosis:
    """All measurements of notebook 01 on ``run``, with the settings of ``params`` (as
    :func:`load_inputs` returns them): ``multioutput`` is the convention for per-session R²,
    ``tolerance`` the matching floor, ``n_bootstrap`` and ``seed`` seed the per-session intervals."""
    table, reported, multioutput = run.table, dict(run.reported), params["multioutput"]
    g = reg.group_run(table)
    d = Diagnosis(table, g, reported, reg.candidate_table(g),
                  reg.reconcile(g, reported, params["tolerance"]) if reported else pd.DataFrame())
    if g.has["session"]:
        d.per_session = reg.per_group_metrics(g, "session", multioutput)
        d.intervals = reg.bootstrap_r2(table, "session", n_boot=params["n_bootstrap"], seed=params["seed"],
                                       multioutput=multioutput, progress=len(table) > 1_000_000)
        d.sessions = reg.variance_decomposition(g, "session", multioutput)
        d.anova = reg.session_anova(table)
    if g.has["batch"]:
        d.batches = reg.variance_decomposition(g, ["rank", "batch"], multioutput)
    if g.has["sample_id"]:
        with_dups = reg.candidate_table(reg.GroupedRun(g.stats.assign(dup=0), g.has, g.n_rows, 0, g.center))
        pick = lambda c, m: float(c[c["correct"] & (c["metric"] == m) & (c["multioutput"] == "flat")]["value"].iloc[0])  # noqa: E731
        d.padding = {
            "n_rows": g.n_rows, "n_duplicate_rows": g.n_duplicate_rows,
            "n_unique_rows": g.n_rows - g.n_duplicate_rows,
            "r2_with_duplicates": pick(with_dups, "r2"), "r2_without_duplicates": pick(d.candidates, "r2"),
            # which copy is "the repeat" depends on row order; the ranks that hold a repeated sample do not
            "ranks_with_repeated_samples": _ranks_with_repeats(table) if g.has["rank"] else [],
        }
    return d


# --------------------------------------------------------------------------- findings
def _label(row) -> str:
    where = "overall" if row["session"] is None or pd.isna(row["session"]) else f"session {row['session']}"
    return f"{where} {row['reported']}={row['value']:g}"


def _explanation(row) -> str:
    return f"{row['metric']} {row['aggregation']} over {row['scope']} ({row['multioutput']}) = {row['candidate_value']:.4f}"


def _reported_finding(d: Diagnosis, fid: str, needs: str | None, test, severity: str, fix: str, what: str) -> Finding:
    if not d.reported:
        return not_applicable(fid, "No reported JSON given (parameter 'reported'): nothing to reconcile.")
    if needs and not d.run.has[needs]:
        return not_applicable(fid, f"The predictions have no '{needs}' column, so {what} cannot be tested.")
    rec = d.reconciliation
    hits = rec[rec["explained"] & ~rec["is_correct"]]
    hits = hits[hits.apply(test, axis=1)] if len(hits) else hits
    evidence = {"reported": [
        {"number": _label(r), "reproduced_by": _explanation(r), "correct_value": r["correct_value"],
         "n_candidates_within_tolerance": int(r["n_matches"])} for _, r in hits.iterrows()]}
    if len(hits):
        first = hits.iloc[0]
        more = f" (and {len(hits) - 1} more logged numbers)" if len(hits) > 1 else ""
        msg = (f"Logged {_label(first)} is reproduced by {what} [{_explanation(first)}], "
               f"not by the pooled value {first['correct_value']:.4f}{more}: {fix}")
        return Finding(fid, "detected", severity, msg, evidence)
    return Finding(fid, "not_detected", "info", f"No logged number is explained by {what}.", evidence)


def findings(d: Diagnosis) -> list[Finding]:
    """Every finding of notebook 01, in :data:`FINDING_IDS` order."""
    out = [
        _reported_finding(d, "unsynced_rank_metrics", "rank", lambda r: r["scope"].startswith("rank "), "critical",
                          "all-reduce sufficient statistics across ranks (or torchmetrics with sync) before computing the metric.",
                          "one rank's shard"),
        _reported_finding(d, "rank_averaged_metrics", "rank", lambda r: r["scope"] == "mean over ranks", "warning",
                          "averaging per-rank R² or r is not the pooled value; all-reduce sums instead.",
                          "a mean of per-rank values"),
        _reported_finding(d, "batch_averaged_r2", "batch", lambda r: r["aggregation"] == "batch mean", "critical",
                          "accumulate sums over the whole set and compute the metric once at the end.",
                          "a mean of per-batch values"),
        _reported_finding(d, "explained_variance_as_r2", None,
                          lambda r: r["reported"] == "r2" and r["metric"] == "explained_variance", "warning",
                          "explained variance ignores a constant bias; log r2_score (1 - SSE/SST) as R².",
                          "explained variance"),
        _reported_finding(d, "squared_correlation_as_r2", None,
                          lambda r: r["reported"] == "r2" and r["metric"] == "pearson_r_squared", "warning",
                          "r² of the correlation ignores bias and scale; it is not the coefficient of determination.",
                          "squared Pearson r"),
        _padding_finding(d),
        _between_session_finding(d),
        _unexplained_finding(d),
    ]
    return out


def _padding_finding(d: Diagnosis) -> Finding:
    fid = "sampler_padding_duplicates"
    if not d.run.has["sample_id"]:
        return not_applicable(fid, "The predictions have no 'sample_id' column, so repeated evaluations cannot be found.")
    p = d.padding
    if p["n_duplicate_rows"] == 0:
        return Finding(fid, "not_detected", "info", f"Every sample was evaluated once ({p['n_rows']} rows).", p)
    effect = p["r2_with_duplicates"] - p["r2_without_duplicates"]
    sev = "warning" if abs(effect) >= PADDING_EFFECT else "info"
    ranks = f" (held by ranks {p['ranks_with_repeated_samples']})" if p["ranks_with_repeated_samples"] else ""
    msg = (f"{p['n_duplicate_rows']} of {p['n_rows']} rows repeat an already evaluated sample{ranks} "
           f"(DistributedSampler padding); pooled R² {p['r2_with_duplicates']:.4f} with them vs "
           f"{p['r2_without_duplicates']:.4f} without: drop repeats by sample id before reducing.")
    return Finding(fid, "detected", sev, msg, {**p, "r2_effect": effect})


def _between_session_finding(d: Diagnosis) -> Finding:
    fid = "between_session_variance"
    if d.sessions is None:
        return not_applicable(fid, "The predictions have no 'session' column.")
    s = d.sessions
    n_sessions = int(d.table["session"].nunique())
    f_stat, p_value = d.anova
    gap = s["r2_pooled"] - s["r2_within"]
    ev = {**s, "gap": gap, "anova_f": f_stat, "anova_p": p_value, "n_sessions": n_sessions,
          "mean_per_session_r2": float(np.nanmean(d.per_session["r2"])) if d.per_session is not None else np.nan}
    if n_sessions < 2 or not np.isfinite(gap):
        return Finding(fid, "not_detected", "info", "Fewer than two sessions with a defined R²: no between-session part.", ev)
    if gap >= MIN_SESSION_GAP and np.isfinite(p_value) and p_value < ANOVA_ALPHA:
        msg = (f"Sessions differ in mean ({100 * s['eta2']:.0f}% of target variance is between sessions, ANOVA "
               f"p={p_value:.1e}): pooled R² {s['r2_pooled']:.3f} exceeds within-session R² {s['r2_within']:.3f} by "
               f"{gap:.3f} as a matter of statistics, not a bug; report per-session R² for held-out sessions.")
        return Finding(fid, "detected", "info", msg, ev)
    return Finding(fid, "not_detected", "info",
                   f"Pooled R² {s['r2_pooled']:.3f} and within-session R² {s['r2_within']:.3f} differ by {gap:.3f}: "
                   "session means explain no meaningful part of the gap.", ev)


def _unexplained_finding(d: Diagnosis) -> Finding:
    fid = "reported_unexplained"
    if not d.reported:
        return not_applicable(fid, "No reported JSON given (parameter 'reported').")
    rec = d.reconciliation
    bad = rec[~rec["explained"]]
    if len(bad) == 0:
        return Finding(fid, "not_detected", "info", "Every logged number is reproduced by some candidate computation.")
    ev = {"numbers": [_label(r) for _, r in bad.iterrows()]}
    return Finding(fid, "detected", "warning",
                   f"{len(bad)} logged number(s), e.g. {_label(bad.iloc[0])}, match no candidate computation on these "
                   "predictions: were they logged on other data (another epoch, split or checkpoint)?", ev)


def gap_account(d: Diagnosis) -> pd.DataFrame:
    """The logged R² against the per-session view, split into its two causes.

    ``computation`` = logged - correct pooled R² (what the buggy computation adds);
    ``between sessions`` = pooled - within-session R² (real: session means differ).
    Rows whose inputs are missing (no logged r2, no session column) are left out.
    """
    pooled_r2 = d.sessions["r2_pooled"] if d.sessions is not None else float(d.headline["r2"])
    rows = []
    if "r2" in d.reported:
        rows.append(("logged overall r2", float(d.reported["r2"]), ""))
    rows.append(("pooled R², computed correctly", pooled_r2, ""))
    if d.sessions is not None:
        rows.append(("within-session R² (sum-of-squares weighted)", d.sessions["r2_within"], ""))
        rows.append(("mean of per-session R² (unweighted)", float(np.nanmean(d.per_session["r2"])), ""))
    if "r2" in d.reported:
        rows.append(("gap from the computation (logged - pooled)", float(d.reported["r2"]) - pooled_r2, "bug"))
    if d.sessions is not None:
        rows.append(("gap from between-session variance (pooled - within)", pooled_r2 - d.sessions["r2_within"],
                     "real"))
    return pd.DataFrame(rows, columns=["quantity", "R²", "kind"])


def metrics(d: Diagnosis) -> dict:
    """The headline numbers of summary.json (the lab's are added by the notebook when it runs)."""
    h = d.headline
    m = {"n_rows": d.run.n_rows, "pooled_r2": h.get("r2"), "pooled_explained_variance": h.get("explained_variance"),
         "pooled_pearson_r": h.get("pearson_r")}
    if d.reported:
        m["reported_r2"] = float(d.reported["r2"]) if "r2" in d.reported else None
        m["reported_corr"] = float(d.reported["corr"]) if "corr" in d.reported else None
    if d.sessions is not None:
        m["r2_within_session"] = d.sessions["r2_within"]
        m["between_session_share"] = d.sessions["eta2"]
        m["mean_per_session_r2"] = float(np.nanmean(d.per_session["r2"]))
    if d.padding:
        m["n_duplicate_rows"] = d.padding["n_duplicate_rows"]
    gaps = gap_account(d).set_index("quantity")["R²"]
    m["gap_from_computation"] = gaps.get("gap from the computation (logged - pooled)")
    m["gap_from_between_sessions"] = gaps.get("gap from between-session variance (pooled - within)")
    return m


def _ranks_with_repeats(table: pd.DataFrame) -> list:
    key = ["sample_id", "channel"] if "channel" in table.columns else ["sample_id"]
    return sorted(table.loc[table.duplicated(key, keep=False), "rank"].unique().tolist())


def repeated_samples(table: pd.DataFrame) -> pd.DataFrame:
    """Samples evaluated more than once: how often, and on which ranks (empty without sample_id)."""
    if "sample_id" not in table.columns:
        return pd.DataFrame(columns=["sample_id", "times", "ranks"])
    key = ["sample_id", "channel"] if "channel" in table.columns else ["sample_id"]
    times = table.groupby(key, sort=True).size().groupby(level="sample_id").max()
    rep = times[times > 1].rename("times").reset_index()
    if "rank" in table.columns:
        ranks = table[table["sample_id"].isin(rep["sample_id"])].groupby("sample_id")["rank"].unique()
        rep["ranks"] = rep["sample_id"].map(lambda s: sorted(ranks[s].tolist()))
    return rep
