"""cumsum, sort, index_select, unflatten, addcmul, reshape_as and tensors made from a shape.

Each op is either understood (the widened model computes the same outputs, ``ops_helpers``) or
blocks the groups it touches with a reason naming the op. Along a non-channel dim, ``cumsum``,
``sort`` and ``index_select`` act on every channel alike. ``unflatten`` of the channel dim into
``(-1, *trailing)`` gives back what a flatten merged. ``addcmul(x, a, b)`` joins three operands.
``reshape_as`` between tensors that carry the same channels the same way joins them.
``zeros_like(x)`` and ``x.new_zeros(x.shape)`` carry ``x``'s layout and one constant, which a join
partner may carry into new channels under any init.
"""

from __future__ import annotations

import re

import pytest
import torch
from ops_helpers import widen_all_and_compare
from torch import nn

import netsurgeon

X = torch.randn(2, 3, 6, 6)


class Around(nn.Module):
    """``head(op(bn(conv(x))))`` with ``conv`` making a group of 6 channels."""

    def __init__(self, fn, head_in: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fn = fn
        self.head = nn.Conv2d(head_in, 4, 1)

    def forward(self, x):
        return self.head(self.fn(self.bn(self.conv(x))))


class Three(nn.Module):
    """Three convs of one width combined by ``fn(a, b, c, scale)``."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.a, self.b, self.c = (nn.Conv2d(3, 6, 3, padding=1) for _ in range(3))
        self.scale = nn.Parameter(torch.rand(1, 6, 1, 1) + 0.5)
        self.fn = fn
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.head(self.fn(self.a(x), self.b(x), self.c(x), self.scale))


PASSING = {
    "cumsum-W": lambda z: z.cumsum(3),
    "cumsum-H-negative": lambda z: torch.cumsum(z, dim=-2),
    "sort-values": lambda z: z.sort(dim=-1)[0],
    "sort-descending-H": lambda z: torch.sort(z, 2, descending=True)[0] + z,
    "topk-W": lambda z: z.topk(6, dim=3)[0],
    "index_select-H": lambda z: z.index_select(2, torch.tensor([5, 0, 3, 3, 1, 2])),
    "unflatten-back": lambda z: z.flatten(1).unflatten(1, (-1, 6, 6)),
    "unflatten-module": nn.Sequential(nn.Flatten(2), nn.Unflatten(2, (6, 6))),
    "unflatten-entries": lambda z: (
        z.flatten(1).unflatten(1, (-1, 4, 9)).flatten(2).unflatten(2, (6, 6))
    ),
    "unflatten-W": lambda z: z.unflatten(3, (2, 3)).flatten(3),
    "addcmul": lambda z: torch.addcmul(z, z.sigmoid(), z, value=0.5),
    "addcdiv-method": lambda z: z.addcdiv(z, z.exp() + 1),
    "reshape_as-same": lambda z: (2 * z).reshape_as(z),
    "reshape_as-unflatten": lambda z: z.flatten(1).tanh().reshape_as(z),
    "view_as": lambda z: z.flatten(2).view_as(z),
    "ones_like-mul": lambda z: z * torch.ones_like(z),
    "zeros_like-maximum": lambda z: torch.maximum(z, torch.zeros_like(z)),
    "full_like-add": lambda z: z + torch.full_like(z, 0.5),
    "new_zeros-shape": lambda z: z + z.new_zeros(z.shape),
    "new_ones-size": lambda z: z * z.new_ones(z.size()),
    "new_full-read-sizes": lambda z: z + z.new_full((z.size(0), z.size(1), 6, 6), 0.25),
}
SHAPES_NEEDED = {"unflatten-back", "reshape_as-unflatten", "view_as", "unflatten-entries"}


@pytest.mark.parametrize("case", sorted(PASSING))
@pytest.mark.parametrize("init", ["paper", "net2net"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_widening_through_an_understood_op_preserves_output(case, init, dtype):
    widened, _ = widen_all_and_compare(lambda: Around(PASSING[case]), X, dtype=dtype, init=init)
    assert widened == ["conv"]


@pytest.mark.parametrize("case", sorted(set(PASSING) - SHAPES_NEEDED))
def test_an_understood_op_needs_no_example_inputs(case):
    widened, _ = widen_all_and_compare(lambda: Around(PASSING[case]), X, shapes=False)
    assert widened == ["conv"]


@pytest.mark.parametrize("case", sorted(SHAPES_NEEDED))
def test_an_op_that_needs_shapes_says_to_pass_example_inputs(case):
    graph = netsurgeon.trace(Around(PASSING[case]))
    assert "pass example_inputs" in graph.unwidenable_reason("conv")


BLOCKED = {
    "cumsum-C": (lambda z: z.cumsum(1), 6, r"\.cumsum\(\) along dim 1 works across"),
    "cumprod-C": (lambda z: torch.cumprod(z, -3), 6, r"cumprod along dim -3 works across"),
    "sort-C": (lambda z: torch.sort(z, dim=1)[0], 6, r"sort along dim 1 works across"),
    "argsort-C": (lambda z: z.argsort(1).to(z.dtype), 6, r"argsort\(\) along dim 1"),
    "index_select-C": (
        lambda z: z.index_select(1, torch.tensor([0, 2])),
        2,
        "index_select along the channel dim picks channels by index",
    ),
    "unflatten-C-heads": (
        lambda z: z.unflatten(1, (2, 3)).sum(1),
        3,
        r"\.unflatten\(\) of the channel dim into \(2, 3\) fixes how the channels split",
    ),
    "unflatten-C-entries": (
        lambda z: z.flatten(1).unflatten(1, (-1, 72)).unflatten(2, (6, 12)),
        3,
        r"into \(-1, 72\) splits each channel's entries",
    ),
    "reshape_as-fixed": (
        lambda z: z.flatten(2).reshape_as(torch.zeros(2, 6, 36)).unflatten(2, (6, 6)),
        6,
        "reshape_as.* ties these channels to a tensor whose shape does not follow them",
    ),
    "new_zeros-computed": (
        lambda z: z[:, :3] + z.new_zeros(z.size(0), z.size(1) // 2, 6, 6),
        3,
        r"new_zeros\(\) with the computed size 'floordiv' fixes a shape",
    ),
}


@pytest.mark.parametrize("case", sorted(BLOCKED))
def test_an_op_across_the_channels_blocks_the_group_naming_the_op(case):
    fn, head_in, match = BLOCKED[case]
    graph = netsurgeon.trace(Around(fn, head_in), X, strict=True)
    assert re.search(match, graph.unwidenable_reason("conv")), graph.unwidenable_reason("conv")


# -- addcmul / addcdiv: three operands, one group ---------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b, c, s: torch.addcmul(a, b, c.sigmoid()),
        lambda a, b, c, s: a.addcdiv(b, c.exp() + 1, value=2.0),
        lambda a, b, c, s: torch.addcmul(a * s, b, c),
    ],
    ids=["addcmul", "addcdiv", "addcmul-scaled"],
)
@pytest.mark.parametrize("init", ["paper", "net2net"])
def test_addcmul_joins_its_three_operands_into_one_widenable_group(fn, init):
    graph = netsurgeon.trace(Three(fn), X)
    assert graph.group_of("a") is graph.group_of("c") and graph.group_of("a").widenable
    assert set(graph.group_of("b").producers) == {"a", "b", "c"}
    widened, _ = widen_all_and_compare(lambda: Three(fn), X, init=init)
    assert widened == ["a"]


def test_addcdiv_by_a_free_parameter_grows_it_with_ones_so_the_new_channels_stay_finite():
    model = Three(lambda a, b, c, s: torch.addcdiv(a, b, s)).double().eval()
    x = X.double()
    before = model(x)
    netsurgeon.widen(model, {"a": 2}, example_inputs=x)
    torch.testing.assert_close(model.scale[0, 6:, 0, 0], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(model(x), before, atol=1e-12, rtol=0)


@pytest.mark.parametrize("case", sorted(PASSING))
def test_widening_through_an_understood_op_preserves_the_train_mode_output(case):
    widened, _ = widen_all_and_compare(lambda: Around(PASSING[case]), X, train=True)
    assert widened == ["conv"]


class BatchSized(nn.Module):
    """``h + h.new_zeros(b * 1, 1, 1, 1)`` with ``b`` read off the batch dim of a tracked tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        h = self.conv(x)
        return self.head(h + h.new_zeros(h.mean((2, 3)).size(0) * 1, 1, 1, 1))


def test_a_new_tensor_sized_by_arithmetic_on_a_batch_size_read_is_understood():
    assert netsurgeon.trace(BatchSized(), X, strict=True).group_of("conv").widenable
    widened, _ = widen_all_and_compare(BatchSized, X)
    assert widened == ["conv"]
