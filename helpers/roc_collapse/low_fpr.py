"""ROC statistics at low false-positive rate: operating points, ties, resolution, intervals.

Everything starts from one ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``
call, which merges tied scores into one point per distinct score value. From
that curve:

* ``tpr@fpr x`` is the largest TPR among points with FPR <= x, ``fpr@tpr y`` the
  smallest FPR among points with TPR >= y (step functions: no interpolation
  between operating points that no threshold can reach);
* the partial AUC is scikit-learn's ``roc_auc_score(max_fpr=...)`` (McClish
  standardised), evaluated on the same curve;
* the tie audit reads the counts of each class per distinct score: how many
  negatives share the top score, which tie block straddles the allowed number
  of false positives, and what a tie-order-dependent ROC would have reported;
* the stratified bootstrap of ``tpr@fpr`` draws per-class counts over the
  distinct scores (multinomial, walked block by block with conditional
  binomials), so 1,000 replicates cost a fraction of one ``roc_curve`` call;
* the order-statistic interval of ``tpr@fpr`` places the threshold among the
  negatives with exact binomial ranks and bounds the positives above it with
  Clopper-Pearson limits: it holds however few negatives set the threshold,
  where the bootstrap (which cannot move the threshold past the negatives it
  has) does not.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import auc, roc_curve


# --------------------------------------------------------------------------- the curve
@dataclass
class Curve:
    """The ROC at every distinct score (descending), with the per-block class counts."""

    fpr: np.ndarray  # (J + 1,), starts at 0
    tpr: np.ndarray
    thresholds: np.ndarray  # thresholds[0] = inf
    fps: np.ndarray  # cumulative negatives at or above each threshold
    tps: np.ndarray
    n_pos: int
    n_neg: int

    @property
    def n_distinct(self) -> int:
        return len(self.thresholds) - 1

    def allowed(self, fpr_target: float) -> int:
        return allowed_false_positives(fpr_target, self.n_neg)


def curve(labels, scores) -> Curve:
    """``roc_curve(labels, scores, drop_intermediate=False)`` with its counts.

    Raises ValueError for NaN/inf scores or a single class (the ROC is undefined).
    """
    y = np.asarray(labels)
    s = np.asarray(scores)
    if s.dtype.kind == "f" and not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    n_pos = int((y == 1).sum())
    n_neg = int(len(y) - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"the ROC needs both classes (positives {n_pos}, negatives {n_neg})")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    fps = np.rint(fpr * n_neg).astype(np.int64)
    tps = np.rint(tpr * n_pos).astype(np.int64)
    return Curve(fpr, tpr, thr, fps, tps, n_pos, n_neg)


def allowed_false_positives(fpr_target: float, n_neg: int) -> int:
    """floor(fpr_target x n_neg), exactly as ``k / n_neg <= fpr_target`` decides in floating point."""
    k = int(math.floor(fpr_target * n_neg))
    while (k + 1) / n_neg <= fpr_target:
        k += 1
    while k > 0 and k / n_neg > fpr_target:
        k -= 1
    return k


def tpr_at_fpr(fpr, tpr, target: float) -> float:
    """Largest TPR among operating points with FPR <= target (0 if none)."""
    fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
    ok = fpr <= target
    return float(np.max(tpr[ok])) if ok.any() else 0.0


def fpr_at_tpr(fpr, tpr, target: float) -> float:
    """Smallest FPR among operating points with TPR >= target (NaN if none)."""
    fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
    ok = tpr >= target
    return float(np.min(fpr[ok])) if ok.any() else float("nan")


def partial_auc(c: Curve, max_fpr: float) -> float:
    """``roc_auc_score(y, s, max_fpr=max_fpr)`` on the curve already computed.

    scikit-learn's own steps (interpolate the curve at max_fpr, area, McClish
    standardisation); the tests check equality with ``roc_auc_score``.
    """
    stop = int(np.searchsorted(c.fpr, max_fpr, "right"))
    if stop >= len(c.fpr):
        return float(roc_auc_score_from(c))
    x_interp = [c.fpr[stop - 1], c.fpr[stop]]
    y_interp = [c.tpr[stop - 1], c.tpr[stop]]
    tpr = np.append(c.tpr[:stop], np.interp(max_fpr, x_interp, y_interp))
    fpr = np.append(c.fpr[:stop], max_fpr)
    area = auc(fpr, tpr)
    min_area, max_area = 0.5 * max_fpr**2, max_fpr
    return float(0.5 * (1 + (area - min_area) / (max_area - min_area)))


def roc_auc_score_from(c: Curve) -> float:
    return float(auc(c.fpr, c.tpr))


def metric(c: Curve, key: tuple[str, str, float]) -> float:
    """A parsed metric key (``("tpr", "fpr", 1e-4)``) on the curve."""
    rate, _, value = key
    return tpr_at_fpr(c.fpr, c.tpr, value) if rate == "tpr" else fpr_at_tpr(c.fpr, c.tpr, value)


def rate_str(x: float) -> str:
    """A rate as metric keys print it: 1e-4, 0.001, 0.5."""
    mant, _, exp = f"{x:e}".partition("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}" if int(exp) <= -4 else f"{x:g}"


def metric_name(key: tuple[str, str, float]) -> str:
    rate, at, value = key
    return f"{rate}@{at}{rate_str(value)}"


# --------------------------------------------------------------------------- ties
def operating_point(c: Curve, fpr_target: float) -> dict:
    """The point that sets ``tpr@fpr`` and the tie block just past it.

    ``tpr`` is what scikit-learn's merged curve gives; ``tpr_tie_order_max`` is what
    an ROC that does not merge ties reports when the tied positives happen to come
    first (the block's positives counted before its negatives); the gap between them
    is the part of the metric decided by tie order, not by the model.
    """
    a = c.allowed(fpr_target)
    k = int(np.searchsorted(c.fps, a, "right") - 1)  # last point with fps <= allowed
    nxt = k + 1 if k + 1 < len(c.fps) else None
    block_neg = int(c.fps[nxt] - c.fps[k]) if nxt is not None else 0
    block_pos = int(c.tps[nxt] - c.tps[k]) if nxt is not None else 0
    return {
        "fpr_target": fpr_target, "allowed_negatives": a, "tpr": float(c.tpr[k]),
        "threshold": float(c.thresholds[k]) if k > 0 else float("inf"),
        "negatives_above": int(c.fps[k]),
        "next_score": float(c.thresholds[nxt]) if nxt is not None else float("nan"),
        "next_block_negatives": block_neg, "next_block_positives": block_pos,
        "tpr_tie_order_max": float(c.tps[nxt] / c.n_pos) if nxt is not None and c.fps[k] <= a else float(c.tpr[k]),
    }


def tie_audit(c: Curve, fpr_targets: Sequence[float]) -> dict:
    """Distinct scores, the top tie, and each target's operating point (see :func:`operating_point`)."""
    out = {
        "n": c.n_pos + c.n_neg, "n_pos": c.n_pos, "n_neg": c.n_neg, "distinct_scores": c.n_distinct,
        "top_score": float(c.thresholds[1]), "positives_at_top": int(c.tps[1]), "negatives_at_top": int(c.fps[1]),
    }
    for t in fpr_targets:
        op = operating_point(c, t)
        name = rate_str(t)
        out[f"allowed@fpr{name}"] = op["allowed_negatives"]
        out[f"tpr@fpr{name}"] = op["tpr"]
        out[f"tpr_tie_order_max@fpr{name}"] = op["tpr_tie_order_max"]
        out[f"tie_gap@fpr{name}"] = op["tpr_tie_order_max"] - op["tpr"]
        out[f"tie_blocks_cliff@fpr{name}"] = bool(c.fps[1] > op["allowed_negatives"])
    return out


# --------------------------------------------------------------------------- dtypes
FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64")


@functools.lru_cache(maxsize=8)
def saturation_logit(dtype: str) -> float:
    """Smallest logit, representable in ``dtype``, whose torch sigmoid in ``dtype`` is exactly 1.0.

    float32: 16.6355...; bfloat16: 6.25; float16: 8.3203. Found by bisection with torch.
    """
    import torch

    dt = getattr(torch, dtype)

    def saturated(x: float) -> bool:
        return bool(torch.sigmoid(torch.tensor(x, dtype=torch.float64).to(dt)) == 1.0)

    lo, hi = 0.0, 1000.0
    if not saturated(hi):
        return float("inf")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if saturated(mid):
            hi = mid
        else:
            lo = mid
    return float(torch.tensor(hi, dtype=torch.float64).to(dt).double())


def largest_below_one(dtype: str) -> float:
    """The largest value below 1.0 that ``dtype`` can hold (the score level just under saturation)."""
    import torch

    return float(1.0 - torch.finfo(getattr(torch, dtype)).eps / 2)


def infer_score_dtype(scores) -> str:
    """The narrowest float dtype whose values the scores are (bfloat16, float16, float32, float64).

    bfloat16/float16 are judged on the scores rounded to float32, so a table written as
    text (float32 printed in shortest form) still shows the dtype the sigmoid ran in.
    """
    import torch

    s = np.asarray(scores, dtype=np.float64)
    if not len(s):
        return "float64"
    s32 = s.astype(np.float32)
    t = torch.from_numpy(s32)
    for name in ("bfloat16", "float16"):
        if torch.equal(t.to(getattr(torch, name)).float(), t):
            return name
    return "float32" if np.array_equal(s32.astype(np.float64), s) else "float64"


def sigmoid_in(logits, dtype: str) -> np.ndarray:
    """torch.sigmoid computed in ``dtype`` (as under autocast), returned as float64."""
    import torch

    t = torch.from_numpy(np.array(logits, dtype=np.float64)).to(getattr(torch, dtype))
    return torch.sigmoid(t).double().numpy()


# --------------------------------------------------------------------------- resolution and intervals
def bootstrap_tpr_at_fpr(c: Curve, fpr_target: float, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> dict:
    """Stratified bootstrap (positives and negatives resampled separately) of ``tpr@fpr``.

    A resample's counts over the distinct scores are multinomial per class. Only the
    first distinct-score block where the resampled negatives exceed the allowed count
    matters: it is found by walking the negative-holding blocks with conditional
    binomials (after one binomial jump over the blocks that cannot matter). The
    resampled positives above that block are then one binomial draw. Exact for the
    stratified bootstrap; cost independent of the number of rows.
    """
    rng = np.random.default_rng(seed)
    a = c.allowed(fpr_target)
    neg = np.diff(c.fps)  # negatives per block (blocks 1..J)
    blocks = np.flatnonzero(neg > 0)  # block indices (0-based into neg) holding negatives
    cum_before = np.concatenate([[0], np.cumsum(neg[blocks])[:-1]])  # original negatives above each such block
    # jump: blocks whose original cumulative count is far below the allowance are summed in one draw
    margin = 8.0 * math.sqrt(a + 1) + 10
    start = int(np.searchsorted(cum_before, max(a - margin, 0), "right") - 1)
    start = max(start, 0)
    n = np.full(n_boot, c.n_neg, dtype=np.int64)  # negatives still to place
    mass = float(c.n_neg)  # original negatives still to place (probability mass x n_neg)
    cum = np.zeros(n_boot, dtype=np.int64)
    if start > 0:
        m = float(cum_before[start])
        cum = rng.binomial(n, m / mass)
        n, mass = n - cum, mass - m
        if (cum > a).any():  # astronomically rare: redo from the first block
            start, n, mass, cum = 0, np.full(n_boot, c.n_neg, dtype=np.int64), float(c.n_neg), np.zeros(n_boot, np.int64)
    crossing = np.full(n_boot, -1, dtype=np.int64)
    for j in blocks[start:]:
        open_ = crossing < 0
        if not open_.any():
            break
        p = min(neg[j] / mass, 1.0) if mass > 0 else 1.0
        draw = rng.binomial(n, p)
        cum += draw
        n -= draw
        mass -= neg[j]
        crossing[open_ & (cum > a)] = j
    # positives above the crossing block: blocks 1..crossing (neg index j is curve block j + 1)
    pos_above = np.where(crossing >= 0, c.tps[np.maximum(crossing, 0)], c.n_pos)
    tpr = rng.binomial(c.n_pos, pos_above / c.n_pos) / c.n_pos
    lo, hi = np.quantile(tpr, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"fpr_target": fpr_target, "tpr": tpr_at_fpr(c.fpr, c.tpr, fpr_target), "low": float(lo),
            "high": float(hi), "allowed_negatives": a, "n_boot": n_boot, "replicates": tpr}


@functools.lru_cache(maxsize=4096)
def threshold_ranks(n_neg: int, fpr_target: float, level: float = 0.95) -> tuple[int, int]:
    """Where the population threshold of ``fpr_target`` can sit among the ``n_neg`` sorted negatives.

    ``K``, the number of negatives above the population threshold ``q`` (the score a negative
    exceeds with probability ``fpr_target``), is Binomial(n_neg, fpr_target) whatever the score
    distribution. Returns ``(k_lo, k_hi)`` with P(K < k_lo) <= a/4 and P(K > k_hi) <= a/4,
    ``a = 1 - level``: with probability >= 1 - a/2, ``q`` lies between the (k_hi + 1)-th and the
    k_lo-th highest negative.
    """
    from scipy.stats import binom

    a4 = (1 - level) / 4
    k_lo = int(binom.ppf(a4, n_neg, fpr_target))
    while binom.cdf(k_lo, n_neg, fpr_target) <= a4:  # ppf lands on the boundary in floating point
        k_lo += 1
    while k_lo > 0 and binom.cdf(k_lo - 1, n_neg, fpr_target) > a4:
        k_lo -= 1
    k_hi = int(binom.ppf(1 - a4, n_neg, fpr_target))
    while k_hi > 0 and binom.sf(k_hi - 1, n_neg, fpr_target) <= a4:
        k_hi -= 1
    while binom.sf(k_hi, n_neg, fpr_target) > a4:
        k_hi += 1
    return k_lo, min(k_hi, n_neg)


def _tps_within(c: Curve, k: int) -> int:
    """True positives at the last operating point with at most ``k`` negatives above the threshold."""
    return int(c.tps[int(np.searchsorted(c.fps, k, "right") - 1)]) if k >= 0 else 0


def clopper_pearson(k: int, n: int, alpha_each: float) -> tuple[float, float]:
    """One-sided exact binomial bounds, each with error ``alpha_each``."""
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha_each, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha_each, k + 1, n - k))
    return lo, hi


def order_statistic_interval(c: Curve, fpr_target: float, level: float = 0.95) -> dict:
    """A distribution-free interval for tpr@fpr that holds however few negatives set the threshold.

    The population value is ``TPR(q)``, the share of positives above the threshold ``q`` that a
    negative exceeds with probability ``fpr_target``. :func:`threshold_ranks` places ``q`` between
    two negatives' order statistics (error a/2, exact); the positives above those two thresholds
    are binomial given the negatives, bounded by one-sided Clopper-Pearson limits (a/4 each). So
    ``low = CP_low(tpr with at most k_lo - 1 negatives above)`` and ``high = CP_high(tpr with at
    most k_hi negatives above)`` cover ``TPR(q)`` with probability >= ``level`` for any continuous
    scores; tied scores only widen it (a tie block straddling a rank is left out of both counts).
    Unlike the bootstrap, it can place the threshold beyond the negatives that were observed.
    """
    k_lo, k_hi = threshold_ranks(c.n_neg, fpr_target, level)
    a4 = (1 - level) / 4
    tp_lo, tp_hi = _tps_within(c, k_lo - 1), _tps_within(c, k_hi)
    low = clopper_pearson(tp_lo, c.n_pos, a4)[0]
    high = clopper_pearson(tp_hi, c.n_pos, a4)[1]
    return {"fpr_target": fpr_target, "tpr": tpr_at_fpr(c.fpr, c.tpr, fpr_target), "low": low, "high": high,
            "allowed_negatives": c.allowed(fpr_target), "rank_low": k_lo, "rank_high": k_hi,
            "threshold_part": (tp_hi - tp_lo) / c.n_pos, "positives_part": (high - low) - (tp_hi - tp_lo) / c.n_pos}


def negatives_for_width(c: Curve, fpr_target: float, width: float, level: float = 0.95,
                        max_factor: float = 1e4) -> int | None:
    """About how many negatives make :func:`order_statistic_interval` at most ``width`` wide.

    A projection from this curve: the threshold part of the interval scales with the FPR span
    between the two ranks of :func:`threshold_ranks` (the local slope of the ROC kept), the
    positives' part stays as it is. None when the positives alone make it wider than ``width``.
    """
    iv = order_statistic_interval(c, fpr_target, level)
    if iv["positives_part"] >= width:
        return None
    if iv["high"] - iv["low"] <= width:
        return c.n_neg

    def span(n: int) -> float:
        k_lo, k_hi = threshold_ranks(n, fpr_target, level)
        return (k_hi - k_lo + 1) / n

    base = span(c.n_neg)

    def fits(n: int) -> bool:
        return iv["threshold_part"] * span(n) / base + iv["positives_part"] <= width

    lo, hi = c.n_neg, 2 * c.n_neg  # bracket by doubling, then bisect (the span shrinks about as 1/sqrt(n))
    while not fits(hi):
        if hi > c.n_neg * max_factor:
            return None
        lo, hi = hi, 2 * hi
    while hi - lo > max(lo // 200, 1):
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    digits = max(len(str(hi)) - 2, 0)  # two significant figures, rounded up
    return int(math.ceil(hi / 10**digits) * 10**digits)
    return None


def resolution(c: Curve, fpr_targets: Sequence[float], tpr_targets: Sequence[float]) -> pd.DataFrame:
    """How many negatives define each operating point (fewer than ~10: the metric is a handful of samples)."""
    rows = []
    for t in fpr_targets:
        a = c.allowed(t)
        rows.append({"metric": f"tpr@fpr{rate_str(t)}", "target": t, "negatives_defining": a,
                     "smallest_step": 1 / c.n_neg, "value": tpr_at_fpr(c.fpr, c.tpr, t)})
    for t in tpr_targets:
        v = fpr_at_tpr(c.fpr, c.tpr, t)
        rows.append({"metric": f"fpr@tpr{rate_str(t)}", "target": t,
                     "negatives_defining": int(round(v * c.n_neg)) if np.isfinite(v) else -1,
                     "smallest_step": 1 / c.n_neg, "value": v})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- auditing a user's ROC function
def adversarial_cases(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(scores, labels) inputs where hand-written ROC code usually goes wrong."""
    rng = np.random.default_rng(seed)
    n = 2000
    y = np.r_[np.ones(n // 2, int), np.zeros(n // 2, int)]
    s = np.r_[rng.normal(2, 1, n // 2), rng.normal(0, 1, n // 2)]
    tied = s.copy()
    tied[: n // 4] = tied[n // 2: n // 2 + n // 4] = 9.0  # a quarter of each class tied at the top
    pos_first = np.argsort(-y, kind="stable")
    neg_first = np.argsort(y, kind="stable")
    one_pos = np.zeros(n, int)
    one_pos[rng.integers(n)] = 1
    with_nan = s.copy()
    with_nan[[3, n - 3]] = np.nan
    return {
        "all scores tied": (np.full(n, 0.5), y),
        "ties across classes, positives first": (tied[pos_first], y[pos_first]),
        "ties across classes, negatives first": (tied[neg_first], y[neg_first]),
        "one class only": (s, np.ones(n, int)),
        "NaN scores": (with_nan, y),
        "a single positive": (rng.normal(size=n), one_pos),
        "no ties (continuous scores)": (s, y),
    }


def _reference(scores, labels):
    """scikit-learn's answer, or the reason it refuses."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return roc_curve(labels, scores, drop_intermediate=False), None
    except Exception as exc:  # NaN input, one class (UndefinedMetricWarning)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"


def compare_roc_function(fn: Callable, scores, labels, fpr_targets: Sequence[float],
                         tpr_targets: Sequence[float], tolerance: float = 1e-9) -> dict:
    """One case: the user's (fpr, tpr, thresholds) against scikit-learn's, through the step metrics.

    ``agrees`` is True when both give the same metrics (to ``tolerance``) and AUC, or when
    scikit-learn refuses the input and the function also refuses it or returns no finite curve.
    """
    ref, ref_error = _reference(scores, labels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = fn(np.asarray(scores), np.asarray(labels))
        fpr, tpr = np.asarray(got[0], float), np.asarray(got[1], float)
        error = None
    except Exception as exc:
        fpr = tpr = None
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    row = {"sklearn": ref_error or "curve", "yours": error or "curve", "max_difference": np.nan, "agrees": False,
           "where": ""}
    if ref is None:
        finite = fpr is not None and np.isfinite(fpr).all() and np.isfinite(tpr).all() and len(fpr) > 1
        row["agrees"] = not finite
        row["where"] = (f"no finite curve on either side (scikit-learn: {ref_error.split(':')[0]})" if not finite
                        else f"returns a finite curve where scikit-learn raises {ref_error.split(':')[0]}")
        return row
    if fpr is None:
        row["where"] = f"raises {error}"
        return row
    diffs = {}
    for t in fpr_targets:
        diffs[f"tpr@fpr{rate_str(t)}"] = (tpr_at_fpr(fpr, tpr, t), tpr_at_fpr(ref[0], ref[1], t))
    for t in tpr_targets:
        diffs[f"fpr@tpr{rate_str(t)}"] = (fpr_at_tpr(fpr, tpr, t), fpr_at_tpr(ref[0], ref[1], t))
    order = np.lexsort((tpr, fpr))
    diffs["auc"] = (float(np.trapezoid(tpr[order], fpr[order])) if np.isfinite(fpr).all() else np.nan,
                    float(auc(ref[0], ref[1])))
    gaps = {k: abs(a - b) if np.isfinite(a) and np.isfinite(b) else (0.0 if np.isnan(a) and np.isnan(b) else np.inf)
            for k, (a, b) in diffs.items()}
    worst = max(gaps, key=gaps.get)
    row["max_difference"] = gaps[worst]
    row["agrees"] = gaps[worst] <= tolerance
    row["where"] = "" if row["agrees"] else f"{worst}: yours {diffs[worst][0]:.6g} vs scikit-learn {diffs[worst][1]:.6g}"
    row["values"] = diffs
    return row


def audit_roc_function(fn: Callable, fpr_targets: Sequence[float], tpr_targets: Sequence[float],
                       seed: int = 0) -> pd.DataFrame:
    """The user's ROC function against scikit-learn on :func:`adversarial_cases`."""
    rows = []
    for name, (s, y) in adversarial_cases(seed).items():
        r = compare_roc_function(fn, s, y, fpr_targets, tpr_targets)
        rows.append({"case": name, **{k: v for k, v in r.items() if k != "values"}})
    return pd.DataFrame(rows)
