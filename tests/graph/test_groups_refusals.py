"""What cannot be widened exactly is refused by group, by name, and nothing else is lost.

A group whose channels reach an op that mixes them with a fixed layout (LayerNorm or GroupNorm
statistics over several channels, attention heads of a fixed embedding width, a channel shuffle,
a reshape or ``split`` with literal sizes) cannot grow without changing the function: it is
traced (``strict=True`` too) as ``widenable == False`` with a ``reason`` that names the op, while
every other group stays widenable and widens exactly. An op the analysis does not know blocks the
groups it touches with ``strict=False`` and raises with ``strict=True``, naming the fx node.

A plan is checked against the groups before anything changes: ``k`` a positive multiple of the
group's granularity (the message lists valid values), one ``k`` per group however many of its
producers the plan names. A widen that raises leaves the model's ``state_dict``, its parameter
objects and the optimizer's state bit-identical.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from coupled_models import DagSpec
from torch import nn

import netsurgeon
from netsurgeon import UnsupportedModelError, WidenError


class SequenceLayerNorm(nn.Module):
    """``conv -> tokens -> cat(fc1, fc1b) -> LayerNorm(8) -> fc2 -> mean -> out``: a LayerNorm
    across two groups' channels (one group's alone can be padded or tiled)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc1 = nn.Linear(6, 5)
        self.fc1b = nn.Linear(6, 3)
        self.norm = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = F.gelu(self.conv(x)).flatten(2).transpose(1, 2)
        joined = torch.cat([self.fc1(tokens), self.fc1b(tokens)], -1)
        return self.out(F.gelu(self.fc2(self.norm(joined))).mean(1))


class ConvNorm(nn.Module):
    """``conv1 -> norm -> act -> conv2 -> pool -> fc``, for a per-channel or grouped norm."""

    def __init__(self, norm: nn.Module, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.norm = norm
        self.conv2 = nn.Conv2d(width, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(F.relu(self.norm(self.conv1(x))))
        return self.fc(F.relu(x).mean((2, 3)))


class ConcatGroupNorm(nn.Module):
    """``GroupNorm(2, 8)`` over ``cat([a (3), b (5)])``: its first group straddles both."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(F.relu(self.conv2(x)).mean((2, 3)))


class Attention(nn.Module):
    """``conv -> tokens -> proj -> self-attention -> mean -> fc``, reading the attention weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.proj = nn.Linear(6, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(F.relu(self.conv(x)).flatten(2).transpose(1, 2))
        attended, weights = self.attn(tokens, tokens, tokens)  # weights: averaged over heads
        return self.fc(attended.mean(1) + weights.mean((1, 2))[:, None])


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle between two convs: channel ``i`` moves to ``(i % 4) * 2 + i // 4``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        b, c, h, w = x.size()
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, -1, h, w)
        return self.fc(F.relu(self.conv2(x)).mean((2, 3)))


class LiteralSplit(nn.Module):
    """``conv1`` split into 3 + 5 channels by literal sizes, one conv each, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = F.relu(self.conv1(x)).split([3, 5], 1)
        x = torch.cat([self.a(parts[0]), self.b(parts[1])], 1)
        return self.fc(F.relu(x).mean((2, 3)))


class LiteralView(nn.Module):
    """``x.view(-1, 128)`` after a conv on 4x4 maps: 8 channels x 16 positions, spelt out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.hidden = nn.Linear(128, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(F.relu(self.conv(x)).view(-1, 128))))


# name: (build, input shape, blocked layer, reason pattern, widenable layers)
UNWIDENABLE = {
    "LayerNorm over the channels": (
        SequenceLayerNorm,
        (2, 3, 4, 4),
        "fc1",
        r"LayerNorm 'norm' normalises across a concatenation of several groups",
        ["conv", "fc2"],
    ),
    "GroupNorm over a concatenation": (
        ConcatGroupNorm,
        (2, 3, 4, 4),
        "a",
        r"GroupNorm with 4 channels per group over a concatenation",
        ["conv2"],
    ),
    "MultiheadAttention embedding width": (
        Attention,
        (2, 3, 4, 4),
        "proj",
        r"embedding dim of attention 'attn' \(embed_dim=8\) is split into heads and the attention "
        r"weights it returns, averaged over the heads, are used",
        ["conv"],
    ),
    "channel shuffle": (
        Shuffle,
        (2, 3, 4, 4),
        "conv1",
        r"\.view\(\)(.|\n)*(fixes a size|splits or interleaves)",
        ["conv2"],
    ),
    "split with literal sizes": (
        LiteralSplit,
        (2, 3, 4, 4),
        "conv1",
        r"'split' along the channels with fixed sizes",
        ["a", "b"],
    ),
    "view to a literal width": (LiteralView, (2, 3, 4, 4), "conv", r"\(-1, 128\)", ["hidden"]),
}


@pytest.mark.parametrize("case", list(UNWIDENABLE))
@pytest.mark.parametrize("with_inputs", [False, True], ids=["traced", "shape-propagated"])
def test_a_group_that_cannot_grow_exactly_is_unwidenable_with_the_reason(
    case: str, with_inputs: bool
) -> None:
    build, shape, blocked, pattern, widenable = UNWIDENABLE[case]
    model = build()
    graph = netsurgeon.trace(model, torch.randn(shape) if with_inputs else None, strict=True)
    group = graph.group_of(blocked)
    assert not group.widenable
    assert group.reason is not None and re.search(pattern, group.reason), group.reason
    assert [n for n in widenable if not graph.group_of(n).widenable] == []


@pytest.mark.parametrize("case", list(UNWIDENABLE))
def test_widening_an_unwidenable_group_raises_the_reason_and_the_rest_widens_exactly(
    case: str,
) -> None:
    build, shape, blocked, pattern, widenable = UNWIDENABLE[case]
    model = build().double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    before = copy.deepcopy(model)
    with pytest.raises(WidenError, match=rf"'{blocked}'(.|\n)*({pattern})"):
        netsurgeon.widen(model, {blocked: 2})
    _assert_unchanged(model, before)
    netsurgeon.widen(model, dict.fromkeys(widenable, 2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before(x), rtol=0.0, atol=1e-10)


@pytest.mark.parametrize("init", ["paper", "net2net"])
def test_groupnorm_with_two_channels_per_group_grows_by_whole_normalisation_groups(
    init: str,
) -> None:
    """New channels in whole new groups of 2 leave every old group's statistics as they were."""
    model = ConvNorm(nn.GroupNorm(4, 8)).double()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.normal_(0.0, 0.2)
    graph = netsurgeon.trace(model)
    assert graph.group_of("conv1").widenable and graph.group_of("conv1").granularity == 2
    with pytest.raises(
        WidenError, match=r"plan\['conv1'\] = 3(.|\n)*multiples of 2(.|\n)*use 2, 4"
    ):
        netsurgeon.widen(model, {"conv1": 3})
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    before = copy.deepcopy(model)
    netsurgeon.widen(model, {"conv1": 4}, init=init, generator=torch.Generator().manual_seed(0))
    assert (model.norm.num_groups, model.norm.num_channels) == (6, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before(x), rtol=0.0, atol=1e-10)


@pytest.mark.parametrize("init", ["paper", "net2net"])
def test_groupnorm_with_one_channel_per_group_grows_with_its_group(init: str) -> None:
    model = ConvNorm(nn.GroupNorm(8, 8)).double()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.normal_(0.0, 0.2)
    graph = netsurgeon.trace(model)
    assert graph.group_of("conv1").widenable
    assert "norm" in {getattr(f, "name", f) for f in graph.group_of("conv1").followers}
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    before = copy.deepcopy(model)
    netsurgeon.widen(model, {"conv1": 3}, init=init, generator=torch.Generator().manual_seed(0))
    assert model.norm.num_groups == model.norm.num_channels == 11
    with torch.no_grad():
        torch.testing.assert_close(model(x), before(x), rtol=0.0, atol=1e-10)


# -- unknown ops --------------------------------------------------------------------------------


class UnknownOp(nn.Module):
    """``stem -> a -> cummax -> c`` and ``stem -> b -> d``, ``c + d -> pool -> fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 4, 1)
        self.b = nn.Conv2d(6, 4, 1)
        self.c = nn.Conv2d(4, 5, 1)
        self.d = nn.Conv2d(4, 5, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = self.c(torch.cummax(self.a(x), 1)[0]) + self.d(F.relu(self.b(x)))
        return self.fc(F.relu(y).mean((2, 3)))


def test_an_unknown_op_raises_naming_the_fx_node_when_strict() -> None:
    with pytest.raises(UnsupportedModelError, match=r"cummax") as info:
        netsurgeon.trace(UnknownOp(), strict=True)
    message = str(info.value)
    assert "node 'cummax'" in message and "%cummax" in message  # the node, and format_node()
    assert "fix: " in message


def test_an_unknown_op_blocks_only_the_groups_it_touches_when_not_strict() -> None:
    model = UnknownOp().double()
    graph = netsurgeon.trace(model, strict=False)
    blocked = graph.group_of("a")
    assert not blocked.widenable and "cummax" in (blocked.reason or "")
    joined = graph.group_of("c")
    assert joined.name == graph.group_of("d").name
    assert {g.name for g in graph.groups if g.widenable} == {"stem", "b", joined.name}
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    before = copy.deepcopy(model)
    netsurgeon.widen(model, {"stem": 2, "b": 1, joined.name: 3})
    assert (model.stem.out_channels, model.c.out_channels, model.d.out_channels) == (8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before(x), rtol=0.0, atol=1e-10)


def test_a_residual_add_over_a_concatenation_blocks_exactly_the_groups_that_meet_there() -> None:
    """``cat([stem, conv]) + conv2(...)``: the add pairs one producer with two segments.

    Exact growth would insert ``conv2``'s new rows inside its output, at the segment boundary;
    the analysis does not model a producer split across groups, so it blocks exactly the three
    groups that meet there, naming the add, in strict mode too (``add`` is a known op).
    """
    spec = DagSpec(
        2, 4, "relu", (("dense", "relu", 3), ("residual", "relu", 4, 0)), ("mlp", "tanh", 3, 2)
    )
    model = spec.build(0, torch.float64).eval()
    strict = netsurgeon.trace(model, strict=True)
    assert "%add" in (strict.group_of("stem").reason or "")
    graph = netsurgeon.trace(model, strict=False)
    assert [g.reason for g in graph.groups] == [g.reason for g in strict.groups]
    blocked = {g.name for g in graph.groups if not g.widenable}
    assert blocked == {"stem", "blocks.0.conv", "blocks.1.conv2", "head.fc2"}
    assert all("'add'" in graph.group_of(n).reason for n in ("stem", "blocks.1.conv2"))
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    before = copy.deepcopy(model)
    netsurgeon.widen(model, {"blocks.1.conv1": 2, "head.fc1": 1})
    with torch.no_grad():
        torch.testing.assert_close(model(x), before(x), rtol=0.0, atol=1e-10)


# -- plans --------------------------------------------------------------------------------------


def _chunked() -> nn.Module:
    """A stem, then ``pre`` (8 channels) chunked in 2, and a conv with 4 groups: granularity 2, 4."""
    return DagSpec(
        2,
        6,
        "relu",
        (("chunked", "relu", 2, 4, (3, 3)), ("grouped", "relu", 4, 2, 2)),
        ("mlp", "relu", 4, 2),
    ).build(0, torch.float32)


def _residual() -> nn.Module:
    return DagSpec(2, 6, "relu", (("residual", "relu", 4, 0),), ("mlp", "relu", 4, 2)).build(
        0, torch.float32
    )


def test_k_must_be_a_multiple_of_the_granularity_and_the_error_lists_valid_values() -> None:
    graph = netsurgeon.trace(_chunked())
    assert graph.group_of("blocks.0.pre").granularity == 2
    assert graph.group_of("blocks.1.conv").granularity == 4
    # What failed (the count), where (the group), the fix (the nearest valid counts).
    with pytest.raises(
        WidenError,
        match=r"plan\['blocks\.0\.pre'\] = 3: group 'blocks\.0\.pre'(.|\n)*multiples of 2(.|\n)*use 2, 4",
    ):
        netsurgeon.widen(_chunked(), {"blocks.0.pre": 3})
    with pytest.raises(
        WidenError, match=r"plan\['blocks\.1\.conv'\] = 6: (.|\n)*multiples of 4(.|\n)*use 4, 8"
    ):
        netsurgeon.widen(_chunked(), {"blocks.1.conv": 6})
    with pytest.raises(WidenError, match=r"multiples of 4(.|\n)*use 4\b"):
        netsurgeon.widen(_chunked(), {"blocks.1.conv": 1})


def test_two_keys_of_one_group_with_different_counts_are_refused_naming_both() -> None:
    with pytest.raises(WidenError, match=r"name the same group 'stem'") as info:
        netsurgeon.widen(_residual(), {"stem": 2, "blocks.0.conv2": 3})
    assert "plan['stem'] = 2" in str(info.value) and "plan['blocks.0.conv2'] = 3" in str(info.value)


def test_two_keys_of_one_group_with_the_same_count_widen_it_once() -> None:
    model = _residual()
    netsurgeon.widen(model, {"stem": 2, "blocks.0.conv2": 2})
    assert model.stem.out_channels == model.blocks[0].conv2.out_channels == 8


# -- atomicity ----------------------------------------------------------------------------------


def _assert_unchanged(model: nn.Module, before: nn.Module) -> None:
    state, old = model.state_dict(), before.state_dict()
    assert state.keys() == old.keys()
    for key, value in old.items():
        assert value.shape == state[key].shape and torch.equal(value, state[key]), key
    for (name, module), (_, old_module) in zip(
        model.named_modules(), before.named_modules(), strict=True
    ):
        for attr in ("in_channels", "out_channels", "in_features", "out_features", "groups"):
            assert getattr(module, attr, None) == getattr(old_module, attr, None), (name, attr)


BAD_PLANS = {
    "k not a multiple of the chunk count": (_chunked, {"blocks.1.conv": 4, "blocks.0.pre": 3}),
    "k not a multiple of the conv groups": (_chunked, {"blocks.0.pre": 2, "blocks.1.conv": 2}),
    "two counts for one group": (_residual, {"blocks.0.conv1": 1, "stem": 2, "blocks.0.conv2": 3}),
    "an output group": (_residual, {"stem": 2, "head.fc2": 1}),
    "an unknown layer": (_residual, {"stem": 2, "blocks.0.conv9": 1}),
}


@pytest.mark.parametrize("case", list(BAD_PLANS))
def test_a_widen_that_raises_leaves_model_and_optimizer_bit_identical(case: str) -> None:
    build, plan = BAD_PLANS[case]
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(2, 2, 6, 6)
    model(x).pow(2).mean().backward()
    optimizer.step()
    before = copy.deepcopy(model)
    ids = [id(p) for p in model.parameters()]
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(WidenError):
        netsurgeon.widen(model, plan, optimizer=optimizer)
    _assert_unchanged(model, before)
    assert [id(p) for p in model.parameters()] == ids
    after = optimizer.state_dict()
    assert after["state"].keys() == optimizer_state["state"].keys()
    for index, entry in optimizer_state["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(after["state"][index][key]), torch.as_tensor(value))
    assert after["param_groups"] == optimizer_state["param_groups"]
    for p in model.parameters():
        assert p.grad is None or p.grad.shape == p.shape


def test_optimizer_state_that_cannot_grow_refuses_a_coupled_widen_and_changes_nothing() -> None:
    model = _residual()
    optimizer = torch.optim.Adafactor(model.parameters(), lr=1e-2)
    model(torch.randn(2, 2, 6, 6)).pow(2).mean().backward()
    optimizer.step()
    before = copy.deepcopy(model)
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(WidenError, match="factored state"):
        netsurgeon.widen(model, {"stem": 2}, optimizer=optimizer)
    _assert_unchanged(model, before)
    after = optimizer.state_dict()["state"]
    for index, entry in optimizer_state["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(after[index][key]), torch.as_tensor(value))
