"""The training script's evaluation code, as it logged history.json."""

import numpy as np


def roc(scores, labels):
    """ROC by cumulative sums over the rows sorted by score (one point per row)."""
    order = np.argsort(-scores, kind="stable")
    y = labels[order]
    tps = np.cumsum(y)
    fps = np.cumsum(1 - y)
    return fps / fps[-1], tps / tps[-1], scores[order]


def tpr_at_fpr(scores, labels, target):
    fpr, tpr, _ = roc(scores, labels)
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


def fpr_at_tpr(scores, labels, target):
    fpr, tpr, _ = roc(scores, labels)
    return float(fpr[tpr >= target].min())
