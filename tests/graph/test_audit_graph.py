"""Behaviours of the graph analysis pinned with hand-computed expectations.

Each test pins one behaviour that a planted single-point bug could change without any other test
noticing: the expected values are worked out by hand in the test (never read back from the
library), and each test names the mutation it kills.

* A softmax over a dim that cannot be decided without ``example_inputs`` blocks its group.
* A grouped conv followed by a GroupNorm: growth comes in ``blocks * channels per norm group``.
* A free per-channel parameter grows with 1 where it multiplies, 0 where it adds, and learns.
* A ``cat`` of flattened operands, a reshape merge of an already-flattened tensor and an
  ``unsqueeze`` at the channel position widen exactly.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netsurgeon
from netsurgeon.errors import WidenError


def _assert_widen_preserves(model: nn.Module, x: torch.Tensor, plan: dict, **kwargs) -> nn.Module:
    """Widen a float64 copy in eval mode; the output must not move (float64: 1e-12)."""
    model = model.double().eval()
    x = x.double()
    reference = copy.deepcopy(model)
    netsurgeon.widen(model, plan, generator=torch.Generator().manual_seed(0), **kwargs)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0.0, atol=1e-12)
    return model


# -- softmax over an undecidable dim ----------------------------------------------------------


class SoftmaxOverDimOne(nn.Module):
    """``softmax(dim=1)`` after a Linear: the channels if the input is ``(B, F)``, not if ``(B, T, F)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x).softmax(dim=1))


def test_softmax_over_a_dim_undecidable_without_example_inputs_blocks_its_group() -> None:
    """Mutation killed: ``same_dim(dim) is not False`` -> ``is True`` (undecided passes)."""
    graph = netsurgeon.trace(SoftmaxOverDimOne())
    group = graph.group_of("fc1")
    assert not group.widenable
    assert re.search(r"softmax\(\) over dim 1", group.reason)
    assert graph.widenable_layers == []  # fc2 reaches the output
    with pytest.raises(WidenError, match=r"softmax\(\) over dim 1"):
        netsurgeon.widen(SoftmaxOverDimOne(), {"fc1": 2})


def test_softmax_over_dim_one_of_a_sequence_widens_once_example_inputs_decide_it() -> None:
    """With ``(B, T, F)`` inputs dim 1 is the sequence: the softmax is per channel, exact."""
    x = torch.randn(3, 5, 4)
    assert netsurgeon.trace(SoftmaxOverDimOne(), x).group_of("fc1").widenable
    model = _assert_widen_preserves(SoftmaxOverDimOne(), x, {"fc1": 3}, example_inputs=x.double())
    assert model.fc1.out_features == 9 and model.fc2.in_features == 9


def test_softmax_over_dim_one_of_a_batch_of_vectors_blocks_with_example_inputs_too() -> None:
    """With ``(B, F)`` inputs dim 1 is the channel dim: the softmax mixes the channels."""
    group = netsurgeon.trace(SoftmaxOverDimOne(), torch.randn(3, 4)).group_of("fc1")
    assert not group.widenable and re.search(r"softmax\(\) over dim 1", group.reason)


# -- grouped conv followed by GroupNorm ---------------------------------------------------------


class GroupedConvGroupNorm(nn.Module):
    """conv(2 groups, 8 out) -> GroupNorm(4 groups of 2 channels) -> relu -> conv(8 -> 3).

    The grouped conv splits its 8 output channels into 2 blocks of 4; each block grows at its own
    end. GroupNorm normalises runs of 2 channels; a block's new channels must form whole norm
    groups, so each block grows by a multiple of 2, and the layer by a multiple of
    ``2 blocks * 2 channels = 4``. The block count (2) and the norm-group size (2) share the factor
    2: ``lcm(2, 2) = 2`` would be wrong (1 new channel per block splits a norm group).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.norm = nn.GroupNorm(4, 8)
        self.head = nn.Conv2d(8, 3, 1)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.normal_(0.0, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.norm(self.conv(x))))


def test_grouped_conv_then_group_norm_grows_by_blocks_times_the_norm_group_size() -> None:
    """Mutation killed: ``granularity=blocks * unit`` -> ``math.lcm(blocks, unit)`` (or either)."""
    group = netsurgeon.trace(GroupedConvGroupNorm()).group_of("conv")
    assert group.widenable, group.reason
    assert (group.splits, group.granularity) == (2, 4)
    with pytest.raises(WidenError, match="grows in multiples of 4"):
        netsurgeon.widen(GroupedConvGroupNorm(), {"conv": 2})


def test_grouped_conv_then_group_norm_widened_by_its_granularity_is_exact() -> None:
    x = torch.randn(2, 4, 5, 5)
    model = _assert_widen_preserves(GroupedConvGroupNorm(), x, {"conv": 8})
    # 8 new channels: 4 per block, i.e. 2 new norm groups per block, 4 in all.
    assert (model.conv.out_channels, model.norm.num_channels, model.norm.num_groups) == (16, 16, 8)
    assert model.head.in_channels == 16


# -- free per-channel parameters: fills and gradients -----------------------------------------


class ScaledBlock(nn.Module):
    """``conv -> (op with a (C, 1, 1) parameter) -> conv``: a layer scale, a shift, ..."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, 4).reshape(4, 1, 1))
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x))
        if self.op == "mul":
            h = h * self.scale
        elif self.op == "div":
            h = h / self.scale
        elif self.op == "add":
            h = h + self.scale
        else:
            h = h - self.scale
        return self.head(h)


#: The fill of a new entry, by hand: the neutral element of the op it takes part in.
NEUTRAL = {"mul": 1.0, "div": 1.0, "add": 0.0, "sub": 0.0}


@pytest.mark.parametrize("op", list(NEUTRAL))
def test_new_entries_of_a_free_parameter_are_neutral_for_its_op_and_receive_gradient(
    op: str,
) -> None:
    """Mutation killed: ``fill = 1.0 if label in _MULTIPLICATIVE else 0.0`` swapped or constant.

    With the paper init the new channels never reach the output while the consumer's new columns
    are zero, so the output cannot see the fill: only the values themselves pin it. After one SGD
    step the new columns are nonzero, and the new entries of the parameter get a gradient.
    """
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    model = _assert_widen_preserves(ScaledBlock(op), x, {"conv": 3})
    old = torch.linspace(0.5, 2.0, 4, dtype=torch.float64).reshape(4, 1, 1)
    assert model.scale.shape == (7, 1, 1)
    assert torch.equal(model.scale[:4], old)
    assert torch.equal(model.scale[4:], torch.full((3, 1, 1), NEUTRAL[op], dtype=torch.float64))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    assert model.scale.grad.shape == (7, 1, 1)
    assert (model.scale.grad[4:].abs() > 0).all()


# -- ops that widen exactly rather than being refused -------------------------------------------


class CatOfFlattened(nn.Module):
    """Two conv branches, each flattened, concatenated, then a Linear over ``4*9 + 3*9`` features."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3)
        self.b = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(4 * 9 + 3 * 9, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.flatten(F.relu(self.a(x)), 1), torch.flatten(self.b(x), 1)], 1)
        return self.fc(h)


class MergeAfterFlatten(nn.Module):
    """``(B, C, 3, 3) -flatten(1, 2)-> (B, 3C, 3) -reshape(B, -1)-> (B, 9C)``: a second merge."""

    def __init__(self, batch_literal: bool) -> None:
        super().__init__()
        self.batch_literal = batch_literal
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(4 * 9, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(torch.tanh(self.conv(x)), 1, 2)
        h = h.reshape(3, -1) if self.batch_literal else h.reshape(h.size(0), -1)
        return self.fc(h)


class UnsqueezeAtTheChannels(nn.Module):
    """``(B, C) -unsqueeze(1)-> (B, 1, C)``: the channels move to dim 2 (the new dim is before)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)).unsqueeze(1)).squeeze(1)


def test_a_cat_of_flattened_operands_widens_exactly() -> None:
    """Mutation killed: the operand's flatten ``factor`` dropped from the cat's segments.

    Each new channel of ``a`` adds 9 features at the end of ``a``'s part (before ``b``'s), each
    of ``b`` 9 at the very end: ``fc`` reads ``(4 + 2) * 9 + (3 + 1) * 9 = 90`` features.
    """
    x = torch.randn(3, 2, 5, 5)
    model = _assert_widen_preserves(
        CatOfFlattened(), x, {"a": 2, "b": 1}, example_inputs=x.double()
    )
    assert model.fc.in_features == 90
    assert torch.equal(model.fc.weight[:, 36:54], torch.zeros(2, 18, dtype=torch.float64))
    assert torch.equal(model.fc.weight[:, 81:], torch.zeros(2, 9, dtype=torch.float64))


@pytest.mark.parametrize("batch_literal", [False, True], ids=["size0", "literal"])
def test_a_reshape_merge_of_an_already_flattened_tensor_widens_exactly(batch_literal: bool) -> None:
    """Mutation killed: the merged factor replaces the incoming one instead of multiplying it.

    ``flatten(1, 2)`` gives each channel 3 entries, the reshape 3 more each: 9 per channel, so 2
    new channels give ``fc`` ``(4 + 2) * 9 = 54`` inputs, its new columns being 36..53.
    """
    x = torch.randn(3, 2, 5, 5)
    model = _assert_widen_preserves(
        MergeAfterFlatten(batch_literal), x, {"conv": 2}, example_inputs=x.double()
    )
    assert model.fc.in_features == 54
    assert torch.equal(model.fc.weight[:, 36:], torch.zeros(2, 18, dtype=torch.float64))


def test_an_unsqueeze_at_the_channel_position_widens_exactly() -> None:
    """Mutation killed: ``position <= channel`` -> ``position < channel`` in ``unsqueeze``."""
    x = torch.randn(3, 4)
    graph = netsurgeon.trace(UnsqueezeAtTheChannels(), x)
    assert graph.group_of("fc1").widenable, graph.group_of("fc1").reason
    model = _assert_widen_preserves(
        UnsqueezeAtTheChannels(), x, {"fc1": 3}, example_inputs=x.double()
    )
    assert (model.fc1.out_features, model.fc2.in_features) == (8, 8)
