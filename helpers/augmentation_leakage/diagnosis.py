"""The diagnosis behind notebook 05: augmentation before the split, and what an overall metric hides.

Inputs (see docs/05_augmentation_leakage.md): a ``samples`` table (features, ``split``; optional
``target``, ``group``, ``tier``, ``parent_id``, ``is_augmented``, ``sample_id``), optional
``declared_copies`` JSON, optional ``group_metrics`` table (``group``, ``run``, ``value``: a
loss, lower is better) and the logged ``train_loss`` / ``val_loss``. The statistics live in
:mod:`helpers.augmentation_leakage.leakage`.

The face: :func:`load_inputs` (the one place parameters are checked and files read),
:func:`describe_inputs`, :func:`diagnose`, :func:`findings` and :func:`metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.augmentation_leakage import leakage as lk
from helpers.findings import Finding, input_files, not_applicable
from helpers.findings import describe_inputs as describe_files
from helpers.io import InputError, check_columns, load_json, load_table, resolve_path
from helpers.params import check_range, check_types, drop_sample_companions
from helpers.paths import DATA_SAMPLES

NOTEBOOK = "05_augmentation_leakage"
FINDING_IDS = ("parent_leakage", "near_duplicate_leakage", "augmentation_mismatch", "val_composition_imbalance",
               "group_degradation", "suspicious_train_val_gap")
SAMPLE_DIR = DATA_SAMPLES / NOTEBOOK
RESERVED = ("split", "group", "tier", "parent_id", "is_augmented", "sample_id", "target")
OPTIONAL = {"group": "key", "tier": "key", "parent_id": "key", "is_augmented": "binary", "sample_id": "key",
            "target": "float"}
SPLITS = ("train", "val", "test")
PARAMETER_TYPES = {"samples": str, "feature_columns": list, "declared_copies": str, "group_metrics": str,
                   "baseline_run": str, "train_loss": float, "val_loss": float, "output_dir": str,
                   "run_demos": bool, "seed": int}

# augmentation_mismatch: present copies differ from the declared number by more than this
# many copies and by more than this factor
MISMATCH_ABS, MISMATCH_FACTOR = 0.5, 1.5
# val_composition_imbalance: some group's implicit weight is this many times its reference
# weight (or less than its inverse)
WEIGHT_RATIO = 3.0
# group_degradation: a group's loss at least this many times the baseline's
DEGRADE_RATIO = 1.5
# suspicious_train_val_gap: the run's relative gap (val - train) / val is under this share of the
# gap a clean split gives the reference model, and the run's own split shrinks that model's gap as much
GAP_SHARE = 0.5
MAX_PROXY_ROWS = 30_000
REFERENCE_TREES = 10
REFERENCE_MODEL = f"ExtraTreesRegressor({REFERENCE_TREES} trees, 100 leaves)"


# --------------------------------------------------------------------------- inputs
@dataclass
class Run:
    """A run's validated inputs.

    To diagnose a variant of the run (the samples re-split, or some columns dropped), keep
    everything else and swap the table: ``dx.diagnose(dataclasses.replace(run, samples=s), params)``;
    ``s`` keeps the ``split`` column and the run's ``features``. When the variant keeps the same train and
    validation rows (in any split between the two) and features, ``reuse=diag`` reads the diagnosis
    ``diag``'s nearest-neighbour search again instead of repeating it.
    """

    samples: pd.DataFrame
    features: list[str]
    path: Path
    declared: dict | None = None
    group_metrics: pd.DataFrame | None = None
    baseline_run: str = "baseline"
    train_loss: float = math.nan
    val_loss: float = math.nan
    notes: list[str] = field(default_factory=list)
    dropped: dict = field(default_factory=dict)  # optional inputs left at the sample's value, not used
    inputs: dict = field(default_factory=dict)  # the files read: {parameter: path}, see helpers.findings.input_files

    def has(self, col: str) -> bool:
        return col in self.samples.columns


def _check_parameters(params: Mapping) -> dict:
    p = check_types(params, PARAMETER_TYPES)
    check_range("seed", p["seed"], 0, None)
    for name in ("train_loss", "val_loss"):
        if not math.isnan(p[name]):
            check_range(name, p[name], 0.0, math.inf)
            if math.isinf(p[name]):
                raise InputError(name, "must be finite (nan means not given)")
    for i, c in enumerate(p["feature_columns"]):
        if not isinstance(c, str) or not c:
            raise InputError("feature_columns", f"item {i} must be a column name, got {c!r}")
    return p


def load_samples(param: str, value, feature_columns: list) -> tuple[pd.DataFrame, list[str], Path]:
    path = resolve_path(param, value, (".parquet", ".csv"))
    df = load_table(param, path, {"split": "key"}, OPTIONAL)
    df["split"] = df["split"].astype(str)
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise InputError(param, f"column 'split' has value {bad[0]!r}; expected train, val or test", path)
    for s in ("train", "val"):
        if not (df["split"] == s).any():
            raise InputError(param, f"no rows with split == '{s}'", path)
    if feature_columns:
        missing = [c for c in feature_columns if c not in df.columns]
        if missing:
            raise InputError(param, f"feature column {missing[0]!r} not found (feature_columns)", path)
        reserved = [c for c in feature_columns if c in RESERVED]
        if reserved:
            raise InputError(param, f"feature column {reserved[0]!r} is a reserved column, not a feature", path)
        features = list(feature_columns)
    else:
        features = [c for c in df.columns if c not in RESERVED and
                    (pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]))]
        if not features:
            raise InputError(param, "no numeric feature columns (every column is reserved or not numeric)", path)
    check_columns(param, path, df, dict.fromkeys(features, "real"))  # float32 features stay float32 (memory)
    for key in ("group", "tier", "parent_id"):
        if key in df.columns and df[key].dtype == object:
            df[key] = df[key].astype(str)
    if "tier" in df.columns and "group" in df.columns:
        tiers = df.groupby("group")["tier"].nunique()
        if (tiers > 1).any():
            raise InputError(param, f"group {tiers[tiers > 1].index[0]!r} has rows in more than one tier", path)
    return df, features, path


def load_declared(param: str, value, groups: list | None) -> dict:
    path = resolve_path(param, value, (".json",))
    data = load_json(param, path)
    if not isinstance(data, dict):
        raise InputError(param, 'expected a JSON object like {"k=4,m=5": 2, ...}', path)
    out = {}
    for k, v in data.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise InputError(param, f"copies for group {k!r} must be a number >= 0, got {v!r}", path)
        out[str(k)] = float(v)
    if groups is not None:
        known = {str(g) for g in groups}
        unknown = [k for k in out if k not in known]
        if unknown:
            raise InputError(param, f"group {unknown[0]!r} is not in the samples' 'group' column", path)
    return out


def load_group_metrics(param: str, value, baseline_run: str, groups: list | None) -> pd.DataFrame:
    df = load_table(param, value, {"group": "key", "run": "key", "value": "float"})
    path = resolve_path(param, value)
    df["group"], df["run"] = df["group"].astype(str), df["run"].astype(str)
    if (df["value"] < 0).any():
        raise InputError(param, f"column 'value' must be >= 0, found {df['value'].min():g}: a loss (lower is better), "
                                "compared with the baseline's as a ratio", path)
    runs = sorted(df["run"].unique())
    if baseline_run not in runs:
        raise InputError(param, f"no rows with run == {baseline_run!r} (baseline_run); runs: {', '.join(runs)}", path)
    others = [r for r in runs if r != baseline_run]
    if len(others) != 1:
        raise InputError(param, f"expected exactly one run besides the baseline, found {len(others)}: "
                                f"{', '.join(others) or 'none'}", path)
    if df.duplicated(["group", "run"]).any():
        g, r = df.loc[df.duplicated(["group", "run"]), ["group", "run"]].iloc[0]
        raise InputError(param, f"group {g!r} appears twice for run {r!r}", path)
    if groups is not None:
        unknown = sorted(set(df["group"]) - {str(g) for g in groups})
        if unknown:
            raise InputError(param, f"group {unknown[0]!r} is not in the samples' 'group' column", path)
    df.attrs["this_run"] = others[0]
    return df


def load_inputs(params: Mapping) -> tuple[dict, Run]:
    """Validated parameters and the run's inputs; any mistake is one :class:`InputError` line.

    When ``samples`` is not the bundled sample run, companions still at the sample's defaults
    (its declared copies, group metrics and logged losses) are ignored, and a note says so.
    """
    p = _check_parameters(params)
    dropped = drop_sample_companions(p, NOTEBOOK, ["samples"], ["declared_copies", "group_metrics", "train_loss",
                                                                "val_loss"])
    df, features, path = load_samples("samples", p["samples"], p["feature_columns"])
    run = Run(df, features, path, baseline_run=p["baseline_run"], train_loss=p["train_loss"], val_loss=p["val_loss"])
    run.dropped = dropped
    groups = sorted(df["group"].astype(str).unique()) if run.has("group") else None
    read = {"samples": p["samples"]}
    if p["declared_copies"].strip():
        if groups is None:
            run.notes.append("declared_copies ignored: the samples have no 'group' column")
        else:
            run.declared = load_declared("declared_copies", p["declared_copies"], groups)
            read["declared_copies"] = p["declared_copies"]
    if p["group_metrics"].strip():
        run.group_metrics = load_group_metrics("group_metrics", p["group_metrics"], p["baseline_run"], groups)
        read["group_metrics"] = p["group_metrics"]
    run.inputs = input_files(read)
    return p, run


def _loss(value: float) -> str:
    return "not given" if math.isnan(value) else f"{value:g}"


def describe_inputs(run: Run) -> str:
    """The first printed output: the files read (loudly when they are the bundled sample run) and what they hold."""
    s = run.samples
    counts = s["split"].value_counts()
    details = [
        f"samples: {len(s)} rows (" + ", ".join(f"{k} {counts.get(k, 0)}" for k in SPLITS if k in counts) + ")",
        f"features ({len(run.features)}): {', '.join(run.features[:8])}{' ...' if len(run.features) > 8 else ''}",
        "optional columns: " + (", ".join(c for c in OPTIONAL if run.has(c)) or "none"),
        "declared copies per original: " + (", ".join(f"{g} {n:g}" for g, n in run.declared.items())
                                            if run.declared is not None else "not given"),
        (f"group metrics: this run {run.group_metrics.attrs['this_run']!r} vs baseline {run.baseline_run!r}"
         if run.group_metrics is not None else "group metrics: not given"),
        f"logged losses: train {_loss(run.train_loss)}, val {_loss(run.val_loss)}",
    ]
    return describe_files(run.inputs, dropped=run.dropped, details=details, notes=run.notes)


# --------------------------------------------------------------------------- diagnosis
@dataclass
class Diagnosis:
    run: Run
    parent: tuple[dict, pd.DataFrame] | None
    scan: lk.NearDuplicateScan
    copies: pd.DataFrame | None
    composition: pd.DataFrame | None
    weighted: dict | None
    degradation: pd.DataFrame | None
    gap: dict | None


def diagnose(run: Run, params: Mapping, reuse: Diagnosis | None = None) -> Diagnosis:
    """Every measurement behind the findings; ``params["seed"]`` seeds the reference splits.

    ``reuse``: the diagnosis of the same rows and features under another split of the same train and
    validation rows, or with other parent ids (a variant of the run): its nearest-neighbour search is
    read again instead of repeated. Runs of at least ``leakage.PROGRESS_ROWS`` rows print what they are doing.
    """
    seed = params["seed"]
    s = run.samples
    is_train, is_val = (s["split"] == "train").to_numpy(), (s["split"] == "val").to_numpy()
    progress = len(s) >= lk.PROGRESS_ROWS
    link = _reusable_search(run, is_train | is_val, reuse) if reuse is not None else None
    x = s[run.features].to_numpy(np.result_type(np.float32, *s[run.features].dtypes))  # float32 stays float32
    group = s["group"].astype(str) if run.has("group") else None
    parent = s["parent_id"] if run.has("parent_id") else None
    pl = lk.parent_leakage(s["split"], parent, group) if parent is not None else None
    scan = lk.near_duplicate_scan(x, is_train, is_val, parent.to_numpy() if parent is not None else None, seed=seed,
                                  link=link, progress=progress)
    copies = comp = weighted = degr = None
    if group is not None and (run.has("is_augmented") or parent is not None):
        copies = lk.multiplicity(group, s["is_augmented"] if run.has("is_augmented") else None,
                                 parent if not run.has("is_augmented") else None, run.declared)
    if group is not None:
        originals = (s["is_augmented"] == 0) if run.has("is_augmented") else (
            ~s.duplicated("parent_id") if parent is not None else None)
        comp = lk.composition(s["split"], group, s["tier"] if run.has("tier") else None, originals)
    if run.group_metrics is not None and comp is not None:
        gm = run.group_metrics
        this = gm[gm["run"] == gm.attrs["this_run"]].set_index("group")["value"]
        base = gm[gm["run"] == run.baseline_run].set_index("group")["value"]
        c = comp.set_index("group")
        tiers = c["tier"] if run.has("tier") else None
        weighted = {"this": lk.reweighted_metrics(this, c["implicit_weight"], tiers),
                    "baseline": lk.reweighted_metrics(base, c["implicit_weight"], tiers),
                    "baseline_macro": float(base.mean())}
        for k, values in (("this", this), ("baseline", base)):  # the same losses, weighted by the reference
            weighted[k]["reference_weighted"] = lk.reweighted_metrics(values, c["reference_weight"])["row_weighted"]
        degr = lk.degradation(this, base)
        if tiers is not None:
            degr["tier"] = degr["group"].map(tiers)
    gap = _proxy_gap(run, x, is_train, is_val, scan, seed, progress) if run.has("target") else None
    return Diagnosis(run, pl, scan, copies, comp, weighted, degr, gap)


def _reusable_search(run: Run, pool: np.ndarray, reuse: Diagnosis) -> lk.Linking:
    """The search of ``reuse``, provided it searched these very rows: the same train and validation rows
    (in any split between the two) with the same features."""
    before = reuse.run.samples
    same = (run.features == reuse.run.features and len(run.samples) == len(before)
            and np.array_equal(pool, before["split"].isin(["train", "val"]).to_numpy())
            and reuse.scan.link is not None)
    if not same or not run.samples[run.features].equals(before[run.features]):
        raise ValueError("reuse: the diagnosis to reuse searched other rows or features; diagnose without reuse")
    return reuse.scan.link


def _proxy_gap(run: Run, x, is_train, is_val, scan, seed: int, progress: bool = False) -> dict:
    """A reference model's train/val gap under the run's split and under a clean re-split of the same rows."""
    from sklearn.ensemble import ExtraTreesRegressor
    from sklearn.metrics import mean_squared_error

    y = run.samples["target"].to_numpy(float)
    pool = np.flatnonzero(is_train | is_val)
    rng = np.random.default_rng(seed)
    groups = scan.groups  # the scan's (pseudo-)parents of the train and validation rows
    if len(pool) > MAX_PROXY_ROWS:  # whole (pseudo-)parents, so the structure is kept
        keep_groups = rng.permutation(np.unique(groups))[: max(2, int(len(np.unique(groups)) * MAX_PROXY_ROWS / len(pool)))]
        keep = np.isin(groups, keep_groups)
        pool, groups = pool[keep], groups[keep]

    def fit_eval(tr, va):
        est = ExtraTreesRegressor(n_estimators=REFERENCE_TREES, max_leaf_nodes=100, max_features=0.5,
                                  random_state=seed, n_jobs=lk.fit_jobs(len(tr)))
        est.fit(x[tr], y[tr]).set_params(n_jobs=1)  # the same trees on any number of threads; predict in one order
        t, v = mean_squared_error(y[tr], est.predict(x[tr])), mean_squared_error(y[va], est.predict(x[va]))
        return t, v

    if progress:
        print(f"reference model: fitting {REFERENCE_MODEL} on this split and on a clean re-split of {len(pool):,} rows",
              flush=True)
    actual = fit_eval(pool[is_train[pool]], pool[is_val[pool]])
    if len(np.unique(groups)) >= 2:
        tr, va = next(lk.reference_splits(groups, is_val[pool].mean(), 1, seed))
        clean = fit_eval(pool[tr], pool[va])
    else:  # every row is one (pseudo-)parent: no split keeps parents apart
        clean = (np.nan, np.nan)
    rel = lambda t, v: (v - t) / v if v > 0 else np.nan  # noqa: E731
    out = {"reference_model": REFERENCE_MODEL, "rows": len(pool),
           "actual_split": {"train_mse": actual[0], "val_mse": actual[1], "relative_gap": rel(*actual)},
           "clean_split": {"train_mse": clean[0], "val_mse": clean[1], "relative_gap": rel(*clean)},
           "run_relative_gap": rel(run.train_loss, run.val_loss) if not (math.isnan(run.train_loss) or
                                                                            math.isnan(run.val_loss)) else np.nan}
    out["val_inflation"] = clean[1] / actual[1] if actual[1] > 0 else np.nan
    return out


# --------------------------------------------------------------------------- findings


def findings(d: Diagnosis) -> list[Finding]:
    """One finding per entry of :data:`FINDING_IDS`, in that order."""
    return [_parent_finding(d), _near_dup_finding(d), _mismatch_finding(d), _composition_finding(d),
            _degradation_finding(d), _gap_finding(d)]


def _parent_finding(d: Diagnosis) -> Finding:
    fid = "parent_leakage"
    if d.parent is None:
        return not_applicable(fid, "The samples have no 'parent_id' column: parent leakage cannot be counted "
                                   "(see near_duplicate_leakage for the feature-only check).")
    tot, per = d.parent
    ev = {**tot, "per_group": per.to_dict(orient="records")}
    if tot["n_leaked_rows"] == 0:
        return Finding(fid, "not_detected", "info", f"No validation row shares its parent with a training row "
                                                    f"({tot['n_parents']} validation parents).", ev)
    worst = per.sort_values("leaked_share", ascending=False).iloc[0]
    sev = "critical" if tot["leaked_share"] >= 0.01 else "warning"
    return Finding(fid, "detected", sev,
                   f"{tot['n_shared_parents']} parents have rows on both sides: {100 * tot['leaked_share']:.1f}% of "
                   f"validation rows have a sibling in training (worst group {worst['group']}: "
                   f"{100 * worst['leaked_share']:.0f}%).", ev,
                   action=f"Split by parent_id before augmenting (GroupShuffleSplit or StratifiedGroupKFold with "
                          f"groups=parent_id), then augment the training part only: {tot['n_leaked_rows']} validation "
                          f"rows ({100 * tot['leaked_share']:.1f}%) have a sibling in training.")


UNIT = {"parent_id": "parent", "pseudo-parents": "cluster of near-identical rows", "rows": "row"}
UNITS = {"parent_id": "parents", "pseudo-parents": "clusters of near-identical rows", "rows": "rows"}


def _near_dup_finding(d: Diagnosis) -> Finding:
    fid, s = "near_duplicate_leakage", d.scan
    ratio = s.ratio
    ev = {"leaked_share": s.leaked_share, "p_value": s.p_value, "threshold_ratio": s.threshold,
          "reference": s.reference_kind, "space": s.space, "n_val_rows_below": s.n_val_below, "n_val": len(s.val),
          "n_units": s.n_units, "n_units_below": s.n_units_below,
          "median_val_ratio": float(np.median(ratio)) if len(ratio) else np.nan,
          "median_reference_ratio": float(np.median(s.reference)) if len(s.reference) else np.nan,
          "median_val_distance": float(np.median(s.val)) if len(s.val) else np.nan,
          "median_train_loo_distance": float(np.median(s.train_loo)) if len(s.train_loo) else np.nan,
          "n_exact_duplicate_rows": s.n_exact_duplicate_rows,
          "train_near_duplicate_share": s.train_near_duplicate_share, "link_radius": s.link_radius}
    how = {"parent_id": "a re-split by parent_id", "pseudo-parents": "a re-split by clusters of near-identical rows",
           "rows": "a random re-split (no clusters of near-identical rows found)"}[s.reference_kind]
    unit = UNIT[s.reference_kind]
    if not np.isfinite(s.threshold):  # one (pseudo-)parent holds every row: nothing to re-split
        return not_applicable(fid, f"All train and validation rows share one {unit}, so no re-split keeps them apart to "
                                   f"compare with ({s.n_exact_duplicate_rows} rows repeat another row's features "
                                   "exactly).")
    stat = (f"{s.n_units_below} of {s.n_units} validation {UNITS[s.reference_kind]} have a median ratio (distance to the nearest "
            f"training row / to the nearest training row of another {unit}) below {s.threshold:.2f}, the "
            f"{100 * lk.ALPHA:g}% quantile under {how} (binomial p={s.p_value:.1e}; {s.space} features)")
    if s.detected:
        closer = 1 / ev["median_val_ratio"] if ev["median_val_ratio"] > 0 else np.inf
        how_close = (f"{100 * s.leaked_share:.0f}% of validation rows sit "
                     + (f"{closer:.0f}x closer" if np.isfinite(closer) else "infinitely closer (exact repeats)")
                     + " to one training row than to any training row of another " + unit + " (median)")
        repeats = (f"; {s.n_exact_duplicate_rows} rows repeat another row's features exactly: drop repeats or keep them "
                   "on one side" if s.n_exact_duplicate_rows else "")
        fix = ("Split by parent_id (as for parent_leakage); the features alone confirm it"
               if s.reference_kind == "parent_id" else
               "Record the original each row was made from (parent_id) before augmenting and split by it; until then "
               "group the split by these clusters of near-identical rows (the scan's groups)")
        return Finding(fid, "detected", "critical",
                       f"About {100 * s.leaked_share:.0f}% of validation rows have a near-copy in training: {stat}.",
                       ev, action=f"{fix}{repeats}: {how_close}.")
    return Finding(fid, "not_detected", "info",
                   f"No near-copy leak found (one needs an estimated leaked share of at least "
                   f"{100 * lk.MIN_LEAKED_SHARE:g}% with p < {lk.P_MAX:g}; here {100 * s.leaked_share:.1f}%): {stat}.", ev)


def _mismatch_finding(d: Diagnosis) -> Finding:
    fid = "augmentation_mismatch"
    r = d.run
    if not r.has("group"):
        return not_applicable(fid, "The samples have no 'group' column: copies per group cannot be counted.")
    if d.copies is None:
        return not_applicable(fid, "The samples have neither 'is_augmented' nor 'parent_id': copies cannot be counted.")
    if r.declared is None:
        return not_applicable(fid, "No declared_copies JSON given: nothing to compare the copies with.")
    c = d.copies.dropna(subset=["copies_per_original", "declared_copies"])
    diff = (c["copies_per_original"] - c["declared_copies"]).abs()
    off = c[(diff > MISMATCH_ABS) & ((c["copies_per_original"] > MISMATCH_FACTOR * c["declared_copies"]) |
                                     (c["copies_per_original"] < c["declared_copies"] / MISMATCH_FACTOR))]
    ev = {"per_group": d.copies.to_dict(orient="records"),
          "rows": int(r.samples.shape[0]), "originals": int(d.copies["originals"].sum())}
    if len(off) == 0:
        return Finding(fid, "not_detected", "info", "Every group holds the number of copies its config declares.", ev)
    w = off.assign(diff=diff[off.index]).sort_values("diff").iloc[-1]
    grew = ev["rows"] / max(ev["originals"], 1)
    return Finding(fid, "detected", "warning",
                   f"{len(off)} group{'s' if len(off) != 1 else ''} hold{'' if len(off) != 1 else 's'} a different "
                   f"number of copies than declared (e.g. {w['group']}: "
                   f"{w['copies_per_original']:.1f} per original, declared {w['declared_copies']:g}); the data grew "
                   f"{grew:.1f}x.", ev,
                   action=f"Make the augmentation config and its comments say the same, and log the copies per group "
                          f"counted from the data: {w['group']} holds {w['copies_per_original']:.1f} copies per original "
                          f"where {w['declared_copies']:g} are declared ({len(off)} group{'s' if len(off) != 1 else ''} off; the data grew "
                          f"{grew:.1f}x).")


def _composition_finding(d: Diagnosis) -> Finding:
    fid = "val_composition_imbalance"
    if d.composition is None:
        return not_applicable(fid, "The samples have no 'group' column: validation composition cannot be measured.")
    c = d.composition
    ref = c.attrs.get("reference", "")
    ev = {"reference": ref, "per_group": c.to_dict(orient="records")}
    if d.weighted:
        ev["metrics"] = d.weighted
    if "tier" in c.columns and d.run.has("tier"):
        ev["tier_share"] = c.groupby("tier")["implicit_weight"].sum().to_dict()
    ratio = c["weight_ratio"].replace([np.inf], np.nan)
    bad = c[(ratio > WEIGHT_RATIO) | (ratio < 1 / WEIGHT_RATIO) | (c["val_rows"] == 0)]
    if len(bad) == 0:
        return Finding(fid, "not_detected", "info",
                       f"The overall validation metric weights groups within {WEIGHT_RATIO:g}x of their {ref}.", ev)
    top = c.sort_values("implicit_weight").iloc[-1]
    low = c.sort_values("weight_ratio").iloc[0]
    extra = numbers = ""
    if d.weighted and np.isfinite(d.weighted["this"]["row_weighted"]):  # NaN when no group with metrics has val rows
        w = d.weighted["this"]
        extra = (f"; row-weighted metric {w['row_weighted']:.3f} vs macro {w['macro']:.3f}"
                 + (f", tier-balanced {w['tier_balanced']:.3f}" if np.isfinite(w["tier_balanced"]) else ""))
        numbers = (f"; the same per-group losses give {w['row_weighted']:.3f} row-weighted, "
                   f"{w['reference_weighted']:.3f} with the {ref} as weights"
                   + (f" and {w['tier_balanced']:.3f} tier-balanced" if np.isfinite(w["tier_balanced"]) else ""))
    sev = "warning" if ref == "share of original rows" else "info"
    fix = ("Validate on original rows only (one per parent, no copies) and report per-group"
           if ref == "share of original rows" else "Report per-group")
    return Finding(fid, "detected", sev,
                   f"The overall metric weights group {top['group']} {100 * top['implicit_weight']:.0f}% and "
                   f"{low['group']} {100 * low['implicit_weight']:.1f}% ({low['weight_ratio']:.2f}x its {ref}){extra}.",
                   ev, action=f"{fix}, macro and tier-balanced metrics next to the overall one: this validation set "
                              f"weights {top['group']} {100 * top['implicit_weight']:.0f}% and {low['group']} "
                              f"{100 * low['implicit_weight']:.1f}% ({low['weight_ratio']:.2f}x its {ref}){numbers}.")


def _degradation_finding(d: Diagnosis) -> Finding:
    fid = "group_degradation"
    if d.run.group_metrics is None:
        return not_applicable(fid, "No group_metrics table given: nothing to compare with a baseline.")
    if d.degradation is None:
        return not_applicable(fid, "The samples have no 'group' column to weigh the group metrics by.")
    g = d.degradation
    worse = g[g["ratio"] >= DEGRADE_RATIO]
    ev = {"per_group": g.to_dict(orient="records"), **({"metrics": d.weighted} if d.weighted else {})}
    if len(worse) == 0:
        return Finding(fid, "not_detected", "info",
                       f"No group's metric is {DEGRADE_RATIO:g}x worse than the baseline's.", ev)
    w = d.weighted
    hidden = w is not None and w["this"]["row_weighted"] < w["baseline"]["row_weighted"]
    names = ", ".join(f"{r['group']} {r['ratio']:.1f}x" for _, r in worse.sort_values("ratio", ascending=False).iterrows())
    msg = f"{len(worse)} group{'s' if len(worse) != 1 else ''} got worse than the baseline ({names})"
    if hidden:
        msg += (f" while the row-weighted metric improved ({w['baseline']['row_weighted']:.3f} -> "
                f"{w['this']['row_weighted']:.3f}): the overall number hides them")
    return Finding(fid, "detected", "critical" if hidden else "warning", msg + ".", ev,
                   action=f"Log each group's validation loss every epoch and compare it with the baseline's before "
                          f"accepting a run: {names} against the baseline"
                          + (f", while the overall metric went {w['baseline']['row_weighted']:.3f} -> "
                             f"{w['this']['row_weighted']:.3f}" if hidden else "") + ".")


def _gap_finding(d: Diagnosis) -> Finding:
    fid = "suspicious_train_val_gap"
    if d.gap is None:
        return not_applicable(fid, "The samples have no 'target' column: the clean split's gap cannot be measured.")
    g = d.gap
    if not np.isfinite(g["run_relative_gap"]):
        return not_applicable(fid, "train_loss and val_loss not given (parameters): no logged gap to judge.")
    clean, actual, run_gap = g["clean_split"]["relative_gap"], g["actual_split"]["relative_gap"], g["run_relative_gap"]
    if not (np.isfinite(clean) and np.isfinite(actual)):
        why = ("all rows are one (pseudo-)parent, so no split keeps parents apart" if np.isnan(g["clean_split"]["val_mse"])
               else "the reference model's validation error is 0 (is 'target' constant?)")
        return not_applicable(fid, f"No clean-split gap to judge the logged one by: {why}.")
    ev = {**g, "run_train_loss": d.run.train_loss, "run_val_loss": d.run.val_loss}
    small = run_gap < GAP_SHARE * clean
    split_shrinks = actual < GAP_SHARE * clean
    if small and split_shrinks:
        return Finding(fid, "detected", "warning",
                       f"The logged gap is {100 * run_gap:.1f}% of val loss; a reference model shows "
                       f"{100 * clean:.0f}% on a clean split of the same rows but {100 * actual:.0f}% on this split "
                       f"(val loss {g['val_inflation']:.1f}x lower): the small gap is the split's, not the model's.", ev,
                       action=f"Judge the train-val gap only after the split keeps copies apart: on a clean split of "
                              f"these rows a reference model's validation MSE is {g['val_inflation']:.1f}x its MSE on "
                              f"this split ({g['clean_split']['val_mse']:.4f} vs {g['actual_split']['val_mse']:.4f}), "
                              f"its gap {100 * clean:.0f}% of val loss instead of {100 * actual:.0f}%.")
    why = "the logged gap is not small" if not small else "this split does not shrink a reference model's gap"
    return Finding(fid, "not_detected", "info",
                   f"Logged gap {100 * run_gap:.1f}% of val loss vs {100 * clean:.0f}% on a clean split: {why}.", ev)


# --------------------------------------------------------------------------- headline
def metrics(d: Diagnosis) -> dict:
    """The headline numbers of summary.json."""
    s = d.run.samples
    m = {"n_rows": len(s), "n_train": int((s["split"] == "train").sum()), "n_val": int((s["split"] == "val").sum()),
         "near_duplicate_leaked_share": d.scan.leaked_share, "near_duplicate_reference": d.scan.reference_kind,
         "near_duplicate_space": d.scan.space,
         "n_exact_duplicate_rows": d.scan.n_exact_duplicate_rows}
    if d.parent is not None:
        m["parent_leaked_share"] = d.parent[0]["leaked_share"]
    if d.composition is not None and d.run.has("tier"):
        m["val_tier_share"] = d.composition.groupby("tier")["implicit_weight"].sum().to_dict()
    if d.weighted:
        for k in ("row_weighted", "macro", "tier_balanced"):
            m[f"val_metric_{k}"] = d.weighted["this"][k]
            m[f"baseline_metric_{k}"] = d.weighted["baseline"][k]
    if d.gap is not None:
        m["reference_model_val_inflation"] = d.gap["val_inflation"]
        m["run_relative_gap"] = d.gap["run_relative_gap"]
    return m


def group_table(d: Diagnosis) -> pd.DataFrame:
    """The source's per-group table, computed: val rows and weight, this run vs baseline, change."""
    c = d.composition.set_index("group")[["tier", "val_rows", "implicit_weight"]]
    if d.degradation is not None:
        c = c.join(d.degradation.set_index("group")[["baseline", "this", "change", "ratio"]])
    if d.parent is not None:
        c = c.join(d.parent[1].set_index("group")[["leaked_share"]].rename(columns={"leaked_share": "val_rows_leaked"}))
    sort = ["tier", "group"] if d.run.has("tier") else ["group"]
    return c.reset_index().sort_values(sort, key=lambda s: s.map({"easy": 0, "medium": 1, "hard": 2}).fillna(s)
                                       if s.name == "tier" else s).reset_index(drop=True)
