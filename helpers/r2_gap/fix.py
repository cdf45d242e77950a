"""The fix for a distributed evaluation's R²: count each sample once, reduce sums (not metrics).

Functions to copy into a training script. Notebook 01 prints this file and the tests run it on
gloo processes against scikit-learn, so the text shown is the code tested. It needs only torch
and an initialised process group; every rank calls it. ``validation_r2`` is the whole step:

    val_r2, val_r = validation_r2(model, val_loader, device)  # same values on every rank

with ``val_loader`` on a ``DistributedSampler`` and yielding ``(x, y, sample_id)``, where
``sample_id`` is the dataset index (e.g. a ``TensorDataset`` with ``torch.arange(len(ds))``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def unique_rows(sample_id: torch.Tensor) -> torch.Tensor:
    """Which of this rank's rows to keep so that every sample counts once across all ranks.

    ``sample_id``: the dataset index of each row this rank evaluated. DistributedSampler pads
    the set by repeating samples that other ranks already hold, so a rank alone cannot see its
    repeats: the ids of all ranks are gathered, and a row is kept where its id occurs first in
    rank order (rank 0's rows, then rank 1's, ...). Returns a boolean mask of this rank's rows.
    """
    ids = sample_id.reshape(-1).to(torch.int64)
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.int64, device=ids.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([ids.numel()], dtype=torch.int64, device=ids.device))
    sizes = [int(s.item()) for s in sizes]
    padded = torch.full((max(sizes),), -1, dtype=torch.int64, device=ids.device)
    padded[:ids.numel()] = ids  # all_gather needs equal lengths
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    everyone = torch.cat([g[:s] for g, s in zip(gathered, sizes, strict=True)])  # in rank order
    _, which = torch.unique(everyone, return_inverse=True)
    position = torch.arange(len(everyone), device=ids.device)
    first = torch.full((int(which.max()) + 1 if len(which) else 0,), len(everyone), device=ids.device)
    first = first.scatter_reduce(0, which, position, reduce="amin")  # first position of each id
    mine = position[sum(sizes[:rank]):sum(sizes[:rank + 1])]
    return first[which[mine]] == mine


def pooled_r2(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None) -> tuple[float, float]:
    """R² (scikit-learn's ``r2_score``) and Pearson r of the kept rows of all ranks together.

    R² = 1 - SSE/SST is a ratio of sums over the whole set, so each rank all-reduces its sums and
    every rank gets the same value (a mean of per-rank or per-batch R² is not it). Channels are
    flattened together, like ``r2_score(y.ravel(), p.ravel())``. The means are reduced first and
    the sums are then taken around them, which keeps them accurate when the target is far from 0.
    """
    if keep is not None:
        pred, target = pred[keep], target[keep]
    p, y = pred.double().reshape(-1), target.double().reshape(-1)
    totals = torch.stack([torch.ones_like(y).sum(), y.sum(), p.sum()])
    dist.all_reduce(totals)
    y_mean, p_mean = totals[1] / totals[0], totals[2] / totals[0]
    yc, pc, e = y - y_mean, p - p_mean, y - p
    sums = torch.stack([yc @ yc, pc @ pc, yc @ pc, e @ e])
    dist.all_reduce(sums)
    ss_y, ss_p, s_yp, sse = sums.tolist()
    return 1 - sse / ss_y, s_yp / (ss_y * ss_p) ** 0.5


def validation_r2(model: torch.nn.Module, loader, device="cpu") -> tuple[float, float]:
    """Evaluate this rank's shard, then R² and Pearson r over all ranks, each sample once.

    ``loader`` yields ``(x, y, sample_id)``; the model's output must have as many values as ``y``.
    """
    preds, targets, ids = [], [], []
    model.eval()
    with torch.no_grad():
        for x, y, sample_id in loader:
            y = y.to(device)
            preds.append(model(x.to(device)).reshape(y.shape))
            targets.append(y)
            ids.append(sample_id.to(device))
    keep = unique_rows(torch.cat(ids))
    return pooled_r2(torch.cat(preds), torch.cat(targets), keep)
