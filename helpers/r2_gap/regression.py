"""Regression metrics behind notebook 01: why overall and per-session R² disagree.

Everything is computed from additive sufficient statistics per group of rows
(:data:`STAT_COLUMNS`): counts and sums of the centred target ``y'`` and of the
residual ``e = y - p``. Sums add across batches, ranks, sessions and file
chunks, so one pass over the rows yields every candidate computation a training
script might have made (pooled, one rank, mean of per-batch values, explained
variance, squared Pearson r, with or without padded duplicates) - and the same
sums, all-reduced, are the exact distributed fix.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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


def suff_stats(y_true, y_pred, codes=None, n_groups: int | None = None, center: float | None = None,
               starts: np.ndarray | None = None) -> pd.DataFrame:
    """Per-group sufficient statistics of (y, p) rows.

    Groups are given by ``codes`` (non-negative integer ids, one bincount pass
    per statistic), or by ``starts`` (first row of each run of consecutive rows,
    one sequential ``np.add.reduceat`` pass per statistic), or neither (one
    group). Targets are centred on ``center`` (default: their mean) before
    summing, which keeps the sums well conditioned; stats that will be added
    together must share the same ``center``.
    """
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_pred, dtype=float).ravel()
    c = float(np.mean(y)) if center is None else center
    if starts is not None:
        return _run_sums(y, p, c, np.asarray(starts))
    yc, e = np.subtract(y, c), np.subtract(y, p)
    if codes is None:
        sums = [len(y), yc.sum(), yc @ yc, e.sum(), e @ e, yc @ e]
        return pd.DataFrame([sums], columns=list(STAT_COLUMNS))
    codes = np.asarray(codes)
    m = int(codes.max()) + 1 if n_groups is None else n_groups
    cols = {"n": np.bincount(codes, minlength=m).astype(float), "sy": np.bincount(codes, yc, m),
            "se": np.bincount(codes, e, m), "sye": np.bincount(codes, yc * e, m),
            "syy": np.bincount(codes, np.multiply(yc, yc, out=yc), m),
            "see": np.bincount(codes, np.multiply(e, e, out=e), m)}
    return pd.DataFrame({k: cols[k] for k in STAT_COLUMNS})


def _group_index(frame: pd.DataFrame, by: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Group id per row (0..G-1, in sorted key order) and the key values of each group."""
    pairs = [_codes(frame[k].to_numpy()) for k in by]
    inv, unravel = _group_codes([c for c, _ in pairs], [len(u) for _, u in pairs])
    keys = pd.DataFrame({k: u[c] for k, (_, u), c in zip(by, pairs, unravel, strict=True)})
    return inv, keys


def _run_sums(y: np.ndarray, p: np.ndarray, c: float, starts: np.ndarray) -> pd.DataFrame:
    """Sufficient statistics of each run of rows; large inputs are split across cores at run
    boundaries (numpy's loops release the GIL, so threads run them in parallel)."""
    workers = min(4, os.cpu_count() or 1) if len(y) >= 2_000_000 and len(starts) >= 8 else 1
    if workers == 1:
        return suff_stats_of_runs(y, p, c, starts)
    cuts = [len(starts) * i // workers for i in range(workers + 1)]
    bounds = [*starts[cuts[:-1]], len(y)]
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(lambda i: suff_stats_of_runs(y[bounds[i]:bounds[i + 1]], p[bounds[i]:bounds[i + 1]], c,
                                                      starts[cuts[i]:cuts[i + 1]] - bounds[i]), range(workers))
        return pd.concat(list(parts), ignore_index=True)


def suff_stats_of_runs(y: np.ndarray, p: np.ndarray, c: float, starts: np.ndarray) -> pd.DataFrame:
    """Sufficient statistics of each run of consecutive rows (``starts``: first row of each run)."""
    yc, e = np.subtract(y, c), np.subtract(y, p)
    cols = {"n": np.diff(np.append(starts, len(y))).astype(float),
            "sy": np.add.reduceat(yc, starts), "se": np.add.reduceat(e, starts),
            "sye": np.add.reduceat(yc * e, starts),
            "syy": np.add.reduceat(np.multiply(yc, yc, out=yc), starts),
            "see": np.add.reduceat(np.multiply(e, e, out=e), starts)}
    return pd.DataFrame({k: cols[k] for k in STAT_COLUMNS})


def pooled(stats: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Add up sufficient statistics over all groups, or within each ``by`` group (sorted by key)."""
    if not by:
        return stats[list(STAT_COLUMNS)].sum().to_frame().T
    inv, keys = _group_index(stats, by)
    sums = {col: np.bincount(inv, stats[col].to_numpy(), len(keys)) for col in STAT_COLUMNS}
    return pd.DataFrame({**{k: keys[k].to_numpy() for k in keys.columns}, **sums})  # one frame, not one column at a time


def _mean_by(inv: np.ndarray, n_groups: int, values: np.ndarray, skip_nan: bool) -> np.ndarray:
    """Per-group mean of ``values``; NaNs skipped, or (skip_nan=False) making the group's mean NaN."""
    bad = ~np.isfinite(values)
    total = np.bincount(inv, np.where(bad, 0.0, values), n_groups)
    count = np.bincount(inv, (~bad).astype(float), n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / count
    if not skip_nan:
        mean[np.bincount(inv, bad.astype(float), n_groups) > 0] = np.nan
    return mean


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
    duplicates: np.ndarray | None = None  # per row of the table: a repeat (None when not kept, e.g. streamed)
    repeated: np.ndarray | None = None  # per row: its sample (and channel) is in the table more than once
    # candidate_table's answers by session (None: the whole run): the findings ask for the same one many times
    candidates: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def channels(self) -> list:
        return sorted(self.stats["channel"].unique().tolist())

    @property
    def sessions(self) -> list:
        return sorted(self.stats["session"].unique().tolist(), key=str)


def _codes(values) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and the values they stand for.

    Small-range integers are their own codes (offset by the minimum), so no
    hashing is needed; levels that do not occur are dropped later with the
    empty groups. Anything else is factorised (sorted).
    """
    a = np.asarray(values)
    if a.dtype.kind in "iub" and a.size:
        lo, hi = int(a.min()), int(a.max())
        if hi - lo <= 4 * a.size + 1_000_000:
            return (a - lo if lo else a).astype(np.int64, copy=False), np.arange(lo, hi + 1)
    codes, uniques = pd.factorize(pd.Series(a), sort=True)
    return codes, np.asarray(uniques)


def _run_starts(columns: list[np.ndarray]) -> np.ndarray:
    """First row of every run of consecutive rows that agree on all ``columns``."""
    n = len(columns[0])
    change = np.zeros(max(n - 1, 0), dtype=bool)
    for col in columns:
        change |= col[1:] != col[:-1]
    return np.concatenate([[0], np.flatnonzero(change) + 1])


def group_run(df: pd.DataFrame, center: float | None = None) -> GroupedRun:
    """Reduce a predictions table (y_true, y_pred; optional session, rank, batch, channel, sample_id).

    Rows written batch by batch (the usual evaluation log) form long runs of
    one (session, rank, batch, channel): those are summed sequentially run by
    run, and only the runs are grouped. Shuffled rows are grouped directly.
    """
    n = len(df)
    has = {k: k in df.columns for k in ("session", "rank", "batch", "channel", "sample_id")}
    counts = repeat_counts(df)
    duplicates = duplicate_rows(df, counts)
    dup = duplicates.astype(np.int64)
    present = [k for k in ("session", "rank", "batch", "channel") if has[k]]
    raw = {k: df[k].to_numpy() for k in present}
    if has["sample_id"]:
        raw["dup"] = dup
    starts = _run_starts(list(raw.values())) if raw else np.array([0])
    by_runs = len(starts) <= n // 4
    if by_runs:
        raw = {k: v[starts] for k, v in raw.items()}
    m = len(starts) if by_runs else n
    levels, code_arrays = {}, []
    for k in KEY_COLUMNS:
        if k in raw:
            c, u = (raw[k], np.array([0, 1])) if k == "dup" else _codes(raw[k])
        else:
            c, u = np.zeros(m, dtype=np.int64), np.array([0])
        code_arrays.append(c)
        levels[k] = u
    inv, unravel = _group_codes(code_arrays, [len(levels[k]) for k in KEY_COLUMNS])
    y, p = df["y_true"].to_numpy(), df["y_pred"].to_numpy()
    # any constant near the mean conditions the sums; the first rows' mean saves a pass
    c = float(np.mean(y[:4096])) if center is None else center
    if by_runs:
        per_run = suff_stats(y, p, center=c, starts=starts)
        stats = pd.DataFrame({k: np.bincount(inv, per_run[k].to_numpy(), len(unravel[0])) for k in STAT_COLUMNS})
    else:
        stats = suff_stats(y, p, inv, len(unravel[0]), c)
    for k, codes in zip(KEY_COLUMNS, unravel, strict=True):
        stats.insert(len(stats.columns) - len(STAT_COLUMNS), k, levels[k][codes])
    return GroupedRun(stats, has, n, int(dup.sum()), c, duplicates, None if counts is None else counts > 1)


def _group_codes(code_arrays: list[np.ndarray], sizes: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Compact group ids 0..G-1 for rows keyed by several code arrays, and each key's codes per group."""
    n = len(code_arrays[0])
    if np.prod(sizes, dtype=float) < 2**62:
        key = np.ravel_multi_index(code_arrays, sizes)
        dense = int(np.prod(sizes, dtype=float))
        if dense <= max(4 * n, 1 << 22):  # compact the dense key to the groups present (bincount, no sort)
            present = np.flatnonzero(np.bincount(key, minlength=dense))
            remap = np.empty(dense, dtype=np.int64)
            remap[present] = np.arange(len(present))
            return remap[key], list(np.unravel_index(present, sizes))
        codes, uniques = pd.factorize(key, sort=True)
        return codes, list(np.unravel_index(np.asarray(uniques), sizes))
    # too many key combinations for one integer: factorise the tuples
    frame = pd.DataFrame({str(i): a for i, a in enumerate(code_arrays)})
    codes, uniq = pd.MultiIndex.from_frame(frame).factorize(sort=True)
    return codes, [np.asarray(uniq.get_level_values(i)) for i in range(len(code_arrays))]


def group_run_streamed(path, chunk_rows: int = 2_000_000, progress: bool = True) -> GroupedRun:
    """:func:`group_run` on a parquet file too large for memory, read piece by piece.

    Pieces are the file's row groups (a row group larger than ``chunk_rows`` is
    read in batches of that size), so memory stays bounded by one piece; the
    partial statistics are merged as they come. All pieces share one centre
    (the first piece's target mean) so that their sums add exactly. Duplicates
    by ``sample_id`` are not tracked across pieces: a streamed run reports none.
    """
    import pyarrow.parquet as pq
    from tqdm import tqdm

    pf = pq.ParquetFile(path)
    wanted = [c for c in ("y_true", "y_pred", "session", "rank", "batch", "channel") if c in pf.schema_arrow.names]

    def pieces():
        for i in range(pf.num_row_groups):
            if pf.metadata.row_group(i).num_rows <= chunk_rows:
                yield pf.read_row_group(i, columns=wanted)
            else:
                yield from pf.iter_batches(batch_size=chunk_rows, row_groups=[i], columns=wanted)

    keys = list(KEY_COLUMNS)
    total, parts, center, n_rows, has = None, [], None, 0, None
    with tqdm(total=pf.metadata.num_rows, unit="row", unit_scale=True, disable=not progress, desc="rows") as bar:
        for piece in pieces():
            chunk = piece.to_pandas()
            del piece
            if center is None:
                center = float(chunk["y_true"].mean())
            g = group_run(chunk, center)
            parts.append(g.stats)
            n_rows, has = n_rows + g.n_rows, g.has
            bar.update(g.n_rows)
            del chunk, g
            if len(parts) >= 16:  # merge as we go: memory bounded by the groups, not the pieces
                total = pooled(pd.concat(([total] if total is not None else []) + parts, ignore_index=True), keys)
                parts = []
    stats = pooled(pd.concat(([total] if total is not None else []) + parts, ignore_index=True), keys)
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


def _metric_columns(per_channel: pd.DataFrame, by: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per ``by`` group: every (multioutput, metric) value, from per-(group, channel) sums (vectorised).

    Returns (values with one column per (multioutput, metric), the groups' keys).
    """
    inv, keys = _group_index(per_channel, by)
    g = len(keys)
    sums = {k: np.bincount(inv, per_channel[k].to_numpy(), g) for k in STAT_COLUMNS}
    flat = metrics_from_sums(sums)
    out = {("flat", m): flat[m] for m in METRICS}
    if per_channel["channel"].nunique() > 1:
        ch = metrics_from_sums({k: per_channel[k].to_numpy() for k in STAT_COLUMNS})
        for m in METRICS:  # a channel with an undefined metric makes the mean undefined
            out[("uniform", m)] = _mean_by(inv, g, ch[m], skip_nan=False)
        ss_tot, sse = np.bincount(inv, ch["ss_tot"], g), np.bincount(inv, ch["sse"], g)
        w_ev = np.bincount(inv, ch["ss_tot"] * ch["explained_variance"], g)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[("variance_weighted", "r2")] = 1 - sse / ss_tot
            out[("variance_weighted", "explained_variance")] = w_ev / ss_tot
    return pd.DataFrame(np.column_stack(list(out.values())), columns=_column_index(tuple(out))), keys


@functools.lru_cache(maxsize=8)
def _column_index(columns: tuple[tuple[str, str], ...]) -> pd.MultiIndex:
    """The (multioutput, metric) columns, built once per layout: building a MultiIndex costs more than the
    arithmetic of a small run, and candidate_table asks for one many times per session."""
    return pd.MultiIndex.from_tuples(columns)


def _long(values: pd.Series, scope: str, aggregation: str) -> list[tuple]:
    return [(scope, aggregation, m, mo, float(v)) for (mo, m), v in values.items()]


def _means_by_rank(values: pd.DataFrame, ranks: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    codes, uniques = _codes(ranks)
    inv, unravel = _group_codes([codes], [len(uniques)])
    g = len(unravel[0])
    means = {col: _mean_by(inv, g, values[col].to_numpy(), skip_nan=True) for col in values.columns}
    return pd.DataFrame(means), uniques[unravel[0]]


def candidate_table(run: GroupedRun, session=None) -> pd.DataFrame:
    """Every candidate computation of R²-like metrics on the run (or on one session).

    Columns: scope (``all`` = duplicates removed, ``all incl. duplicates``,
    ``rank <k>``, ``mean over ranks``), aggregation (``pooled`` or ``batch mean``),
    metric, multioutput, value, and ``correct`` (the pooled, deduplicated value a
    reported number should equal). Batch means skip batches whose metric is
    undefined (fewer than 2 rows or a constant target), as nanmean would.
    """
    if session not in run.candidates:
        run.candidates[session] = _candidate_table(run, session)
    return run.candidates[session].copy()


def _candidate_table(run: GroupedRun, session) -> pd.DataFrame:
    st = run.stats if session is None else run.stats[run.stats["session"] == session]
    clean = st[st["dup"] == 0]
    with_dups = bool((st["dup"] == 1).any())
    multi_rank = run.has["rank"] and st["rank"].nunique() > 1
    rows: list[tuple] = []
    whole = lambda frame: _metric_columns(pooled(frame, ["channel"]).assign(_all=0), ["_all"])[0].iloc[0]  # noqa: E731
    # pooled: over all rows, and per rank (each rank's own shard, its padding included)
    rows += _long(whole(clean), "all", "pooled")
    if with_dups:
        rows += _long(whole(st), "all incl. duplicates", "pooled")
    if multi_rank:
        per_rank, keys = _metric_columns(pooled(st, ["rank", "channel"]), ["rank"])
        for r, (_, values) in zip(keys["rank"], per_rank.iterrows(), strict=True):
            rows += _long(values, f"rank {r}", "pooled")
        rows += _long(per_rank.mean(), "mean over ranks", "pooled")  # the source's Fix 1
    if run.has["batch"]:
        batches, keys = _metric_columns(pooled(clean, ["rank", "batch", "channel"]), ["rank", "batch"])
        rows += _long(batches.mean(), "all", "batch mean")
        if with_dups:
            batches, keys = _metric_columns(pooled(st, ["rank", "batch", "channel"]), ["rank", "batch"])
            rows += _long(batches.mean(), "all incl. duplicates", "batch mean")
        if multi_rank:
            per_rank, ranks = _means_by_rank(batches, keys["rank"].to_numpy())
            for r, (_, values) in zip(ranks, per_rank.iterrows(), strict=True):
                rows += _long(values, f"rank {r}", "batch mean")
            rows += _long(per_rank.mean(), "mean over ranks", "batch mean")
    out = pd.DataFrame(rows, columns=["scope", "aggregation", "metric", "multioutput", "value"])
    out = out[np.isfinite(out["value"])].reset_index(drop=True)
    out["correct"] = (out["scope"] == "all") & (out["aggregation"] == "pooled")
    return out


# --------------------------------------------------------------------------- reconciliation


def session_label(value) -> str:
    """How a session id is written as a JSON key: 160819 and 160819.0 are both '160819'."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


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
    sessions_by_text = {session_label(s): s for s in run.sessions}
    rows, tables = [], {}
    for item in flatten_reported(reported):
        sess = item["session"]
        if sess not in tables:
            tables[sess] = candidate_table(run, None if sess is None else sessions_by_text[session_label(sess)])
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
    """R², explained variance, Pearson r and r², count and target variance per group.

    R² and explained variance follow ``multioutput``; Pearson r has no
    variance-weighted form, so it is flat, or the channels' mean otherwise.
    """
    by = [by] if isinstance(by, str) else list(by)
    st = run.stats[run.stats["dup"] == 0] if dedup else run.stats
    values, out = _metric_columns(pooled(st, [*by, "channel"]), by)
    totals = metrics_from_sums(pooled(st, by))
    mo = multioutput if (multioutput, "r2") in values.columns else "flat"
    r_mo = "uniform" if multioutput != "flat" and ("uniform", "pearson_r") in values.columns else "flat"
    out["n"] = totals["n"].astype(int)
    out["target_variance"] = totals["ss_tot"] / totals["n"]
    for m in ("r2", "explained_variance"):
        out[m] = values[(mo, m)].to_numpy()
    for m in ("pearson_r", "pearson_r_squared"):
        out[m] = values[(r_mo, m)].to_numpy()
    return out


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


# --------------------------------------------------------------------------- repeated samples
def _dense_codes(values) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..k-1 of ``values`` (sorted order of the values) and the values they stand for."""
    codes, uniques = _codes(values)
    if len(uniques) and len(uniques) <= 4 * len(codes) + 1_000_000:  # drop the levels that do not occur
        present = np.bincount(codes, minlength=len(uniques)) > 0
        if not present.all():
            remap = np.cumsum(present) - 1
            return remap[codes], uniques[present]
    return codes, uniques


def sample_keys(df: pd.DataFrame) -> np.ndarray | None:
    """One non-negative integer per row for its evaluated value, (``sample_id``, ``channel``); equal keys
    are the same sample (and channel). None without a ``sample_id`` column."""
    if "sample_id" not in df.columns:
        return None
    key, _ = _dense_codes(df["sample_id"].to_numpy())
    if "channel" in df.columns:
        ch, levels = _dense_codes(df["channel"].to_numpy())
        key = key * len(levels) + ch
    return key


def repeat_counts(df: pd.DataFrame) -> np.ndarray | None:
    """How many rows of the table hold each row's (``sample_id``, ``channel``): 1 for a sample
    evaluated once. None without a ``sample_id`` column. One counting pass, no hashing."""
    key = sample_keys(df)
    if key is None:
        return None
    return np.bincount(key)[key] if len(key) else np.zeros(0, dtype=np.int64)


def duplicate_rows(df: pd.DataFrame, counts: np.ndarray | None = None) -> np.ndarray:
    """True for the rows whose (``sample_id``, ``channel``) occurred earlier in the table (sampler
    padding), as ``df.duplicated(..., keep="first")``; all False without ``sample_id``. Only the rows of
    repeated samples (``counts`` > 1, usually few) are hashed."""
    counts = repeat_counts(df) if counts is None else counts
    dup = np.zeros(len(df), dtype=bool)
    if counts is None:
        return dup
    rows = np.flatnonzero(counts > 1)
    if len(rows):
        dup[rows] = pd.Series(sample_keys(df)[rows]).duplicated(keep="first").to_numpy()
    return dup


# --------------------------------------------------------------------------- bootstrap
# The blocks of a replicate: at most this many per session (longer blocks beyond that), so the cost is
# at most MAX_BLOCKS x replicates per session whatever the rows; with this many blocks their own
# sampling noise costs the interval next to nothing (see block_length).
MAX_BLOCKS = 500


def _autocovariance(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Sample autocovariances of a centred series at lags 0..max_lag (divisor n), by FFT."""
    from scipy import fft

    n = len(x)
    size = fft.next_fast_len(n + max_lag + 1, real=True)
    f = fft.rfft(x, size)
    return fft.irfft(f.real**2 + f.imag**2, size)[:max_lag + 1] / n


def dependence_ratio(u: np.ndarray) -> float:
    """r = sum_k |k| gamma(k) / sum_k gamma(k) of a series (k over all integer lags), estimated as
    Politis and White (2004) do, with the correction of Patton, Politis and White (2009): the
    flat-top lag window, its bandwidth from the first run of K_N insignificant autocorrelations.

    r is how far the dependence of the series reaches, in rows: 0 for independent rows,
    2 rho / (1 - rho^2) for an AR(1) with coefficient rho. Returns |r| (0 when undefined).
    """
    n = len(u)
    if n < 8:
        return 0.0
    x = np.asarray(u, dtype=float) - np.mean(u)
    kn = max(5, int(np.ceil(np.sqrt(np.log10(n)))))
    m_max = min(int(np.ceil(np.sqrt(n))) + kn, n - 1)
    cut = 2 * np.sqrt(np.log10(n) / n)  # an autocorrelation below this is insignificant
    # short dependence (the usual case) needs a few lags: those directly, all m_max lags only if needed
    few = min(4 * kn, m_max)
    acv = np.array([np.einsum("i,i->", x[:n - k], x[k:]) for k in range(few + 1)]) / n  # (not BLAS: its threads stall)
    if not acv[0] > 0:
        return 0.0
    small = (np.abs(acv[1:] / acv[0]) < cut).astype(int)
    runs = np.flatnonzero(np.convolve(small, np.ones(kn, dtype=int), "valid") == kn)
    if not len(runs) or 2 * max(int(runs[0]), 1) > few:
        acv = _autocovariance(x, m_max)
        small = (np.abs(acv[1:] / acv[0]) < cut).astype(int)
        runs = np.flatnonzero(np.convolve(small, np.ones(kn, dtype=int), "valid") == kn)
    m = min(2 * max(int(runs[0]), 1), m_max) if len(runs) else m_max
    k = np.arange(1, m + 1)
    lam = np.where(k / m <= 0.5, 1.0, 2 * (1 - k / m))
    g0 = acv[0] + 2 * np.sum(lam * acv[k])
    g1 = 2 * np.sum(lam * k * acv[k])
    return float(abs(g1) / g0) if g0 > 0 else 0.0


def block_length(r: float, n: int) -> float:
    """Units per block for ``n`` units whose R² influence series has dependence ratio ``r``:
    L = sqrt(r n), the geometric mean of how far the dependence reaches (r units) and the session.

    Blocks cut the dependence at their ends, so the block bootstrap's variance falls short by about
    r / L, which costs a 95% interval about 0.115 r / L of coverage (a first-order error, as the
    interval needs the variance unbiased). Fewer blocks, K = n / L, make that variance noisier: the
    expanded percentile interval (:func:`interval_from_replicates`) absorbs most of that, so longer
    blocks than the variance-optimal length of Politis and White (proportional to n^(1/3)) pay off.
    sqrt(r n) was chosen by simulation (AR(1) rows with rho 0.9 and independent rows, 300 to 5,000
    rows, 2,000 runs each, Monte Carlo error about 0.5 points): coverage 94.4-95.3% against 93.5-94.3%
    with sqrt(0.41 r n) and 93.9-94.5% with sqrt(2 r n). Bounded below by 1 and n / MAX_BLOCKS, above
    by 3 sqrt(n) and n / 3 (Politis and White's bounds).
    """
    length = max(np.sqrt(r * n), 1.0, n / MAX_BLOCKS)
    return float(min(length, 3 * np.sqrt(n), n / 3)) if n >= 3 else 1.0


def _session_order(keep: np.ndarray, sess: np.ndarray, n_sessions: int, key: np.ndarray | None) -> np.ndarray:
    """The kept rows, session by session, each session in sample order: positions into the table.

    ``key``: :func:`sample_keys` (sample_id, then channel; None keeps the table's order). The kept
    rows hold each key once, so dense keys are placed by one scatter, in time linear in the rows
    whatever their order; the sessions then by a stable sort of small integers."""
    rows = np.flatnonzero(keep)
    if key is not None and len(rows):
        k = key[rows]
        span = int(k.max()) + 1
        if span <= 2 * len(rows) + 1_000_000:
            slot = np.full(span, -1, dtype=np.int64)
            slot[k] = rows
            placed = slot[slot >= 0]
            rows = placed if len(placed) == len(rows) else rows[np.argsort(k, kind="stable")]  # keys repeat: sort
        else:
            rows = rows[np.argsort(k, kind="stable")]
    return rows[np.argsort(sess[rows].astype(np.int16 if n_sessions < 2**15 else np.int64), kind="stable")]


def interval_from_replicates(reps: np.ndarray, n_blocks: int, level: float = 0.95) -> tuple[float, float]:
    """Expanded percentile interval (Hesterberg 2015): the replicates' quantiles at
    Phi(sqrt(K / (K - 1)) t_{K-1}(alpha)) instead of alpha = (1 - level) / 2. The plain percentile
    interval is too narrow when the resampled units are few; here they are the K blocks."""
    reps = reps[np.isfinite(reps)]
    if reps.size < 2 or n_blocks < 2:
        return np.nan, np.nan
    from scipy.special import ndtr, stdtrit

    alpha = (1 - level) / 2
    # normal cdf and t quantile from scipy.special: scipy.stats' distributions cost ~2 ms a call
    a = float(ndtr(np.sqrt(n_blocks / (n_blocks - 1)) * stdtrit(n_blocks - 1, alpha)))
    lo, hi = np.quantile(reps, [a, 1 - a])
    return float(lo), float(hi)


@dataclass
class BlockSums:
    """One session's rows cut into blocks: per (block, channel) sums of the centred target, its
    square and the squared error, plus the block rule's inputs."""

    sums: np.ndarray  # (blocks, 4, channels): n, sum y', sum y'^2, sum e^2
    n_units: int
    dependence: float  # r of the influence series
    length: float  # units per block
    block_of_row: np.ndarray  # the block each row went to


def block_sums(y: np.ndarray, p: np.ndarray, ch: np.ndarray, n_ch: int, unit_starts: np.ndarray | None) -> BlockSums:
    """Cut one session's rows (in sample order) into contiguous blocks of whole units (samples; rows
    without ``unit_starts``) of the length :func:`block_length` gives, and sum each block."""
    yc = y - y.mean()
    e = y - p
    yy, ee = yc * yc, e * e
    sse, sst = ee.sum(), yy.sum()
    r2 = 1 - sse / sst if sst > 0 else 0.0
    u = (1 - r2) * yy - ee  # R²'s influence series (up to a constant and a scale), per row
    one_per_unit = unit_starts is None or len(unit_starts) == len(y)
    if not one_per_unit:
        u = np.add.reduceat(u, unit_starts)
    n = len(u)
    r = dependence_ratio(u)
    length = block_length(r, n)
    k = max(int(np.ceil(n / length - 1e-9)), 1)
    first_unit = -(-np.arange(k) * n // k)  # nearly equal blocks: floor(n / k) or ceil(n / k) units
    first_row = first_unit if one_per_unit else unit_starts[first_unit]
    block = np.repeat(np.arange(k), np.diff(np.append(first_row, len(y))))
    if n_ch == 1:  # contiguous blocks: sequential sums
        sums = np.stack([np.diff(np.append(first_row, len(y))).astype(float), np.add.reduceat(yc, first_row),
                         np.add.reduceat(yy, first_row), np.add.reduceat(ee, first_row)], axis=1)[:, :, None]
    else:
        cell = block * n_ch + ch
        m = k * n_ch
        sums = np.stack([np.bincount(cell, None, m), np.bincount(cell, yc, m), np.bincount(cell, yy, m),
                         np.bincount(cell, ee, m)], axis=1).reshape(k, n_ch, 4).transpose(0, 2, 1)
    return BlockSums(sums, n, r, length, block)


def block_counts(n_blocks: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n_blocks`` blocks is drawn in each of ``n_boot`` replicates that draw
    ``n_blocks`` blocks with replacement (multinomial counts, shape (n_boot, n_blocks))."""
    draws = rng.integers(0, n_blocks, size=(n_boot, n_blocks)) + (np.arange(n_boot) * n_blocks)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n_blocks).reshape(n_boot, n_blocks).astype(float)


def replicate_r2(sums: np.ndarray, counts: np.ndarray, multioutput: str = "flat") -> np.ndarray:
    """R² of each replicate: its sums are its block counts times the blocks' sums (one matrix product)."""
    s = (counts @ sums.reshape(sums.shape[0], -1)).reshape(len(counts), 4, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return channel_r2(s[:, 0], s[:, 1], s[:, 2], s[:, 3], multioutput)


def bootstrap_replicates(sums: np.ndarray, n_boot: int, rng: np.random.Generator, multioutput: str = "flat") -> np.ndarray:
    """R² of ``n_boot`` block bootstrap replicates of a session's blocks (``sums``), drawn in chunks
    of about 4 million block counts: the work is blocks x replicates, whatever the rows."""
    k = sums.shape[0]
    step = max(1, min(n_boot, 4_000_000 // k))
    return np.concatenate([replicate_r2(sums, block_counts(k, min(step, n_boot - start), rng), multioutput)
                           for start in range(0, n_boot, step)])


def bootstrap_r2(df: pd.DataFrame, by: str = "session", n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, multioutput: str = "flat", progress: bool = False,
                 duplicates: np.ndarray | None = None) -> pd.DataFrame:
    """Block bootstrap interval of R² per group (``multioutput`` as in :func:`channel_r2`).

    On the deduplicated rows (``duplicates``: the mask :func:`duplicate_rows` gives, computed
    if not given), as the per-group R². Within each group, rows are put in sample order
    (``sample_id``, the dataset index; table order without it) and cut into contiguous blocks of
    whole samples (all channels of a sample together), whose length follows the dependence of
    R²'s influence series along that order (:func:`block_length`): consecutive rows of a
    recording are not independent, and resampling single rows would give too narrow an
    interval. Each block's sufficient statistics are summed once; a replicate only draws block
    counts, so the cost is blocks x replicates, not rows x replicates. The interval is the
    expanded percentile interval of the replicates (:func:`interval_from_replicates`). Columns: ``by``,
    ``n_units`` (samples), ``block_length`` (samples per block), ``n_blocks``, ``r2_low``,
    ``r2_high``. Each group draws from its own stream of ``seed``, so a group's interval does
    not depend on the other groups.
    """
    from tqdm import tqdm

    dup = duplicate_rows(df) if duplicates is None else np.asarray(duplicates, dtype=bool)
    sess, levels = _dense_codes(df[by].to_numpy())
    ch, ch_levels = (_dense_codes(df["channel"].to_numpy()) if "channel" in df.columns
                     else (np.zeros(len(df), dtype=np.int64), np.array([0])))
    key = sample_keys(df)
    sample = None if key is None else key // len(ch_levels) if len(ch_levels) > 1 else key
    order = _session_order(~dup, sess, len(levels), key)
    sizes = np.bincount(sess[order], minlength=len(levels))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    y_all, p_all = df["y_true"].to_numpy(), df["y_pred"].to_numpy()
    streams = np.random.SeedSequence(seed).spawn(len(levels))
    rows = []
    for g in tqdm(range(len(levels)), disable=not progress, desc=f"block bootstrap of R² per {by}", unit=by):
        idx = order[bounds[g]:bounds[g + 1]]
        row = {by: levels[g], "n_units": 0, "block_length": np.nan, "n_blocks": 0, "r2_low": np.nan, "r2_high": np.nan}
        if len(idx) >= 2:
            starts = None
            if sample is not None:
                s = sample[idx]
                starts = np.concatenate([[0], np.flatnonzero(s[1:] != s[:-1]) + 1])
            b = block_sums(y_all[idx].astype(float), p_all[idx].astype(float), ch[idx], len(ch_levels), starts)
            reps = bootstrap_replicates(b.sums, n_boot, np.random.default_rng(streams[g]), multioutput)
            lo, hi = interval_from_replicates(reps, b.sums.shape[0], level)
            row.update(n_units=b.n_units, block_length=b.length, n_blocks=b.sums.shape[0], r2_low=lo, r2_high=hi)
        rows.append(row)
    return pd.DataFrame(rows)
