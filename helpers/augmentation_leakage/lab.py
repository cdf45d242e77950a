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


def model(seed: int = 0) -> ExtraTreesRegressor:
    """The lab's model: extremely randomised trees of bounded size (fast; enough capacity to
    memorise near-copies, too little to fit every group well when some groups dominate)."""
    return ExtraTreesRegressor(n_estimators=30, max_leaf_nodes=100, max_features=0.5, random_state=seed, n_jobs=1)


def fit(rows: pd.DataFrame, seed: int = 0, features=FEATURES) -> ExtraTreesRegressor:
    return model(seed).fit(rows[list(features)].to_numpy(), rows["target"].to_numpy())


def per_group_mse(est, rows: pd.DataFrame, features=FEATURES) -> pd.Series:
    """scikit-learn's mean_squared_error of the model's predictions, per group."""
    pred = est.predict(rows[list(features)].to_numpy())
    t = rows.assign(pred=pred)
    return t.groupby("group", sort=True).apply(lambda g: mean_squared_error(g["target"], g["pred"]),
                                              include_groups=False)


def mse(est, rows: pd.DataFrame, features=FEATURES) -> float:
    return float(mean_squared_error(rows["target"], est.predict(rows[list(features)].to_numpy())))


# --------------------------------------------------------------------------- the lab
@dataclass
class LabConfig:
    seed: int = 0
    per_group: int = 40  # parents per group in the development data
    test_per_group: int = 60  # fresh parents per group in the clean held-out test set
    val_fraction: float = 0.15
    noise: float = 0.02
    copies: dict = field(default_factory=lambda: dict(COPIES))


def arms(cfg: LabConfig) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """(train, val) of the three arrangements on the same parents."""
    parents = make_parents(cfg.per_group, cfg.seed)
    aug = augment(parents, cfg.copies, cfg.noise, cfg.seed + 1)
    leaky_val = split_rows(aug, cfg.val_fraction, cfg.seed)
    # (b) the source's fix: split the originals, then augment the training part only
    p_val = split_rows(parents, cfg.val_fraction, cfg.seed)
    b_train = augment(parents[~p_val], cfg.copies, cfg.noise, cfg.seed + 1)
    # (c) the general rule: augment however, but split by the pre-augmentation parent
    g_val = split_by_parent(aug, cfg.val_fraction, cfg.seed)
    return {"(a) augment, then split rows": (aug[~leaky_val], aug[leaky_val]),
            "(b) split, then augment train": (b_train, parents[p_val]),
            "(c) split by parent (GroupShuffleSplit)": (aug[~g_val], aug[g_val])}


def run(cfg: LabConfig | None = None) -> pd.DataFrame:
    """Each arrangement's train, validation and clean-test MSE (and noise 5% for the leaky one)."""
    cfg = cfg or LabConfig()
    test = make_parents(cfg.test_per_group, cfg.seed + 1000, first_id=10**6)
    rows = []
    for noise in dict.fromkeys((cfg.noise, 0.05)):
        c = LabConfig(**{**cfg.__dict__, "noise": noise})
        for name, (tr, va) in arms(c).items():
            if noise != cfg.noise and not name.startswith("(a)"):
                continue
            est = fit(tr, cfg.seed)
            v, t = mse(est, va), mse(est, test)
            rows.append({"arrangement": name, "noise": noise, "train_mse": mse(est, tr), "val_mse": v,
                         "test_mse": t, "val_over_test": v / t, "train_rows": len(tr), "val_rows": len(va)})
    return pd.DataFrame(rows)
