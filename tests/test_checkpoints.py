"""helpers.checkpoint_divergence.checkpoints against scikit-learn / scipy / brute force on the same inputs, adversarial ones included."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import cdist
from sklearn.metrics import mean_squared_error
from sklearn.preprocessing import StandardScaler

from helpers.checkpoint_divergence import checkpoints as ck


@pytest.fixture
def run():
    rng = np.random.default_rng(0)
    e, n, p = 6, 40, 3
    target = rng.normal(size=(n, p)) * np.array([0.01, 5000.0, 1.0])
    pred = target + rng.normal(size=(e, n, p)) * np.array([0.002, 800.0, 0.3]) * np.linspace(2, 1, e)[:, None, None]
    return pred, target


def test_per_sample_errors_match_sklearn_mse_on_standardised_values(run):
    pred, target = run
    scaler = StandardScaler().fit(target)
    err = ck.per_sample_errors(pred, target, scaler.scale_)
    assert err.shape == (6, 40)
    for e in range(6):
        expected = mean_squared_error(scaler.transform(target), scaler.transform(pred[e]), multioutput="raw_values")
        np.testing.assert_allclose(err[e].mean(), expected.mean(), rtol=1e-12)
        np.testing.assert_allclose(ck.checkpoint_mse(err)[e], mean_squared_error(
            scaler.transform(target), scaler.transform(pred[e])), rtol=1e-12)
    # float32 input, chunked over epochs: same numbers to float32 precision
    small = ck.CHUNK_BYTES
    try:
        ck.CHUNK_BYTES = 40 * 3 * 4 * 2  # two checkpoints per chunk
        err32 = ck.per_sample_errors(pred.astype(np.float32), target, scaler.scale_)
    finally:
        ck.CHUNK_BYTES = small
    np.testing.assert_allclose(err32, err, rtol=1e-4)


def test_unscaled_error_is_dominated_by_the_largest_unit(run):
    pred, target = run
    raw = ck.per_sample_errors(pred, target, np.ones(3))
    only_big = ((pred[..., 1] - target[:, 1]) ** 2) / 3
    assert np.median(only_big / raw) > 0.999  # the other two parameters barely register


def test_constant_column_gets_scale_one_like_sklearn():
    x = np.c_[np.ones(5), np.arange(5.0)]
    assert ck.fit_scaler(x).scale_[0] == 1.0 == StandardScaler().fit(x).scale_[0]


def test_advantage_and_band_against_direct_computation():
    err = np.array([[4.0, 1.0, 2.0], [2.0, 2.0, 2.0], [1.0, 4.0, 3.0]])
    adv = ck.advantage(err, ref=2)
    np.testing.assert_allclose(adv, [1.0, 4.0, 1.5])
    band = ck.noise_band(err, 2, quantiles=(0.0, 0.5, 1.0))
    rel = err / err[2]
    np.testing.assert_allclose(band, np.quantile(rel, [0.0, 0.5, 1.0], axis=1).T)
    np.testing.assert_allclose(band[2], 1.0)
    steps = ck.epoch_to_epoch(err)
    np.testing.assert_allclose(steps, np.median(np.abs(np.diff(np.log(err), axis=0)), axis=1))


def test_zero_error_is_floored_not_divided_by():
    err = np.array([[0.0, 1.0], [1.0, 1.0]])
    adv = ck.advantage(err, 1)
    assert np.isfinite(adv).all() and adv[0] > 1e6 and adv[1] == 1.0


def test_percentile_matches_scipy_with_ties():
    ref = np.array([1, 2, 2, 2, 3, 5.0])
    for v in (0.5, 2.0, 2.5, 5.0, 9.0):
        assert ck.percentile_of(ref, v) == stats.percentileofscore(ref, v, kind="weak")
    assert ck.percentile_of(ref, 2.0) == pytest.approx(100 * 4 / 6)


def test_noise_floor_puts_a_typical_swing_inside_and_a_real_one_outside():
    rng = np.random.default_rng(1)
    err = np.exp(rng.normal(scale=0.2, size=(20, 500)))  # each sample's error wanders around 1
    nf = ck.noise_floor(err, err[:, 7], ref=5)
    assert nf.experiment_advantage == pytest.approx(ck.advantage(err[:, [7]], 5)[0])
    assert 5 < nf.percentile < 100
    big = err[:, 0].copy()
    big[5] = 10 * big.min()  # the reference checkpoint is ten times worse than the best on this one
    assert ck.noise_floor(err, big, ref=5).percentile == 100.0
    assert nf.band.shape == (20, 5) and nf.experiment_relative[5] == 1.0


def test_selection_by_repeats_pure_noise_does_not_generalise():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(300), 2)
    err = np.exp(rng.normal(scale=0.3, size=(15, 600)))  # no checkpoint is better for anyone
    s = ck.selection_by_repeats(err, groups, ref=14)
    assert s.method == "repeats" and s.n == 300
    assert (s.in_sample >= 0).all() and s.in_sample.mean() > 0.2
    assert abs(s.surviving_share) < 0.2  # the in-sample advantage was luck
    # direct computation for one group: the selection half and the held-out half are its two rows
    g = 17
    rows = np.flatnonzero(groups == g)
    a_row = rows[0] if s.in_sample[g] == pytest.approx(np.log(err[14, rows[0]] / err[:, rows[0]].min())) else rows[1]
    b_row = rows[1] if a_row == rows[0] else rows[0]
    assert s.chosen[g] == err[:, a_row].argmin()
    assert s.held_out[g] == pytest.approx(np.log(err[14, b_row] / err[s.chosen[g], b_row]))


def test_selection_by_repeats_real_per_group_differences_survive():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(200), 4)
    best = rng.integers(0, 10, 200)  # each group truly has its own best checkpoint
    err = np.ones((10, 800)) * 2.0
    err[best[groups], np.arange(800)] = 0.5
    err *= np.exp(rng.normal(scale=0.05, size=err.shape))
    s = ck.selection_by_repeats(err, groups, ref=9)
    assert s.surviving_share > 0.9 and np.mean(s.chosen == best) > 0.95


def test_selection_by_repeats_skips_singletons_and_takes_string_ids():
    err = np.exp(np.random.default_rng(4).normal(size=(5, 7)))
    s = ck.selection_by_repeats(err, np.array(["a", "a", "b", "c", "c", "c", "d"]), ref=4)
    assert s.n == 2  # "b" and "d" have one row


def test_selection_by_neighbours_uses_other_samples_only():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(300, 2))
    err = np.exp(rng.normal(scale=0.3, size=(12, 300)))
    s = ck.selection_by_neighbours(err, z, ref=11, k=4)
    assert s.n == 300 and abs(s.surviving_share) < 0.3
    # smooth structure in z: neighbours share the best checkpoint, so selection carries over
    best = (z[:, 0] > 0).astype(int) * 5
    err2 = np.full((12, 300), 2.0)
    err2[best, np.arange(300)] = 0.5
    assert ck.selection_by_neighbours(err2, z, ref=11, k=4).surviving_share > 0.8


def test_knn_distances_against_brute_force():
    rng = np.random.default_rng(6)
    ref, q = rng.normal(size=(200, 7)), rng.normal(size=(30, 7))
    d = np.sort(cdist(q, ref), axis=1)
    np.testing.assert_allclose(ck.knn_distances(ref, q, 5), d[:, :5].mean(axis=1), rtol=1e-10)
    self_d = np.sort(cdist(ref, ref), axis=1)[:, 1:6].mean(axis=1)
    np.testing.assert_allclose(ck.knn_distances(ref, ref, 5, exclude_self=True), self_d, rtol=1e-10)
    with pytest.raises(ValueError):
        ck.knn_distances(ref[:3], q, 5)


def test_counts_within_against_brute_force_with_ties():
    ref = np.array([[0.0, 0], [1, 0], [0, 1], [2, 0], [0, 0]])  # a duplicate row and points at exactly r=1
    q = np.array([[0.0, 0], [5, 5]])
    counts = ck.counts_within(ref, q, [1.0, 2.0])
    d = cdist(q, ref)
    np.testing.assert_array_equal(counts, np.stack([(d <= 1.0).sum(1), (d <= 2.0).sum(1)], axis=1))
    assert counts.tolist() == [[4, 5], [0, 0]]


def test_coverage_of_a_point_in_the_bulk_and_at_an_edge():
    rng = np.random.default_rng(7)
    train = rng.normal(size=(2000, 3)) * [1e-2, 1e3, 1.0]
    val = rng.normal(size=(400, 3)) * [1e-2, 1e3, 1.0]
    scaler = ck.fit_scaler(train)
    names = ["a", "b", "c"]
    bulk = ck.coverage(train, np.zeros(3), val, scaler, names)
    edge = ck.coverage(train, np.array([3e-2, 2.5e3, 0.0]), val, scaler, names)
    far = ck.coverage(train, np.array([9e-2, 0.0, 0.0]), val, scaler, names)
    assert bulk.percentile < 50 < edge.percentile and edge.distance > bulk.distance
    assert (edge.count_percentiles < bulk.count_percentiles).all()
    assert far.outside_range == ["a"] and far.beyond_reference and not bulk.outside_range
    np.testing.assert_allclose(edge.radii, np.quantile(edge.reference_distances, ck.RADIUS_QUANTILES))
    assert edge.ranges.loc["a", "percentile"] == stats.percentileofscore(train[:, 0], 3e-2, kind="mean")


def test_error_by_bin_against_groupby():
    rng = np.random.default_rng(8)
    target = rng.normal(size=(100, 2))
    pred = target + rng.normal(size=(100, 2)) * (1 + (target > 1))
    t = ck.error_by_bin(pred, target, np.array([1.0, 2.0]), ["x", "y"], bins=4, point=np.array([5.0, -5.0]))
    ae = np.abs(pred - target) / [1.0, 2.0]
    expected = pd.Series(ae[:, 0]).groupby(pd.qcut(target[:, 0], 4).codes).mean()
    np.testing.assert_allclose(t[t.parameter == "x"]["mae_std"], expected.to_numpy())
    assert t[t.parameter == "x"]["experiment_here"].tolist() == [False, False, False, True]
    assert t[t.parameter == "y"]["experiment_here"].tolist() == [True, False, False, False]
    # constant target column: one bin, not an error
    tc = ck.error_by_bin(pred, np.c_[np.ones(100), target[:, 1]], np.ones(2), ["x", "y"])
    assert (tc.parameter == "x").sum() == 1


def test_ensembles_of_the_last_k():
    pred = np.arange(24.0).reshape(4, 3, 2)
    np.testing.assert_array_equal(ck.ensemble(pred, 2), pred[2:].mean(0))
    np.testing.assert_array_equal(ck.ensemble(pred, 3, "median"), pred[2])
    with pytest.raises(ValueError):
        ck.ensemble(pred, 2, "mode")


def test_jacobian_autograd_matches_finite_differences_and_numpy_fallback():
    import torch

    a = np.array([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]])

    def f_torch(p):
        return torch.sin(p @ torch.as_tensor(a.T)) * p[:, :1] ** 2

    def f_numpy(p):
        p = np.asarray(p)
        return np.sin(p @ a.T) * p[:, :1] ** 2

    x = np.array([0.3, -0.7])
    j, how = ck.jacobian(f_torch, x)
    jn, how_n = ck.jacobian(f_numpy, x)
    assert how == "autograd" and how_n == "central differences" and j.shape == (3, 2)
    np.testing.assert_allclose(j, ck.finite_difference_jacobian(f_torch, x), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(jn, j, rtol=1e-6, atol=1e-9)
    s = ck.sensitivity(j, np.array([2.0, 1.0]), ["u", "v"], error=np.array([0.1, 0.0]))
    np.testing.assert_allclose(s["curve_rms_per_sd"], np.sqrt(((j * [2.0, 1.0]) ** 2).mean(0)))
    assert s.loc["v", "curve_rms_from_error"] == 0.0


def test_a_curve_without_gradient_is_differenced_and_a_long_curve_takes_the_batched_jacobian():
    """A forward model computing in numpy and handing back a tensor carries no gradient: its Jacobian is taken
    by central differences, not read as zeros. A curve longer than ROW_GRADIENTS points takes the batched
    jacobian; both agree with central differences."""
    import torch

    a = np.array([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]])
    x = np.array([0.3, -0.7])

    def f_wrapped(p):
        p = p.detach().numpy()
        return torch.as_tensor(np.sin(p @ a.T) * p[:, :1] ** 2)

    j, how = ck.jacobian(f_wrapped, x)
    assert how == "central differences" and np.abs(j).max() > 0.1
    np.testing.assert_allclose(j, ck.finite_difference_jacobian(f_wrapped, x), rtol=1e-12)

    b = np.random.default_rng(0).normal(size=(ck.ROW_GRADIENTS + 5, 2))

    def f_long(p):
        return torch.sin(p @ torch.as_tensor(b.T))

    for f, length in ((f_long, ck.ROW_GRADIENTS + 5), (lambda p: f_long(p)[:, :ck.ROW_GRADIENTS], ck.ROW_GRADIENTS)):
        j, how = ck.jacobian(f, x)
        assert how == "autograd" and j.shape == (length, 2)
        np.testing.assert_allclose(j, np.cos(b[:length] @ x)[:, None] * b[:length], rtol=1e-12, atol=1e-12)


def test_error_correlation_matches_scipy_and_handles_constants():
    rng = np.random.default_rng(9)
    a = rng.normal(size=50)
    b = a + rng.normal(size=50)
    c = ck.error_correlation(a, b)
    assert c["pearson_r"] == pytest.approx(stats.pearsonr(a, b)[0])
    assert c["spearman_rho"] == pytest.approx(stats.spearmanr(a, b)[0])
    assert np.isnan(ck.error_correlation(a, np.ones(50))["pearson_r"])
    assert np.isnan(ck.error_correlation(a[:2], b[:2])["spearman_rho"])


def test_coverage_distances_and_counts_equal_the_standalone_functions():
    rng = np.random.default_rng(10)
    train, val = rng.normal(size=(500, 4)) * [1, 10, 100, 1000], rng.normal(size=(80, 4)) * [1, 10, 100, 1000]
    scaler = ck.fit_scaler(train)
    point = val[0] * 1.5
    c = ck.coverage(train, point, val, scaler, list("abcd"), k=3)
    tz, vz = scaler.transform(train), scaler.transform(val)
    np.testing.assert_allclose(c.reference_distances, ck.knn_distances(tz, vz, 3), rtol=1e-10)
    assert c.distance == pytest.approx(ck.knn_distances(tz, scaler.transform(point[None]), 3)[0])
    np.testing.assert_array_equal(c.reference_counts, ck.counts_within(tz, vz, c.radii))


# ----------------------------------------------------------------------------- issue 14: noise, profile, region
def test_selection_by_neighbours_skips_the_samples_own_repeats():
    """Each profile measured twice, each with its own best checkpoint (kept on a re-measurement) and no regional
    structure: the nearest row of a measurement is its own repeat, which must not count as a neighbour. Counting
    it, a fifth of the neighbours share the choice (before: surviving share 0.18); without it only chance
    agreements remain (0.06)."""
    rng = np.random.default_rng(11)
    g = 300
    z = np.repeat(rng.normal(size=(g, 2)), 2, axis=0)
    groups = np.repeat(np.arange(g), 2)
    best = rng.integers(0, 10, g)
    err = np.full((12, 2 * g), 2.0)
    err[best[groups], np.arange(2 * g)] = 0.5
    err *= np.exp(rng.normal(scale=0.05, size=err.shape))
    s = ck.selection_by_neighbours(err, z, ref=11, k=5, groups=groups)
    assert abs(s.surviving_share) < 0.1
    assert ck.selection_by_repeats(err, groups, ref=11).surviving_share > 0.9
    split = ck.split_advantage(s, ck.selection_by_repeats(err, groups, ref=11))
    assert split.profile > 0.8 and split.regional < 0.1 and split.noise < 0.1
    assert split.noise + split.profile + split.regional == pytest.approx(1.0)


def test_split_advantage_without_repeats_and_clipping():
    def check(survive):
        return ck.SelectionCheck("x", np.zeros(4, int), np.ones(4), np.full(4, survive))

    s = ck.split_advantage(check(0.3))
    assert s.regional == pytest.approx(0.3) and np.isnan(s.noise) and np.isnan(s.profile) and s.specific == pytest.approx(0.7)
    clipped = ck.split_advantage(check(1.4), check(-0.2))  # estimates outside [0, 1] are clipped, in order
    assert (clipped.regional, clipped.noise, clipped.profile) == (1.0, 0.0, 0.0)
    s = ck.split_advantage(check(0.2), check(0.9))
    assert (s.regional, s.noise, s.profile) == pytest.approx((0.2, 0.1, 0.7))


def test_profile_mean_against_pandas_groupby():
    rng = np.random.default_rng(12)
    codes = rng.integers(0, 7, 50)
    codes = pd.factorize(pd.Series(codes), sort=True)[0]
    x = rng.normal(size=(3, 50))
    expected = pd.DataFrame(x.T).groupby(codes).mean().to_numpy().T
    np.testing.assert_allclose(ck.profile_mean(x, codes), expected, rtol=1e-12)
    assert (ck.profile_codes(4) == np.arange(4)).all()
    assert ck.profile_codes(4, np.array(["b", "a", "b", "c"])).tolist() == [1, 0, 1, 2]


def test_paired_interval_and_p_match_scipy():
    rng = np.random.default_rng(13)
    v = rng.normal(0.1, 1.0, 40)
    t = stats.ttest_1samp(v, 0.0)
    p = ck.Paired(v)
    np.testing.assert_allclose(p.interval, tuple(t.confidence_interval(0.95)), rtol=1e-12)
    assert p.p == pytest.approx(t.pvalue, rel=1e-10) and p.n == 40
    assert ck.Paired(np.full(5, 0.2)).better and ck.Paired(np.full(5, -0.2)).worse
    assert not ck.Paired(np.zeros(5)).better and not ck.Paired(np.zeros(5)).worse and ck.Paired(np.zeros(5)).p == 1.0
    assert np.isnan(ck.Paired(np.ones(1)).interval[0])
    # repeated rows of one profile count once
    groups = np.repeat(np.arange(20), 2)
    by = ck.paired_by_profile(np.repeat(v[:20], 2), groups)
    assert by.n == 20 and by.interval == pytest.approx(ck.Paired(v[:20]).interval)


def test_regional_gain_against_a_direct_computation():
    rng = np.random.default_rng(14)
    z = np.repeat(rng.normal(size=(60, 3)), 2, axis=0)
    groups = np.repeat(np.arange(60), 2)
    err = np.exp(rng.normal(size=(5, 120)))
    point = np.array([0.2, -0.1, 0.4])
    r = ck.regional_gain(err, z, point, ref=4, chosen=1, codes=groups, k=6)
    d = cdist(point[None], z[::2])[0]
    near = np.argsort(d)[:6]
    per = err.reshape(5, 60, 2).mean(axis=2)
    g = np.log(per[4, near] / per[1, near])
    assert sorted(r.profiles.tolist()) == sorted(near.tolist()) and r.distance == pytest.approx(d[near].mean())
    assert r.ratio == pytest.approx(np.exp(g.mean()))
    np.testing.assert_allclose(np.log(r.ratio_interval), stats.ttest_1samp(g, 0).confidence_interval(), rtol=1e-10)
    assert ck.regional_gain(err[:, :2], z[:2], point, 4, 1, groups[:2]) is None  # one profile: nothing to test


def test_coverage_effect_against_mannwhitney():
    rng = np.random.default_rng(15)
    train = rng.normal(size=(400, 2))
    val = np.repeat(rng.normal(size=(100, 2)) * 1.5, 2, axis=0)
    groups = np.repeat(np.arange(100), 2)
    scaler = ck.fit_scaler(train)
    cov = ck.coverage(train, np.zeros(2), val, scaler, ["a", "b"], k=3)
    dist = ck.knn_distances(scaler.transform(train), scaler.transform(val[::2]), 3)
    err = np.repeat(0.1 + dist ** 2, 2) * np.exp(rng.normal(scale=0.1, size=200))  # farther: worse
    ce = ck.coverage_effect(err, cov, groups)
    e = err.reshape(100, 2).mean(axis=1)
    sparse = dist >= np.percentile(dist, 90)
    assert ce.n_sparse == sparse.sum() and ce.ratio == pytest.approx(e[sparse].mean() / e[~sparse].mean())
    assert ce.p == pytest.approx(stats.mannwhitneyu(e[sparse], e[~sparse], alternative="greater").pvalue)
    assert ce.worse
    flat = ck.coverage_effect(np.ones(200), cov, groups)
    assert not flat.worse and flat.ratio == pytest.approx(1.0)


# ----------------------------------------------------------------------------- large runs (issue 17)
def test_a_few_queries_measured_directly_give_the_trees_distances_to_the_bit(monkeypatch):
    """One point against many training rows is measured without building a tree; the numbers are the tree's."""
    rng = np.random.default_rng(11)
    ref = rng.normal(size=(3000, 7)) * [1e-2, 1, 1e3, 5, 1, 1, 1]
    ref[5] = ref[4]  # a tie among the nearest of the first query
    q = np.vstack([ref[4] + 1e-9, rng.normal(size=(3, 7))])
    direct = ck.knn_distances(ref, q, 5), ck.knn_distances(ref, ref[:50], 5, exclude_self=True)
    monkeypatch.setattr(ck, "BRUTE_LIMIT", 0)  # every query through NearestNeighbors' tree
    tree = ck.knn_distances(ref, q, 5), ck.knn_distances(ref, ref[:50], 5, exclude_self=True)
    for a, b in zip(direct, tree, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(direct[0], np.sort(cdist(q, ref), axis=1)[:, :5].mean(axis=1), rtol=1e-12)


def test_coverage_k_d_tree_gives_scikit_learns_kdtree_numbers():
    """The coverage's k-NN distances and counts within radii (scipy's cKDTree) are those of scikit-learn's
    KDTree to the bit, k=1 included; repeated training rows count once each."""
    from sklearn.neighbors import KDTree

    rng = np.random.default_rng(12)
    train = np.round(rng.normal(size=(4000, 4)) * [1, 10, 100, 1000], 1)  # rounded: exact repeats and ties
    val = rng.normal(size=(300, 4)) * [1, 10, 100, 1000]
    scaler = ck.fit_scaler(train)
    tz = scaler.transform(train)
    for k in (1, 5):
        c = ck.coverage(train, val[0] * 2, val, scaler, list("abcd"), k=k)
        q = np.vstack([scaler.transform(val[0][None] * 2), scaler.transform(val[c.reference_rows])])
        tree = KDTree(tz)
        dist = tree.query(q, k=k)[0].mean(axis=1)
        np.testing.assert_array_equal(np.r_[c.distance, c.reference_distances], dist)
        counts = np.stack([tree.query_radius(q, r=float(r), count_only=True) for r in c.radii], axis=1)
        np.testing.assert_array_equal(np.vstack([c.counts, c.reference_counts]), counts)
    assert c.reference_counts[:, -1].max() > 1  # the largest radius holds several training rows
