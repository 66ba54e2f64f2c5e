"""Random stacks of the spatial and shape ops widen exactly (hypothesis).

A model is ``conv -> op -> conv -> op -> ... -> conv``, each op drawn from those the analysis
understands: padding (modules, and constant padding of the channel dim), pixel unshuffle, flips
and rolls of the map, ``cumsum``/``sort`` along the map, joins with ``ones_like``/``new_zeros``,
``addcmul``, and un-flattens that give back a flatten. Every widenable group grows by a random
multiple of its granularity; the outputs stay within the bounds of ``ops_helpers`` (float64
``1e-9``, float32 ``1e-5``, relative to ``1 + max |y|``), in eval and train mode, for the paper
and net2net inits, with and without ``example_inputs``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from ops_helpers import TOLERANCE, randomise_
from torch import nn

import netsurgeon

EXAMPLES = max(10, settings().max_examples // 4)


class Op(nn.Module):
    """One drawn op: ``(name, argument)``; its output shape is :func:`out_shape`."""

    def __init__(self, name: str, arg: int) -> None:
        super().__init__()
        self.name, self.arg = name, arg
        self.pad = {"reflect": nn.ReflectionPad2d, "zero": nn.ZeroPad2d}.get(name, nn.Identity)(arg)

    def forward(self, x):
        name, a = self.name, self.arg
        if name in ("reflect", "zero"):
            return self.pad(x)
        if name == "channel-pad":
            return F.pad(x, (0, 0, 0, 0, a, a + 1), value=0.5)
        if name == "unshuffle":
            return F.pixel_unshuffle(x, 2)
        if name == "flip":
            return x.flip(2 + a % 2)
        if name == "roll":
            return torch.roll(x, a, dims=3)
        if name == "cumsum":
            return x.cumsum(-1) / 4
        if name == "sort":
            return x.sort(dim=2)[0]
        if name == "ones-like":
            return x * torch.ones_like(x) + torch.full_like(x, 0.5)
        if name == "new-zeros":
            return torch.maximum(x, x.new_zeros(x.shape))
        if name == "addcmul":
            return torch.addcmul(x, x.tanh(), x, value=0.5)
        if name == "unflatten":
            return x.flatten(1).unflatten(1, (-1, x.shape[2], x.shape[3]))
        return x.flip(3).reshape_as(x)  # "reshape-as"


def out_shape(name: str, arg: int, c: int, h: int) -> tuple[int, int]:
    if name in ("reflect", "zero"):
        return c, h + 2 * arg
    if name == "channel-pad":
        return c + 2 * arg + 1, h
    if name == "unshuffle":
        return 4 * c, h // 2
    return c, h


OPS = ("reflect", "zero", "channel-pad", "unshuffle", "flip", "roll", "cumsum", "sort",
       "ones-like", "new-zeros", "addcmul", "unflatten", "reshape-as")  # fmt: skip
NEEDS_SHAPES = {"unflatten"}


class Stack(nn.Module):
    def __init__(self, widths: list[int], ops: list[tuple[str, int]], size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, h = 3, size
        for width, (name, arg) in zip(widths, ops, strict=True):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), Op(name, arg)]
            c, h = out_shape(name, arg, width, h)
        layers.append(nn.Conv2d(c, 2, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


@st.composite
def stacks(draw: st.DrawFn) -> tuple:
    depth = draw(st.integers(1, 3))
    widths = [draw(st.integers(1, 6)) for _ in range(depth)]
    ops = [(draw(st.sampled_from(OPS)), draw(st.integers(1, 2))) for _ in range(depth)]
    return widths, ops


@settings(max_examples=EXAMPLES)
@given(
    spec=stacks(),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    init=st.sampled_from(["paper", "net2net"]),
    train=st.booleans(),
    shapes=st.booleans(),
    multiple=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_random_stacks_of_understood_ops_widen_exactly(
    spec, dtype, init, train, shapes, multiple, seed
):
    widths, ops = spec
    torch.manual_seed(seed)
    model = randomise_(Stack(widths, ops, size=8)).to(dtype).train(train)
    x = torch.randn(3, 3, 8, 8, dtype=dtype)
    graph = netsurgeon.trace(model, x if shapes else None, strict=True)
    plan = {g.name: multiple * g.granularity for g in graph.groups if g.widenable}
    if shapes or not NEEDS_SHAPES & {name for name, _ in ops}:
        assert len(plan) == len(widths)  # every conv but the head is widenable
    before = model(x)
    reference = copy.deepcopy(model)
    netsurgeon.widen(model, plan, init=init, example_inputs=x if shapes else None)
    after = model(x)
    scale = 1 + before.abs().max().item()
    torch.testing.assert_close(after, before, atol=TOLERANCE[dtype] * scale, rtol=0)
    grown = [n for n, p in model.named_parameters() if p.shape != reference.get_parameter(n).shape]
    assert bool(grown) == bool(plan)
