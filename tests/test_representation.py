"""Unit tests of helpers.encoder_variance.representation: estimators against closed forms and library cross-checks."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics.pairwise import cosine_similarity

from helpers.encoder_variance import representation as rep


def grouped_gaussian(rng, sizes, d, sb, sw, ss=None, r=3, mean=0.0):
    """Random-effects data: z = mean + a_group + e; samples = z + noise (variances per coordinate)."""
    g = np.repeat(np.arange(len(sizes)), sizes)
    z = mean + rng.normal(scale=np.sqrt(sb), size=(len(sizes), d))[g] + rng.normal(scale=np.sqrt(sw), size=(len(g), d))
    samples = None
    if ss is not None:
        samples = z[:, None, :] + rng.normal(scale=np.sqrt(ss), size=(len(g), r, d))
    return z, g, samples


# --------------------------------------------------------------------------- unbiasedness
def test_components_are_unbiased_for_unbalanced_groups_with_singletons():
    rng = np.random.default_rng(0)
    sizes = [1, 1, 2, 3, 5, 8, 2, 1, 4, 6]  # small, unbalanced, three groups of one
    sb, sw, ss = 2.0, 0.5, 0.25
    est = []
    for _ in range(600):
        z, g, s = grouped_gaussian(rng, sizes, 3, sb, sw, ss, r=2, mean=5.0)
        d = rep.decompose(z, g, z_samples=s)
        est.append((d.between, d.within, d.sampling, rep.source_within_as_written(s)))
    est = np.array(est)
    mean, se = est.mean(axis=0), est.std(axis=0, ddof=1) / np.sqrt(len(est))
    truth = np.array([sb, sw, ss, 2 * ss])  # the source's formula estimates twice the variance
    assert np.all(np.abs(mean - truth) < 4 * se), (mean, truth, se)
    # the naive between estimate (variance of group means) is biased upwards here: the test can fail
    naive = []
    for _ in range(300):
        z, g, _ = grouped_gaussian(rng, sizes, 3, sb, sw)
        c, _ = rep.centroids(z, g)
        naive.append(c.var(axis=0, ddof=1).mean())
    assert np.mean(naive) - sb > 4 * np.std(naive) / np.sqrt(len(naive))


def test_shares_and_icc_on_a_large_sample():
    rng = np.random.default_rng(1)
    z, g, s = grouped_gaussian(rng, rng.integers(1, 9, 3000), 4, 1.5, 0.5, 1.0, r=4)
    d = rep.decompose(z, g, z_samples=s)
    assert d.between_share == pytest.approx(1.5 / 3.0, abs=0.02)
    assert d.share("sampling") == pytest.approx(1.0 / 3.0, abs=0.02)
    assert d.icc == pytest.approx(1.5 / 2.0, abs=0.02)
    assert d.between_share + d.share("within") + d.share("sampling") == pytest.approx(1.0)


def test_anova_matches_scipy_f_oneway_and_numpy_variance():
    rng = np.random.default_rng(2)
    z, g, _ = grouped_gaussian(rng, [1, 3, 4, 2, 7], 5, 1.0, 1.0)
    d = rep.decompose(z, g)
    msw = d.within_per_dim
    msb = d.between_per_dim * d.n0 + msw
    f = sps.f_oneway(*[z[g == k] for k in range(5)], axis=0).statistic
    np.testing.assert_allclose(msb / msw, f, rtol=1e-10)
    np.testing.assert_allclose(d.var_per_dim, np.diag(np.cov(z, rowvar=False)), rtol=1e-10)
    assert d.total_means == pytest.approx(z.var(axis=0, ddof=1).mean())
    counts = np.array([1, 3, 4, 2, 7])
    assert d.n0 == pytest.approx((17 - (counts**2).sum() / 17) / 4)
    assert d.n_singletons == 1


def test_sampling_from_samples_and_from_logvar():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(50, 4, 6))
    np.testing.assert_allclose(rep.sampling_variance(s), s.var(axis=1, ddof=1).mean(axis=0))
    lv = rng.normal(size=(50, 6))
    z = rng.normal(size=(50, 6))
    d = rep.decompose(z, np.arange(50) % 5, logvar=lv)
    assert d.sampling_source == "logvar"
    assert d.sampling == pytest.approx(np.exp(lv).mean())
    with pytest.raises(ValueError):
        rep.sampling_variance(s[:, :1])


def test_source_cross_sample_as_written_is_the_population_variance():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 2, 3))
    assert rep.source_cross_sample_as_written(x) == pytest.approx(x.reshape(30, -1).var(axis=0, ddof=0).mean())


# --------------------------------------------------------------------------- rank and spectrum
def test_rankme_against_hand_computation():
    # singular values 3 and 1: p = (0.75, 0.25); H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335
    assert rep.rankme([3.0, 1.0], eps=0.0) == pytest.approx(np.exp(0.5623351446), rel=1e-9)
    assert rep.rankme([3.0, 1.0]) == pytest.approx(1.7548, abs=1e-3)
    assert rep.rankme(np.ones(7), eps=0.0) == pytest.approx(7.0)
    assert rep.rankme([0.0, 0.0]) == 0.0
    # a matrix with known singular values (orthogonal factors), uncentred
    rng = np.random.default_rng(5)
    u, _ = np.linalg.qr(rng.normal(size=(40, 3)))
    v, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    x = u @ np.diag([4.0, 2.0, 2.0]) @ v.T
    p = np.array([0.5, 0.25, 0.25])
    assert rep.effective_rank(x, center=False) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)


def test_singular_values_from_the_gram_path_match_svd():
    rng = np.random.default_rng(6)
    z = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8)) + 3.0
    g = np.arange(200) % 10
    sv = rep.decompose(z, g).singular_values
    np.testing.assert_allclose(sv, np.linalg.svd(z - z.mean(axis=0), compute_uv=False), rtol=1e-8)
    wide = rng.normal(size=(6, 20))  # fewer rows than units: the SVD path
    sv_w = rep.decompose(wide, [0, 0, 1, 1, 2, 2]).singular_values
    np.testing.assert_allclose(sv_w, rep.singular_values(wide), rtol=1e-10)
    assert sv_w[-1] < 1e-10  # centring removes one dimension


def test_rank_of_a_low_rank_embedding():
    rng = np.random.default_rng(7)
    z = rng.normal(size=(500, 2)) @ rng.normal(size=(2, 64))
    assert rep.effective_rank(z) < 2.01


# --------------------------------------------------------------------------- geometry and units
def test_centroid_cosines_match_sklearn():
    rng = np.random.default_rng(8)
    z = rng.normal(size=(40, 5)) + 10.0
    g = np.repeat(["a", "b", "c", "d"], 10)
    c = np.stack([z[g == k].mean(axis=0) for k in "abcd"])
    np.testing.assert_allclose(rep.centroid_cosines(z, g), cosine_similarity(c)[np.triu_indices(4, 1)])
    assert rep.centroid_cosines(z, g).min() > 0.9  # a shared offset makes raw cosines ~1
    cc = c - z.mean(axis=0)
    np.testing.assert_allclose(rep.centroid_cosines(z, g, center=True), cosine_similarity(cc)[np.triu_indices(4, 1)])
    assert len(rep.centroid_cosines(z, g, max_groups=3)) == 3


def test_active_units_burda_and_scale_free():
    rng = np.random.default_rng(9)
    n = 2000
    mu = np.column_stack([rng.normal(size=n), rng.normal(size=n), 0.05 * rng.normal(size=n)])  # var 1, 1, 0.0025
    logvar = np.log(np.column_stack([np.full(n, 0.01), np.full(n, 0.01), np.full(n, 1.0)]))
    a = rep.active_units(mu, logvar)
    assert a.burda_active.tolist() == [True, True, False]
    assert a.active.tolist() == [True, True, False]
    a10 = rep.active_units(mu * 10, logvar + 2 * np.log(10))
    assert a10.active.tolist() == a.active.tolist()
    assert a10.burda_active.tolist() == [True, True, True]  # the absolute threshold is not scale-free
    det = rep.active_units(np.column_stack([mu[:, :2], np.zeros(n)]) * 1e-3)
    assert det.active.tolist() == [True, True, False]  # a dead unit of a deterministic encoder


def test_kl_per_dim_closed_form():
    rng = np.random.default_rng(10)
    mu, lv = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    expected = (0.5 * (mu**2 + np.exp(lv) - 1 - lv)).mean(axis=0)
    np.testing.assert_allclose(rep.kl_per_dim(mu, lv), expected, rtol=1e-10)
    assert np.all(rep.kl_per_dim(np.zeros((3, 2)), np.zeros((3, 2))) == 0)


# --------------------------------------------------------------------------- adversarial inputs
def test_string_ids_tokens_and_float32_give_the_same_numbers():
    rng = np.random.default_rng(11)
    z, g, s = grouped_gaussian(rng, [3, 1, 4, 2, 2, 5], 6, 1.0, 0.3, 0.1)
    ref = rep.decompose(z, g, z_samples=s)
    ids = np.array([f"puzzle-{k}" for k in g])
    by_str = rep.decompose(z, ids, z_samples=s)
    tokens = rep.decompose(z.reshape(-1, 2, 3), g, z_samples=s.reshape(len(g), -1, 2, 3))
    f32 = rep.decompose(z.astype(np.float32), g, z_samples=s.astype(np.float32))
    for other, tol in ((by_str, 1e-12), (tokens, 1e-12), (f32, 1e-5)):
        assert other.between == pytest.approx(ref.between, rel=tol)
        assert other.within == pytest.approx(ref.within, rel=tol)
        assert other.sampling == pytest.approx(ref.sampling, rel=tol)
    codes, uniq = rep.group_codes(ids)
    assert list(uniq[:2]) == ["puzzle-0", "puzzle-1"] and codes[0] == 0


def test_all_singletons_and_constant_dimensions():
    rng = np.random.default_rng(12)
    z = rng.normal(size=(10, 3))
    d = rep.decompose(z, np.arange(10))
    assert np.isnan(d.between) and np.isnan(d.within) and np.isnan(d.between_share)
    assert d.n_singletons == 10
    zc = np.column_stack([z, np.full(10, 7.0)])  # a constant unit
    d2 = rep.decompose(zc, np.arange(10) % 2)
    assert np.isfinite(d2.between) and d2.var_per_dim[-1] == pytest.approx(0.0, abs=1e-20)
    flat = rep.decompose(np.ones((6, 4)), [0, 0, 1, 1, 2, 2])
    assert flat.between_share == 0.0 and rep.rankme(flat.singular_values) == 0.0


def test_scale_changes_variances_not_shares_or_rank():
    rng = np.random.default_rng(13)
    z, g, s = grouped_gaussian(rng, [2, 3, 4, 5, 6], 8, 1.0, 0.5, 0.2)
    a = rep.decompose(z, g, z_samples=s)
    b = rep.decompose(10 * z, g, z_samples=10 * s)
    assert b.between == pytest.approx(100 * a.between)
    assert b.between_share == pytest.approx(a.between_share)
    assert b.icc == pytest.approx(a.icc)
    assert rep.rankme(b.singular_values) == pytest.approx(rep.rankme(a.singular_values))


def test_group_sums_match_a_loop():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(100, 3)).astype(np.float32)
    codes = rng.integers(0, 7, 100)
    expected = np.stack([x[codes == k].sum(axis=0) for k in range(7)])
    np.testing.assert_allclose(rep.group_sums(x, codes, 7), expected, rtol=1e-5)


# --------------------------------------------------------------------------- chunks of rows (large runs)
def test_statistics_a_chunk_of_rows_at_a_time_equal_the_formulas(monkeypatch):
    """A run larger than one chunk (CHUNK_BYTES made tiny here) gives the formulas' numbers; a run that fits in
    one chunk gives exactly them (the same operations in the same order)."""
    rng = np.random.default_rng(20)
    n, r, d = 301, 3, 5
    z = rng.normal(size=(n, d)).astype(np.float32) * np.float32(3)
    s = (z[:, None, :] + rng.normal(size=(n, r, d))).astype(np.float32)
    lv = rng.normal(-1, 0.5, size=(n, d)).astype(np.float32)
    g = rng.integers(0, 17, n)
    z64, s64, lv64 = z.astype(np.float64), s.astype(np.float64), lv.astype(np.float64)
    formulas = {
        "sampling": (lambda: rep.sampling_variance(s), s.var(axis=1, ddof=1, dtype=np.float64).mean(axis=0)),
        "within_as_written": (lambda: rep.source_within_as_written(s), ((s64[:, 0] - s64[:, 1]) ** 2).mean()),
        "cross_as_written": (lambda: rep.source_cross_sample_as_written(s[:, 0]),
                             ((s64[:, 0] - s64[:, 0].mean(axis=0, keepdims=True)) ** 2).mean()),
        "var_rows": (lambda: rep.var_rows(z), z.var(axis=0, ddof=1, dtype=np.float64)),
        "mean_exp": (lambda: rep.mean_exp(lv), np.exp(lv64).mean(axis=0)),
        "mean_exp_all": (lambda: rep.mean_exp(lv, axis=None), np.exp(lv64).mean()),
        "kl": (lambda: rep.kl_per_dim(z, lv), (0.5 * (z64 * z64 + np.exp(lv64) - 1.0 - lv64)).mean(axis=0)),
        "centroids": (lambda: rep.centroids(z, g)[0],
                      pd.DataFrame(z64).groupby(g).mean().to_numpy()),
    }
    one_chunk = {k: f() for k, (f, _) in formulas.items()}
    for k, (_, want) in formulas.items():
        if k != "centroids":  # the group means are sums in another order (torch index_add_)
            np.testing.assert_array_equal(one_chunk[k], want, err_msg=k)
    monkeypatch.setattr(rep, "CHUNK_BYTES", 8 * r * d * 7)  # a few rows per chunk
    assert len(rep.row_chunks(n, r * d)) == 43
    for k, (f, want) in formulas.items():
        np.testing.assert_allclose(f(), want, rtol=1e-12, err_msg=k)
    # the decomposition and the active units follow: the same numbers from many chunks
    many = rep.decompose(z, g, z_samples=s), rep.active_units(z, lv)
    monkeypatch.setattr(rep, "CHUNK_BYTES", 32 * 2**20)
    one = rep.decompose(z, g, z_samples=s), rep.active_units(z, lv)
    for a, b in ((many[0].sampling_per_dim, one[0].sampling_per_dim), (many[1].var_mean, one[1].var_mean),
                 (many[1].noise_var, one[1].noise_var)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_centroid_cosines_from_centroids_given_are_the_same():
    rng = np.random.default_rng(21)
    z, g, _ = grouped_gaussian(rng, [3, 4, 2, 5, 6], 4, 1.0, 0.3, mean=2.0)
    c, _ = rep.centroids(z, g)
    for center in (False, True):
        np.testing.assert_array_equal(rep.centroid_cosines(z, g, center=center, c=c),
                                      rep.centroid_cosines(z, g, center=center))
