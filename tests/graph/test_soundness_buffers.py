"""Per-channel buffers and free parameters read in ``forward`` (``get_attr`` nodes).

Invariant: a tensor ``t`` combined element-wise with a group's channels, one entry per channel
along one of its dims, grows with the group. The new entries are the identity of the operation
(1 for ``mul``/``div``, 0 for ``add``/``sub``), so the old channels compute what they did and the
output is unchanged. A spelling that fixes the width in the code (``t.view(1, 4, 1, 1)``) cannot
grow: it blocks the group, naming the tensor.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netsurgeon
from netsurgeon.errors import WidenError

SPELLINGS = {
    "index": lambda t: t[None, :, None, None],
    "view": lambda t: t.view(1, -1, 1, 1),
    "reshape": lambda t: t.reshape(1, -1, 1, 1),
    "unsqueeze": lambda t: t.unsqueeze(0).unsqueeze(-1).unsqueeze(-1),
    "expand": lambda t: t.view(1, -1, 1, 1).expand(2, -1, 6, 6),
}


class Scaled(nn.Module):
    def __init__(self, spelling: str, op: str, as_parameter: bool) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 5, 3)
        value = torch.rand(4, dtype=torch.float64) + 0.5
        if as_parameter:
            self.t = nn.Parameter(value)
        else:
            self.register_buffer("t", value)
        self.spelling, self.op = spelling, op

    def forward(self, x):
        h = self.c1(x)
        t = (
            self.t.view(1, 4, 1, 1)
            if self.spelling == "literal"
            else SPELLINGS[self.spelling](self.t)
        )
        return self.c2(h * t if self.op == "mul" else h + t)


def _model(spelling: str, op: str, as_parameter: bool) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = Scaled(spelling, op, as_parameter).double().eval()
    return model, torch.randn(2, 3, 6, 6, dtype=torch.float64)


@pytest.mark.parametrize("as_parameter", [False, True], ids=["buffer", "parameter"])
@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.parametrize("with_shapes", [True, False])
def test_a_per_channel_tensor_read_in_forward_grows_with_its_group_and_keeps_the_output(
    as_parameter: bool, spelling: str, with_shapes: bool
) -> None:
    model, x = _model(spelling, "mul", as_parameter)
    before = model(x)
    tensor = model.t
    netsurgeon.widen(model, {"c1": 3}, example_inputs=x if with_shapes else None)
    assert model.t is tensor  # the same object, grown in place
    assert model.t.shape == (7,)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("op, fill", [("mul", 1.0), ("add", 0.0)])
def test_the_new_entries_of_a_per_channel_tensor_are_the_identity_of_its_operation(
    op: str, fill: float
) -> None:
    model, x = _model("index", op, as_parameter=False)
    old = model.t.clone()
    netsurgeon.widen(model, {"c1": 2}, example_inputs=x)
    torch.testing.assert_close(model.t[:4], old, rtol=0, atol=0)
    torch.testing.assert_close(model.t[4:], torch.full((2,), fill, dtype=torch.float64))


def test_a_per_channel_parameter_grows_with_its_optimizer_state() -> None:
    model, x = _model("index", "mul", as_parameter=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(x).sum().backward()
    optimizer.step()
    netsurgeon.widen(model, {"c1": 2}, optimizer=optimizer, example_inputs=x)
    state = optimizer.state[model.t]
    assert state["exp_avg"].shape == (6,) and state["exp_avg_sq"].shape == (6,)
    torch.testing.assert_close(state["exp_avg"][4:], torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("as_parameter", [False, True], ids=["buffer", "parameter"])
def test_a_width_written_into_the_code_blocks_the_group_and_names_the_tensor(
    as_parameter: bool,
) -> None:
    model, x = _model("literal", "mul", as_parameter)
    graph = netsurgeon.trace(model, x, strict=False)
    reason = graph.groups[0].blocked
    assert graph.groups[0].name == "c1"
    assert reason is not None and "'t'" in reason and "mul" in reason
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WidenError, match="'t'"):
        netsurgeon.widen(model, {"c1": 1}, example_inputs=x)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


class ConstantScale(nn.Module):
    """A tensor made in ``forward`` from Python data has a fixed size: it cannot grow."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3)
        self.c2 = nn.Conv2d(4, 5, 3)

    def forward(self, x):
        scale = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=x.dtype).view(1, 4, 1, 1)
        return self.c2(self.c1(x) * scale)


def test_a_per_channel_constant_made_in_forward_blocks_the_group() -> None:
    graph = netsurgeon.trace(ConstantScale(), torch.randn(1, 3, 8, 8), strict=False)
    blocked = {g.name: g.blocked for g in graph.groups}
    assert blocked["c1"] is not None and "mul" in blocked["c1"]
    assert blocked["c2"] is None


class ReadTwice(nn.Module):
    """``gamma`` scales the channels and is also summed: growing it would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3)
        self.c2 = nn.Conv2d(4, 5, 3)
        self.gamma = nn.Parameter(torch.rand(4) + 0.5)

    def forward(self, x):
        return self.c2(self.c1(x) * self.gamma[None, :, None, None] / self.gamma.sum())


class TwoGroups(nn.Module):
    """One per-channel buffer scales two groups that widen independently."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(3, 4, 3)
        self.head = nn.Conv2d(8, 2, 1)
        self.register_buffer("s", torch.rand(4) + 0.5)

    def forward(self, x):
        s = self.s.view(1, -1, 1, 1)
        return self.head(torch.cat([self.a(x) * s, self.b(x) * s], 1))


@pytest.mark.parametrize(
    "model, group, named",
    [(ReadTwice(), "c1", "also read at node"), (TwoGroups(), "a", "grow differently")],
    ids=["read-elsewhere", "two-groups"],
)
def test_a_per_channel_tensor_with_another_use_blocks_instead_of_growing(
    model: nn.Module, group: str, named: str
) -> None:
    graph = netsurgeon.trace(model, torch.randn(1, 3, 8, 8), strict=False)
    reason = graph.group_of(group).blocked
    assert reason is not None and named in reason


class Numerator(nn.Module):
    """``t / h``: a new channel of ``h`` could be 0, and no fill of ``t`` keeps that finite."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3)
        self.c2 = nn.Conv2d(4, 5, 3)
        self.register_buffer("t", torch.ones(4))

    def forward(self, x):
        return self.c2(self.t[None, :, None, None] / torch.exp(self.c1(x)))


def test_a_per_channel_tensor_divided_by_the_channels_blocks_the_group() -> None:
    graph = netsurgeon.trace(Numerator(), torch.randn(1, 3, 8, 8), strict=False)
    reason = graph.group_of("c1").blocked
    assert reason is not None and "divided by the channels" in reason


class LayerScale(nn.Module):
    """A transformer-style layer scale on a Linear's features (channels on the last dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.gamma = nn.Parameter(torch.rand(4, dtype=torch.float64) + 0.5)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.fc1(x) * self.gamma)


def test_a_layer_scale_on_features_of_unknown_rank_follows_its_group_without_example_inputs() -> (
    None
):
    torch.manual_seed(0)
    model = LayerScale().double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    before = model(x)
    netsurgeon.widen(model, {"fc1": 2})
    assert model.gamma.shape == (6,)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)


def test_a_checkpoint_with_a_grown_buffer_loads_into_a_fresh_model() -> None:
    grown, x = _model("index", "mul", as_parameter=False)
    netsurgeon.widen(grown, {"c1": 3}, example_inputs=x)
    fresh, _ = _model("index", "mul", as_parameter=False)
    netsurgeon.load_state_dict(fresh, grown.state_dict(), example_inputs=x)
    assert fresh.t.shape == (7,)
    torch.testing.assert_close(fresh(x), grown(x), rtol=0, atol=0)
