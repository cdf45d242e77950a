"""helpers.augmentation_leakage.leakage against scikit-learn / numpy on the same inputs, and on real data split cleanly."""

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets
from sklearn.metrics import mean_squared_error
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from helpers.augmentation_leakage import lab
from helpers.augmentation_leakage import leakage as lk


def _mask(n, idx):
    m = np.zeros(n, bool)
    m[idx] = True
    return m


# ----------------------------------------------------------------------------- nearest neighbours
def test_standardise_is_sklearns_standard_scaler_including_a_constant_column():
    x = np.random.default_rng(0).normal(size=(50, 4))
    x[:, 2] = 3.0
    np.testing.assert_allclose(lk.standardise(x), StandardScaler().fit_transform(x), atol=1e-6)


@pytest.mark.parametrize("exact", [True, False])
def test_nearest_distance_matches_sklearn_brute_force(exact):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(20_000, 8)).astype(np.float32)
    query = np.vstack([base[:50] + 1e-3, rng.normal(size=(200, 8))]).astype(np.float32)
    ours = lk.nearest_distance(base, query, exact=exact)
    ref = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(base.astype(np.float64))
    d_ref = ref.kneighbors(query.astype(np.float64))[0][:, 0]
    # float32 vs float64 distances: compare with a tolerance; the approximate index may miss a few
    close = np.isclose(ours, d_ref, rtol=1e-3, atol=2e-3)
    assert close.mean() >= (1.0 if exact else 0.95)
    assert (ours >= d_ref - 2e-3).all()  # never closer than the true nearest neighbour


def test_loo_distance_with_exact_duplicates_matches_sklearn_without_self():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    x[10] = x[11] = x[12]  # a triple of ties
    ours = lk.loo_distance(x)
    d_ref = NearestNeighbors(n_neighbors=1).fit(x.astype(np.float64)).kneighbors()[0][:, 0]  # X=None: self excluded
    np.testing.assert_allclose(ours, d_ref, atol=2e-3)
    assert ours[10] < 1e-2 and ours[12] < 1e-2


def test_tiny_inputs():
    assert lk.loo_distance(np.zeros((1, 3), np.float32)).tolist() == [np.inf]
    assert lk.nearest_distance(np.zeros((0, 3), np.float32), np.zeros((2, 3), np.float32)).tolist() == [np.inf] * 2
    np.testing.assert_allclose(lk.loo_distance(np.array([[0, 0], [3, 4]], np.float32)), [5, 5], atol=1e-5)


# ----------------------------------------------------------------------------- parents, copies, weights
def test_parent_leakage_counts_match_a_merge():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"parent": rng.integers(0, 40, 400), "group": rng.choice(["a", "b", "c"], 400),
                       "split": rng.choice(["train", "val"], 400, p=[0.8, 0.2])})
    totals, per = lk.parent_leakage(df["split"], df["parent"], df["group"])
    val = df[df.split == "val"]
    leaked = val.merge(df[df.split == "train"][["parent"]].drop_duplicates(), on="parent")
    assert totals["n_leaked_rows"] == len(leaked) and totals["n_rows"] == len(val)
    assert per["leaked_rows"].sum() == len(leaked)
    assert per.set_index("group")["rows"].to_dict() == val.groupby("group").size().to_dict()


def test_parent_leakage_is_zero_for_a_group_split():
    rows = lab.augment(lab.make_parents(10, 0), lab.COPIES, 0.02, 1)
    val = lab.split_by_parent(rows, 0.2, 0)
    totals, _ = lk.parent_leakage(pd.Series(np.where(val, "val", "train")), rows["parent_id"], rows["group"])
    assert totals["n_leaked_rows"] == 0 and totals["n_shared_parents"] == 0


def test_multiplicity_from_flags_and_from_parents_agree():
    rows = lab.augment(lab.make_parents(6, 0), lab.COPIES, 0.02, 1)
    declared = {lab.group_name(k, m): lab.DECLARED[t] for (k, m), t in lab.GROUPS.items()}
    a = lk.multiplicity(rows["group"], is_augmented=rows["is_augmented"], declared=declared)
    b = lk.multiplicity(rows["group"], parent=rows["parent_id"], declared=declared)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    expect = rows.drop_duplicates("group").set_index("group")["tier"].map(lab.COPIES)
    assert a.set_index("group")["copies_per_original"].to_dict() == expect.astype(float).to_dict()
    assert np.isnan(a.set_index("group").loc["k=4,m=2", "ratio_to_declared"])  # declared 0: no ratio


def test_row_weighted_metric_of_group_mses_is_sklearns_overall_mse():
    rng = np.random.default_rng(4)
    g = rng.choice(["a", "b", "c", "d"], 500, p=[0.7, 0.2, 0.09, 0.01])
    y, p = rng.normal(size=500), rng.normal(size=500)
    per = pd.Series({k: mean_squared_error(y[g == k], p[g == k]) for k in np.unique(g)})
    w = pd.Series({k: (g == k).mean() for k in np.unique(g)})
    tiers = pd.Series({"a": "hard", "b": "hard", "c": "easy", "d": "easy"})
    m = lk.reweighted_metrics(per, w[::-1], tiers)  # aligned by group, not by position
    assert m["row_weighted"] == pytest.approx(mean_squared_error(y, p))
    assert m["macro"] == pytest.approx(per.mean())
    assert m["tier_balanced"] == pytest.approx(np.mean([per[["a", "b"]].mean(), per[["c", "d"]].mean()]))
    # a NaN group (no validation rows) is skipped, not propagated
    assert np.isfinite(lk.reweighted_metrics(pd.concat([per, pd.Series({"e": np.nan})]), pd.concat([w, pd.Series({"e": 0.0})]))["macro"])


def test_composition_weights_and_reference():
    split = pd.Series(["val"] * 6 + ["train"] * 4)
    group = pd.Series(["a"] * 5 + ["b"] + ["a", "b", "c", "c"])
    c = lk.composition(split, group)
    assert c["implicit_weight"].sum() == pytest.approx(1.0)
    assert c.set_index("group")["val_rows"].to_dict() == {"a": 5, "b": 1, "c": 0}
    assert c["reference_weight"].tolist() == pytest.approx([1 / 3] * 3)
    orig = pd.Series([True] + [False] * 4 + [True] * 5)
    c2 = lk.composition(split, group, originals=orig)
    assert c2.set_index("group")["reference_weight"].to_dict() == pytest.approx({"a": 2 / 6, "b": 2 / 6, "c": 2 / 6})


def test_degradation_ratio_and_missing_groups():
    d = lk.degradation(pd.Series({"a": 0.4, "b": 0.1, "c": 1.0}), pd.Series({"a": 0.1, "b": 0.2}))
    assert d.set_index("group")["ratio"].to_dict() == pytest.approx({"a": 4.0, "b": 0.5})


# ----------------------------------------------------------------------------- near-duplicate scan
@pytest.mark.parametrize("loader", [datasets.load_diabetes, datasets.load_wine, datasets.load_breast_cancer])
@pytest.mark.parametrize("seed", [0, 1])
def test_real_datasets_split_cleanly_are_not_flagged(loader, seed):
    x = loader().data
    tr, va = train_test_split(np.arange(len(x)), test_size=0.2, random_state=seed)
    scan = lk.near_duplicate_scan(x, _mask(len(x), tr), _mask(len(x), va), seed=seed)
    assert not scan.detected, (scan.leaked_share, scan.p_value)
    assert scan.n_exact_duplicate_rows == 0


def test_natural_repeats_without_augmentation_are_found():
    """Rows that occur twice in the raw data (no augmentation flag, no parent ids)."""
    data = datasets.load_diabetes().data
    rng = np.random.default_rng(0)
    x = np.vstack([data, data[rng.choice(len(data), 60, replace=False)]])
    tr, va = train_test_split(np.arange(len(x)), test_size=0.25, random_state=0)
    scan = lk.near_duplicate_scan(x, _mask(len(x), tr), _mask(len(x), va), seed=0)
    assert scan.n_exact_duplicate_rows == 60
    assert scan.reference_kind == "pseudo-parents" and scan.detected
    truth = np.mean([pd.Series(map(tuple, x[tr])).isin([tuple(r)]).any() for r in x[va]])
    assert abs(scan.leaked_share - truth) < 0.05


@pytest.mark.parametrize("noise", [0.02, 0.05])
@pytest.mark.parametrize("parents", [True, False])
def test_augmentation_before_split(noise, parents):
    """Also from the features alone at 5% noise (the old distance scan, linking rows closer than a tenth of
    the median pair distance, missed it there: leaked share 0.014)."""
    rows = lab.augment(lab.make_parents(12, 3), lab.COPIES, noise, 4)
    val = lab.split_rows(rows, 0.15, 5)
    x = rows[lab.FEATURES].to_numpy()
    scan = lk.near_duplicate_scan(x, ~val, val, rows["parent_id"].to_numpy() if parents else None, seed=0)
    truth = rows.loc[val, "parent_id"].isin(rows.loc[~val, "parent_id"]).mean()
    assert scan.detected
    # the estimate is close to the true share of val rows with a parent in train
    assert abs(scan.leaked_share - truth) < 0.03


def test_clean_group_split_of_augmented_data_is_not_flagged():
    rows = lab.augment(lab.make_parents(12, 3), lab.COPIES, 0.02, 4)
    tr, va = next(GroupShuffleSplit(1, test_size=0.15, random_state=0).split(rows, groups=rows["parent_id"]))
    x = rows[lab.FEATURES].to_numpy()
    for parent in (rows["parent_id"].to_numpy(), None):
        scan = lk.near_duplicate_scan(x, _mask(len(x), tr), _mask(len(x), va), parent, seed=0)
        assert not scan.detected
        assert scan.train_near_duplicate_share > 0.8  # the copies sit together in train: a fact, not a leak


@pytest.mark.parametrize("n, d", [(2000, 3), (5000, 2)])
def test_clean_low_dimensional_data_is_not_flagged(n, d):
    """Ordinary neighbours in few dimensions sit closer than a tenth of the median pair distance; the old
    radius linked them into clusters spanning most rows and flagged a random split of i.i.d. rows
    (leaked share 0.69 at n=2000, d=3). The valley rule finds no near-copies here: only exact repeats link."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d))
    val = rng.random(n) < 0.2
    scan = lk.near_duplicate_scan(x, ~val, val, seed=0)
    assert not scan.detected and scan.leaked_share < 0.01, (scan.leaked_share, scan.p_value)
    assert scan.reference_kind == "rows" and scan.link_radius == 0


# ----------------------------------------------------------------------------- the scan's pieces
def test_common_scale_keeps_the_columns_relative_units():
    x = np.random.default_rng(5).normal(size=(100, 3)) * [1.0, 10.0, 0.01]
    z = lk.common_scale(x)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0) / z.std(axis=0)[0], x.std(axis=0) / x.std(axis=0)[0], rtol=1e-4)
    assert np.mean(z.var(axis=0)) == pytest.approx(1.0, rel=1e-4)


def test_link_radius_lies_in_the_valley_between_copies_and_neighbours():
    rng = np.random.default_rng(6)
    near = np.exp(rng.normal(np.log(0.05), 0.2, 5000))  # copies of one original
    far = np.exp(rng.normal(np.log(1.0), 0.2, 5000))  # ordinary neighbours
    r, depth = lk.link_radius(np.r_[near, far])
    assert np.quantile(near, 0.99) < r < np.quantile(far, 0.01) and depth < 0.1
    assert lk.link_radius(far) == (0.0, pytest.approx(np.nan, nan_ok=True))  # one mode: no radius


@pytest.mark.parametrize("parents, keep, atol", [(4, None, 1e-4), (3, 3, 1e-5)], ids=["lists", "lists of 3"])
def test_split_distances_match_a_brute_force_search(parents, keep, atol):
    """The ratio's two distances against numpy on all pairs: the nearest training row, and the nearest of
    another (pseudo-)parent. Read from the rows' neighbour lists, or searched again where the lists run out:
    with lists of 3 neighbours most validation rows find no training row of another parent in them and are
    searched again (exactly)."""
    rows = lab.augment(lab.make_parents(parents, 1), lab.COPIES, 0.02, 2)
    x = rows[lab.FEATURES].to_numpy()
    link = lk.link_rows(x, seed=0)
    if keep is not None:
        link = lk.Linking(link.space, link.z, link.dist[:, :keep], link.idx[:, :keep], link.radius, link.groups)
    groups = rows["parent_id"].to_numpy()
    val = lab.split_rows(rows, 0.2, 3)
    train, query = np.flatnonzero(~val), np.flatnonzero(val)
    d1, outside = lk.split_distances(link, groups, train, query)
    z = link.z.astype(np.float64)
    dist = np.linalg.norm(z[query][:, None] - z[train][None], axis=2)
    nearest = dist.argmin(axis=1)
    other = groups[train][None, :] != groups[train][nearest][:, None]
    np.testing.assert_allclose(d1, dist.min(axis=1), atol=atol)
    np.testing.assert_allclose(outside, np.where(other, dist, np.inf).min(axis=1), atol=atol)


# ----------------------------------------------------------------------------- the pool's one all-pairs search
def _brute(x, k):
    """scikit-learn's brute-force k nearest *other* rows (X=None leaves each row out)."""
    return NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x.astype(np.float64)).kneighbors()


def _tied_rows(n=600, d=6, seed=7):
    """Gaussian rows with exact repeats (a triple and pairs) and near-copies (noise 1e-3)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[1] = x[2] = x[0]  # a triple of ties
    x[10:20] = x[20:30]  # ten exact pairs
    x[40:60] = x[60:80] + rng.normal(0, 1e-3, (20, d)).astype(np.float32)  # near-copies
    return x


def test_exact_pool_search_is_sklearns_brute_force_with_ties_and_repeats_at_zero():
    x = _tied_rows()
    d, i = lk.knn_join(x, 8, lk.one_list(len(x)))
    d_ref, i_ref = _brute(x, 9)  # one more, to see ties at the end of the lists
    np.testing.assert_allclose(d, d_ref[:, :8], atol=1e-5)
    gap = np.diff(d_ref, axis=1)
    tied = (np.r_["1", np.ones((len(x), 1)), gap] < 1e-9) | (np.r_["1", gap, np.ones((len(x), 1))] < 1e-9)
    untied = ~tied[:, :8]
    assert (i[untied] == i_ref[:, :8][untied]).all()  # the same rows wherever the distance is not tied
    assert d[0, :2].tolist() == [0.0, 0.0] and set(i[0, :2]) == {1, 2}  # repeats exactly 0, never the row itself
    assert (d[10:30, 0] == 0).all() and (i != np.arange(len(x))[:, None]).all()
    # a subset of rows as queries gives their rows of the full search (distances to float32 rounding: the
    # products' blocks differ; near-copies and repeats are recomputed from their differences, exactly)
    dq, iq = lk.knn_join(x, 8, lk.one_list(len(x)), np.arange(5, 50, 5))
    np.testing.assert_allclose(dq, d[5:50:5], rtol=1e-5)
    near = d[5:50:5] < 0.01
    assert near.sum() >= 6 and (dq[near] == d[5:50:5][near]).all()


def test_kmeans_list_search_finds_the_near_copies_and_never_reports_a_row_closer_than_it_is():
    """k-means lists (approximate): every near-copy's nearest neighbour found; every reported distance is the
    true distance to the row it names (sklearn), so a miss is farther, never closer."""
    rng = np.random.default_rng(8)
    parents = rng.normal(size=(3000, 12)).astype(np.float32)
    x = np.vstack([parents, parents[:2000] + rng.normal(0, 0.01, (2000, 12)).astype(np.float32)])
    lists = lk.ivf_lists(x, seed=0)
    assert not lists.exact and lists.probes.shape[1] == lk.JOIN_PROBES and (lists.probes[:, 0] >= 0).all()
    d, i = lk.knn_join(x, 5, lists)
    d_ref, i_ref = _brute(x, 5)
    copied = np.r_[np.arange(2000), np.arange(3000, 5000)]
    tol = 1e-5 * d_ref[:, :1] + 1e-6  # float32 products' rounding of ordinary distances
    assert np.mean(d[copied, 0] <= d_ref[copied, 0] + 1e-6) >= 0.999  # a near-copy: found
    assert np.mean(d[:, :1] <= d_ref[:, :1] + tol) >= 0.9
    found = i >= 0
    true = np.linalg.norm(x[np.clip(i, 0, None)] - x[:, None, :], axis=2)
    np.testing.assert_allclose(d[found], true[found], atol=1e-5)
    assert (d[:, :1] >= d_ref[:, :1] - tol).all() and (np.diff(d, axis=1) >= 0).all()
    # the same inputs, the same lists
    d2, i2 = lk.knn_join(x, 5, lk.ivf_lists(x, seed=0))
    np.testing.assert_array_equal(i, i2)


def test_rows_without_a_near_copy_are_searched_again_in_more_lists():
    """The ordinary rows' nearest neighbours (no near-copy) are often missed by a few lists' search; the second
    search in more lists finds most of them, and searches those rows only."""
    rng = np.random.default_rng(9)
    parents = rng.normal(size=(1500, 16)).astype(np.float32)
    x = np.vstack([parents, np.repeat(parents[:1200], 3, axis=0) + rng.normal(0, 0.01, (3600, 16)).astype(np.float32)])
    link = lk.link_rows(x, exact=False, seed=0)
    ordinary = np.arange(1200, 1500)  # the parents without copies
    once = lk.knn_join(link.z, link.idx.shape[1], link.lists, ordinary)[0][:, 0]  # their first search
    z_ref = _brute(link.z, 1)[0][:, 0]
    assert link.radius > 0 and not link.exact
    tol = 1e-5 * z_ref + 1e-6  # float32 products' rounding of ordinary distances
    assert np.mean(link.dist[ordinary, 0] <= (z_ref + tol)[ordinary]) > np.mean(once <= (z_ref + tol)[ordinary]) + 0.2
    assert np.mean(link.dist[:, 0] <= z_ref + tol) >= 0.97


def test_nearest_two_groups_is_a_brute_force_over_candidates_with_repeats_across_groups():
    x = _tied_rows(300, 4)
    groups = np.arange(len(x)) // 3
    groups[1] = groups[0]  # rows 0-2 repeat each other; 2 in another group
    cand = np.random.default_rng(1).random(len(x)) < 0.7
    rows = np.arange(0, 300, 7)
    d1, g1, d2 = lk.nearest_two_groups(x, rows, cand, groups, lk.one_list(len(x)))
    full = np.linalg.norm(x[rows][:, None].astype(np.float64) - x[None].astype(np.float64), axis=2)
    full[:, ~cand] = np.inf
    best = full.argmin(axis=1)
    np.testing.assert_allclose(d1, full.min(axis=1), atol=1e-6)
    assert (groups[best] == g1).all() | np.isclose(full.min(axis=1), np.sort(full, axis=1)[:, 1]).any()
    other = np.where(groups[None, :] != g1[:, None], full, np.inf).min(axis=1)
    np.testing.assert_allclose(d2, other, atol=1e-6)


def test_train_loo_is_sklearns_leave_one_out_over_training_rows():
    x = _tied_rows(400, 5)
    train = np.flatnonzero(np.random.default_rng(2).random(len(x)) < 0.8)
    link = lk.link_rows(x, seed=0)
    short = lk.Linking(link.space, link.z, link.dist[:, :2], link.idx[:, :2], link.radius, link.groups)
    ref = _brute(link.z[train], 1)[0][:, 0]
    np.testing.assert_allclose(lk.train_loo(link, train), ref, atol=1e-5)
    np.testing.assert_allclose(lk.train_loo(short, train), ref, atol=1e-5)  # searched again where 2 fall short


def test_count_repeats_is_pandas_duplicated():
    x = _tied_rows(200, 3).astype(np.float64)
    x[100, 0], x[101] = 0.0, x[100]
    x[101, 0] = -0.0  # -0.0 == 0.0
    assert lk.count_repeats(x) == int(pd.DataFrame(x).duplicated().sum()) == 13
    assert lk.count_repeats(x.astype(np.float32)) == 13 and lk.count_repeats(x[:1]) == 0


def test_the_scan_says_what_it_does_on_a_large_pool(capsys):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 4))
    val = rng.random(3000) < 0.2
    lk.near_duplicate_scan(x, ~val, val, seed=0, progress=True, exact=False)
    out = capsys.readouterr()
    for part in ("near-duplicate scan of 3,000 train and validation rows", "choosing the feature space",
                 "k-means", "nearest neighbours of every row", "reading the distances"):
        assert part in out.out, out.out
    assert "Warning" not in out.err


@pytest.mark.parametrize("approximate", [False, True])
def test_the_search_in_slices_of_query_rows_finds_the_same_neighbours(monkeypatch, approximate):
    """knn_join keeps the heaps of HEAP_ROWS query rows at a time (memory): slicing changes the products'
    blocks (float32 rounding) but not the rows found, nor their order, and the lists come out compact."""
    rng = np.random.default_rng(11)
    parents = rng.normal(size=(1500, 10)).astype(np.float32)
    x = np.vstack([parents, parents[:1000] + rng.normal(0, 0.01, (1000, 10)).astype(np.float32)])
    lists = lk.ivf_lists(x, seed=0) if approximate else lk.one_list(len(x))
    d, i = lk.knn_join(x, 6, lists)
    monkeypatch.setattr(lk, "HEAP_ROWS", 256)  # ten slices, the last one short
    ds, is_ = lk.knn_join(x, 6, lists)
    assert d.dtype == np.float32 and i.dtype == np.int32
    np.testing.assert_array_equal(is_, i)
    np.testing.assert_allclose(ds, d, rtol=1e-5)
    near = d < 0.1  # near-copies are recomputed from their differences: exactly the same
    assert near.sum() >= 2000 and (ds[near] == d[near]).all()


def test_forests_grow_on_one_thread_for_small_runs_and_the_same_trees_on_more(monkeypatch):
    """Small runs grow their trees on one thread (starting threads costs more than they save); larger ones on
    OpenMP's count, at most 4, and the trees do not depend on it."""
    assert lk.fit_jobs(lk.FIT_PARALLEL_ROWS - 1) == 1
    monkeypatch.setattr(lk, "_workers", lambda: 8)
    assert lk.fit_jobs(lk.FIT_PARALLEL_ROWS) == 4
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(rng.normal(size=(3000, len(lab.FEATURES))), columns=lab.FEATURES).assign(
        target=lambda t: t[lab.FEATURES[0]] + rng.normal(size=3000))
    monkeypatch.setattr(lk, "_workers", lambda: 2)
    two = lab.fit(rows, trees=6)
    monkeypatch.setattr(lk, "_workers", lambda: 1)
    one = lab.fit(rows, trees=6)
    x = rows[lab.FEATURES].to_numpy()
    np.testing.assert_array_equal(two.predict(x), one.predict(x))
