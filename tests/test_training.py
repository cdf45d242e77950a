"""helpers.training: the labs' optimiser is torch's Adam, to the bit."""

import pytest

from helpers.training import FastAdam


@pytest.mark.xdist_group("torchmetrics")  # torch.optim.Adam imports torch._dynamo; see conftest.TORCHMETRICS
def test_fast_adam_matches_torch_optim_adam():
    import torch

    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    ours, ref = FastAdam(a.parameters(), lr=0.01), torch.optim.Adam(b.parameters(), lr=0.01)
    x = torch.randn(16, 4)
    for _ in range(5):
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            (model(x) ** 2).mean().backward()
            opt.step()
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, torch.nn.Linear(4, 3).weight)
