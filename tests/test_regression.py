"""The sufficient-statistics metrics against scikit-learn, scipy and torchmetrics on the same inputs."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps
from scipy.signal import lfilter
from sklearn.metrics import explained_variance_score, r2_score

from helpers.r2_gap import regression as reg


def metrics(y, p):
    m = reg.metrics_from_sums(reg.suff_stats(y, p).iloc[0].to_dict())
    return {k: float(v) for k, v in m.items()}


@pytest.mark.xdist_group("torchmetrics")  # see conftest.TORCHMETRICS
@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_sklearn_scipy_torchmetrics(seed):
    from torchmetrics.functional import pearson_corrcoef
    from torchmetrics.functional import r2_score as tm_r2

    rng = np.random.default_rng(seed)
    y = rng.normal(3, 2, size=200)
    p = 0.7 * y + rng.normal(0.5, 1, size=200)
    m = metrics(y, p)
    assert m["r2"] == pytest.approx(r2_score(y, p), abs=1e-12)
    assert m["explained_variance"] == pytest.approx(explained_variance_score(y, p), abs=1e-12)
    assert m["pearson_r"] == pytest.approx(sps.pearsonr(y, p).statistic, abs=1e-12)
    assert m["r2"] == pytest.approx(float(tm_r2(torch.tensor(p), torch.tensor(y))), abs=1e-10)
    assert m["pearson_r"] == pytest.approx(float(pearson_corrcoef(torch.tensor(p), torch.tensor(y))), abs=1e-10)


def test_well_conditioned_far_from_zero():
    rng = np.random.default_rng(0)
    y = 1e6 + rng.normal(size=1000)
    p = y + 0.1 * rng.normal(size=1000)
    assert metrics(y, p)["r2"] == pytest.approx(r2_score(y, p), abs=1e-9)


def test_undefined_cases_are_nan_not_hidden():
    # constant target: sklearn's force_finite gives 0.0; the metric is undefined
    y, p = np.ones(5), np.arange(5.0)
    m = metrics(y, p)
    assert np.isnan(m["r2"]) and np.isnan(m["explained_variance"]) and np.isnan(m["pearson_r"])
    assert r2_score(y, p) == 0.0
    m = metrics(np.arange(5.0), np.full(5, 2.0))  # constant predictions: r undefined, R² defined
    assert np.isnan(m["pearson_r"]) and m["r2"] == pytest.approx(r2_score(np.arange(5.0), np.full(5, 2.0)))
    assert np.isnan(metrics([1.0], [1.0])["r2"])  # one row
    y = np.array([0.0, 0.0, 1.0, 1.0])  # ties in target and predictions
    p = np.array([0.0, 1.0, 0.0, 1.0])
    assert metrics(y, p)["r2"] == pytest.approx(r2_score(y, p)) and metrics(y, p)["pearson_r"] == pytest.approx(0.0)


def long_table(seed=0, n=60, channels=3, sessions=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    sid = np.repeat(np.arange(n), channels)
    ch = np.tile(np.arange(channels), n)
    sess = np.asarray(sessions)[sid % len(sessions)]
    y = rng.normal(size=n * channels) * (1 + ch) + ch
    p = y * 0.6 + rng.normal(size=n * channels)
    return pd.DataFrame({"sample_id": sid, "channel": ch, "session": sess, "rank": sid % 4, "batch": sid // 16,
                         "y_true": y, "y_pred": p})


def test_multioutput_conventions_match_sklearn():
    df = long_table()
    run = reg.group_run(df)
    cand = reg.candidate_table(run)
    pooled = cand[cand["correct"] & (cand["metric"] == "r2")].set_index("multioutput")["value"]
    Y = df.pivot(index="sample_id", columns="channel", values="y_true").to_numpy()
    P = df.pivot(index="sample_id", columns="channel", values="y_pred").to_numpy()
    assert pooled["uniform"] == pytest.approx(r2_score(Y, P, multioutput="uniform_average"), abs=1e-12)
    assert pooled["variance_weighted"] == pytest.approx(r2_score(Y, P, multioutput="variance_weighted"), abs=1e-12)
    assert pooled["flat"] == pytest.approx(r2_score(Y.ravel(), P.ravel()), abs=1e-12)
    ev = cand[cand["correct"] & (cand["metric"] == "explained_variance")].set_index("multioutput")["value"]
    assert ev["variance_weighted"] == pytest.approx(explained_variance_score(Y, P, multioutput="variance_weighted"), abs=1e-12)


def test_candidates_match_direct_computations():
    df = long_table()
    cand = reg.candidate_table(reg.group_run(df)).set_index(["scope", "aggregation", "metric", "multioutput"])["value"]
    r0 = df[df["rank"] == 0]
    assert cand["rank 0", "pooled", "r2", "flat"] == pytest.approx(r2_score(r0.y_true, r0.y_pred), abs=1e-12)
    batch_ev = [explained_variance_score(b.y_true, b.y_pred) for _, b in r0.groupby("batch")]
    assert cand["rank 0", "batch mean", "explained_variance", "flat"] == pytest.approx(np.mean(batch_ev), abs=1e-12)
    per_rank_r = [sps.pearsonr(g.y_true, g.y_pred).statistic for _, g in df.groupby("rank")]
    assert cand["mean over ranks", "pooled", "pearson_r", "flat"] == pytest.approx(np.mean(per_rank_r), abs=1e-12)
    assert cand["all", "pooled", "pearson_r_squared", "flat"] == pytest.approx(
        sps.pearsonr(df.y_true, df.y_pred).statistic ** 2, abs=1e-12)


def test_duplicates_are_removed_by_sample_id_and_channel():
    df = long_table()
    padded = pd.concat([df, df[df.sample_id < 2].assign(rank=3)], ignore_index=True)
    run = reg.group_run(padded)
    assert run.n_duplicate_rows == 2 * 3
    cand = reg.candidate_table(run).set_index(["scope", "aggregation", "metric", "multioutput"])["value"]
    assert cand["all", "pooled", "r2", "flat"] == pytest.approx(r2_score(df.y_true, df.y_pred), abs=1e-12)
    assert cand["all incl. duplicates", "pooled", "r2", "flat"] == pytest.approx(
        r2_score(padded.y_true, padded.y_pred), abs=1e-12)


def test_group_run_with_string_keys_and_sparse_int_keys_agree():
    df = long_table()
    a = reg.candidate_table(reg.group_run(df))
    b = reg.candidate_table(reg.group_run(df.assign(batch=df["batch"] * 10**9, session=df["session"].map({"a": 7, "b": 1, "c": 4}))))
    assert np.allclose(a["value"].to_numpy(), b["value"].to_numpy(), atol=1e-12)


def test_variance_decomposition_identity_and_anova():
    df = long_table(channels=1)
    df["y_true"] += df["session"].map({"a": 0.0, "b": 2.0, "c": -1.0})
    run = reg.group_run(df)
    d = reg.variance_decomposition(run, "session")
    assert 1 - d["r2_pooled"] == pytest.approx((1 - d["r2_within"]) * (1 - d["eta2"]), abs=1e-12)
    assert d["r2_pooled"] == pytest.approx(r2_score(df.y_true, df.y_pred), abs=1e-12)
    within = sum(((g.y_true - g.y_true.mean()) ** 2).sum() for _, g in df.groupby("session"))
    assert d["ss_within"] == pytest.approx(within, rel=1e-12)
    f, p = reg.session_anova(df)
    ref = sps.f_oneway(*[g.y_true.to_numpy() for _, g in df.groupby("session")])
    assert f == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    # F from the decomposition, as a cross-check of both
    k, n = 3, len(df)
    assert f == pytest.approx((d["ss_between"] / (k - 1)) / (d["ss_within"] / (n - k)), rel=1e-9)


def session_matrix(seed=0, n=300, channels=3, rho=0.0):
    """One session's targets and predictions, samples x channels, with AR(1) errors along the samples."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, channels))
    eps = lfilter([1.0], [1.0, -rho], rng.normal(size=(n + 200, channels)), axis=0)[200:] * np.sqrt(1 - rho**2)
    return x + eps + np.arange(channels), 0.8 * x + np.arange(channels)


@pytest.mark.parametrize("multioutput, sk", [("flat", None), ("uniform", "uniform_average"),
                                             ("variance_weighted", "variance_weighted")])
def test_block_replicates_are_the_r2_of_the_resampled_rows(multioutput, sk):
    """Each replicate's R² (block counts x block sums) is scikit-learn's R² of the rows its blocks hold."""
    Y, P = session_matrix(rho=0.6)
    n, c = Y.shape
    b = reg.block_sums(Y.ravel(), P.ravel(), np.tile(np.arange(c), n), c, np.arange(0, n * c, c))
    k = b.sums.shape[0]
    assert b.n_units == n and 1 < b.length < n and k == len(np.unique(b.block_of_row))
    assert np.all(np.diff(b.block_of_row) >= 0) and np.all(b.block_of_row[::c] == b.block_of_row[c - 1::c])
    counts = reg.block_counts(k, 30, np.random.default_rng(0))
    assert np.all(counts.sum(1) == k)
    ours = reg.replicate_r2(b.sums, counts, multioutput)
    block_of_sample = b.block_of_row[::c]
    for rep in range(len(counts)):
        idx = np.concatenate([np.repeat(np.flatnonzero(block_of_sample == j), int(m)) for j, m in enumerate(counts[rep])])
        want = r2_score(Y[idx].ravel(), P[idx].ravel()) if sk is None else r2_score(Y[idx], P[idx], multioutput=sk)
        assert ours[rep] == pytest.approx(want, abs=1e-10)


def test_block_bootstrap_agrees_with_scipy_on_the_blocks():
    """The replicates' percentile interval is scipy.stats.bootstrap's over the same blocks (up to Monte
    Carlo noise); the expanded percentile interval widens it by sqrt(K/(K-1)) t_{K-1} / z."""
    Y, P = session_matrix(seed=3, n=600, channels=1, rho=0.8)
    b = reg.block_sums(Y.ravel(), P.ravel(), np.zeros(len(Y), dtype=int), 1, None)
    k = b.sums.shape[0]
    reps = reg.bootstrap_replicates(b.sums, 4000, np.random.default_rng(1))
    ref = sps.bootstrap((np.arange(k),), lambda i, axis=-1: reg.replicate_r2(b.sums, np.stack(
        [np.bincount(row, minlength=k) for row in np.atleast_2d(i)]).astype(float)), vectorized=True,
        n_resamples=4000, method="percentile", random_state=2).confidence_interval
    lo, hi = np.quantile(reps, [0.025, 0.975])
    width = ref.high - ref.low
    assert lo == pytest.approx(ref.low, abs=0.05 * width) and hi == pytest.approx(ref.high, abs=0.05 * width)
    assert lo < r2_score(Y, P) < hi
    # the expanded interval on normal quantiles: exactly +-sqrt(K/(K-1)) t_{K-1, 0.975}
    normal = sps.norm.ppf((np.arange(200_000) + 0.5) / 200_000)
    elo, ehi = reg.interval_from_replicates(normal, 10)
    assert ehi == pytest.approx(np.sqrt(10 / 9) * sps.t.ppf(0.975, 9), rel=1e-3) and elo == pytest.approx(-ehi)
    assert reg.interval_from_replicates(normal, 10**6)[1] == pytest.approx(1.96, abs=1e-3)


def test_dependence_ratio_and_block_length():
    """r = sum |k| gamma_k / sum gamma_k: 2 rho / (1 - rho^2) for an AR(1) series, 0 for independent rows;
    the autocovariances are numpy's at every lag."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000)
    acv = reg._autocovariance(x - x.mean(), 40)
    xc = x - x.mean()
    assert np.allclose(acv, [xc[:len(x) - k] @ xc[k:] / len(x) for k in range(41)], atol=1e-12)
    ar = lfilter([1.0], [1.0, -0.5], rng.normal(size=400_000))
    assert reg.dependence_ratio(ar) == pytest.approx(2 * 0.5 / (1 - 0.25), rel=0.1)
    assert reg.dependence_ratio(rng.normal(size=400_000)) < 0.05
    assert reg.block_length(4.0, 10_000) == pytest.approx(200.0)  # sqrt(r n)
    assert reg.block_length(0.0, 10**6) == 10**6 / reg.MAX_BLOCKS  # never more than MAX_BLOCKS blocks
    assert reg.block_length(1e6, 400) == pytest.approx(3 * 20) and reg.block_length(1e6, 30) == 10  # Politis-White bounds


def test_interval_resamples_samples_in_sample_order():
    """The unit is the sample (all its channels together), ordered by sample_id: shuffling the table or
    padding it with repeated samples does not change the intervals."""
    df = long_table(n=240)
    a = reg.bootstrap_r2(df, n_boot=300, seed=4)
    b = reg.bootstrap_r2(df.sample(frac=1, random_state=0), n_boot=300, seed=4)
    padded = pd.concat([df, df[df.sample_id < 5].assign(rank=3)], ignore_index=True)
    c = reg.bootstrap_r2(padded, n_boot=300, seed=4)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    assert a["n_units"].tolist() == [80, 80, 80] and (a["n_blocks"] <= a["n_units"]).all()
    per = reg.per_group_metrics(reg.group_run(df), "session")
    assert (a["r2_low"] < per["r2"]).all() and (per["r2"] < a["r2_high"]).all()


def _coverage_table(runs: int, n: int, rho: float, seed: int) -> tuple[pd.DataFrame, float]:
    """``runs`` simulated sessions of ``n`` rows, y = x + e and prediction 0.8 x, x ~ N(0, 1) and e a
    stationary AR(1) with variance 1, written as 4 ranks would (sample_id is the time index). The true
    R² of the model is 1 - (0.2^2 + 1) / (1 + 1) = 0.48 (exactly: E[(y - p)^2] / Var(y))."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(runs, n))
    e = lfilter([1.0], [1.0, -rho], rng.normal(size=(runs, n + 300)), axis=1)[:, 300:] * np.sqrt(1 - rho**2)
    t = np.arange(n)
    order = np.concatenate([t[r::4] for r in range(4)])  # DistributedSampler's interleaving
    df = pd.DataFrame({"session": np.repeat(np.arange(runs), n), "sample_id": (np.arange(runs)[:, None] * n + order).ravel(),
                       "y_true": (x + e)[:, order].ravel(), "y_pred": (0.8 * x)[:, order].ravel()})
    return df, 1 - (0.2**2 + 1) / 2


@pytest.mark.parametrize("rho, n", [(0.0, 1000), (0.9, 5000)])
def test_interval_coverage_of_the_true_r2(rho, n):
    """The 95% interval covers the generating model's R² in 92-98% of 400 simulated sessions, for
    independent rows and for rows with AR(1) errors (rho 0.9). Resampling single rows (the bootstrap
    this one replaced) covers it in 94% of these independent sessions but 70% of these AR(1) ones."""
    df, true = _coverage_table(400, n, rho, seed=int(10 * rho))
    iv = reg.bootstrap_r2(df, "session", n_boot=1000, seed=5)
    covered = float(((iv["r2_low"] <= true) & (true <= iv["r2_high"])).mean())
    print(f"rho {rho}: 95% block bootstrap interval covers the true R² {true} in {covered:.1%} of {len(iv)} runs "
          f"(median {iv['n_blocks'].median():.0f} blocks of {iv['block_length'].median():.1f} samples)")
    assert 0.92 <= covered <= 0.98


def test_bootstrap_is_seeded():
    df = long_table()
    a = reg.bootstrap_r2(df, n_boot=200, seed=3)
    b = reg.bootstrap_r2(df, n_boot=200, seed=3)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("row_group_size", [100, 400])  # pieces: whole row groups, or batches of one
def test_streamed_equals_in_memory(tmp_path, row_group_size):
    df = long_table(n=500)
    path = tmp_path / "p.parquet"
    df.drop(columns="sample_id").to_parquet(path, row_group_size=row_group_size)
    streamed = reg.group_run_streamed(path, chunk_rows=123, progress=False)
    whole = reg.group_run(df.drop(columns="sample_id"))
    a, b = reg.candidate_table(streamed), reg.candidate_table(whole)
    assert np.allclose(a["value"], b["value"], atol=1e-10)


@pytest.mark.parametrize("text, tol", [("0.479", 5e-4), ("0.48", 5e-3), ("4.79e-1", 5e-4), ("0.47912345678", 1e-4)])
def test_printed_tolerance(text, tol):
    assert reg.printed_tolerance(text, 1e-4) == pytest.approx(tol)


def test_reconcile_prefers_correct_computation_when_it_fits():
    df = long_table()
    run = reg.group_run(df)
    cand = reg.candidate_table(run)
    true = cand[cand["correct"] & (cand["metric"] == "r2") & (cand["multioutput"] == "flat")]["value"].iloc[0]
    rec = reg.reconcile(run, {"r2": f"{true:.3f}"})
    assert rec["is_correct"].all() and rec["scope"].iloc[0] == "all"
    rank0 = cand[(cand.scope == "rank 0") & (cand.aggregation == "pooled") & (cand.metric == "r2") & (cand.multioutput == "flat")]["value"].iloc[0]
    rec = reg.reconcile(run, {"r2": repr(float(rank0))})
    assert not rec["is_correct"].iloc[0] and rec["scope"].iloc[0] == "rank 0"
    rec = reg.reconcile(run, {"r2": "0.99999"})
    assert not rec["explained"].iloc[0]


@pytest.mark.parametrize("multioutput, sk", [("flat", None), ("uniform", "uniform_average"),
                                             ("variance_weighted", "variance_weighted")])
def test_per_session_metrics_match_sklearn(multioutput, sk):
    df = long_table(n=90)
    got = reg.per_group_metrics(reg.group_run(df), "session", multioutput).set_index("session")
    for s, g in df.groupby("session"):
        Y = g.pivot(index="sample_id", columns="channel", values="y_true").to_numpy()
        P = g.pivot(index="sample_id", columns="channel", values="y_pred").to_numpy()
        want = r2_score(Y.ravel(), P.ravel()) if sk is None else r2_score(Y, P, multioutput=sk)
        assert got.loc[s, "r2"] == pytest.approx(want, abs=1e-12)
        r = [sps.pearsonr(Y[:, c], P[:, c]).statistic for c in range(Y.shape[1])]
        want_r = sps.pearsonr(Y.ravel(), P.ravel()).statistic if sk is None else np.mean(r)
        assert got.loc[s, "pearson_r"] == pytest.approx(want_r, abs=1e-12)
        assert got.loc[s, "n"] == g.shape[0] and got.loc[s, "target_variance"] == pytest.approx(np.var(Y.ravel()))


def test_threaded_run_sums_equal_single_pass():
    rng = np.random.default_rng(0)
    n = 2_100_000  # above the threshold where runs are split across cores
    y, p = rng.normal(size=n), rng.normal(size=n)
    starts = np.concatenate([[0], np.sort(rng.choice(np.arange(1, n), 5000, replace=False))])
    threaded = reg.suff_stats(y, p, center=0.1, starts=starts)  # splits the runs across threads
    single = reg.suff_stats_of_runs(y, p, 0.1, starts)
    np.testing.assert_allclose(threaded.to_numpy(), single.to_numpy(), rtol=1e-12, atol=1e-9)
    assert len(threaded) == len(starts) and threaded["n"].sum() == n
