"""``x ** p`` and ``p ** x`` with a per-channel parameter ``p``, and ``x ** 2`` (PoolFormer v2's
StarReLU): element-wise, so the widening keeps the output. A new entry of ``p`` is 1, which keeps
every new channel finite (``1 ** x = 1``, ``x ** 1 = x``); with 0, ``0 ** x`` of a negative new
channel would be ``inf``, and ``inf`` read through a zero column is ``nan``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netsurgeon


class PowNet(nn.Module):
    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.fc1 = nn.Linear(4, 6)
        self.p = nn.Parameter(torch.rand(6) + 0.5)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.where == "exponent":
            h = h.abs() ** self.p
        elif self.where == "base":
            h = self.p**h
        else:
            h = torch.relu(h) ** 2
        return self.fc2(h)


@pytest.mark.parametrize("where", ["exponent", "base", "square"])
def test_a_power_with_a_per_channel_parameter_widens_exactly(where: str) -> None:
    torch.manual_seed(0)
    model = PowNet(where).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    before = model(x)
    graph = netsurgeon.trace(model, x)
    assert graph.group_of("fc1").widenable, graph.unwidenable_reason("fc1")
    netsurgeon.widen(model, {"fc1": 3}, graph=graph, generator=torch.Generator().manual_seed(1))
    if where != "square":
        assert model.p.shape == (9,) and torch.equal(
            model.p[6:], torch.ones(3, dtype=torch.float64)
        )
    torch.testing.assert_close(model(x), before, rtol=1e-12, atol=1e-12)
