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


def test_split_distances_from_the_neighbour_lists_match_a_brute_force_search():
    """The ratio's two distances, read from the rows' neighbour lists (or searched where the lists run out),
    against numpy on all pairs: the nearest training row, and the nearest of another (pseudo-)parent."""
    rows = lab.augment(lab.make_parents(4, 1), lab.COPIES, 0.02, 2)
    x = rows[lab.FEATURES].to_numpy()
    link = lk.link_rows(x, seed=0)
    groups = rows["parent_id"].to_numpy()
    val = lab.split_rows(rows, 0.2, 3)
    train, query = np.flatnonzero(~val), np.flatnonzero(val)
    d1, outside = lk.split_distances(link, groups, train, query)
    z = link.z.astype(np.float64)
    dist = np.linalg.norm(z[query][:, None] - z[train][None], axis=2)
    nearest = dist.argmin(axis=1)
    other = groups[train][None, :] != groups[train][nearest][:, None]
    np.testing.assert_allclose(d1, dist.min(axis=1), atol=1e-4)
    np.testing.assert_allclose(outside, np.where(other, dist, np.inf).min(axis=1), atol=1e-4)
