"""The diagnosis behind notebook 04: why tpr@fpr falls off a cliff.

The statistics live in ``helpers.roc_collapse.low_fpr`` (ROC at low FPR, ties, intervals,
ROC-function audit) and ``helpers.roc_collapse.loader_audit`` (what the loader yielded);
this module turns a run's files into those measurements and the findings.

The face every notebook's diagnosis shares: :data:`NOTEBOOK`, :data:`FINDING_IDS`,
:data:`PARAMETER_TYPES`, :func:`load_inputs`, :func:`describe_inputs`, :func:`diagnose`,
:func:`findings`, :func:`metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from helpers.findings import Finding, input_files, not_applicable
from helpers.findings import describe_inputs as describe_files
from helpers.history import load_history, parse_metric_key
from helpers.io import InputError, load_table, resolve_path
from helpers.roc_collapse import loader_audit as la
from helpers.roc_collapse import low_fpr as lf

NOTEBOOK = "04_roc_collapse"
FINDING_IDS = (
    "score_saturation_ties", "too_few_negatives", "worker_duplication", "duplicated_eval_rows",
    "roc_implementation_mismatch", "logged_metric_mismatch", "late_collapse", "logits_recover_ranking",
    "paired_control_shortcut",
)
PARAMETER_TYPES = {
    "history": str, "scores": str, "fpr_targets": list, "tpr_targets": list, "seen_ids": str, "roc_function": str,
    "n_bootstrap": int, "callable_timeout": float, "output_dir": str, "run_demos": bool, "seed": int,
}
# score_saturation_ties: the share of positives whose side of the threshold is decided by tie order
TIE_GAP = 0.05
# too_few_negatives: the one resolution rule (the finding, the exercise and the advice use it; see RESOLUTION_RULE)
INTERVAL_LEVEL = 0.95
MAX_CI_WIDTH = 0.05
RESOLUTION_RULE = (
    f"tpr@fpr x is resolved when its {INTERVAL_LEVEL:.0%} interval is at most {MAX_CI_WIDTH:g} wide at every epoch. "
    "The interval is the order-statistic one (low_fpr.order_statistic_interval): exact binomial ranks place the "
    "threshold among the negatives and Clopper-Pearson bounds the positives above it, so it holds however few "
    "negatives set the threshold; it is computed on logits when the run saved them (ties kept out).")
# how the bootstrap is judged beside it: it resamples only the negatives observed, so where a handful set the
# threshold it cannot place it beyond them; below this many allowed negatives the notebook does not rely on it
FEW_NEGATIVES = 20
# logits_recover_ranking: tpr@fpr on logits exceeds the value on scores by this much
RECOVERY = 0.05
# late_collapse: the last epoch's tpr@fpr below the best epoch's interval and by at least this much
COLLAPSE = 0.02
PATIENCE = 2  # early stopping on partial AUC
TAIL_SHARE = 0.01  # paired_control_shortcut: the top 1% of negatives
PAIR_ALPHA = 0.01
WORKER_REPEAT_SHARE = 0.01
# diagnose shows a progress bar (which epoch and ranking it is on) for runs of more than this many rows
PROGRESS_ROWS = 2_000_000


# --------------------------------------------------------------------------- inputs
@dataclass
class Run:
    """A run's files, loaded and checked: the scores table and the optional history, loader log and ROC code."""

    scores: pd.DataFrame
    history: pd.DataFrame | None
    seen: pd.DataFrame | None
    roc_function: Callable | None
    inputs: dict = field(default_factory=dict)  # parameter -> file read (helpers.findings.input_files)
    roc_module: str = ""  # a roc_function given as "module:function" (no file to list among the inputs)
    dropped: dict = field(default_factory=dict)  # optional inputs left at the sample's value, not used
    scores_as_given: pd.DataFrame | None = None  # the scores with their repeated sample_ids (None: no repeats)

    @property
    def has_logits(self) -> bool:
        return "logit" in self.scores.columns

    @property
    def has_scores(self) -> bool:
        return "score" in self.scores.columns


def _rates(name: str, values: list, allow_empty: bool = False) -> list[float]:
    """The parsed list of ``name`` as rates in (0, 1), sorted, without repeats."""
    if not values and not allow_empty:
        raise InputError(name, "needs at least one rate")
    out = []
    for v in values:
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise InputError(name, f"expected numbers, got {v!r}") from None
        if isinstance(v, bool) or not isinstance(v, int | float) or not (0 < v < 1):
            raise InputError(name, f"every rate must be a number in (0, 1), got {v!r}")
        out.append(float(v))
    return sorted(set(out))


def load_scores(param: str, value) -> pd.DataFrame:
    """The per-epoch scores table: epoch, label, score and/or logit; optional pair_id, sample_id."""
    return _load_scores(param, value)[0]


def _load_scores(param: str, value) -> tuple[pd.DataFrame, np.ndarray | None]:
    """(:func:`load_scores`, the mask of rows repeating an earlier row's (epoch, sample_id) or None without
    sample_id): the one hashing of the keys that the label check and :func:`drop_repeats` both read."""
    path = resolve_path(param, value, (".parquet", ".csv"))
    optional = {"score": "float", "logit": "float", "sample_id": "key"}
    df = load_table(param, path, {"epoch": "count", "label": "binary"}, optional)
    if "score" not in df.columns and "logit" not in df.columns:
        raise InputError(param, f"needs a 'score' or a 'logit' column (found: {', '.join(map(str, df.columns[:12]))})", path)
    if "score" in df.columns and ((df["score"] < 0) | (df["score"] > 1)).any():
        raise InputError(param, f"column 'score' must hold probabilities in [0, 1], found {df['score'].min():g} to "
                                f"{df['score'].max():g}: logits go in a 'logit' column", path)
    if "pair_id" in df.columns:
        pid = pd.to_numeric(df["pair_id"], errors="coerce")
        num = pid.to_numpy(dtype=float, na_value=np.nan)
        bad = df["pair_id"].notna().to_numpy() & ~(np.isfinite(num) & (num == np.round(num)))
        if bad.any():
            first = df.loc[bad, "pair_id"].iloc[0]
            raise InputError(param, f"column 'pair_id' must hold integers (missing or negative: unpaired), found "
                                    f"{str(first)!r} in {int(bad.sum())} rows", path)
        df["pair_id"] = pid.fillna(-1).astype(np.int64)
    counts = df.groupby("epoch")["label"].agg(["sum", "size"])
    for e, r in counts.iterrows():
        if r["sum"] == 0 or r["sum"] == r["size"]:
            what = "positives" if r["sum"] == 0 else "negatives"
            raise InputError(param, f"epoch {e} has no {what}: the ROC needs both classes", path)
    dup = _repeated_keys(df) if "sample_id" in df.columns else None
    if dup is not None and dup.any():  # a label can only change where a sample is scored twice in an epoch
        labels = df.groupby(["epoch", "sample_id"], sort=False)["label"].nunique()
        if (labels > 1).any():
            e, sid = labels.index[int(np.argmax(labels.to_numpy() > 1))]
            sid = sid.item() if isinstance(sid, np.generic) else sid
            n = int((labels > 1).sum())
            more = f" ({n} samples have both)" if n > 1 else ""
            raise InputError(param, f"sample_id {sid!r} has both labels in epoch {e}{more}: a sample's label cannot "
                                    "change within an epoch", path)
    if df["epoch"].is_monotonic_increasing:  # already in epoch order: no sorted copy of the table
        return df.reset_index(drop=True), dup
    order = np.argsort(df["epoch"].to_numpy(), kind="stable")  # the order sort_values(kind="stable") gives
    # within an epoch rows keep their order, so the first copy of an (epoch, sample_id) stays the first
    return df.take(order).reset_index(drop=True), None if dup is None else dup[order]


def _repeated_keys(df: pd.DataFrame) -> np.ndarray:
    """``df.duplicated(["epoch", "sample_id"])`` as an array. Integer ids in a compact range are first checked
    by counting (no hashing of every pair): when no pair repeats, as in most runs, the mask is all False."""
    ids, epoch = np.asarray(df["sample_id"].to_numpy()), df["epoch"].to_numpy()  # epochs: integers >= 0
    if ids.dtype.kind in "iu" and len(df):
        lo, e_lo = ids.min(), epoch.min()
        span, e_span = int(ids.max()) - int(lo) + 1, int(epoch.max()) - int(e_lo) + 1
        if e_span * span <= 4 * len(df):
            key = (epoch - e_lo).astype(np.int64) * span + (ids - lo).astype(np.int64)
            if np.bincount(key).max() <= 1:
                return np.zeros(len(df), dtype=bool)
    return df.duplicated(["epoch", "sample_id"]).to_numpy()


def drop_repeats(df: pd.DataFrame, dup: np.ndarray | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(the scores with one row per (epoch, sample_id), the rows as given or None when nothing repeats).

    An evaluation loader that repeats samples (an IterableDataset not sharded by worker, sampler
    padding) scores some validation samples several times per epoch; every check here counts each
    sample once. The first copy is kept; duplicated_eval_rows reports copies whose scores differ.
    """
    if "sample_id" not in df.columns:
        return df, None
    if dup is None:  # ``dup``: this mask, already computed (_load_scores)
        dup = df.duplicated(["epoch", "sample_id"]).to_numpy()
    if not dup.any():
        return df, None
    return df[~dup].reset_index(drop=True), df


def load_inputs(params: Mapping) -> tuple[dict, Run]:
    """Check the notebook's parameters and load its files: (parameters, run).

    Raises :class:`~helpers.io.InputError` (one line: parameter, file, problem) on any mistake.
    """
    from helpers.params import check_range, check_types, drop_sample_companions, load_callable
    from helpers.paths import locate

    p = check_types(params, PARAMETER_TYPES)
    p["fpr_targets"] = _rates("fpr_targets", p["fpr_targets"])
    p["tpr_targets"] = _rates("tpr_targets", p["tpr_targets"], allow_empty=True)
    check_range("n_bootstrap", p["n_bootstrap"], 100, 100_000)
    check_range("seed", p["seed"], 0, None)
    check_range("callable_timeout", p["callable_timeout"], 0.1, None)
    dropped = drop_sample_companions(p, NOTEBOOK, ["scores"], ["history", "seen_ids", "roc_function"])
    scores, as_given = drop_repeats(*_load_scores("scores", p["scores"]))
    history = load_history("history", p["history"]) if p["history"].strip() else None
    seen = None
    if p["seen_ids"].strip():
        seen = load_table("seen_ids", p["seen_ids"], {"epoch": "count", "sample_id": "key"},
                          {"rank": "count", "worker": "count"})
    fn = load_callable("roc_function", p["roc_function"], p["callable_timeout"]) if p["roc_function"].strip() else None
    read = [k for k in ("scores", "history", "seen_ids", "roc_function") if p[k].strip()]
    inputs = input_files({k: p[k] for k in read})
    if history is not None and "history" not in inputs and locate(p["history"], "any") is not None:
        inputs["history"] = locate(p["history"], "any")  # a TensorBoard log directory
    roc_module = p["roc_function"].strip() if fn is not None and "roc_function" not in inputs else ""
    return p, Run(scores, history, seen, fn, inputs, roc_module, dropped, as_given)


def describe_inputs(run: Run) -> str:
    """Which files were read (and loudly whether they are the bundled sample run), and what they hold."""
    df = run.scores
    n_epochs = df["epoch"].nunique()
    rows = len(df) if run.scores_as_given is None else len(run.scores_as_given)
    details = [f"scores: {n_epochs} epochs x {rows // n_epochs:,} rows; columns: {', '.join(df.columns)}"]
    if run.scores_as_given is not None:
        details.append(f"scores: sample_ids repeat within an epoch: {len(df) // n_epochs:,} distinct samples per "
                       "epoch are used (see duplicated_eval_rows)")
    if run.roc_module:
        details.append(f"roc_function: {run.roc_module}")
    return describe_files(run.inputs, dropped=run.dropped, details=details)


# --------------------------------------------------------------------------- measurements
@dataclass
class Diagnosis:
    """Everything notebook 04 measures on a run."""

    fpr_targets: list[float]
    tpr_targets: list[float]
    epochs: list[int]
    n_pos: int
    n_neg: int
    score_dtype: str | None
    saturation: dict  # dtype -> saturation logit
    audit: pd.DataFrame  # tie audit per epoch (on scores, or logits when no scores)
    values: pd.DataFrame  # epoch x (source, metric) values, long
    intervals: pd.DataFrame  # per (source, epoch, fpr target): order-statistic interval (low, high) and bootstrap
    comparison: pd.DataFrame | None
    logit_audit: pd.DataFrame | None = None
    roc_cases: pd.DataFrame | None = None
    roc_run: pd.DataFrame | None = None
    loader: dict | None = None
    loader_epochs: pd.DataFrame | None = None
    loader_sources: pd.DataFrame | None = None
    paired: dict | None = None
    paired_reason: str = ""
    collapse: dict = field(default_factory=dict)
    history_keys: list = field(default_factory=list)
    sources: list = field(default_factory=list)
    repeats: dict | None = None  # repeated sample_ids in the scores (None: no sample_id column)
    repeats_epochs: pd.DataFrame | None = None
    float32_fix: dict | None = None  # the saved logits through a wider sigmoid where ties decide (wider_sigmoid)
    negatives_needed: dict = field(default_factory=dict)  # fpr target -> negatives for MAX_CI_WIDTH (projected)
    # ``values`` split by (source, metric) once, for value(): filtering the table on every call cost a third of
    # a small run's diagnosis; (the table split, its parts)
    _by_metric: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def value(self, source: str, metric: str) -> pd.Series:
        """The metric's value per epoch on ``source`` (empty where it was not measured)."""
        if self._by_metric is None or self._by_metric[0] is not self.values:  # split again if the table was replaced
            self._by_metric = (self.values, {k: g.set_index("epoch")["value"]
                                             for k, g in self.values.groupby(["source", "metric"], sort=False)})
        found = self._by_metric[1].get((source, metric))
        return found.copy() if found is not None else pd.Series([], name="value", dtype=float,
                                                                index=pd.Index([], name="epoch", dtype="int64"))


def _metric_keys(fpr_targets, tpr_targets, history: pd.DataFrame | None) -> list[tuple[str, str, float]]:
    keys = [("tpr", "fpr", t) for t in fpr_targets] + [("fpr", "tpr", t) for t in tpr_targets]
    if history is not None:
        keys += [parse_metric_key(c) for c in history.columns if parse_metric_key(c)]
    return list(dict.fromkeys(keys))


def _epoch_measure(y, s, keys, fpr_targets, n_boot, seed, source) -> tuple[list, dict, list]:
    c = lf.curve(y, s)
    rows = [{"source": source, "metric": lf.metric_name(k), "value": lf.metric(c, k)} for k in keys]
    rows += [{"source": source, "metric": f"pauc@fpr{lf.rate_str(t)}", "value": lf.partial_auc(c, t)} for t in fpr_targets]
    audit = lf.tie_audit(c, fpr_targets)
    intervals = []
    for t in fpr_targets:
        iv = lf.order_statistic_interval(c, t, INTERVAL_LEVEL)
        b = lf.bootstrap_tpr_at_fpr(c, t, n_boot=n_boot, seed=seed, level=INTERVAL_LEVEL)
        intervals.append({"source": source, "fpr_target": t, "tpr": iv["tpr"], "low": iv["low"], "high": iv["high"],
                          "width": iv["high"] - iv["low"], "allowed_negatives": iv["allowed_negatives"],
                          "rank_low": iv["rank_low"], "rank_high": iv["rank_high"],
                          "boot_low": b["low"], "boot_high": b["high"], "boot_width": b["high"] - b["low"]})
    return rows, audit, intervals


def diagnose(run: Run, params: Mapping, progress: bool | None = None) -> Diagnosis:
    """All measurements of notebook 04, with the parameters ``fpr_targets``, ``tpr_targets``,
    ``n_bootstrap`` and ``seed`` (as :func:`load_inputs` returns them). ``progress``: a progress bar over the
    epochs (default: for runs of more than PROGRESS_ROWS rows)."""
    from tqdm import tqdm

    df = run.scores
    fpr_targets, tpr_targets = list(params["fpr_targets"]), list(params["tpr_targets"])
    n_boot, seed = params["n_bootstrap"], params["seed"]
    keys = _metric_keys(fpr_targets, tpr_targets, run.history)
    sources = [s for s, ok in (("score", run.has_scores), ("logit", run.has_logits)) if ok]
    values, audits, logit_audits, intervals = [], [], [], []
    epochs = sorted(df["epoch"].unique().tolist())
    show = len(df) > PROGRESS_ROWS if progress is None else progress
    bar = tqdm(total=len(epochs) * len(sources), unit="ROC", disable=not show)
    for e, g in df.groupby("epoch", sort=True):
        y = g["label"].to_numpy()
        for src in sources:
            bar.set_description(f"epoch {e}: ROC, ties and intervals on the {src}s")
            s = g[src].to_numpy()
            rows, audit, b = _epoch_measure(y, s, keys, fpr_targets, n_boot, seed + int(e), src)
            values += [{"epoch": int(e), **r} for r in rows]
            intervals += [{"epoch": int(e), **r} for r in b]
            audit = {"epoch": int(e), **audit}
            if src == sources[0]:
                if src == "score":
                    audit["score_dtype"] = lf.infer_score_dtype(s)
                    audit["share_scores_at_one"] = float((s == 1.0).mean())
                audits.append(audit)
            else:
                logit_audits.append(audit)
            bar.update()
    bar.close()
    last = df[df["epoch"] == epochs[-1]]
    n_pos, n_neg = int(last["label"].sum()), int(len(last) - last["label"].sum())
    audit = pd.DataFrame(audits)
    score_dtype = None
    if run.has_scores:
        dtypes = audit["score_dtype"]
        score_dtype = max(dtypes, key=lambda d: lf.FLOAT_DTYPES.index(d))  # the widest seen
    saturation = {d: lf.saturation_logit(d) for d in ("bfloat16", "float16", "float32")}
    d = Diagnosis(fpr_targets, tpr_targets, epochs, n_pos, n_neg, score_dtype, saturation, audit,
                  pd.DataFrame(values), pd.DataFrame(intervals), None,
                  pd.DataFrame(logit_audits) if logit_audits else None, sources=sources,
                  history_keys=[k for k in keys if run.history is not None
                                and any(parse_metric_key(c) == k for c in run.history.columns)])
    if "sample_id" in df.columns:
        d.repeats, d.repeats_epochs = eval_repeats(run, keys, fpr_targets, sources[0])
    if run.history is not None:
        d.comparison = compare_history(d, run.history)
    if run.roc_function is not None:
        d.roc_cases = lf.audit_roc_function(run.roc_function, fpr_targets, tpr_targets, seed=seed)
        d.roc_run = audit_on_run(run.roc_function, df, fpr_targets, tpr_targets, sources[0])
    if run.seen is not None:
        d.loader = la.summary(run.seen)
        d.loader_epochs = la.multiplicity(run.seen)
        d.loader_sources = la.by_source(run.seen)
    d.paired, d.paired_reason = paired_controls(df, sources[-1])
    d.collapse = late_collapse(d)
    d.float32_fix = wider_sigmoid(d, df)
    d.negatives_needed = negatives_needed(d, df)
    return d


def interval_source(d: Diagnosis) -> str:
    """The ranking the resolution rule reads: logits when saved (ties kept out), else the first source."""
    return "logit" if "logit" in d.sources else d.sources[0]


def negatives_needed(d: Diagnosis, df: pd.DataFrame) -> dict:
    """Per fpr target whose interval breaks the rule: about how many negatives would bring its widest
    epoch's interval within MAX_CI_WIDTH (low_fpr.negatives_for_width; None: the positives alone are too few)."""
    src = interval_source(d)
    iv = d.intervals[d.intervals["source"] == src]
    out = {}
    for t in d.fpr_targets:
        it = iv[iv["fpr_target"] == t]
        w = it.loc[it["width"].idxmax()]
        if w["width"] > MAX_CI_WIDTH:
            g = df[df["epoch"] == w["epoch"]]
            c = lf.curve(g["label"].to_numpy(), g[src].to_numpy())
            out[lf.rate_str(t)] = lf.negatives_for_width(c, t, MAX_CI_WIDTH, INTERVAL_LEVEL)
    return out


def eval_repeats(run: Run, keys, fpr_targets, source: str) -> tuple[dict, pd.DataFrame]:
    """How often the evaluation scored each sample per epoch, and what the repeats do to the metrics.

    The metrics are recomputed on the rows as given (repeats counted as separate samples) and
    compared with the de-duplicated ones every check uses; the allowance of each fpr target is
    counted both ways.
    """
    given = run.scores if run.scores_as_given is None else run.scores_as_given
    per_epoch = la.multiplicity(given[["epoch", "sample_id"]], distinct=run.scores_as_given is None)
    out = {"rows": int(len(given)), "distinct_rows": int(len(run.scores)),
           "mean_multiplicity": float(len(given) / len(run.scores)),
           "max_multiplicity": int(per_epoch["max_multiplicity"].max()),
           "share_repeated": float((per_epoch["share_repeated"] * per_epoch["distinct_samples"]).sum()
                                   / per_epoch["distinct_samples"].sum()),
           "epochs_with_repeats": per_epoch.loc[per_epoch["max_multiplicity"] > 1, "epoch"].astype(int).tolist()}
    if run.scores_as_given is None:
        return out, per_epoch
    cols = [c for c in ("score", "logit") if c in given.columns]
    grouped = given.groupby(["epoch", "sample_id"], sort=False)[cols]
    spread = (grouped.max() - grouped.min()).max(axis=1)
    out["copies_disagree"] = int((spread > 0).sum())
    out["largest_copy_difference"] = float(spread.max())
    shifts = []
    for e, g in given.groupby("epoch", sort=True):
        c = lf.curve(g["label"].to_numpy(), g[source].to_numpy())
        dedup = run.scores[run.scores["epoch"] == e]
        cd = lf.curve(dedup["label"].to_numpy(), dedup[source].to_numpy())
        for k in keys:
            a, b = lf.metric(c, k), lf.metric(cd, k)
            shifts.append({"epoch": int(e), "metric": lf.metric_name(k), "as_given": a, "distinct": b,
                           "shift": abs(a - b) if np.isfinite(a) and np.isfinite(b) else 0.0})
    shifts = pd.DataFrame(shifts)
    worst = shifts.loc[shifts["shift"].idxmax()]
    out["largest_metric_shift"] = {"metric": worst["metric"], "epoch": int(worst["epoch"]),
                                   "as_given": float(worst["as_given"]), "distinct": float(worst["distinct"])}
    out["metrics_as_given"] = shifts.to_dict(orient="records")
    last = given[given["epoch"] == given["epoch"].max()]
    neg_rows = int((last["label"] == 0).sum())
    out["negatives_rows_last_epoch"] = neg_rows
    out["allowed_as_given"] = {lf.rate_str(t): lf.allowed_false_positives(t, neg_rows) for t in fpr_targets}
    return out, per_epoch


def wider_sigmoid(d: Diagnosis, df: pd.DataFrame) -> dict | None:
    """Where ties decide tpr@fpr (the first epoch a tie blocks a target, else the largest tie gap): tpr@fpr with
    the saved logits through a sigmoid one float type wider than the scores', and on the logits themselves.
    None without both logits and scores."""
    if not ("logit" in d.sources and "score" in d.sources):
        return None
    a = d.audit
    spot = None
    for t in d.fpr_targets:
        blocked = a.loc[a[f"tie_blocks_cliff@fpr{lf.rate_str(t)}"], "epoch"]
        if len(blocked):
            spot = (t, int(blocked.min()))
            break
    if spot is None:
        gaps = [(float(a[f"tie_gap@fpr{lf.rate_str(t)}"].max()), t) for t in d.fpr_targets]
        gap, t = max(gaps)
        spot = (t, int(a.loc[a[f"tie_gap@fpr{lf.rate_str(t)}"].idxmax(), "epoch"]))
    t, e = spot
    dtype = "float32" if d.score_dtype in ("bfloat16", "float16") else "float64"
    g = df[df["epoch"] == e]
    c = lf.curve(g["label"].to_numpy(), lf.sigmoid_in(g["logit"].to_numpy(), dtype))
    name = f"tpr@fpr{lf.rate_str(t)}"
    return {"epoch": e, "fpr_target": t, "dtype": dtype, "tpr_wider": lf.tpr_at_fpr(c.fpr, c.tpr, t),
            "tpr_scores": float(d.value("score", name)[e]), "tpr_logits": float(d.value("logit", name)[e])}


def _tolerance(x: float) -> float:
    """Half a unit of the last printed digit (at least 5e-5 for values printed with 0-1 decimals)."""
    text = repr(float(x))
    if "e" in text:
        mant, _, exp = text.partition("e")
        decimals = max(len(mant.partition(".")[2]) - int(exp), 0)
    else:
        decimals = len(text.partition(".")[2].rstrip("0"))
    return 0.5 * 10.0 ** -decimals if decimals >= 2 else 5e-5


def compare_history(d: Diagnosis, history: pd.DataFrame) -> pd.DataFrame:
    """Logged metrics side by side with their recomputation from the scores (and logits)."""
    rows = []
    hist = history.set_index("epoch")
    given = {(m["epoch"], m["metric"]): m["as_given"] for m in (d.repeats or {}).get("metrics_as_given", [])}
    for col in history.columns:
        key = parse_metric_key(col)
        if key is None:
            continue
        name = lf.metric_name(key)
        for e, logged in hist[col].items():
            if e not in d.epochs:
                rows.append({"epoch": e, "metric": name, "logged": logged, "status": "no scores for this epoch"})
                continue
            if not np.isfinite(logged):
                rows.append({"epoch": e, "metric": name, "logged": np.nan, "status": "not logged"})
                continue
            row = {"epoch": e, "metric": name, "logged": float(logged)}
            for src in d.sources:
                row[f"recomputed_{src}"] = float(d.value(src, name).get(e, np.nan))
            if given:
                row["recomputed_as_given"] = float(given.get((int(e), name), np.nan))
            ref = row[f"recomputed_{d.sources[0]}"]
            row["difference"] = row["logged"] - ref
            row["status"] = "matches" if abs(row["difference"]) <= _tolerance(logged) + 1e-9 else "differs"
            if key[0] == "tpr":
                a = d.audit.set_index("epoch").loc[e]
                tie_max = a.get(f"tpr_tie_order_max@fpr{lf.rate_str(key[2])}")
                if tie_max is not None and not pd.isna(tie_max):
                    row["tpr_tie_order_max"] = float(tie_max)
            rows.append(row)
    return pd.DataFrame(rows)


def audit_on_run(fn: Callable, df: pd.DataFrame, fpr_targets, tpr_targets, source: str) -> pd.DataFrame:
    """The user's ROC function on the run's own scores, rows as given and in reverse order."""
    rows = []
    for e, g in df.groupby("epoch", sort=True):
        s, y = g[source].to_numpy(), g["label"].to_numpy()
        for order, idx in (("as given", slice(None)), ("rows reversed", slice(None, None, -1))):
            r = lf.compare_roc_function(fn, s[idx], y[idx], fpr_targets, tpr_targets, tolerance=1e-9)
            vals = r.pop("values", {})
            rows.append({"epoch": int(e), "row order": order, **{k: v for k, v in r.items()},
                         **{f"yours {k}": v[0] for k, v in vals.items() if k != "auc"},
                         **{f"sklearn {k}": v[1] for k, v in vals.items() if k != "auc"}})
    return pd.DataFrame(rows)


def paired_controls(df: pd.DataFrame, source: str) -> tuple[dict | None, str]:
    """Do paired controls (negatives sharing a positive's pair_id) reach the top negatives' tail
    more, or less, than unpaired negatives? Fisher's exact test on the last epoch, ranked by ``source``."""
    from scipy.stats import fisher_exact
    from sklearn.metrics import roc_auc_score

    if "pair_id" not in df.columns:
        return None, ("The scores have no 'pair_id' column: give each lens and its own control the same pair_id "
                      "(unpaired negatives -1) and include negatives that are not controls of a lens, then the "
                      "tail rates of the two kinds of negatives can be compared.")
    last = df[df["epoch"] == df["epoch"].max()]
    pos_pairs = set(last.loc[last["label"] == 1, "pair_id"][lambda s: s >= 0])
    neg = last[last["label"] == 0]
    paired = neg["pair_id"].isin(pos_pairs).to_numpy() & (neg["pair_id"].to_numpy() >= 0)
    n_p, n_u = int(paired.sum()), int((~paired).sum())
    if n_p == 0 or n_u == 0:
        what = "no negative is a paired control" if n_p == 0 else "every negative is a paired control"
        return None, (f"In the scores {what} ({n_p} paired, {n_u} unpaired negatives): evaluate on negatives of "
                      "both kinds (controls of lenses and unrelated, flux-matched galaxies) to test the shortcut.")
    s = neg[source].to_numpy()
    k = max(int(math.ceil(TAIL_SHARE * len(s))), 20)
    thr = np.sort(s)[::-1][min(k, len(s)) - 1]
    tail = s >= thr
    table = [[int((tail & paired).sum()), int((~tail & paired).sum())],
             [int((tail & ~paired).sum()), int((~tail & ~paired).sum())]]
    odds, p = fisher_exact(table)
    rate_p, rate_u = table[0][0] / n_p, table[1][0] / n_u
    auc = float(roc_auc_score(paired.astype(int), s))  # 0.5: paired and unpaired negatives score alike
    return {"epoch": int(last["epoch"].iloc[0]), "ranked_by": source, "tail_threshold": float(thr),
            "tail_size": int(tail.sum()), "paired_negatives": n_p, "unpaired_negatives": n_u,
            "tail_rate_paired": rate_p, "tail_rate_unpaired": rate_u, "odds_ratio": float(odds), "p_value": float(p),
            "auc_paired_vs_unpaired": auc}, ""


def _early_stop(series: pd.Series, patience: int = PATIENCE) -> tuple[int, int]:
    """(epoch training stops, checkpoint kept) when monitoring ``series`` (higher is better)."""
    best_e, best_v, waited = None, -np.inf, 0
    stop = series.index[-1]
    for e, v in series.items():
        if v > best_v + 1e-12:
            best_e, best_v, waited = e, v, 0
        else:
            waited += 1
            if waited >= patience:
                stop = e
                break
    return int(stop), int(best_e)


def late_collapse(d: Diagnosis) -> dict:
    """Best epoch per metric vs the last epoch, and what early stopping on partial AUC would keep."""
    src = d.sources[0]
    last = d.epochs[-1]
    boot = d.intervals[d.intervals["source"] == src].set_index(["epoch", "fpr_target"])
    per_metric = []
    for t in d.fpr_targets:
        v = d.value(src, f"tpr@fpr{lf.rate_str(t)}")
        best = int(v.idxmax())
        low_best = float(boot.loc[(best, t), "low"])
        row = {"metric": f"tpr@fpr{lf.rate_str(t)}", "best_epoch": best, "best": float(v[best]), "best_low": low_best,
               "last": float(v[last]), "drop": float(v[best] - v[last])}
        row["collapsed"] = bool(row["last"] < low_best and row["drop"] >= COLLAPSE)
        if "logit" in d.sources and src != "logit":
            vl = d.value("logit", f"tpr@fpr{lf.rate_str(t)}")
            row.update({"best_epoch_logit": int(vl.idxmax()), "best_logit": float(vl.max()), "last_logit": float(vl[last])})
        per_metric.append(row)
    for t in d.tpr_targets:
        v = d.value(src, f"fpr@tpr{lf.rate_str(t)}")
        if v.notna().any():
            best = int(v.idxmin())
            per_metric.append({"metric": f"fpr@tpr{lf.rate_str(t)}", "best_epoch": best, "best": float(v[best]),
                               "last": float(v[last]), "drop": float(v[last] - v[best]), "collapsed": False})
    monitor = f"pauc@fpr{lf.rate_str(max(d.fpr_targets))}"
    stop, kept = _early_stop(d.value(src, monitor))
    return {"monitor": f"{monitor} on {src}", "stop_epoch": stop, "kept_epoch": kept, "last_epoch": last,
            "per_metric": per_metric}


# --------------------------------------------------------------------------- findings
def _num(x: float) -> str:
    """A score as it is stored, shortest form (1.0, 0.99609375)."""
    return repr(float(x))


def _fmt_rate(x: float) -> str:
    return f"{100 * x:.1f}%" if np.isfinite(x) else "n/a"


def _tie_action(d: Diagnosis, measure: str) -> str:
    """What to change for tied scores, by what this run measured: a wider sigmoid, ranking on logits, or saving them."""
    fix = d.float32_fix
    if fix is None:
        return (f"Save the logits in float32 and compute the sigmoid in float32 or wider: {measure}; the run saved no "
                "logits, so whether the ranking survives without the tie is not measured here.")
    name = f"tpr@fpr{lf.rate_str(fix['fpr_target'])}"
    where = f"{name} at epoch {fix['epoch']}"
    if fix["tpr_wider"] > fix["tpr_scores"]:
        return (f"Compute the sigmoid in {fix['dtype']} (outside autocast) or rank on the logits: {measure}; the saved "
                f"logits through a {fix['dtype']} sigmoid give {where} = {fix['tpr_wider']:.3f} instead of "
                f"{fix['tpr_scores']:.3f}.")
    if fix["tpr_logits"] > fix["tpr_scores"]:
        return (f"Rank on the logits, not on the scores: {measure}; on the saved logits {where} is "
                f"{fix['tpr_logits']:.3f} instead of {fix['tpr_scores']:.3f} (a {fix['dtype']} sigmoid still gives "
                f"{fix['tpr_wider']:.3f}).")
    return (f"Save the logits in float32: {measure}; the saved logits tie as well ({where} is {fix['tpr_logits']:.3f} "
            "on them), so neither a wider sigmoid nor these logits recover it.")


def saturation_finding(d: Diagnosis) -> Finding:
    fid = "score_saturation_ties"
    a = d.audit
    worst, where = 0.0, None
    for t in d.fpr_targets:
        gaps = a[f"tie_gap@fpr{lf.rate_str(t)}"]
        if gaps.max() > worst:
            worst, where = float(gaps.max()), (t, int(a.loc[gaps.idxmax(), "epoch"]))
    cliffs = {f"{lf.rate_str(t)}": (int(a.loc[a[f"tie_blocks_cliff@fpr{lf.rate_str(t)}"], "epoch"].min())
                         if a[f"tie_blocks_cliff@fpr{lf.rate_str(t)}"].any() else None) for t in d.fpr_targets}
    ev = {"score_dtype": d.score_dtype, "saturation_logit": d.saturation.get(d.score_dtype or "", None),
          "saturation_logits": d.saturation, "predicted_cliff_epoch": cliffs, "largest_tie_gap": worst,
          "negatives_at_top": a.set_index("epoch")["negatives_at_top"].to_dict(),
          "distinct_scores": a.set_index("epoch")["distinct_scores"].to_dict(), "ranked_by": d.sources[0],
          "wider_sigmoid": d.float32_fix}
    if worst < TIE_GAP:
        return Finding(fid, "not_detected", "info",
                       f"No tie between classes decides more than {_fmt_rate(worst)} of the positives at any target "
                       f"(at most {int(a['negatives_at_top'].max())} negatives share the top {d.sources[0]}).", ev)
    t, e = where
    row = a.set_index("epoch").loc[e]
    first = cliffs[f"{lf.rate_str(t)}"]
    sat = ""
    if d.score_dtype in ("bfloat16", "float16", "float32") and row["top_score"] == 1.0:
        sat = (f" (1.0: the {d.score_dtype} sigmoid is exactly 1 from logit "
               f"{d.saturation[d.score_dtype]:.4g})")
    if first is not None:
        r = a.set_index("epoch").loc[first]
        allowed = int(r[f"allowed@fpr{lf.rate_str(t)}"])
        msg = (f"From epoch {first}, {int(r['negatives_at_top'])} negatives tie with "
               f"{_fmt_rate(r['positives_at_top'] / d.n_pos)} of the positives at the top {d.sources[0]}{sat}; "
               f"fpr {lf.rate_str(t)} allows {allowed} negatives, so tpr@fpr{lf.rate_str(t)} is 0 by ties, not by "
               "ranking.")
        measure = (f"from epoch {first}, {int(r['negatives_at_top'])} negatives share the top {d.sources[0]} "
                   f"{_num(r['top_score'])} where fpr {lf.rate_str(t)} allows {allowed}")
        sev = "critical"
    else:
        msg = (f"At epoch {e}, a tie between classes decides {_fmt_rate(worst)} of the positives at fpr "
               f"{lf.rate_str(t)}{sat}: the logged value depends on tie order.")
        measure = f"at epoch {e}, a tie decides {_fmt_rate(worst)} of the positives at fpr {lf.rate_str(t)}"
        sev = "warning"
    return Finding(fid, "detected", sev, msg, ev, action=_tie_action(d, measure))


def resolution_table(d: Diagnosis) -> pd.DataFrame:
    """The resolution rule (RESOLUTION_RULE) per fpr target: its widest interval over the epochs, how many
    epochs break the rule, the bootstrap beside it, and about how many negatives would meet it."""
    src = interval_source(d)
    iv = d.intervals[d.intervals["source"] == src]
    rows = []
    for t in d.fpr_targets:
        it = iv[iv["fpr_target"] == t]
        w = it.loc[it["width"].idxmax()]
        over = int((it["width"] > MAX_CI_WIDTH).sum())
        rows.append({"metric": f"tpr@fpr{lf.rate_str(t)}", "fpr_target": t, "ranked_by": src,
                     "allowed_negatives": int(w["allowed_negatives"]), "widest_epoch": int(w["epoch"]),
                     "tpr": float(w["tpr"]), "low": float(w["low"]), "high": float(w["high"]),
                     "width": float(w["width"]), "bootstrap_width": float(w["boot_width"]),
                     "epochs_over": over, "epochs": int(len(it)), "resolved": over == 0,
                     "negatives_needed": d.negatives_needed.get(lf.rate_str(t))})
    table = pd.DataFrame(rows)
    table["negatives_needed"] = pd.Series([r["negatives_needed"] for r in rows], dtype=object)  # int or None
    return table


def negatives_finding(d: Diagnosis) -> Finding:
    fid = "too_few_negatives"
    table = resolution_table(d)
    ev = {"n_negatives": d.n_neg, "n_positives": d.n_pos, "rule": RESOLUTION_RULE, "max_width": MAX_CI_WIDTH,
          "per_target": table.to_dict(orient="records")}
    bad = table[~table["resolved"]]
    if not len(bad):
        w = table.loc[table["width"].idxmax()]
        return Finding(fid, "not_detected", "info",
                       f"Every tpr@fpr target meets the resolution rule: the widest {INTERVAL_LEVEL:.0%} interval is "
                       f"{w['width']:.3f} ({w['metric']}, epoch {w['widest_epoch']}, threshold set by "
                       f"{w['allowed_negatives']} of {d.n_neg:,} negatives), within {MAX_CI_WIDTH:g}.", ev)
    r = bad.iloc[0]
    boot = f"the bootstrap gives {r['bootstrap_width']:.3f} there"
    if r["allowed_negatives"] < FEW_NEGATIVES:
        boot += (f", but it resamples only the negatives observed and with {r['allowed_negatives']} setting the "
                 "threshold it is not relied on")
    also = f"; also {', '.join(bad['metric'].iloc[1:])}" if len(bad) > 1 else ""
    msg = (f"{r['metric']} is set by {r['allowed_negatives']} of {d.n_neg:,} negatives: its {INTERVAL_LEVEL:.0%} "
           f"interval (order statistics, on {r['ranked_by']}s) is wider than {MAX_CI_WIDTH:g} at {r['epochs_over']} "
           f"of {r['epochs']} epochs, up to {r['width']:.3f} at epoch {r['widest_epoch']} ({r['low']:.3f} to "
           f"{r['high']:.3f}); {boot}{also}.")
    iv = f"{r['low']:.3f} to {r['high']:.3f} at epoch {r['widest_epoch']}, set by {r['allowed_negatives']} negatives"
    need = r["negatives_needed"]
    if need is not None and not pd.isna(need):
        more = (f"or evaluate on about {int(need):,} negatives (now {d.n_neg:,}) to bring it within "
                f"{MAX_CI_WIDTH:g}, projected from epoch {r['widest_epoch']}'s ROC")
    else:
        more = (f"and evaluate on more positives: the {d.n_pos:,} positives alone keep it wider than "
                f"{MAX_CI_WIDTH:g} whatever the negatives")
    return Finding(fid, "detected", "warning", msg, ev,
                   action=f"Report {r['metric']} with its {INTERVAL_LEVEL:.0%} interval ({iv}), {more}.")


def worker_finding(d: Diagnosis) -> Finding:
    fid = "worker_duplication"
    if d.loader is None:
        return not_applicable(fid, "No seen_ids table: log (epoch, sample_id, and rank/worker if you can) from the "
                                   "training loader to count how often each sample is yielded per epoch.")
    s = d.loader
    ev = dict(s)
    if s["share_repeated"] <= WORKER_REPEAT_SHARE:
        return Finding(fid, "not_detected", "info",
                       f"Each logged sample was yielded {s['mean_multiplicity']:.2f} times per epoch on average.", ev)
    n_epochs = len(d.epochs)
    ev["effective_epochs_of_run"] = s["mean_multiplicity"] * n_epochs
    who = f" (all {s['n_workers']} workers yield the same ids)" if s.get("share_also_elsewhere", 0) > 0.99 and \
        s.get("n_workers", 1) > 1 else ""
    return Finding(fid, "detected", "critical" if s["mean_multiplicity"] >= 2 else "warning",
                   f"Each sample is yielded {s['mean_multiplicity']:.1f} times per epoch{who}: {n_epochs} epochs are "
                   f"about {ev['effective_epochs_of_run']:.0f} passes over the data.", ev,
                   action=f"Shard the training IterableDataset by DataLoader worker as well as by rank "
                          f"(torch.utils.data.get_worker_info()): each sample is yielded {s['mean_multiplicity']:.1f} "
                          f"times per epoch, so {n_epochs} epochs are about {ev['effective_epochs_of_run']:.0f} passes.")


def repeats_finding(d: Diagnosis) -> Finding:
    fid = "duplicated_eval_rows"
    if d.repeats is None:
        return not_applicable(fid, "The scores have no 'sample_id' column: save the dataset index with each score to "
                                   "check that the evaluation scores every validation sample once per epoch.")
    r = d.repeats
    ev = dict(r)
    if r["rows"] == r["distinct_rows"]:
        return Finding(fid, "not_detected", "info",
                       f"Every sample_id is scored once per epoch ({r['rows'] // len(d.epochs):,} samples per epoch).",
                       ev)
    t = lf.rate_str(d.fpr_targets[0])
    allowed, allowed_rows = lf.allowed_false_positives(d.fpr_targets[0], d.n_neg), r["allowed_as_given"][t]
    shift = r["largest_metric_shift"]
    moved = abs(shift["as_given"] - shift["distinct"]) > 1e-12
    effect = (f"on the rows as given {shift['metric']} at epoch {shift['epoch']} is {shift['as_given']:.4g} instead of "
              f"{shift['distinct']:.4g}" if moved else "the repeats leave every tpr@fpr and fpr@tpr unchanged")
    copies = (f"; {r['copies_disagree']:,} repeated samples got different scores in their copies (largest difference "
              f"{r['largest_copy_difference']:.3g}), the first copy is kept" if r.get("copies_disagree") else "")
    extra = r["rows"] - r["distinct_rows"]
    n_rep = int(round(r["share_repeated"] * r["distinct_rows"]))
    msg = (f"{extra:,} of the {r['rows']:,} evaluation rows repeat a sample already scored in the same epoch "
           f"({n_rep:,} sample-epochs scored more than once, up to {r['max_multiplicity']}x, in "
           f"{len(r['epochs_with_repeats'])} of {len(d.epochs)} epochs; {r['mean_multiplicity']:.2f} rows per sample). "
           f"Every check here counts each sample once: fpr {t} allows {allowed} of {d.n_neg:,} distinct negatives, "
           f"where the rows would allow {allowed_rows} of {r['negatives_rows_last_epoch']:,}; {effect}{copies}.")
    why = (f"fpr {t} rests on {allowed} distinct negatives, not the {allowed_rows} the rows suggest"
           if allowed_rows != allowed else effect)
    if r["share_repeated"] > 0.5:  # most samples repeat: every worker yields the whole shard
        act = (f"Shard the evaluation loader by DataLoader worker as well as by rank "
               f"(torch.utils.data.get_worker_info()), or drop repeated sample_ids before the ROC: each validation "
               f"sample is scored {r['mean_multiplicity']:.2f} times per epoch, so {why}.")
    else:  # a few repeats, as DistributedSampler padding makes
        act = (f"Drop repeated sample_ids before the ROC (DistributedSampler pads each rank with repeats; gather the "
               f"scores and keep one row per sample_id): {extra:,} rows repeat a sample, and {why}.")
    return Finding(fid, "detected", "critical" if r["mean_multiplicity"] >= 2 else "warning", msg, ev, action=act)


def roc_function_finding(d: Diagnosis) -> Finding:
    fid = "roc_implementation_mismatch"
    if d.roc_cases is None:
        return not_applicable(fid, "No roc_function given ('module:function' or 'file.py:function' returning "
                                   "fpr, tpr, thresholds): the training script's ROC code was not audited.")
    bad = d.roc_cases[~d.roc_cases["agrees"]]
    run_bad = d.roc_run[~d.roc_run["agrees"]]
    ev = {"cases": d.roc_cases.to_dict(orient="records"),
          "run_rows_disagreeing": int(len(run_bad)), "run_rows": int(len(d.roc_run))}
    if not len(bad) and not len(run_bad):
        return Finding(fid, "not_detected", "info",
                       "The roc_function agrees with scikit-learn on the run's scores and on every adversarial case.", ev)
    parts = []
    if len(bad):
        parts.append(f"on {len(bad)} of {len(d.roc_cases)} adversarial cases ({'; '.join(bad['case'])}); "
                     f"e.g. {bad['where'].iloc[0]}")
    if len(run_bad):
        r = run_bad.sort_values("max_difference", ascending=False, kind="stable").iloc[0]
        parts.append(f"on this run's scores at epoch {r['epoch']}, {r['row order']} ({r['where']})")
        measure = f"on this run's scores at epoch {r['epoch']} ({r['row order']}), {r['where']}"
    else:
        measure = f"it disagrees on {len(bad)} of {len(d.roc_cases)} adversarial cases, e.g. {bad['where'].iloc[0]}"
    return Finding(fid, "detected", "critical",
                   "The roc_function disagrees with scikit-learn " + " and ".join(parts) + ".", ev,
                   action="Compute the ROC with sklearn.metrics.roc_curve (it merges tied scores into one operating "
                          f"point) instead of the roc_function: {measure}.")


def logged_finding(d: Diagnosis) -> Finding:
    fid = "logged_metric_mismatch"
    if d.comparison is None:
        return not_applicable(fid, "No history given: there are no logged metrics to recompute.")
    c = d.comparison
    checked = c[c["status"].isin(["matches", "differs"])] if len(c) else c
    if not len(checked):
        why = "no tpr@fpr/fpr@tpr keys" if not len(c) else "no epoch with both a logged value and scores"
        return not_applicable(fid, f"The history has {why}: nothing to recompute.")
    bad = checked[checked["status"] == "differs"]
    ev = {"checked": int(len(checked)), "differ": int(len(bad)),
          "not_checked": int(len(c) - len(checked)), "metrics": sorted(checked["metric"].unique())}
    if not len(bad):
        return Finding(fid, "not_detected", "info",
                       f"All {len(checked)} logged values are reproduced from the scores by scikit-learn's ROC"
                       + (f" ({ev['not_checked']} logged entries without scores or values were skipped)."
                          if ev["not_checked"] else "."), ev)
    r = bad.iloc[0]
    why = ""
    if "tpr_tie_order_max" in r and pd.notna(r.get("tpr_tie_order_max")) and \
            abs(r["logged"] - r["tpr_tie_order_max"]) <= _tolerance(r["logged"]) + 1e-9:
        why = " (what an ROC that does not merge ties reports when tied positives come first)"
    elif "recomputed_as_given" in r and pd.notna(r.get("recomputed_as_given")) and \
            abs(r["logged"] - r["recomputed_as_given"]) <= _tolerance(r["logged"]) + 1e-9:
        why = " (the rows as given, with their repeated sample_ids, reproduce it)"
    ev["examples"] = bad.head(5).to_dict(orient="records")
    recomputed = r[f"recomputed_{d.sources[0]}"]
    return Finding(fid, "detected", "critical",
                   f"{len(bad)} of {len(checked)} logged values differ from their recomputation, e.g. {r['metric']} "
                   f"logged {r['logged']:.4g} at epoch {r['epoch']} but {recomputed:.4g} from the scores{why}.", ev,
                   action=f"Log the metrics from sklearn.metrics.roc_curve on the saved scores (one row per sample): "
                          f"{len(bad)} of {len(checked)} logged values differ, e.g. {r['metric']} at epoch {r['epoch']} "
                          f"was logged {r['logged']:.4g} where the scores give {recomputed:.4g}.")


def collapse_finding(d: Diagnosis) -> Finding:
    fid = "late_collapse"
    c = d.collapse
    ev = dict(c)
    hit = [r for r in c["per_metric"] if r.get("collapsed")]
    kept = f"early stopping on {c['monitor']} (patience {PATIENCE}) would have kept epoch {c['kept_epoch']}"
    if not hit:
        return Finding(fid, "not_detected", "info",
                       f"No tpr@fpr falls below its best epoch's interval by the last epoch; {kept}.", ev)
    r = hit[-1]
    logit = ""
    if "last_logit" in r:
        logit = (f"; on logits it goes {r['best_logit']:.3f} -> {r['last_logit']:.3f}, the part the model itself lost")
    kept_value = float(d.value(d.sources[0], r["metric"])[c["kept_epoch"]])
    ev["kept_value"] = kept_value
    if kept_value >= r["last"] + COLLAPSE:
        act = (f"Early-stop on {c['monitor']} (patience {PATIENCE}) and keep that checkpoint: it keeps epoch "
               f"{c['kept_epoch']}, where {r['metric']} is {kept_value:.3f} against {r['last']:.3f} at the last epoch "
               f"({c['last_epoch']}).")
    else:
        act = (f"Keep the checkpoint of epoch {r['best_epoch']} ({r['metric']} {r['best']:.3f}) rather than the last "
               f"({r['last']:.3f}); early stopping on {c['monitor']} would keep epoch {c['kept_epoch']} "
               f"({kept_value:.3f}), which does not recover it.")
    return Finding(fid, "detected", "warning",
                   f"{r['metric']} peaks at {r['best']:.3f} in epoch {r['best_epoch']} and ends at {r['last']:.3f} in "
                   f"epoch {c['last_epoch']}{logit}; {kept}.", ev, action=act)


def logits_finding(d: Diagnosis) -> Finding:
    fid = "logits_recover_ranking"
    if "logit" not in d.sources:
        return not_applicable(fid, "The scores have no 'logit' column: save the pre-sigmoid outputs (float32) to "
                                   "test whether the ranking survives where the scores tie.")
    if "score" not in d.sources:
        return not_applicable(fid, "The scores table has logits only: there are no scores to compare them with.")
    rows = []
    for t in d.fpr_targets:
        s, lo = d.value("score", f"tpr@fpr{lf.rate_str(t)}"), d.value("logit", f"tpr@fpr{lf.rate_str(t)}")
        gain = lo - s
        e = int(gain.idxmax())
        rows.append({"metric": f"tpr@fpr{lf.rate_str(t)}", "epoch": e, "score": float(s[e]), "logit": float(lo[e]),
                     "gain": float(gain[e])})
    best = max(rows, key=lambda r: r["gain"])
    ev = {"per_target": rows}
    if best["gain"] < RECOVERY:
        return Finding(fid, "not_detected", "info",
                       f"Logits and scores give the same tpr@fpr (largest difference {best['gain']:.3f}): the scores "
                       "keep the ranking.", ev)
    return Finding(fid, "detected", "warning",
                   f"Ranked by logits, {best['metric']} at epoch {best['epoch']} is {best['logit']:.3f} instead of "
                   f"{best['score']:.3f}: the model still ranks the samples; the scores lost it to ties.", ev,
                   action=f"Rank, log and select checkpoints on the logits (float32), not on the scores: "
                          f"{best['metric']} at epoch {best['epoch']} is {best['logit']:.3f} on the logits and "
                          f"{best['score']:.3f} on the scores.")


def paired_finding(d: Diagnosis) -> Finding:
    fid = "paired_control_shortcut"
    if d.paired is None:
        return not_applicable(fid, d.paired_reason)
    p = d.paired
    ev = dict(p)
    if p["p_value"] >= PAIR_ALPHA:
        return Finding(fid, "not_detected", "info",
                       f"Paired controls and unpaired negatives reach the top 1% of negatives at similar rates "
                       f"({_fmt_rate(p['tail_rate_paired'])} vs {_fmt_rate(p['tail_rate_unpaired'])}, Fisher p="
                       f"{p['p_value']:.2g}, epoch {p['epoch']}): no sign that pairing shapes the tail.", ev)
    if p["tail_rate_unpaired"] > p["tail_rate_paired"]:
        ratio = f"{p['tail_rate_unpaired'] / max(p['tail_rate_paired'], 1e-12):.1f}x"
        msg = (f"Unpaired negatives reach the top 1% of negatives {ratio} as often as paired controls (Fisher p="
               f"{p['p_value']:.2g}): the model learned what separates a lens from its own control, not from other "
               "galaxies.")
        act = (f"Train against unpaired, flux-matched controls and split by galaxy id: unpaired negatives reach the "
               f"top 1% of negatives {ratio} as often as paired controls ({_fmt_rate(p['tail_rate_unpaired'])} vs "
               f"{_fmt_rate(p['tail_rate_paired'])}, epoch {p['epoch']}).")
    else:
        ratio = f"{p['tail_rate_paired'] / max(p['tail_rate_unpaired'], 1e-12):.1f}x"
        msg = (f"Paired controls reach the top 1% of negatives {ratio} as often as unpaired negatives (Fisher p="
               f"{p['p_value']:.2g}): the model scores the galaxy, not the arc.")
        act = (f"Split by galaxy id and add unpaired controls: paired controls reach the top 1% of negatives {ratio} "
               f"as often as unpaired negatives ({_fmt_rate(p['tail_rate_paired'])} vs "
               f"{_fmt_rate(p['tail_rate_unpaired'])}, epoch {p['epoch']}).")
    return Finding(fid, "detected", "warning", msg, ev, action=act)


def findings(d: Diagnosis) -> list[Finding]:
    """Every finding of notebook 04, in :data:`FINDING_IDS` order."""
    return [saturation_finding(d), negatives_finding(d), worker_finding(d), repeats_finding(d),
            roc_function_finding(d), logged_finding(d), collapse_finding(d), logits_finding(d), paired_finding(d)]


# --------------------------------------------------------------------------- what the lab measured
def lab_sentences(d: Diagnosis, dtypes: pd.DataFrame | None = None, dtypes_epoch: int | None = None,
                  dtypes_from_run: bool = True, loader: pd.DataFrame | None = None,
                  paired: pd.DataFrame | None = None, early: dict | None = None) -> dict[str, str]:
    """One sentence per lab experiment that ran, read from its own table.

    Keyed "dtypes", "loader", "paired", "early" when the experiment shows its fix working on what it ran
    on (only these support the advice, see :func:`lab_support`); otherwise keyed "<part> (no support)"
    (synthetic logits, or no gain), so it is shown but never quoted as support.
    """
    out = {}

    def put(part: str, supports: bool, text: str) -> None:
        out[part if supports else f"{part} (no support)"] = text[0].upper() + text[1:]

    if dtypes is not None:
        rows = dtypes.set_index("computed as")
        col = f"tpr@fpr{lf.rate_str(d.fpr_targets[0])}"
        own = f"sigmoid in {d.score_dtype}" if d.score_dtype in lf.FLOAT_DTYPES else "sigmoid in bfloat16"
        where = f"epoch {dtypes_epoch}'s logits" if dtypes_from_run else "synthetic logits (the run saved none)"
        put("dtypes", dtypes_from_run and rows.loc["sigmoid in float32", col] > rows.loc[own, col],
            f"on {where}, {col} is {rows.loc[own, col]:.3f} with the {own}, "
            f"{rows.loc['sigmoid in float32', col]:.3f} with the sigmoid in float32 and "
            f"{rows.loc['logits (fp64)', col]:.3f} on the logits ({int(rows.loc[own, 'negatives at top'])} vs "
            f"{int(rows.loc['sigmoid in float32', 'negatives at top'])} negatives at the top value).")
    if loader is not None:
        times = loader.set_index("loader")["times each sample is yielded"]
        put("loader", times.iloc[0] > times.iloc[1] == 1.0,
            f"a real DataLoader with worker processes yields each sample {times.iloc[0]:.1f} times per epoch when the "
            f"IterableDataset is sharded by rank only, {times.iloc[1]:.1f} times when it is sharded by rank and worker "
            "(get_worker_info()).")
    if paired is not None:
        p = paired.set_index(["trained on", "evaluated on"])
        tr_p, tr_f = paired["trained on"].unique()
        ev_p, ev_f = paired["evaluated on"].unique()
        gain = p.loc[(tr_f, ev_f), "tpr@fpr0.01"] > p.loc[(tr_p, ev_f), "tpr@fpr0.01"]
        put("paired", gain,
            f"trained on {tr_p}, the model puts weight {p.loc[(tr_p, ev_p), 'weight on log flux']:.2f} on log flux "
            f"and reaches tpr@fpr0.01 {p.loc[(tr_p, ev_p), 'tpr@fpr0.01']:.3f} on {ev_p} but "
            f"{p.loc[(tr_p, ev_f), 'tpr@fpr0.01']:.3f} on {ev_f}; trained on {tr_f}, the weight on log flux is "
            f"{p.loc[(tr_f, ev_p), 'weight on log flux']:.2f} and tpr@fpr0.01 on {ev_f} is "
            f"{p.loc[(tr_f, ev_f), 'tpr@fpr0.01']:.3f}, at the cost of {p.loc[(tr_f, ev_p), 'tpr@fpr0.01']:.3f} "
            f"on {ev_p}.")
    if early is not None:
        better = early["kept_test"] > early["last_test"]
        put("early", better,
            f"on the lab's own model, early stopping on the validation partial AUC (patience "
            f"{early['patience']}) kept epoch {early['kept_epoch']} (stopped at "
            f"{early['stop_epoch']}): {early['metric']} {early['kept_test']:.3f}, "
            f"{'better than' if better else 'no better than'} the last epoch's {early['last_test']:.3f} (best at any "
            f"epoch {early['best_test']:.3f}, epoch {early['best_test_epoch']}).")
    return out


LAB_FOR = {"score_saturation_ties": "dtypes", "logits_recover_ranking": "dtypes", "worker_duplication": "loader",
           "duplicated_eval_rows": "loader", "paired_control_shortcut": "paired", "late_collapse": "early"}


def lab_support(found: Mapping[str, Finding], sentences: Mapping[str, str]) -> dict:
    """{finding id: what the lab measured for its fix}, for the detected findings the lab speaks to.

    The paired-control experiment tests the "extra flux" shortcut (unpaired negatives in the tail), so it
    supports only that direction of paired_control_shortcut.
    """
    out = {}
    for fid, part in LAB_FOR.items():
        f = found.get(fid)
        if f is None or not f.detected or part not in sentences:
            continue
        if fid == "paired_control_shortcut" and f.evidence.get("tail_rate_unpaired", 0) <= \
                f.evidence.get("tail_rate_paired", 0):
            continue
        out[fid] = sentences[part]
    return out


# --------------------------------------------------------------------------- tables and headline numbers
def cliff_table(d: Diagnosis, history: pd.DataFrame | None) -> pd.DataFrame:
    """Per fpr target: the epoch the tie audit predicts tpr to hit 0, and the epoch the history shows it."""
    rows = []
    a = d.audit
    for t in d.fpr_targets:
        blocked = a.loc[a[f"tie_blocks_cliff@fpr{lf.rate_str(t)}"], "epoch"]
        row = {"metric": f"tpr@fpr{lf.rate_str(t)}", "allowed_negatives": int(a[f"allowed@fpr{lf.rate_str(t)}"].iloc[-1]),
               "predicted_cliff_epoch": int(blocked.min()) if len(blocked) else None, "logged_cliff_epoch": None}
        if history is not None:
            col = next((c for c in history.columns if parse_metric_key(c) == ("tpr", "fpr", t)), None)
            if col is not None:
                zero = history.loc[history[col] <= 1e-4, "epoch"]
                row["logged_cliff_epoch"] = int(zero.min()) if len(zero) else None
        rows.append(row)
    return pd.DataFrame(rows)


def explain_cliffs(d: Diagnosis) -> list[str]:
    """Why each tpr@fpr hits 0 when it does (the top tie against the allowance), and when fpr@tpr targets
    read the same number (the top tie holds them all), in sentences from the run's own counts."""
    a = d.audit.set_index("epoch")
    src = d.sources[0]
    lines = []
    for t in d.fpr_targets:
        name = lf.rate_str(t)
        blocked = a.index[a[f"tie_blocks_cliff@fpr{name}"].to_numpy(dtype=bool)].tolist()
        if not blocked:
            lines.append(f"tpr@fpr{name}: the negatives sharing the top {src} (at most "
                         f"{int(a['negatives_at_top'].max())}) never exceed the {int(a[f'allowed@fpr{name}'].min())} "
                         f"that fpr {name} allows: no tie blocks it.")
            continue
        e = blocked[0]
        before = [x for x in a.index if x < e]
        prev = (f" ({int(a.loc[before[-1], 'negatives_at_top'])} at epoch {before[-1]})" if before else "")
        lines.append(f"tpr@fpr{name}: fpr {name} allows {int(a.loc[e, f'allowed@fpr{name}'])} negatives; "
                     f"{int(a.loc[e, 'negatives_at_top'])} share the top {src} {_num(a.loc[e, 'top_score'])} at epoch "
                     f"{e}{prev}, so no threshold keeps a positive above it within the allowance: tpr@fpr{name} is "
                     f"{a.loc[e, f'tpr@fpr{name}']:.3f} at epoch {e} and at every epoch where the top tie exceeds the allowance "
                     f"({', '.join(map(str, blocked))}).")
    if len(d.tpr_targets) >= 2:
        vals = pd.DataFrame({t: d.value(src, f"fpr@tpr{lf.rate_str(t)}") for t in d.tpr_targets})
        share = a["positives_at_top"] / a["n_pos"]
        top_fpr = a["negatives_at_top"] / a["n_neg"]
        same = [e for e in vals.index if vals.loc[e].nunique() == 1 and share[e] >= max(d.tpr_targets)
                and np.isclose(vals.loc[e].iloc[0], top_fpr[e])]
        if same:
            names = " and ".join(f"fpr@tpr{lf.rate_str(t)}" for t in d.tpr_targets)
            lines.append(f"{names} read the same number at epochs {', '.join(map(str, same))}: the top tie holds at "
                         f"least {_fmt_rate(min(share[e] for e in same))} of the positives there, so every target "
                         "reads the FPR of that one block.")
    return lines


def logged_table(d: Diagnosis) -> pd.DataFrame | None:
    """Epoch x metric: each logged value beside its recomputation from the first source (None without history)."""
    c = d.comparison
    if c is None or not len(c) or "difference" not in c.columns:
        return None
    c = c[c["status"].isin(["matches", "differs"])]
    wide = c.pivot_table(index="epoch", columns="metric", values=["logged", f"recomputed_{d.sources[0]}"], sort=True)
    wide.columns = [f"{m} {'logged' if v == 'logged' else 'recomputed'}" for v, m in wide.columns]
    wide = wide[sorted(wide.columns, key=lambda x: (x.rsplit(" ", 1)[0], x.endswith("recomputed")))]
    return wide.assign(differ=c.groupby("epoch")["status"].apply(lambda s: int((s == "differs").sum())))


def wide_values(d: Diagnosis) -> pd.DataFrame:
    """Epoch x metric table, one column per (metric, source)."""
    v = d.values.assign(col=lambda x: x["metric"] + " [" + x["source"] + "]")
    return v.pivot(index="epoch", columns="col", values="value")


def metrics(d: Diagnosis) -> dict:
    """The headline numbers of summary.json."""
    last = d.epochs[-1]
    m = {"n_positives": d.n_pos, "n_negatives": d.n_neg, "epochs": len(d.epochs), "score_dtype": d.score_dtype,
         "saturation_logit": d.saturation.get(d.score_dtype) if d.score_dtype else None,
         "last_epoch": last, "kept_epoch": d.collapse["kept_epoch"]}
    for src in d.sources:
        for t in d.fpr_targets:
            m[f"tpr@fpr{lf.rate_str(t)}_last_{src}"] = float(d.value(src, f"tpr@fpr{lf.rate_str(t)}")[last])
            m[f"tpr@fpr{lf.rate_str(t)}_kept_{src}"] = float(d.value(src, f"tpr@fpr{lf.rate_str(t)}")[d.collapse["kept_epoch"]])
    for t in d.fpr_targets:
        m[f"allowed_negatives@fpr{lf.rate_str(t)}"] = lf.allowed_false_positives(t, d.n_neg)
    if d.loader:
        m["mean_multiplicity"] = d.loader["mean_multiplicity"]
    if d.repeats is not None:
        m["eval_rows_per_sample"] = d.repeats["mean_multiplicity"]
    for r in resolution_table(d).to_dict(orient="records"):
        m[f"interval_width_max@fpr{lf.rate_str(r['fpr_target'])}"] = r["width"]
    return m

