"""helpers.roc_collapse.low_fpr against scikit-learn, torchmetrics, torch and brute force, with ties and degenerate inputs."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from helpers.roc_collapse import low_fpr as lf


def brute(labels, scores, fpr_target=None, tpr_target=None):
    """Every threshold tried: the step functions by definition."""
    y, s = np.asarray(labels), np.asarray(scores, float)
    t = np.unique(s)[:, None]  # one row per threshold, the rows' scores across
    pts = np.vstack([[0.0, 0.0], np.c_[(s[y == 0] >= t).mean(axis=1), (s[y == 1] >= t).mean(axis=1)]])
    if fpr_target is not None:
        return pts[pts[:, 0] <= fpr_target, 1].max()
    ok = pts[:, 1] >= tpr_target
    return pts[ok, 0].min() if ok.any() else np.nan


def run_with_ties(n=3000, seed=0, decimals=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.round(rng.normal(1.5 * y, 1.0), decimals)  # rounding makes ties across classes
    return y, s


@pytest.mark.xdist_group("torchmetrics")  # see conftest.TORCHMETRICS
@pytest.mark.parametrize("decimals", [0, 1, 6])
def test_step_metrics_match_brute_force_and_torchmetrics(decimals):
    from torchmetrics.functional.classification import (
        binary_sensitivity_at_specificity,
        binary_specificity_at_sensitivity,
    )

    y, s = run_with_ties(decimals=decimals)
    c = lf.curve(y, s)
    for t in (0.003, 0.01, 0.1, 0.33):
        got = lf.tpr_at_fpr(c.fpr, c.tpr, t)
        assert got == pytest.approx(brute(y, s, fpr_target=t), abs=1e-12)
        tm = binary_sensitivity_at_specificity(torch.tensor(s), torch.tensor(y), min_specificity=1 - t)[0]
        assert got == pytest.approx(float(tm), abs=1e-6)
    for t in (0.5, 0.85, 0.99):
        got = lf.fpr_at_tpr(c.fpr, c.tpr, t)
        assert got == pytest.approx(brute(y, s, tpr_target=t), abs=1e-12)
        tm = binary_specificity_at_sensitivity(torch.tensor(s), torch.tensor(y), min_sensitivity=t)[0]
        assert got == pytest.approx(1 - float(tm), abs=1e-6)


@pytest.mark.parametrize("max_fpr", [1e-3, 0.01, 0.2, 0.5])
@pytest.mark.parametrize("decimals", [0, 2, 8])
def test_partial_auc_is_roc_auc_score(max_fpr, decimals):
    y, s = run_with_ties(decimals=decimals, seed=3)
    assert lf.partial_auc(lf.curve(y, s), max_fpr) == pytest.approx(roc_auc_score(y, s, max_fpr=max_fpr), abs=1e-12)


def test_curve_counts_and_degenerate_inputs():
    y, s = run_with_ties()
    c = lf.curve(y, s)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_array_equal(c.fpr, fpr)
    assert c.n_distinct == len(np.unique(s)) and c.fps[-1] == (y == 0).sum() and c.tps[-1] == y.sum()
    with pytest.raises(ValueError, match="both classes"):
        lf.curve(np.ones(5), np.arange(5.0))
    with pytest.raises(ValueError, match="NaN"):
        lf.curve([0, 1], [np.nan, 1.0])
    # a single positive: still a curve, and tpr is 0 or 1
    one = np.zeros(100, int)
    one[7] = 1
    c1 = lf.curve(one, np.arange(100.0))
    assert lf.tpr_at_fpr(c1.fpr, c1.tpr, 0.5) == (brute(one, np.arange(100.0), fpr_target=0.5))
    # all tied: one block, nothing reachable at low fpr, fpr@tpr is 1
    ct = lf.curve(y, np.zeros(len(y)))
    assert ct.n_distinct == 1 and lf.tpr_at_fpr(ct.fpr, ct.tpr, 0.1) == 0.0 and lf.fpr_at_tpr(ct.fpr, ct.tpr, 0.5) == 1.0


@pytest.mark.parametrize("target, n_neg, expected", [(1e-4, 65090, 6), (1e-3, 65090, 65), (0.1, 30, 3), (0.3, 10, 3),
                                                     (0.5, 1, 0), (1e-4, 5000, 0)])
def test_allowed_false_positives(target, n_neg, expected):
    assert lf.allowed_false_positives(target, n_neg) == expected
    assert (expected / n_neg <= target) and ((expected + 1) / n_neg > target)


def test_tie_audit_top_block_and_tie_order_bounds():
    # 10 negatives and 80 positives share the top score; 6 negatives are allowed at fpr 1e-4 of 65,090
    n_neg, n_pos = 65090, 100
    s = np.r_[np.ones(80), np.linspace(0.1, 0.9, 20), np.ones(10), np.linspace(0.0, 0.5, n_neg - 10).round(2)]
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    c = lf.curve(y, s)
    a = lf.tie_audit(c, [1e-4, 1e-3])
    assert a["negatives_at_top"] == 10 and a["positives_at_top"] == 80 and a["top_score"] == 1.0
    assert a["allowed@fpr1e-4"] == 6 and a["tie_blocks_cliff@fpr1e-4"]
    assert a["tpr@fpr1e-4"] == 0.0 == brute(y, s, fpr_target=1e-4)
    assert a["tpr_tie_order_max@fpr1e-4"] == pytest.approx(0.8)  # positives first in the tie
    assert not a["tie_blocks_cliff@fpr0.001"] and a["tpr@fpr0.001"] == pytest.approx(brute(y, s, fpr_target=1e-3))
    assert a["tie_gap@fpr0.001"] == pytest.approx(0.0)


def test_tie_order_max_is_what_a_positives_first_cumsum_reports():
    y, s = run_with_ties(decimals=0, seed=5)
    c = lf.curve(y, s)
    order = np.lexsort((-y, -s))  # descending score, positives first within ties
    tps, fps = np.cumsum(y[order]), np.cumsum(1 - y[order])
    for t in (0.01, 0.05, 0.2):
        naive = tps[fps / fps[-1] <= t].max(initial=0) / tps[-1]
        assert lf.operating_point(c, t)["tpr_tie_order_max"] == pytest.approx(naive)


@pytest.mark.parametrize("dtype, expected", [("float32", 16.6355324), ("bfloat16", 6.25), ("float16", 8.3203125)])
def test_saturation_logit_is_where_torch_sigmoid_reaches_one(dtype, expected):
    x = lf.saturation_logit(dtype)
    assert x == pytest.approx(expected, abs=1e-6)
    dt = getattr(torch, dtype)
    t = torch.tensor(x, dtype=dt)
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[dt]
    below = (t.view(bits) - 1).view(dt)  # the representable value just below
    assert torch.sigmoid(t) == 1.0 and torch.sigmoid(below) < 1.0
    assert lf.largest_below_one(dtype) == float(torch.tensor(1.0, dtype=dt) - torch.finfo(dt).eps / 2)


def test_infer_score_dtype_and_sigmoid_in():
    logits = np.random.default_rng(0).normal(0, 5, 1000)
    assert lf.infer_score_dtype(lf.sigmoid_in(logits, "bfloat16")) == "bfloat16"
    assert lf.infer_score_dtype(lf.sigmoid_in(logits, "float32")) == "float32"
    assert lf.infer_score_dtype(1 / (1 + np.exp(-logits))) == "float64"
    s16 = lf.sigmoid_in(logits, "bfloat16")
    assert (s16[logits >= 6.25] == 1.0).all() and (s16[logits < 6.2] < 1.0).all()


def slow_bootstrap(y, s, target, n_boot, seed):
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    out = []
    for _ in range(n_boot):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        fpr, tpr, _ = roc_curve(y[idx], s[idx], drop_intermediate=False)
        out.append(lf.tpr_at_fpr(fpr, tpr, target))
    return np.array(out)


@pytest.mark.parametrize("decimals, target", [(1, 0.01), (6, 0.002), (6, 0.3)])
def test_bootstrap_matches_resampling_rows(decimals, target):
    y, s = run_with_ties(n=4000, decimals=decimals, seed=11)
    fast = lf.bootstrap_tpr_at_fpr(lf.curve(y, s), target, n_boot=3000, seed=1)["replicates"]
    slow = slow_bootstrap(y, s, target, 600, seed=2)
    from scipy.stats import ks_2samp

    assert abs(fast.mean() - slow.mean()) < 4 * slow.std() / np.sqrt(600) + 1e-3
    assert fast.std() == pytest.approx(slow.std(), rel=0.15)
    assert ks_2samp(fast, slow).pvalue > 1e-3


def test_bootstrap_is_degenerate_when_the_top_tie_blocks_everything_and_wide_with_few_negatives():
    n_neg = 65090
    y = np.r_[np.ones(1000, int), np.zeros(n_neg, int)]
    s = np.r_[np.ones(900), np.full(100, 0.5), np.ones(50), np.zeros(n_neg - 50)]
    b = lf.bootstrap_tpr_at_fpr(lf.curve(y, s), 1e-4, n_boot=500)
    assert b["tpr"] == 0.0 and b["high"] == 0.0  # 50 tied negatives > 6 allowed in every resample
    rng = np.random.default_rng(0)
    s2 = np.r_[rng.normal(4, 1, 1000), rng.normal(0, 1, n_neg)]
    b2 = lf.bootstrap_tpr_at_fpr(lf.curve(y, s2), 1e-4, n_boot=1000, seed=0)
    b3 = lf.bootstrap_tpr_at_fpr(lf.curve(y, s2), 1e-2, n_boot=1000, seed=0)
    assert b2["low"] <= b2["tpr"] <= b2["high"] and (b2["high"] - b2["low"]) > 2 * (b3["high"] - b3["low"])


def test_bootstrap_jump_path_on_many_negatives():
    rng = np.random.default_rng(4)
    n = 200_000
    y = (rng.random(n) < 0.5).astype(int)
    s = rng.normal(2 * y, 1)
    b = lf.bootstrap_tpr_at_fpr(lf.curve(y, s), 0.2, n_boot=400, seed=0)
    # normal approximation: the tpr at a fixed threshold varies little; the interval is narrow and covers the estimate
    assert b["low"] < b["tpr"] < b["high"] and b["high"] - b["low"] < 0.02


def test_resolution_counts_negatives():
    y, s = run_with_ties(decimals=6)
    r = lf.resolution(lf.curve(y, s), [0.01], [0.5]).set_index("metric")
    n_neg = int((y == 0).sum())
    assert r.loc["tpr@fpr0.01", "negatives_defining"] == int(0.01 * n_neg)
    assert r.loc["fpr@tpr0.5", "negatives_defining"] == round(brute(y, s, tpr_target=0.5) * n_neg)


# ----------------------------------------------------------------------------- the roc_function audit
def sklearn_roc(scores, labels):
    return roc_curve(labels, scores, drop_intermediate=False)


def cumsum_roc(scores, labels):
    """A hand-written ROC that does not merge ties (the kind under audit)."""
    order = np.argsort(-scores, kind="stable")
    y = labels[order]
    tps, fps = np.cumsum(y), np.cumsum(1 - y)
    return fps / max(fps[-1], 1), tps / max(tps[-1], 1), scores[order]


def test_audit_passes_scikit_learn_itself():
    table = lf.audit_roc_function(sklearn_roc, [1e-3, 0.01], [0.5, 0.85])
    assert table["agrees"].all(), table


def test_audit_finds_the_tie_order_bug_and_silent_nan():
    table = lf.audit_roc_function(cumsum_roc, [1e-3, 0.01], [0.5, 0.85]).set_index("case")
    assert not table.loc["ties across classes, positives first", "agrees"]
    assert not table.loc["all scores tied", "agrees"]  # no merged point: area and fpr@tpr differ
    assert not table.loc["NaN scores", "agrees"] and "finite curve" in table.loc["NaN scores", "where"]
    assert table.loc["no ties (continuous scores)", "agrees"]
    assert table.loc["ties across classes, negatives first", "where"] == "" or "auc" in table.loc[
        "ties across classes, negatives first", "where"]


def test_audit_reports_a_raising_function():
    def broken(scores, labels):
        raise RuntimeError("boom")

    table = lf.audit_roc_function(broken, [0.01], [0.5])
    assert not table["agrees"].iloc[-1] and "RuntimeError: boom" in table["where"].iloc[-1]
    # one class: scikit-learn refuses (UndefinedMetricWarning); refusing agrees
    assert table.set_index("case").loc["one class only", "agrees"]


# ----------------------------------------------------------------------------- an interval that holds with few negatives
def test_threshold_ranks_are_the_binomial_tails():
    from scipy.stats import binom

    for n, t in [(65090, 1e-4), (65090, 1e-3), (350, 0.01), (25000, 1e-4), (40, 0.5)]:
        k_lo, k_hi = lf.threshold_ranks(n, t)
        assert binom.cdf(k_lo - 1, n, t) <= 0.0125 < binom.cdf(k_lo, n, t)  # P(K < k_lo) <= a/4, the largest such
        assert binom.sf(k_hi, n, t) <= 0.0125 < binom.sf(k_hi - 1, n, t)  # P(K > k_hi) <= a/4, the smallest such
    assert lf.threshold_ranks(65090, 1e-4) == (2, 13)  # the sample's 6 allowed negatives: the threshold's rank 2..13


def coverage(n_neg, n_pos, t, tpr, reps, seed=0, n_boot=400):
    """Share of simulated evaluations whose interval covers the population tpr at the fpr-t threshold
    (Gaussian scores, so the truth is known): (order-statistic interval, stratified bootstrap)."""
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    q = norm.isf(t)
    mu = q + norm.ppf(tpr)
    truth = norm.sf(q - mu)
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    hit_os = hit_boot = 0
    for r in range(reps):
        c = lf.curve(y, np.r_[rng.normal(0, 1, n_neg), rng.normal(mu, 1, n_pos)])
        iv = lf.order_statistic_interval(c, t)
        b = lf.bootstrap_tpr_at_fpr(c, t, n_boot=n_boot, seed=r)
        hit_os += iv["low"] <= truth <= iv["high"]
        hit_boot += b["low"] <= truth <= b["high"]
    return hit_os / reps, hit_boot / reps


def test_the_order_statistic_interval_holds_where_a_handful_of_negatives_set_the_threshold():
    """Where 3 negatives set the threshold (350 negatives, fpr 0.01), the bootstrap's 95% interval covers the
    truth in about 90% of evaluations (it cannot place the threshold beyond the negatives it has); the
    order-statistic interval covers it in at least 95%. With 30 negatives the bootstrap is back to ~95%."""
    exact, boot = coverage(350, 2000, 0.01, 0.7, reps=500)
    assert exact >= 0.95 and boot < 0.93, (exact, boot)
    exact, boot = coverage(3000, 2000, 0.01, 0.7, reps=200, seed=1)
    assert exact >= 0.95 and boot >= 0.93, (exact, boot)


def test_order_statistic_interval_with_ties_and_degenerate_inputs():
    y, s = run_with_ties(n=4000, decimals=1, seed=2)
    c = lf.curve(y, s)
    for t in (0.005, 0.05, 0.3):
        iv = lf.order_statistic_interval(c, t)
        assert 0 <= iv["low"] <= iv["high"] <= 1
        assert iv["low"] <= lf.tpr_at_fpr(c.fpr, c.tpr, t) <= iv["high"]
    # the top tie holds more negatives than any rank the threshold can take: tpr is 0, and so is the interval
    n_neg = 65090
    y = np.r_[np.ones(1000, int), np.zeros(n_neg, int)]
    s = np.r_[np.ones(900), np.full(100, 0.5), np.ones(50), np.zeros(n_neg - 50)]
    iv = lf.order_statistic_interval(lf.curve(y, s), 1e-4)
    assert iv["tpr"] == 0.0 and iv["low"] == 0.0 and iv["high"] < 0.01
    # fewer negatives than the rank range: the threshold may be above all of them, so the interval starts at 0
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(2000, int), np.ones(500, int)]
    iv = lf.order_statistic_interval(lf.curve(y, np.r_[rng.normal(0, 1, 2000), rng.normal(3, 1, 500)]), 1e-4)
    assert iv["rank_low"] == 0 and iv["low"] == 0.0


def test_negatives_for_width_is_what_the_interval_reaches_at_that_size():
    """The projection from one evaluation: at the projected number of negatives (same score distributions),
    the interval is about the width asked for; more negatives than that are not needed by much."""
    from scipy.stats import norm

    rng = np.random.default_rng(3)
    t, mu = 1e-3, norm.isf(1e-3) + norm.ppf(0.8)

    def evaluate(n_neg, n_pos=20000):
        y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
        return lf.curve(y, np.r_[rng.normal(0, 1, n_neg), rng.normal(mu, 1, n_pos)])

    c = evaluate(20000)
    width = lf.order_statistic_interval(c, t)["high"] - lf.order_statistic_interval(c, t)["low"]
    need = lf.negatives_for_width(c, t, width / 2)
    assert need > 3 * c.n_neg  # the threshold part shrinks as 1/sqrt(negatives), the positives part does not
    widths = [np.subtract(*[lf.order_statistic_interval(evaluate(need), t)[k] for k in ("high", "low")])
              for _ in range(5)]
    assert np.median(widths) == pytest.approx(width / 2, rel=0.25)
    assert lf.negatives_for_width(c, t, 0.001) is None  # the 20,000 positives alone are wider than that
    assert lf.negatives_for_width(c, t, 0.9) == c.n_neg  # already within
