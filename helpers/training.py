"""Small training utilities shared by the simulators and the mechanism labs."""

from __future__ import annotations

import contextlib

import torch
from torch.optim.adam import adam


@contextlib.contextmanager
def deterministic_torch(seed: int):
    """Seeded, single-threaded torch inside the block; the thread count is restored after.

    One thread fixes the summation order; the ops the simulators and labs use (linear layers,
    ReLU, dropout, randn) are deterministic on CPU, so ``torch.use_deterministic_algorithms``
    is not needed (and it imports ``torch._dynamo``, about a second).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class FastAdam:
    """torch.optim.Adam's update (``torch.optim.adam.adam``, the single-tensor path it takes on
    CPU), same numbers, without building a ``torch.optim.Optimizer``: its first step imports
    ``torch._dynamo``, over a second of a notebook's run time."""

    def __init__(self, params, lr: float):
        self.params = list(params)
        self.lr = lr
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.tensor(0.0) for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        adam(self.params, [p.grad for p in self.params], self.exp_avg, self.exp_avg_sq, [], self.steps,
             foreach=False, amsgrad=False, beta1=0.9, beta2=0.999, lr=self.lr, weight_decay=0.0,
             eps=1e-8, maximize=False)
