"""The diagnosis behind notebook 01: inputs, measurements and findings for the R² gap.

The statistics live in :mod:`helpers.r2_gap.regression`; this module turns a run's
files into those measurements and the findings (docs/01_r2_gap.md).

The face every notebook's diagnosis shares: ``load_inputs(params) -> (params, R2Run)``,
``describe_inputs(run)``, ``diagnose(run, params)``, ``findings(diagnosis)`` and
``metrics(diagnosis)``.
"""

from __future__ import annotations

import html
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
    _release_arrow_memory()
    file = resolve_path(param, path)
    for col in ("rank", "batch"):
        if col in df.columns and (df[col] < 0).any():
            raise InputError(param, f"column '{col}' must be >= 0", file)
    if len(df) < 2:
        raise InputError(param, f"has {len(df)} row: R² compares errors with the spread of y_true, which needs at "
                                "least 2 rows", file)
    y = df["y_true"].to_numpy()
    if y.min() == y.max():
        raise InputError(param, f"column 'y_true' is constant ({float(df['y_true'].iloc[0]):g} in every row): R² = "
                                "1 - SSE/SST is undefined when SST = 0", file)
    return df


def _release_arrow_memory() -> None:
    """Give back the memory Arrow's pool keeps after a parquet read (the Arrow table the frame was
    converted from): kept, it would sit under every later peak of the diagnosis."""
    import sys

    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()


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
    multioutput: str = "flat"  # the convention of per_session, intervals and sessions

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
                  reg.reconcile(g, reported, params["tolerance"]) if reported else pd.DataFrame(),
                  multioutput=multioutput)
    if g.has["session"]:
        d.per_session = reg.per_group_metrics(g, "session", multioutput)
        d.intervals = reg.bootstrap_r2(table, "session", n_boot=params["n_bootstrap"], seed=params["seed"],
                                       multioutput=multioutput, progress=len(table) > 1_000_000,
                                       duplicates=g.duplicates)
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
            "ranks_with_repeated_samples": _ranks_with_repeats(table, g.repeated) if g.has["rank"] else [],
        }
    return d


# --------------------------------------------------------------------------- findings
def _label(row) -> str:
    where = "overall" if row["session"] is None or pd.isna(row["session"]) else f"session {row['session']}"
    return f"{where} {row['reported']}={row['value']:g}"


def _explanation(row) -> str:
    return f"{row['metric']} {row['aggregation']} over {row['scope']} ({row['multioutput']}) = {row['candidate_value']:.4f}"


def _candidates_of(d: Diagnosis, session) -> pd.DataFrame:
    """The candidate table of the whole run (``session`` None) or of one logged session (its JSON key)."""
    if session is None or pd.isna(session):
        return d.candidates
    by_text = {reg.session_label(s): s for s in d.run.sessions}
    return reg.candidate_table(d.run, by_text[reg.session_label(session)])


def _alone(d: Diagnosis, row, **change) -> float | None:
    """What the computation that reproduces ``row`` gives with one departure corrected (None: not a candidate)."""
    want = {k: row[k] for k in ("scope", "aggregation", "metric", "multioutput")} | change
    c = _candidates_of(d, row["session"])
    hit = c[np.logical_and.reduce([c[k] == v for k, v in want.items()])]
    return float(hit["value"].iloc[0]) if len(hit) else None


def _all_ranks(d: Diagnosis) -> str:
    """The scope of every rank's rows, as a script that syncs but keeps the padding would see them."""
    return "all incl. duplicates" if d.run.n_duplicate_rows else "all"


_COMPUTATION_FIXES = {  # what to change, and the one departure it corrects
    "unsynced_rank_metrics": ("Compute the metric over every rank's rows (all-reduce the sums, `pooled_r2` printed below), "
                              "not over one rank's shard", lambda d, r: {"scope": _all_ranks(d)}, "over all ranks"),
    "rank_averaged_metrics": ("All-reduce the sums and compute the metric once (`pooled_r2` printed below) instead of "
                              "averaging per-rank values", lambda d, r: {"scope": _all_ranks(d)}, "pooled over the ranks"),
    "batch_averaged_r2": ("Accumulate sums over the whole validation set and compute the metric once at the end, not per "
                          "batch", lambda d, r: {"aggregation": "pooled"}, "pooled over the batches"),
    "explained_variance_as_r2": ("Log `r2_score` (1 - SSE/SST) as R², not explained variance, which forgives a constant "
                                 "bias", lambda d, r: {"metric": "r2"}, "as R²"),
    "squared_correlation_as_r2": ("Log `r2_score` (1 - SSE/SST) as R², not the squared Pearson r, which forgives bias and "
                                  "scale", lambda d, r: {"metric": "r2"}, "as R²"),
}


def _computation_action(d: Diagnosis, fid: str, hits: pd.DataFrame) -> str:
    what, change, how = _COMPUTATION_FIXES[fid]
    first = hits.iloc[0]
    alone = _alone(d, first, **change(d, first))
    correct = f"{first['correct_value']:.4f}"
    tail = (f", and the correct computation gives {correct}" if alone is None else
            f"; {how}, it gives the correct value {correct}" if f"{alone:.4f}" == correct else
            f"; {how}, that computation gives {alone:.4f}, and the correct computation gives {correct}")
    more = f" ({len(hits)} logged numbers in all)" if len(hits) > 1 else ""
    return f"{what}: logged {_label(first)} is {_explanation(first)}{tail}{more}."


def _reported_finding(d: Diagnosis, fid: str, needs: str | None, test, severity: str, what: str) -> Finding:
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
               f"not by the pooled value {first['correct_value']:.4f}{more}.")
        return Finding(fid, "detected", severity, msg, evidence, _computation_action(d, fid, hits))
    return Finding(fid, "not_detected", "info", f"No logged number is explained by {what}.", evidence)


def findings(d: Diagnosis) -> list[Finding]:
    """Every finding of notebook 01, in :data:`FINDING_IDS` order."""
    out = [
        _reported_finding(d, "unsynced_rank_metrics", "rank", lambda r: r["scope"].startswith("rank "), "critical",
                          "one rank's shard"),
        _reported_finding(d, "rank_averaged_metrics", "rank", lambda r: r["scope"] == "mean over ranks", "warning",
                          "a mean of per-rank values"),
        _reported_finding(d, "batch_averaged_r2", "batch", lambda r: r["aggregation"] == "batch mean", "critical",
                          "a mean of per-batch values"),
        _reported_finding(d, "explained_variance_as_r2", None,
                          lambda r: r["reported"] == "r2" and r["metric"] == "explained_variance", "warning",
                          "explained variance"),
        _reported_finding(d, "squared_correlation_as_r2", None,
                          lambda r: r["reported"] == "r2" and r["metric"] == "pearson_r_squared", "warning",
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
           f"{p['r2_without_duplicates']:.4f} without.")
    moved = (f"the {p['n_duplicate_rows']} repeated rows move pooled R² from {p['r2_without_duplicates']:.4f} to "
             f"{p['r2_with_duplicates']:.4f} ({effect:+.4f})")
    action = (f"Count each sample once across ranks before reducing (`unique_rows` printed below; a per-rank "
              f"de-duplication cannot see repeats that sit on other ranks): {moved}." if sev == "warning" else
              f"Counting each sample once across ranks (`unique_rows` printed below) matters little here: {moved}, "
              f"less than the {PADDING_EFFECT:g} this notebook counts as mattering for a logged R².")
    return Finding(fid, "detected", sev, msg, {**p, "r2_effect": effect}, action)


def _between_session_finding(d: Diagnosis) -> Finding:
    fid = "between_session_variance"
    if d.sessions is None:
        return not_applicable(fid, "The predictions have no 'session' column.")
    s = d.sessions
    n_sessions = int(d.table["session"].nunique())
    f_stat, p_value = d.anova
    gap = s["r2_pooled"] - s["r2_within"]
    ev = {**s, "gap": gap, "anova_f": f_stat, "anova_p": p_value, "n_sessions": n_sessions,
          "mean_per_session_r2": float(d.per_session["r2"].mean()) if d.per_session is not None else np.nan}
    if n_sessions < 2 or not np.isfinite(gap):
        return Finding(fid, "not_detected", "info", "Fewer than two sessions with a defined R²: no between-session part.", ev)
    if gap >= MIN_SESSION_GAP and np.isfinite(p_value) and p_value < ANOVA_ALPHA:
        msg = (f"Sessions differ in mean ({100 * s['eta2']:.0f}% of target variance is between sessions, ANOVA "
               f"p={p_value:.1e}): pooled R² {s['r2_pooled']:.3f} exceeds within-session R² {s['r2_within']:.3f} by "
               f"{gap:.3f} as a matter of statistics, not a bug.")
        ps = d.per_session.dropna(subset=["r2"])
        here = ""
        if len(ps):
            lo, hi = ps.loc[ps["r2"].idxmin()], ps.loc[ps["r2"].idxmax()]
            here = (f" (here from {lo['r2']:.3f} in session {reg.session_label(lo['session'])} to {hi['r2']:.3f} in "
                    f"session {reg.session_label(hi['session'])})")
        action = (f"Report each held-out session's own R² with its interval{here} rather than the pooled R² "
                  f"{s['r2_pooled']:.3f}, which is {gap:.3f} above the within-session R² only because session means differ.")
        return Finding(fid, "detected", "info", msg, ev, action)
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
    first = bad.iloc[0]
    action = (f"Log the metric from the same predictions you save (same epoch, split and checkpoint), so that the log "
              f"can be checked: {len(bad)} logged number(s), e.g. {_label(first)} (correct value on these predictions "
              f"{first['correct_value']:.4f}), match no computation on them.")
    return Finding(fid, "detected", "warning",
                   f"{len(bad)} logged number(s), e.g. {_label(first)}, match no candidate computation on these "
                   "predictions: were they logged on other data (another epoch, split or checkpoint)?", ev, action)


def symptom(d: Diagnosis) -> str:
    """This run's version of the symptom: what it logged, and what its predictions give (Markdown, escaped)."""
    esc, rep = html.escape, d.reported
    overall = ", ".join(f"{k}={rep[k]}" for k in ("r2", "corr") if k in rep)
    lines = [f"**This run** logged overall {esc(overall)}." if overall else
             "**This run** logged no overall number." if rep else
             "**This run** came with no logged numbers (parameter `reported` is empty)."]
    per = {s: float(v["r2"]) for s, v in (rep.get("per_session") or {}).items() if "r2" in v}
    if per:
        lo, hi = min(per, key=per.get), max(per, key=per.get)
        lines.append(f"Its logged per-session r2 run from {per[lo]:g} (session {esc(lo)}) to {per[hi]:g} "
                     f"(session {esc(hi)}).")
    within = f", within-session R² {d.sessions['r2_within']:.4f}" if d.sessions is not None else ""
    lines.append(f"Its predictions give pooled R² {float(d.headline['r2']):.4f} (each sample once){within}.")
    return " ".join(lines)


# --------------------------------------------------------------------------- the gap account
ACCOUNT_PARTS = ("computation", "between_sessions", "session_difficulty", "session_bias", "rest")


def gap_account(d: Diagnosis) -> pd.DataFrame:
    """Every logged number, accounted for: one row each, in the order of the JSON.

    A logged R² starts from the correct pooled R² (``start``); a logged correlation from the correct
    value of its own scope. The parts add up to the logged number (NaN parts count as 0):

    * ``computation`` = reproducing candidate - correct value (the bug; 0 when the correct
      computation reproduces it);
    * for a session's R²: ``between_sessions`` = within-session R² - pooled R² (real: pooled R²
      credits the session means), ``session_difficulty`` = the session's explained variance -
      within-session R² (real: how much less, or more, of this session's own variance the model
      explains than of the average session's), ``session_bias`` = the session's R² - its
      explained variance (the model misses the session's mean: a model error, not the metric's);
    * ``rest``: the logged number's rounding (at most its ``tolerance``), or, when no candidate
      reproduces it (``status`` unexplained), all that is left.

    Multi-channel R² is flattened here, the convention the logged numbers are matched in.
    """
    cols = ["number", "logged", "reproduced_by", "status", "start", *ACCOUNT_PARTS, "tolerance"]
    if not d.reported or not len(d.reconciliation):
        return pd.DataFrame(columns=cols)
    pooled_r2 = float(d.headline["r2"])
    flat = None
    if d.run.has["session"]:
        within = reg.variance_decomposition(d.run, "session", "flat")["r2_within"]
        per = reg.per_group_metrics(d.run, "session", "flat")
        flat = {reg.session_label(s): (r2, ev) for s, r2, ev in zip(per["session"], per["r2"],
                                                                      per["explained_variance"], strict=True)}
    rows = []
    for _, r in d.reconciliation.iterrows():
        overall = r["session"] is None or pd.isna(r["session"])
        correct = float(r["correct_value"])
        parts = dict.fromkeys(ACCOUNT_PARTS, np.nan)
        start = correct
        if r["reported"] == "r2" and not overall and flat is not None:
            r2_s, ev_s = flat[reg.session_label(r["session"])]
            start = pooled_r2
            parts.update(between_sessions=within - pooled_r2, session_difficulty=ev_s - within, session_bias=r2_s - ev_s)
        if r["explained"]:
            parts.update(computation=float(r["candidate_value"]) - correct, rest=r["value"] - float(r["candidate_value"]))
            status = "correct" if r["is_correct"] else "bug"
            how = "the correct computation" if r["is_correct"] else _explanation(r)
        else:
            parts.update(rest=r["value"] - correct)
            status, how = "unexplained", "nothing: no candidate within tolerance"
        rows.append({"number": _label(r).rsplit("=", 1)[0], "logged": r["value"], "reproduced_by": how, "status": status,
                     "start": start, **parts, "tolerance": r["tolerance"]})
    return pd.DataFrame(rows, columns=cols)


def gap_verdict(d: Diagnosis) -> str:
    """The account in sentences (Markdown; text from the user's files escaped): how many logged numbers
    each explanation covers, and the symptom (logged overall R² against the lowest logged session R²)
    split into its parts."""
    acc = gap_account(d)
    if acc.empty:
        return "No logged numbers given (parameter `reported`): there is no gap to account for."
    esc = html.escape
    counts = acc["status"].value_counts()
    lines = [f"{len(acc)} logged number(s): {counts.get('correct', 0)} reproduced by the correct computation, "
             f"{counts.get('bug', 0)} by a buggy one, {counts.get('unexplained', 0)} unexplained."]
    bad = acc[acc["status"] == "unexplained"]
    if len(bad):
        lines.append("Not accounted for (no computation on these predictions gives them): "
                     + ", ".join(f"{esc(n)} = {v:g}" for n, v in zip(bad["number"], bad["logged"], strict=True)) + ".")
    over = acc[acc["number"] == "overall r2"]
    sess = acc[acc["number"].str.startswith("session ") & acc["number"].str.endswith(" r2")
               & acc["session_difficulty"].notna()]
    if len(over) and len(sess):
        o, s = over.iloc[0], sess.loc[sess["logged"].idxmin()]
        gap = o["logged"] - s["logged"]
        part = lambda k: (0.0 if pd.isna(o[k]) else o[k]) - (0.0 if pd.isna(s[k]) else s[k])  # noqa: E731
        name = esc(s["number"][len("session "):-len(" r2")])
        more = "less" if part("session_difficulty") >= 0 else "more"
        lines.append("\n".join([
            f"The symptom, logged overall r2 {o['logged']:g} against session {name}'s {s['logged']:g} (a gap of "
            f"{gap:.3f}), splits into:",
            f"- {part('computation'):+.3f} from how the numbers were computed "
            + ("(both are computed correctly);" if o["status"] == s["status"] == "correct" else
               "(a bug: see what to change below);"),
            f"- {part('between_sessions'):+.3f} from between-session variance (real: pooled R² credits the session means);",
            f"- {part('session_difficulty'):+.3f} because the model explains {more} of session {name}'s own variance (its bias aside) "
            f"than the within-session R² of all sessions together (real);",
            f"- {part('session_bias'):+.3f} from the model missing that session's mean (a model error, not the metric's);",
            f"- {part('rest'):+.3f} " + ("from the rounding of the logged numbers." if "unexplained" not in
                                         (o["status"], s["status"]) else "that no computation on these predictions "
                                                                         "reproduces (unexplained)."),
        ]))
        noise = _beyond_noise(d, s)
        if noise:
            lines.append(noise)
    return "\n\n".join(lines)


def _beyond_noise(d: Diagnosis, row) -> str:
    """Whether a session's own shortfall from the within-session R² (its difficulty and bias parts) is
    larger than its sampling noise: its R² bootstrap interval against the within-session R² (flat only)."""
    if d.intervals is None or d.multioutput != "flat" or d.sessions is None:
        return ""
    label = row["number"][len("session "):-len(" r2")]
    iv = d.intervals[d.intervals["session"].map(reg.session_label) == label]
    within = d.sessions["r2_within"]
    if not len(iv) or not np.isfinite(iv["r2_low"].iloc[0]) or not np.isfinite(within):
        return ""
    lo, hi = float(iv["r2_low"].iloc[0]), float(iv["r2_high"].iloc[0])
    short = row["session_difficulty"] + row["session_bias"]
    verdict = ("contains it, so that difference is within the session's sampling noise" if lo <= within <= hi else
               "excludes it, so that difference is larger than the session's sampling noise")
    return (f"Session {html.escape(label)}'s R² differs from the within-session R² {within:.3f} by {short:+.3f} "
            f"(its difficulty and bias parts); its 95% block-bootstrap interval [{lo:.3f}, {hi:.3f}] {verdict}.")


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
        m["mean_per_session_r2"] = float(d.per_session["r2"].mean())  # pandas skips undefined sessions (no warning when none is defined)
    if d.padding:
        m["n_duplicate_rows"] = d.padding["n_duplicate_rows"]
    acc = gap_account(d)
    over = acc[acc["number"] == "overall r2"]
    ok = over[over["status"] != "unexplained"]
    m["gap_from_computation"] = float(ok["logged"].iloc[0] - ok["start"].iloc[0]) if len(ok) else None
    m["gap_from_between_sessions"] = d.sessions["r2_pooled"] - d.sessions["r2_within"] if d.sessions is not None else None
    m["n_logged_unexplained"] = int((acc["status"] == "unexplained").sum()) if d.reported else None
    return m


def _ranks_with_repeats(table: pd.DataFrame, repeated: np.ndarray | None = None) -> list:
    """The ranks holding a row of a sample evaluated more than once (``repeated``: that mask, if known)."""
    repeated = reg.repeat_counts(table) > 1 if repeated is None else repeated
    return sorted(np.unique(table["rank"].to_numpy()[repeated]).tolist())


def repeated_samples(table: pd.DataFrame) -> pd.DataFrame:
    """Samples evaluated more than once: how often, and on which ranks (empty without sample_id).

    Only the rows of repeated samples are grouped (one counting pass finds them)."""
    if "sample_id" not in table.columns:
        return pd.DataFrame(columns=["sample_id", "times", "ranks"])
    key = ["sample_id", "channel"] if "channel" in table.columns else ["sample_id"]
    sample, _ = reg._dense_codes(table["sample_id"].to_numpy())
    repeated = np.zeros(int(sample.max()) + 1 if len(sample) else 0, dtype=bool)
    repeated[sample[reg.repeat_counts(table) > 1]] = True
    rows = table[repeated[sample]]  # every row of a sample that was evaluated more than once
    times = rows.groupby(key, sort=True).size().groupby(level="sample_id").max()
    rep = times[times > 1].rename("times").reset_index()
    if "rank" in table.columns:
        ranks = rows.groupby("sample_id")["rank"].unique()
        rep["ranks"] = rep["sample_id"].map(lambda s: sorted(ranks[s].tolist()))
    return rep
