"""Mechanism lab of notebook 05: a generative task shaped like the source's, augmented before or
after the split, and one model trained on each arrangement (CPU, seconds).

A sample is (n, k, m, P) with P a random k x (n - k) matrix whose rows sum to 1, and its target
is an m-height-like number: for a fixed set of messages u, the codeword c = u [I | P] is sorted
by magnitude and the ratio of its largest to its (m+1)-th largest entry is taken; the target is
log2 of the largest ratio over the messages. Nine (k, m) groups come in three tiers; copies are
made the way the source's augmentation does (n scaled by 1 +- noise, P + N(0, noise), clipped,
rows renormalised, target unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.ensemble import ExtraTreesRegressor
from sklearn.metrics import mean_squared_error
from sklearn.model_selection import GroupShuffleSplit

from helpers.augmentation_leakage.leakage import fit_jobs

GROUPS = {(4, 2): "easy", (4, 3): "easy", (5, 2): "easy", (4, 4): "medium", (5, 3): "medium", (6, 2): "medium",
          (4, 5): "hard", (5, 4): "hard", (6, 3): "hard"}
COPIES = {"easy": 0, "medium": 25, "hard": 50}  # what the augmentation did
DECLARED = {"easy": 0, "medium": 1, "hard": 2}  # what its comments claimed
N = 9
P_COLUMNS = [f"p{i:02d}" for i in range(20)]  # k x (n - k) <= 20 entries, zero-padded
FEATURES = ["n", "k", "m", *P_COLUMNS]
N_MESSAGES = 64


def group_name(k: int, m: int) -> str:
    return f"k={k},m={m}"


def _messages(seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng([seed, 7])
    return {k: rng.normal(size=(N_MESSAGES, k)) for k in (4, 5, 6)}


def m_height_like(k: int, m: int, P: np.ndarray, messages: np.ndarray) -> np.ndarray:
    """log2 of the largest |c|_(0) / |c|_(m) over the messages, for a stack of P matrices (b, k, n-k)."""
    G = np.concatenate([np.broadcast_to(np.eye(k), (len(P), k, k)), P], axis=2)
    c = -np.sort(-np.abs(np.einsum("uk,bkn->bun", messages, G)), axis=2)
    return np.log2(np.max(c[:, :, 0] / np.maximum(c[:, :, m], 1e-9), axis=1))


def _features(n: np.ndarray, k: int, m: int, P: np.ndarray) -> np.ndarray:
    out = np.zeros((len(P), len(FEATURES)))
    out[:, 0], out[:, 1], out[:, 2] = n, k, m
    out[:, 3:3 + P.shape[1] * P.shape[2]] = P.reshape(len(P), -1)
    return out


def make_parents(per_group: int, seed: int, first_id: int = 0) -> pd.DataFrame:
    """Original samples: ``per_group`` per (k, m) group, with features and target."""
    rng = np.random.default_rng(seed)
    msgs = _messages(0)  # the task (its messages) is fixed; the samples vary with ``seed``
    parts = []
    for (k, m), tier in GROUPS.items():
        P = rng.uniform(0, 1, (per_group, k, N - k))
        P /= P.sum(axis=2, keepdims=True)
        df = pd.DataFrame(_features(np.full(per_group, float(N)), k, m, P), columns=FEATURES)
        df.insert(0, "group", group_name(k, m))
        df.insert(1, "tier", tier)
        df["target"] = m_height_like(k, m, P, msgs[k])
        parts.append(df)
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "parent_id", np.arange(first_id, first_id + len(out), dtype=np.int64))
    return out


def augment(parents: pd.DataFrame, copies: dict[str, int], noise: float, seed: int) -> pd.DataFrame:
    """Each parent followed by ``copies[tier]`` noisy copies (the source's augment_sample)."""
    rng = np.random.default_rng(seed)
    reps = parents["tier"].map(copies).fillna(0).astype(int).to_numpy()
    orig = parents.assign(is_augmented=0)
    if reps.sum() == 0:
        return orig.reset_index(drop=True)
    cp = parents.loc[parents.index.repeat(reps)].copy()
    cp["is_augmented"] = 1
    cp["n"] = cp["n"] * (1 + rng.uniform(-noise, noise, len(cp)))
    cp["n"] = np.maximum(cp["n"], 1.0)
    k = cp["k"].to_numpy().astype(int)
    P = cp[P_COLUMNS].to_numpy()
    used = np.arange(len(P_COLUMNS))[None, :] < (k * (N - k))[:, None]
    P = np.where(used, np.clip(P + rng.normal(0, noise, P.shape), 0, 1), 0.0)
    for kk in np.unique(k):  # renormalise each row of the k x (n - k) matrix
        sel = k == kk
        block = P[sel, : kk * (N - kk)].reshape(-1, kk, N - kk)
        block /= np.maximum(block.sum(axis=2, keepdims=True), 1e-7)
        P[sel, : kk * (N - kk)] = block.reshape(sel.sum(), -1)
    cp[P_COLUMNS] = P
    out = pd.concat([orig, cp]).sort_index(kind="stable")  # copies next to their parent
    return out.reset_index(drop=True)


def split_by_parent(rows: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean "is validation" mask: whole parents to one side (GroupShuffleSplit)."""
    _, va = next(GroupShuffleSplit(1, test_size=val_fraction, random_state=seed).split(rows, groups=rows["parent_id"]))
    mask = np.zeros(len(rows), bool)
    mask[va] = True
    return mask


def split_rows(rows: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean "is validation" mask drawn row by row, as a plain train_test_split does."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(rows), bool)
    mask[rng.permutation(len(rows))[: int(round(val_fraction * len(rows)))]] = True
    return mask


def model(seed: int = 0, trees: int = 30) -> ExtraTreesRegressor:
    """The sample run's model: extremely randomised trees of bounded size (fast; enough capacity to
    memorise near-copies, too little to fit every group well when some groups dominate). The lab grows
    fewer of the same trees (``LabConfig.trees``)."""
    return ExtraTreesRegressor(n_estimators=trees, max_leaf_nodes=100, max_features=0.5, random_state=seed, n_jobs=1)


def fit(rows: pd.DataFrame, seed: int = 0, features=FEATURES, trees: int = 30) -> ExtraTreesRegressor:
    """:func:`model` fitted on ``rows``: its trees grown on ``fit_jobs(len(rows))`` threads (each tree has its
    own seed, so the trees are the same), then predicting on one (a fixed order of summing the trees)."""
    est = model(seed, trees).set_params(n_jobs=fit_jobs(len(rows)))
    return est.fit(rows[list(features)].to_numpy(), rows["target"].to_numpy()).set_params(n_jobs=1)


def per_group_mse(est, rows: pd.DataFrame, features=FEATURES) -> pd.Series:
    """scikit-learn's mean_squared_error of the model's predictions, per group."""
    pred = est.predict(rows[list(features)].to_numpy())
    t = rows.assign(pred=pred)
    return t.groupby("group", sort=True).apply(lambda g: mean_squared_error(g["target"], g["pred"]),
                                              include_groups=False)


def mse(est, rows: pd.DataFrame, features=FEATURES) -> float:
    return float(mean_squared_error(rows["target"], est.predict(rows[list(features)].to_numpy())))


# --------------------------------------------------------------------------- the lab
ARMS = {"a": "(a) augment, then split rows", "b": "(b) split, then augment train",
        "c": "(c) split by parent (StratifiedGroupKFold)"}


@dataclass
class LabConfig:
    seed: int = 0
    per_group: int = 40  # parents per group in the development data
    test_per_group: int = 100  # fresh parents per group in the clean held-out test set
    folds: int = 3  # every parent is validated once, by the model that did not train on it
    noise: float = 0.02
    copies: dict = field(default_factory=lambda: dict(COPIES))
    trees: int = 10  # the sample run's model with 10 trees instead of 30: the same arms' ratios, a third of the time
    scan_per_group: int = 20  # parents per group of the leaky split that noise_scan searches


def folds(cfg: LabConfig, parents: pd.DataFrame, rows: pd.DataFrame, arm: str):
    """(train rows, validation rows) of each fold of one arrangement.

    (a) folds of the augmented rows, drawn row by row, validated on every row of its fold;
    (b) folds of the originals stratified by group, the training originals augmented, validated
    on the fold's originals; (c) folds of the augmented rows by parent (stratified by group),
    validated on the fold's originals (its copies repeat them and would reweight the groups).
    """
    from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

    if arm == "a":
        for tr, va in KFold(cfg.folds, shuffle=True, random_state=cfg.seed).split(rows):
            yield rows.iloc[tr], rows.iloc[va]
    elif arm == "b":
        split = StratifiedKFold(cfg.folds, shuffle=True, random_state=cfg.seed).split(parents, parents["group"])
        for i, (tr, va) in enumerate(split):
            yield augment(parents.iloc[tr], cfg.copies, cfg.noise, cfg.seed + 1 + i), parents.iloc[va]
    else:
        split = StratifiedGroupKFold(cfg.folds, shuffle=True, random_state=cfg.seed + 1).split(
            rows, rows["group"], rows["parent_id"])
        for tr, va in split:
            val = rows.iloc[va]
            yield rows.iloc[tr], val[val["is_augmented"] == 0]


def run(cfg: LabConfig | None = None) -> pd.DataFrame:
    """Each arrangement's train, validation and clean-test MSE, by ``cfg.folds``-fold cross-validation
    (and arm (a) again with 5% noise, the source's proposed cure).

    ``val_mse`` pools every fold's validation rows (each row validated once); ``test_mse`` and
    ``train_mse`` are the folds' means; ``val_rows`` counts the validation rows, ``train_rows`` is
    the mean training size of a fold.
    """
    cfg = cfg or LabConfig()
    parents = make_parents(cfg.per_group, cfg.seed)
    test = make_parents(cfg.test_per_group, cfg.seed + 1000, first_id=10**6)
    out = []
    for noise in dict.fromkeys((cfg.noise, 0.05)):
        c = LabConfig(**{**cfg.__dict__, "noise": noise})
        rows = augment(parents, c.copies, noise, cfg.seed + 1)
        for arm, name in ARMS.items():
            if noise != cfg.noise and arm != "a":
                continue
            sq, train, tests, n_train = [], [], [], []
            for tr, va in folds(c, parents, rows, arm):
                est = fit(tr, cfg.seed, trees=cfg.trees)
                sq.append((est.predict(va[FEATURES].to_numpy()) - va["target"].to_numpy()) ** 2)
                train.append(mse(est, tr))
                tests.append(mse(est, test))
                n_train.append(len(tr))
            v, t = float(np.concatenate(sq).mean()), float(np.mean(tests))
            out.append({"arrangement": name, "noise": noise, "validated_on": "its rows" if arm == "a" else "originals",
                        "train_mse": float(np.mean(train)), "val_mse": v, "test_mse": t, "val_over_test": v / t,
                        "train_rows": int(round(np.mean(n_train))), "val_rows": int(sum(map(len, sq)))})
    return pd.DataFrame(out)


def support(table: pd.DataFrame, scan: dict | None = None) -> dict[str, str]:
    """What the lab measured for the fixes, one sentence per finding id, its numbers read from ``table``
    (and from :func:`noise_scan`'s result ``scan`` for the feature-only check)."""
    row = {(r["arrangement"][:3], r["noise"]): r for r in table.to_dict(orient="records")}
    base = min(n for a, n in row if a == "(a)")
    a, b, c = row[("(a)", base)], row[("(b)", base)], row[("(c)", base)]
    noisy = [r for (arm, n), r in row.items() if arm == "(a)" and n != base]
    split = (f"on the same task, a row-wise split after augmenting gave validation MSE {a['val_over_test']:.2f}x the "
             f"clean test MSE; splitting by parent gave {b['val_over_test']:.2f}x (b: split, then augment train) and "
             f"{c['val_over_test']:.2f}x (c: split by parent), validated on {b['val_rows']} and {c['val_rows']} "
             f"originals")
    if noisy:
        split += f"; {noisy[0]['noise']:.0%} augmentation noise left the leaky split at {noisy[0]['val_over_test']:.2f}x"
    out = {"parent_leakage": split + ".",
           "suspicious_train_val_gap": (f"the leaky split's train/val MSE were {a['train_mse']:.4f}/{a['val_mse']:.4f}, "
                                        f"the split by parent's (c) {c['train_mse']:.4f}/{c['val_mse']:.4f}.")}
    if scan:
        size = f" of {scan['rows']:,} rows" if "rows" in scan else ""
        out["near_duplicate_leakage"] = (
            f"from the features alone the scan {'found' if scan['detected'] else 'did not find'} the copies of a "
            f"leaky split{size} at {scan['noise']:.0%} noise (estimated share {scan['leaked_share']:.0%}, true "
            f"{scan['true_leaked_share']:.0%}).")
    return out


def noise_scan(cfg: LabConfig | None = None, noise: float = 0.05) -> dict:
    """The feature-only near-duplicate scan of a leaky split at ``noise``: arm (a)'s arrangement (augment,
    then one row-wise split) of ``cfg.scan_per_group`` parents per group; and the true share of validation
    rows whose parent is in training."""
    from helpers.augmentation_leakage import leakage as lk

    cfg = cfg or LabConfig()
    rows = augment(make_parents(cfg.scan_per_group, cfg.seed), cfg.copies, noise, cfg.seed + 1)
    val = split_rows(rows, 1 / cfg.folds, cfg.seed)
    s = lk.near_duplicate_scan(rows[FEATURES].to_numpy(), ~val, val, None, seed=cfg.seed)
    return {"noise": noise, "rows": len(rows),
            "true_leaked_share": float(rows.loc[val, "parent_id"].isin(rows.loc[~val, "parent_id"]).mean()),
            "leaked_share": s.leaked_share, "detected": s.detected, "reference": s.reference_kind, "space": s.space}


def reading(table: pd.DataFrame, scan: dict | None = None) -> str:
    """What the lab's table (and the noise scan) show, in sentences whose numbers are read from them."""
    row = {(r["arrangement"][:3], r["noise"]): r for r in table.to_dict(orient="records")}
    base = min(n for a, n in row if a == "(a)")
    a = row[("(a)", base)]
    clean = [row[(k, base)] for k in ("(b)", "(c)")]
    lines = [f"- Leaky split (a), {base:.0%} noise: validation MSE is {a['val_over_test']:.2f}x the clean test MSE "
             + ("(validation flatters the model)." if a["val_over_test"] < 0.8 else "(no flattering at this size).")]
    for r in clean:
        verdict = "tracks the test set" if 0.8 <= r["val_over_test"] <= 1.25 else "does not track the test set"
        lines.append(f"- {r['arrangement']}: {r['val_over_test']:.2f}x on {r['val_rows']} validation originals: "
                     f"validation {verdict}.")
    for (arm, n), r in row.items():
        if arm == "(a)" and n != base:
            lines.append(f"- Leaky split with {n:.0%} noise (the source's proposed cure): {r['val_over_test']:.2f}x: "
                         + ("the copies still leak." if r["val_over_test"] < 0.8 else "no longer flattering here."))
    if scan:
        size = f" of {scan['rows']:,} rows" if "rows" in scan else ""
        lines.append(f"- The scan from the features alone, on a leaky split{size} at {scan['noise']:.0%} noise (true "
                     f"leaked share {scan['true_leaked_share']:.0%}): {'detected' if scan['detected'] else 'not detected'}"
                     f", estimated share {scan['leaked_share']:.0%} (reference: {scan['reference']}).")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the source's own arithmetic
SOURCE = {"originals": 108_000, "val_fraction": 0.15, "val_rows": 421_200,
          "table": {"easy": (5_400, 1.3), "medium": (93_600, 22.2), "hard": (275_400, 65.4)},
          "tier_means": {"easy": 0.44, "medium": 0.14, "hard": 0.19}, "logged_overall": 0.181,
          "per_group": {"easy": (0.405, 0.460, 0.451), "medium": (0.127, 0.138, 0.155), "hard": (0.224, 0.200, 0.168)}}


def source_composition(source: dict = SOURCE) -> tuple[pd.DataFrame, list[str]]:
    """The source analysis's validation-composition table, re-derived from its own counts (its
    originals, nine groups, copies per tier, split fraction), and its overall-metric formula redone."""
    per_group = source["originals"] / len(GROUPS)
    tiers = pd.Series(GROUPS).value_counts().reindex(["easy", "medium", "hard"])
    rows = []
    for tier, n_groups in tiers.items():
        derived = n_groups * per_group * (1 + COPIES[tier]) * source["val_fraction"]
        logged, pct = source["table"][tier]
        rows.append({"tier": tier, "source_val_rows": logged, "source_percent": pct, "derived_val_rows": derived,
                     "derived_percent": 100 * derived / source["val_rows"]})
    t = pd.DataFrame(rows).set_index("tier")
    listed = t["source_val_rows"].sum()
    formula = lambda counts, total, means: sum(counts[k] * means[k] for k in counts.index) / total  # noqa: E731
    means = source["tier_means"]
    exact = {k: float(np.mean(v)) for k, v in source["per_group"].items()}
    lines = [
        f"the source's counts ({source['originals']:,} originals, {source['val_fraction']:.0%} to validation) give "
        f"{t['derived_val_rows'].sum():,.0f} validation rows, as it states ({source['val_rows']:,}); its table lists "
        f"{listed:,.0f} of them ({100 * listed / source['val_rows']:.1f}%): its medium row "
        f"({t.loc['medium', 'source_val_rows']:,.0f}) should be {t.loc['medium', 'derived_val_rows']:,.0f} "
        f"({t.loc['medium', 'derived_percent']:.1f}%)",
        f"its formula with its rounded tier means gives {formula(t['source_val_rows'], source['val_rows'], means):.3f} "
        f"over {source['val_rows']:,} rows; it reaches {formula(t['source_val_rows'], listed, means):.3f} only over "
        f"the {listed:,.0f} rows its table lists",
        f"with the derived counts and the tier means of its per-group table "
        f"({', '.join(f'{k} {v:.3f}' for k, v in exact.items())}) it gives "
        f"{formula(t['derived_val_rows'], source['val_rows'], exact):.3f}, as logged ({source['logged_overall']})",
    ]
    return t, lines
