"""Regression metrics behind notebook 01: why overall and per-session R² disagree.

Everything is computed from additive sufficient statistics per group of rows
(:class:`SuffStats`): counts and sums of the centred target ``y'`` and of the
residual ``e = y - p``. Sums add across batches, ranks, sessions and file
chunks, so one pass over the rows yields every candidate computation a training
script might have made (pooled, one rank, mean of per-batch values, explained
variance, squared Pearson r, with or without padded duplicates) - and the same
sums, all-reduced, are the exact distributed fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pandas as pd
from scipy import stats as sps

STAT_COLUMNS = ("n", "sy", "syy", "se", "see", "sye")
KEY_COLUMNS = ("dup", "session", "rank", "batch", "channel")
METRICS = ("r2", "explained_variance", "pearson_r", "pearson_r_squared")
# Below this many rows a group's metric is undefined (NaN), as in sklearn.
MIN_ROWS = 2
# A target whose centred sum of squares is below this share of its raw sum is constant.
_CONST_REL = 1e-12


# --------------------------------------------------------------------------- statistics
def metrics_from_sums(s: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """R², explained variance and Pearson r from (arrays of) sufficient statistics.

    NaN where undefined: fewer than 2 rows, a constant target (R², EV, r) or
    constant predictions (r). sklearn returns 0.0 or 1.0 for a constant target
    by default; a diagnosis should not hide that the metric is undefined.
    """
    n = np.asarray(s["n"], dtype=float)
    sy, syy, se, see, sye = (np.asarray(s[k], dtype=float) for k in STAT_COLUMNS[1:])
    with np.errstate(divide="ignore", invalid="ignore"):
        ss_tot = syy - sy**2 / n
        var_e = see - se**2 / n
        sp, spp, syp = sy - se, syy - 2 * sye + see, syy - sye
        ss_pp = spp - sp**2 / n
        s_yp = syp - sy * sp / n
        const_y = (n < MIN_ROWS) | (ss_tot <= _CONST_REL * np.maximum(syy, 1e-300))
        const_p = (n < MIN_ROWS) | (ss_pp <= _CONST_REL * np.maximum(spp, 1e-300))
        r2 = np.where(const_y, np.nan, 1 - see / ss_tot)
        ev = np.where(const_y, np.nan, 1 - var_e / ss_tot)
        r = np.where(const_y | const_p, np.nan, s_yp / np.sqrt(ss_tot * ss_pp))
    r = np.clip(r, -1.0, 1.0)
    return {"r2": r2, "explained_variance": ev, "pearson_r": r, "pearson_r_squared": r**2,
            "ss_tot": ss_tot, "sse": see, "n": n}


def suff_stats(y_true, y_pred, codes=None, n_groups: int | None = None, center: float | None = None) -> pd.DataFrame:
    """Per-group sufficient statistics of (y, p) rows, one bincount pass each.

    ``codes`` are non-negative integer group ids (None: one group). Targets are
    centred on ``center`` (default: their mean) before summing, which keeps the
    sums well conditioned; pass the same ``center`` to stats that will be added.
    """
    y = np.asarray(y_true, dtype=float).ravel()
    e = y - np.asarray(y_pred, dtype=float).ravel()
    c = float(np.mean(y)) if center is None else center
    y = y - c
    if codes is None:
        sums = [len(y), y.sum(), y @ y, e.sum(), e @ e, y @ e]
        return pd.DataFrame([sums], columns=list(STAT_COLUMNS))
    codes = np.asarray(codes)
    m = int(codes.max()) + 1 if n_groups is None else n_groups
    cols = {
        "n": np.bincount(codes, minlength=m).astype(float),
        "sy": np.bincount(codes, y, m),
        "syy": np.bincount(codes, y * y, m),
        "se": np.bincount(codes, e, m),
        "see": np.bincount(codes, e * e, m),
        "sye": np.bincount(codes, y * e, m),
    }
    return pd.DataFrame(cols)


def pooled(stats: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Add up sufficient statistics over all groups, or within each ``by`` group."""
    if not by:
        return stats[list(STAT_COLUMNS)].sum().to_frame().T
    return stats.groupby(by, sort=True, observed=True)[list(STAT_COLUMNS)].sum().reset_index()


# --------------------------------------------------------------------------- the row table
@dataclass
class GroupedRun:
    """A predictions table reduced to sufficient statistics per (dup, session, rank, batch, channel).

    ``dup`` marks rows whose (sample_id, channel) was already evaluated earlier
    in the table (sampler padding); without a ``sample_id`` column none are marked.
    Columns the input lacks are a single constant level.
    """

    stats: pd.DataFrame
    has: dict[str, bool]
    n_rows: int
    n_duplicate_rows: int
    center: float

    @property
    def channels(self) -> list:
        return sorted(self.stats["channel"].unique().tolist())

    @property
    def sessions(self) -> list:
        return sorted(self.stats["session"].unique().tolist(), key=str)


def _codes(values) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes 0..k-1 and the sorted unique values (small-range ints without hashing)."""
    a = np.asarray(values)
    if a.dtype.kind in "iu" and a.size:
        lo, hi = int(a.min()), int(a.max())
        if hi - lo <= 4 * a.size + 1_000_000:
            present = np.zeros(hi - lo + 1, dtype=bool)
            present[a - lo] = True
            uniques = np.flatnonzero(present) + lo
            remap = np.cumsum(present) - 1
            return remap[a - lo], uniques
    codes, uniques = pd.factorize(pd.Series(a), sort=True)
    return codes, np.asarray(uniques)


def group_run(df: pd.DataFrame, center: float | None = None) -> GroupedRun:
    """Reduce a predictions table (y_true, y_pred; optional session, rank, batch, channel, sample_id)."""
    n = len(df)
    has = {k: k in df.columns for k in ("session", "rank", "batch", "channel", "sample_id")}
    dup = np.zeros(n, dtype=np.int64)
    if has["sample_id"]:
        subset = ["sample_id", "channel"] if has["channel"] else ["sample_id"]
        dup = df.duplicated(subset=subset, keep="first").to_numpy().astype(np.int64)
    levels, code_arrays = {"dup": np.array([0, 1])}, [dup]
    for k in ("session", "rank", "batch", "channel"):
        if has[k]:
            c, u = _codes(df[k].to_numpy())
        else:
            c, u = np.zeros(n, dtype=np.int64), np.array([0])
        code_arrays.append(c)
        levels[k] = u
    sizes = [len(levels[k]) for k in KEY_COLUMNS]
    key = np.ravel_multi_index(code_arrays, sizes) if np.prod(sizes, dtype=float) < 2**62 else None
    total = int(np.prod(sizes, dtype=float)) if key is not None else 0
    if key is not None and total <= max(4 * n, 1_000_000):
        stats = suff_stats(df["y_true"], df["y_pred"], key, total, center)
        present = np.flatnonzero(stats["n"].to_numpy() > 0)
        stats = stats.iloc[present].reset_index(drop=True)
        unravel = np.unravel_index(present, sizes)
    else:  # too many key combinations for a dense bincount: compress the keys first
        key_frame = pd.DataFrame(dict(zip(KEY_COLUMNS, code_arrays, strict=True)))
        inv, uniq = pd.MultiIndex.from_frame(key_frame).factorize(sort=True)
        stats = suff_stats(df["y_true"], df["y_pred"], inv, len(uniq), center)
        unravel = [np.asarray(uniq.get_level_values(i)) for i in range(len(KEY_COLUMNS))]
    c = float(df["y_true"].mean()) if center is None else center
    for k, codes in zip(KEY_COLUMNS, unravel, strict=True):
        stats.insert(len(stats.columns) - len(STAT_COLUMNS), k, levels[k][codes])
    return GroupedRun(stats, has, n, int(dup.sum()), c)


def group_run_streamed(path, chunk_rows: int = 2_000_000, progress: bool = True) -> GroupedRun:
    """:func:`group_run` on a parquet file too large for memory, read in row batches.

    The statistics of all chunks share one centre (the first chunk's target
    mean) so that they add exactly. Duplicates by ``sample_id`` are not tracked
    across chunks; a streamed run reports none.
    """
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    pf = pq.ParquetFile(path)
    wanted = [c for c in ("y_true", "y_pred", "session", "rank", "batch", "channel") if c in pf.schema_arrow.names]
    parts, center, n_rows, has = [], None, 0, None
    for batch in tqdm(pf.iter_batches(batch_size=chunk_rows, columns=wanted),
                      total=-(-pf.metadata.num_rows // chunk_rows), disable=not progress, desc="chunks"):
        chunk = batch.to_pandas()
        if center is None:
            center = float(chunk["y_true"].mean())
        g = group_run(chunk, center)
        parts.append(g.stats)
        n_rows += g.n_rows
        has = g.has
    stats = pooled(pd.concat(parts, ignore_index=True), list(KEY_COLUMNS))
    return GroupedRun(stats, has, n_rows, 0, center)


# --------------------------------------------------------------------------- candidates
def channel_r2(s0, s1, s2, sse, multioutput: str = "flat"):
    """R² from per-channel sums on the last axis (count, sum y, sum y², SSE).

    ``flat``: all channels as one variable around the grand mean; ``uniform``:
    mean of per-channel R²; ``variance_weighted``: 1 - sum SSE / sum SST over
    channels (sklearn's conventions for the last two).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        if multioutput == "flat":
            n, t1, t2 = s0.sum(-1), s1.sum(-1), s2.sum(-1)
            return 1 - sse.sum(-1) / (t2 - t1**2 / n)
        ss_tot = s2 - s1**2 / s0
        if multioutput == "uniform":
            return np.mean(1 - sse / ss_tot, axis=-1)
        if multioutput == "variance_weighted":
            return 1 - sse.sum(-1) / ss_tot.sum(-1)
    raise ValueError(f"multioutput must be flat, uniform or variance_weighted, got {multioutput!r}")


def _multioutput(per_channel: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Metric values under each multi-output convention, from per-channel sums."""
    out = {}
    flat = metrics_from_sums(per_channel[list(STAT_COLUMNS)].sum().to_dict())
    out["flat"] = {m: float(flat[m]) for m in METRICS}
    if len(per_channel) > 1:
        ch = metrics_from_sums({k: per_channel[k].to_numpy() for k in STAT_COLUMNS})
        w = ch["ss_tot"]
        with np.errstate(divide="ignore", invalid="ignore"):
            out["uniform"] = {m: float(np.mean(ch[m])) for m in METRICS}
            out["variance_weighted"] = {
                "r2": float(1 - ch["sse"].sum() / w.sum()),
                "explained_variance": float(np.sum(w * ch["explained_variance"]) / w.sum()),
                "pearson_r": np.nan, "pearson_r_squared": np.nan,
            }
    return out


def _scope_values(stats: pd.DataFrame, batch_mean: bool) -> dict[str, dict[str, float]]:
    """Metric values (by multi-output convention) pooled over ``stats`` or averaged over its batches."""
    if not batch_mean:
        return _multioutput(pooled(stats, ["channel"]))
    per_batch = pooled(stats, ["rank", "batch", "channel"])
    values: dict[str, dict[str, list]] = {}
    for _, b in per_batch.groupby(["rank", "batch"], sort=True):
        for mo, vals in _multioutput(b).items():
            for m, v in vals.items():
                values.setdefault(mo, {}).setdefault(m, []).append(v)
    with np.errstate(invalid="ignore"):
        return {mo: {m: _nanmean(v) for m, v in d.items()} for mo, d in values.items()}


def _nanmean(v) -> float:
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else np.nan


def candidate_table(run: GroupedRun, session=None) -> pd.DataFrame:
    """Every candidate computation of R²-like metrics on the run (or on one session).

    Columns: scope (``all`` = duplicates removed, ``all incl. duplicates``,
    ``rank <k>``, ``mean over ranks``), aggregation (``pooled`` or ``batch mean``),
    metric, multioutput, value, and ``correct`` (the pooled, deduplicated value a
    reported number should equal).
    """
    st = run.stats if session is None else run.stats[run.stats["session"] == session]
    clean = st[st["dup"] == 0]
    scopes: list[tuple[str, pd.DataFrame]] = [("all", clean)]
    if run.n_duplicate_rows and (st["dup"] == 1).any():
        scopes.append(("all incl. duplicates", st))
    if run.has["rank"] and st["rank"].nunique() > 1:
        scopes += [(f"rank {r}", g) for r, g in st.groupby("rank", sort=True)]
    aggregations = ["pooled"] + (["batch mean"] if run.has["batch"] else [])
    rows = []
    for scope, sub in scopes:
        for agg in aggregations:
            for mo, vals in _scope_values(sub, agg == "batch mean").items():
                for m, v in vals.items():
                    rows.append((scope, agg, m, mo, v))
    if run.has["rank"] and st["rank"].nunique() > 1:  # the seed's Fix 1: average per-rank values
        per_rank = [r for r in rows if r[0].startswith("rank ")]
        frame = pd.DataFrame(per_rank, columns=["scope", "aggregation", "metric", "multioutput", "value"])
        for (agg, m, mo), g in frame.groupby(["aggregation", "metric", "multioutput"], sort=False):
            rows.append(("mean over ranks", agg, m, mo, _nanmean(g["value"])))
    out = pd.DataFrame(rows, columns=["scope", "aggregation", "metric", "multioutput", "value"])
    out = out[np.isfinite(out["value"])].reset_index(drop=True)
    out["correct"] = (out["scope"] == "all") & (out["aggregation"] == "pooled")
    return out


# --------------------------------------------------------------------------- reconciliation
REPORTED_METRIC = {"r2": ("r2", "explained_variance", "pearson_r_squared"), "corr": ("pearson_r",)}
_ALL_FAMILY = {"r2": METRICS, "corr": METRICS}


def printed_tolerance(text: str, floor: float) -> float:
    """Half a unit in the last printed decimal of ``text`` (e.g. '0.479' -> 5e-4), at least ``floor``."""
    exp = Decimal(text).as_tuple().exponent
    half = 0.5 * 10.0 ** int(exp) if isinstance(exp, int) else 0.0
    return max(half, floor)


def flatten_reported(reported: Mapping) -> list[dict]:
    """``{"r2", "corr", "per_session": {s: {"r2", "corr"}}}`` as rows (session None = overall).

    Values may be floats or their printed strings (``json.load(parse_float=str)``).
    """
    rows = []
    for key in ("r2", "corr"):
        if key in reported:
            rows.append({"session": None, "key": key, "text": str(reported[key])})
    for s, d in (reported.get("per_session") or {}).items():
        for key in ("r2", "corr"):
            if key in d:
                rows.append({"session": s, "key": key, "text": str(d[key])})
    return rows


def reconcile(run: GroupedRun, reported: Mapping, tolerance: float = 1e-4) -> pd.DataFrame:
    """Which candidate computation reproduces each reported number.

    A candidate fits when it is within tolerance of the number (half a unit of
    its last printed decimal, at least ``tolerance``). Among fitting
    candidates the simplest explanation wins: fewest departures from the
    correct computation (scope other than ``all``, aggregation other than
    ``pooled``, another metric), then the closest. So a number that the correct
    computation reproduces is never blamed on a bug, and R² is not blamed on
    explained variance when the two coincide. ``n_matches`` shows ambiguity.
    """
    sessions_by_text = {str(s): s for s in run.sessions}
    rows, tables = [], {}
    for item in flatten_reported(reported):
        sess = item["session"]
        if sess not in tables:
            tables[sess] = candidate_table(run, None if sess is None else sessions_by_text[str(sess)])
        cand = tables[sess]
        value = float(item["text"])
        tol = printed_tolerance(item["text"], tolerance)
        correct_metric = "r2" if item["key"] == "r2" else "pearson_r"
        departures = ((cand["scope"] != "all").astype(int) + (cand["aggregation"] != "pooled")
                      + (cand["metric"] != correct_metric))
        diff = (cand["value"] - value).abs()
        fits = cand.assign(diff=diff, departures=departures)[diff <= tol]
        fits = fits.sort_values(["departures", "diff"], kind="stable")
        best = fits.iloc[0] if len(fits) else None
        truth = cand[cand["correct"] & (cand["metric"] == correct_metric)]
        rows.append({
            "session": sess, "reported": item["key"], "value": value, "tolerance": tol,
            "correct_value": float(truth["value"].iloc[0]) if len(truth) else np.nan,
            "explained": best is not None,
            "scope": None if best is None else best["scope"],
            "aggregation": None if best is None else best["aggregation"],
            "metric": None if best is None else best["metric"],
            "multioutput": None if best is None else best["multioutput"],
            "candidate_value": np.nan if best is None else float(best["value"]),
            "n_matches": len(fits),
            "is_correct": best is not None and best["departures"] == 0,
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- decompositions
def variance_decomposition(run: GroupedRun, by: str | list[str], multioutput: str = "flat") -> dict[str, float]:
    """Split the total sum of squares into between-group and within-group parts.

    On the deduplicated rows. ``flat`` treats all channels as one variable;
    ``variance_weighted`` decomposes each channel and adds them up. Returns
    ss_total, ss_between, ss_within, sse, eta2 (the between share), r2_pooled =
    1 - sse/ss_total and r2_within = 1 - sse/ss_within, which satisfy
    1 - r2_pooled = (1 - r2_within) (1 - eta2) exactly.
    """
    by = [by] if isinstance(by, str) else list(by)
    st = run.stats[run.stats["dup"] == 0]
    chan = [] if multioutput == "flat" else ["channel"]
    total = metrics_from_sums(pooled(st, chan))
    per_group = metrics_from_sums(pooled(st, chan + by))
    ss_total = float(np.sum(total["ss_tot"]))
    ss_within = float(np.sum(np.where(per_group["n"] >= 2, per_group["ss_tot"], 0.0)))
    sse = float(np.sum(total["sse"]))
    return {
        "ss_total": ss_total, "ss_between": ss_total - ss_within, "ss_within": ss_within, "sse": sse,
        "eta2": (ss_total - ss_within) / ss_total if ss_total > 0 else np.nan,
        "r2_pooled": 1 - sse / ss_total if ss_total > 0 else np.nan,
        "r2_within": 1 - sse / ss_within if ss_within > 0 else np.nan,
    }


def per_group_metrics(run: GroupedRun, by: str | list[str] = "session", multioutput: str = "flat",
                      dedup: bool = True) -> pd.DataFrame:
    """R², explained variance, Pearson r and r², count and target variance per group."""
    st = run.stats[run.stats["dup"] == 0] if dedup else run.stats
    rows = []
    for g, sub in st.groupby(by, sort=True):
        tot = metrics_from_sums(sub[list(STAT_COLUMNS)].sum().to_dict())
        vals = _multioutput(pooled(sub, ["channel"]))
        mo = multioutput if multioutput in vals else "flat"
        flat_or_uniform = "flat" if multioutput == "flat" or "uniform" not in vals else "uniform"
        keys = dict(zip(by, g, strict=True)) if isinstance(by, list) else {by: g}
        rows.append({**keys, "n": int(sub["n"].sum()), "target_variance": float(tot["ss_tot"] / tot["n"]),
                     "r2": vals[mo]["r2"],
                     "explained_variance": vals[mo]["explained_variance"],
                     "pearson_r": vals[flat_or_uniform]["pearson_r"],
                     "pearson_r_squared": vals[flat_or_uniform]["pearson_r_squared"]})
    return pd.DataFrame(rows)


def session_anova(df: pd.DataFrame) -> tuple[float, float]:
    """One-way ANOVA of y_true across sessions (channel means removed first): F and p (scipy)."""
    y = df["y_true"].to_numpy(dtype=float)
    if "channel" in df.columns:
        y = y - df.groupby("channel")["y_true"].transform("mean").to_numpy()
    groups = [y[idx] for idx in df.groupby("session", sort=True).indices.values() if len(idx) >= 1]
    if len(groups) < 2 or all(len(g) < 2 for g in groups):
        return np.nan, np.nan
    res = sps.f_oneway(*groups)
    return float(res.statistic), float(res.pvalue)


# --------------------------------------------------------------------------- bootstrap
def bootstrap_r2(df: pd.DataFrame, by: str = "session", n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, multioutput: str = "flat", progress: bool = False) -> pd.DataFrame:
    """Percentile bootstrap interval of R² per group (``multioutput`` as in :func:`channel_r2`).

    Resamples evaluated samples (all channels of a sample together) with
    replacement within each group; each replicate's R² comes from weighted
    sufficient statistics, so no replicate re-reads the rows.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    unit = "sample_id" if "sample_id" in df.columns else None
    chan = df["channel"].to_numpy() if "channel" in df.columns else np.zeros(len(df))
    rows = []
    groups = df.groupby(by, sort=True).indices
    for g, idx in tqdm(groups.items(), disable=not progress, desc=f"bootstrap by {by}"):
        sub = df.iloc[idx]
        y, p, ch = sub["y_true"].to_numpy(float), sub["y_pred"].to_numpy(float), chan[idx]
        units, inv = (np.unique(sub[unit].to_numpy(), return_inverse=True) if unit
                      else (np.arange(len(idx)), np.arange(len(idx))))
        ch_codes, _ = _codes(ch)
        n_ch = int(ch_codes.max()) + 1
        yc = y - y.mean()
        e = y - p
        # per (unit, channel) statistics, then replicate weights over units
        cell = inv * n_ch + ch_codes
        m = len(units) * n_ch
        base = np.stack([np.bincount(cell, w, m) for w in (np.ones_like(yc), yc, yc * yc, e * e)])
        base = base.reshape(4, len(units), n_ch)
        est = []
        for start in range(0, n_boot, 256):
            b = min(256, n_boot - start)
            w = rng.multinomial(len(units), np.full(len(units), 1 / len(units)), size=b).astype(float)
            s = np.einsum("bu,kuc->kbc", w, base)  # (4, b, channel)
            est.append(channel_r2(s[0], s[1], s[2], s[3], multioutput))
        est = np.concatenate(est)
        est = est[np.isfinite(est)]
        alpha = (1 - level) / 2
        lo, hi = (np.quantile(est, [alpha, 1 - alpha]) if est.size else (np.nan, np.nan))
        rows.append({by: g, "n_units": len(units), "r2_low": float(lo), "r2_high": float(hi)})
    return pd.DataFrame(rows)
