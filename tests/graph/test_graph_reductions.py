"""Spatial reductions (``x.mean((2, 3))``), clamps, and squeeze/unsqueeze of non-channel dims."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import netsurgeon


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
        (lambda z: z.mean(1), r"over dims \(1,\) reduces across the channels"),
        (lambda z: z.mean((1, 2, 3)), r"over dims \(1, 2, 3\) reduces across the channels"),
        (lambda z: z.mean(), "over every dim reduces the channels"),
    ],
    ids=["channel", "channel-and-spatial", "all"],
)
def test_reducing_across_the_channels_blocks_their_group(reduce, match):
    graph = netsurgeon.trace(GapNet(reduce), strict=True)
    assert re.search(match, graph.unwidenable_reason("conv") or "")
    assert graph.widenable_layers == []


def test_reducing_the_batch_dim_keeps_the_channels():
    model = GapNet(lambda z: z.mean((0, 2, 3), keepdim=True).flatten(1)).eval()
    x = torch.randn(3, 3, 6, 6)
    graph = netsurgeon.trace(model, x)
    assert graph.consumers_of("conv") == ["fc"]
    before = model(x)
    netsurgeon.widen(model, {"conv": 3}, graph=graph)
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=0)


class SqueezeNet(nn.Module):
    """Conv1d -> global pool -> squeeze(-1) -> view(size(dim=0), -1) -> 1-unit head -> squeeze."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        z = self.pool(torch.relu(self.conv(x))).squeeze(-1)
        return self.head(z.view(z.size(dim=0), -1)).squeeze(-1)


class UnsqueezeNet(nn.Module):
    """Linear -> unsqueeze(-1) -> Conv1d(k=1) -> squeeze(2) -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 8)
        self.conv = nn.Conv1d(8, 4, 1)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.conv(self.fc(x).unsqueeze(-1)).squeeze(2))


@pytest.mark.parametrize("with_shapes", [False, True])
def test_squeeze_of_spatial_dims_and_keyword_batch_size_keep_the_channels(with_shapes):
    model = SqueezeNet().eval()
    x = torch.randn(4, 3, 10)
    graph = netsurgeon.trace(model, x if with_shapes else None)
    assert graph.consumers_of("conv") == ["head"]
    assert graph.widenable_layers == ["conv"]
    assert "removes the channel dim" in graph.unwidenable_reason("head")
    before = model(x)
    netsurgeon.widen(model, {"conv": 2})
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=0)


def test_unsqueeze_moves_linear_features_onto_the_conv_channel_dim():
    model = UnsqueezeNet().eval()
    x = torch.randn(5, 3)
    graph = netsurgeon.trace(model)
    assert graph.consumers_of("fc") == ["conv"]
    assert graph.consumers_of("conv") == ["out"]
    before = model(x)
    netsurgeon.widen(model, {"fc": 3, "conv": 2})
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=0)
    assert (model.conv.in_channels, model.out.in_features) == (11, 6)


def test_ambiguous_squeeze_blocks_the_channels():
    graph = netsurgeon.trace(GapNet(lambda z: z.squeeze()))  # ambiguous for a batch of one
    assert "dim=None" in (graph.unwidenable_reason("conv") or "")


def test_channels_squeezed_onto_the_batch_dim_are_a_batch_dim_of_the_linear():
    """``squeeze(0)`` of a batch of one puts the channels on dim 0: ``fc`` maps the last dim of
    every channel alike, so the channels pass through it and reach the model output."""
    graph = netsurgeon.trace(GapNet(lambda z: z.squeeze(0)), torch.randn(1, 3, 10, 10))
    assert graph.group_of("conv").reaches_output
    assert graph.consumers_of("conv") == []
