"""The sufficient-statistics metrics against scikit-learn, scipy and torchmetrics on the same inputs."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps
from sklearn.metrics import explained_variance_score, r2_score
from torchmetrics.functional import pearson_corrcoef
from torchmetrics.functional import r2_score as tm_r2

from helpers.r2_gap import regression as reg


def metrics(y, p):
    m = reg.metrics_from_sums(reg.suff_stats(y, p).iloc[0].to_dict())
    return {k: float(v) for k, v in m.items()}


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_sklearn_scipy_torchmetrics(seed):
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


def test_bootstrap_interval_agrees_with_scipy():
    df = long_table(channels=1, n=120)
    df["y_pred"] = 0.8 * df["y_true"] + 0.5 * np.random.default_rng(2).normal(size=len(df))
    ours = reg.bootstrap_r2(df, "session", n_boot=2000, seed=1).set_index("session")
    for s, g in df.groupby("session"):
        ref = sps.bootstrap((g.y_true.to_numpy(), g.y_pred.to_numpy()), r2_score, paired=True, vectorized=False,
                            n_resamples=2000, method="percentile", random_state=1).confidence_interval
        width = ref.high - ref.low  # Monte Carlo noise of the endpoints is a small share of the width
        assert ours.loc[s, "r2_low"] == pytest.approx(ref.low, abs=0.15 * width)
        assert ours.loc[s, "r2_high"] == pytest.approx(ref.high, abs=0.15 * width)
        assert ours.loc[s, "r2_low"] < r2_score(g.y_true, g.y_pred) < ours.loc[s, "r2_high"]


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
