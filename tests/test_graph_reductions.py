"""Spatial reductions (global average pooling spelled as ``x.mean((2, 3))``) and clamps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netsurgeon
from netsurgeon.errors import UnsupportedModelError


class GapNet(nn.Module):
    def __init__(self, reduce) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)
        self.reduce = reduce

    def forward(self, x):
        return self.fc(self.reduce(self.conv(x).clamp(min=0)))


@pytest.mark.parametrize(
    "reduce",
    [
        lambda z: z.mean((2, 3)),
        lambda z: torch.mean(z, dim=(-2, -1)),
        lambda z: z.amax(dim=(2, 3)),
        lambda z: z.sum((3, 2)),
        lambda z: z.mean((2, 3), keepdim=True).flatten(1),
    ],
    ids=["mean-method", "torch.mean-negative", "amax", "sum-unordered", "keepdim-then-flatten"],
)
@pytest.mark.parametrize("with_shapes", [False, True])
def test_spatial_reduction_connects_conv_to_linear_and_widening_preserves_output(
    reduce, with_shapes
):
    model = GapNet(reduce).eval()
    x = torch.randn(2, 3, 9, 9)
    graph = netsurgeon.trace(model, x if with_shapes else None)
    assert graph.consumers_of("conv") == ["fc"]
    assert graph.edges_from("conv")[0].multiplicity == 1
    before = model(x)
    netsurgeon.widen(model, {"conv": 3})
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=0)
    assert model.fc.in_features == 11


@pytest.mark.parametrize(
    ("reduce", "match"),
    [
        (lambda z: z.mean(1), "includes the batch or channel dim"),
        (lambda z: z.mean((0, 2, 3)), "includes the batch or channel dim"),
        (lambda z: z.mean(), "reduction over dims None"),
    ],
    ids=["channel", "batch", "all"],
)
def test_reducing_the_channel_or_batch_dim_is_refused(reduce, match):
    with pytest.raises(UnsupportedModelError, match=match):
        netsurgeon.trace(GapNet(reduce))
