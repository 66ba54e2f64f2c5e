"""Residual streams read by LayerNorm/RMSNorm widen exactly, by the construction the analysis picks.

Invariant (``docs/widen.md``): with ``s = C / (C + k)``,

* mean-padding (pre-LN LayerNorm stacks): every producer's new rows are the mean of its old
  rows and the position embedding's and class token's new entries the mean of their old ones, so
  each new channel carries the mean of the old channels; the LayerNorm's mean is unchanged, its
  variance is ``s`` times the old, and ``weight' = sqrt(s) weight``, ``eps' = s eps`` keep its
  output on the old channels, with 0 on the new ones;
* zero-padding (RMSNorm stacks, pre- or post-norm): new channels are 0, the mean square is ``s``
  times the old;
* tiling (post-LN LayerNorm stacks, ``k`` a multiple of the width): every channel copied.

So the model's output is unchanged for any stack and any ``k`` the group's granularity allows,
every new parameter entry gets gradient within two steps, and the optimizer's moments of the
rescaled norm weights are rescaled with their gradient (first moments by ``1 / sqrt(s)``, second
by ``1 / s``), the others carried bit for bit.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from stream_models import Stack, inputs
from torch import nn

import netsurgeon
from netsurgeon.errors import WidenError

STACKS = {
    "pre-LN": dict(norm=nn.LayerNorm),
    "pre-LN-scaled": dict(norm=nn.LayerNorm, layer_scale=True),
    "post-LN": dict(norm=nn.LayerNorm, post=True),
    "pre-RMS": dict(norm=nn.RMSNorm, swiglu=True),
    "post-RMS": dict(norm=nn.RMSNorm, post=True),
}
EXPECTED = {
    "pre-LN": "mean_pad",
    "pre-LN-scaled": "mean_pad",
    "post-LN": "tile",
    "pre-RMS": "zero_pad",
    "post-RMS": "zero_pad",
}


def _stream(graph: netsurgeon.LayerGraph):
    return graph.group_of("embed")


def _plan(graph, stream_k: int, hidden_k: int) -> dict[str, int]:
    plan = {"embed": stream_k}
    for group in graph.groups:
        if group.widenable and group.name != _stream(graph).name:
            plan[group.name] = hidden_k
    return plan


def _stream_k(group, draw: int) -> int:
    return group.granularity * (1 + draw % 2) if group.construction == "tile" else draw


@pytest.mark.parametrize("kind", sorted(STACKS))
def test_the_analysis_picks_the_construction_each_norm_allows(kind: str) -> None:
    graph = netsurgeon.trace(Stack(**STACKS[kind]), inputs(dtype=torch.float32))
    stream = _stream(graph)
    assert stream.widenable, stream.reason
    assert stream.construction == EXPECTED[kind]
    assert stream.granularity == (stream.width if EXPECTED[kind] == "tile" else 1)
    assert EXPECTED[kind] in graph.summary().split("\n")[2]


@settings(max_examples=30)
@given(
    kind=st.sampled_from(sorted(STACKS)),
    depth=st.integers(1, 3),
    width=st.sampled_from([4, 6, 8]),
    attention=st.booleans(),
    draw=st.integers(1, 7),
    hidden_k=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_widening_every_group_keeps_the_output_float64(
    kind, depth, width, attention, draw, hidden_k, seed
) -> None:
    torch.manual_seed(seed)
    model = Stack(width, depth, attention=attention, **STACKS[kind]).double().eval()
    x = inputs(dtype=torch.float64, seed=seed)
    before = model(x)
    graph = netsurgeon.trace(model, x)
    k = _stream_k(_stream(graph), draw)
    netsurgeon.widen(model, _plan(graph, k, hidden_k), graph=graph)
    assert model.embed.out_features == width + k
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-9 * before.abs().max().item())


@settings(max_examples=20)
@given(kind=st.sampled_from(sorted(STACKS)), draw=st.integers(1, 7), seed=st.integers(0, 999))
def test_widening_keeps_the_output_in_train_mode_float32(kind, draw, seed) -> None:
    torch.manual_seed(seed)
    model = Stack(8, 2, **STACKS[kind]).train()
    x = inputs(dtype=torch.float32, seed=seed)
    before = model(x)
    graph = netsurgeon.trace(model, x)
    netsurgeon.widen(model, _plan(graph, _stream_k(_stream(graph), draw), 2), graph=graph)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5 * before.abs().max().item())


def _new_entries(model: nn.Module, old: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """``{name: mask of the entries that did not exist before}`` for every grown parameter."""
    masks = {}
    for name, p in model.named_parameters():
        if p.shape == old[name]:
            continue
        mask = torch.ones_like(p, dtype=torch.bool)
        mask[tuple(slice(0, n) for n in old[name])] = False  # every group grows at its end here
        masks[name] = mask
    return masks


@settings(max_examples=20)
@given(kind=st.sampled_from(sorted(STACKS)), draw=st.integers(1, 5), seed=st.integers(0, 999))
def test_every_new_entry_gets_gradient_within_two_steps(kind, draw, seed) -> None:
    torch.manual_seed(seed)
    model = Stack(8, 2, **STACKS[kind]).double()
    x, target = inputs(seed=seed), torch.randn(3, 3, dtype=torch.float64)
    old = {n: p.shape for n, p in model.named_parameters()}
    graph = netsurgeon.trace(model, x)
    netsurgeon.widen(model, _plan(graph, _stream_k(_stream(graph), draw), 2), graph=graph)
    masks = _new_entries(model, old)
    seen = {n: torch.zeros_like(m) for n, m in masks.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        params = dict(model.named_parameters())
        for name in masks:
            seen[name] |= params[name].grad != 0
        optimizer.step()
    for name, mask in masks.items():
        dead = (mask & ~seen[name]).sum().item()
        assert dead == 0, f"{name}: {dead} new entries got no gradient in two steps"


def test_adam_moments_are_carried_and_rescaled_with_the_norm_weights() -> None:
    model = Stack(8, 2).double()
    x = inputs()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()
    before = {
        n: {k: v.clone() for k, v in optimizer.state[p].items()}
        for n, p in model.named_parameters()
    }
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    k = 3
    root = math.sqrt(8 / (8 + k))
    netsurgeon.widen(model, {"embed": k}, optimizer=optimizer, example_inputs=x)
    for name, p in model.named_parameters():
        state = optimizer.state[p]
        rescaled = name.endswith("weight") and "norm" in name
        first, second = (1 / root, 1 / root**2) if rescaled else (1.0, 1.0)
        kept = tuple(slice(0, n) for n in before[name]["exp_avg"].shape)
        torch.testing.assert_close(
            state["exp_avg"][kept], before[name]["exp_avg"] * first, rtol=1e-12, atol=0
        )
        torch.testing.assert_close(
            state["exp_avg_sq"][kept], before[name]["exp_avg_sq"] * second, rtol=1e-12, atol=0
        )
        torch.testing.assert_close(p.grad[kept], grads[name] * first, rtol=1e-12, atol=0)
        assert torch.equal(state["step"], before[name]["step"])
        if p.shape != before[name]["exp_avg"].shape:
            new = torch.ones_like(p, dtype=torch.bool)
            new[kept] = False
            assert not state["exp_avg"][new].any() and not state["exp_avg_sq"][new].any()


def _bits(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [t.clone() for t in model.state_dict().values()]
    for state in optimizer.state.values():
        tensors += [v.clone() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


@pytest.mark.parametrize(
    ("kind", "init", "k", "fragment"),
    [
        ("pre-LN", "tile", 3, "multiple of its width 8"),
        ("pre-LN", "net2net", 3, "multiple of its width 8"),
        ("pre-LN", "zero_pad", 2, "zero_pad is not exact"),
        ("post-LN", "paper", 3, "multiples of 8"),
        ("post-LN", "mean_pad", 8, "mean_pad is not exact"),
        ("pre-RMS", "mean_pad", 2, "mean_pad is not exact"),
    ],
)
def test_an_inexact_init_is_refused_and_nothing_changes(kind, init, k, fragment) -> None:
    model = Stack(8, 2, **STACKS[kind]).double()
    x = inputs()
    optimizer = torch.optim.Adam(model.parameters())
    model(x).sum().backward()
    optimizer.step()
    snapshot = _bits(model, optimizer)
    with pytest.raises(WidenError, match=fragment):
        netsurgeon.widen(model, {"embed": k}, optimizer=optimizer, init=init, example_inputs=x)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, _bits(model, optimizer), strict=True))


@pytest.mark.parametrize(
    ("kind", "init"), [("pre-LN", "tile"), ("pre-LN", "net2net"), ("post-RMS", "tile")]
)
def test_tiling_by_whole_copies_is_accepted_where_padding_is_picked(kind, init) -> None:
    model = Stack(8, 2, **STACKS[kind]).double().eval()
    x = inputs()
    before = model(x)
    netsurgeon.widen(model, {"embed": 16}, init=init, example_inputs=x)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)


class _Functional(nn.Module):
    """A LayerNorm without weight, and one spelled ``F.layer_norm``: only tiling is exact."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.a = nn.Linear(5, 6)
        self.norm = nn.LayerNorm(6, elementwise_affine=False)
        self.w = nn.Parameter(torch.randn(6))
        self.b = nn.Parameter(torch.randn(6))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        if self.functional:
            h = nn.functional.layer_norm(h, (h.shape[-1],), self.w, self.b, 1e-5)
        else:
            h = self.norm(h)
        return self.head(h)


@pytest.mark.parametrize("functional", [False, True])
def test_a_norm_without_a_weight_to_rescale_tiles(functional: bool) -> None:
    model = _Functional(functional).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    before = model(x)
    graph = netsurgeon.trace(model, x)
    group = graph.group_of("a")
    assert group.construction == "tile" and group.constructions == ("tile",), group.requirements
    netsurgeon.widen(model, {"a": 12}, graph=graph)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)
    with pytest.raises(WidenError, match=r"multiples of 6 .*tiled"):
        netsurgeon.widen(_Functional(functional).double(), {"a": 5}, example_inputs=x)


def test_rmsnorm_without_eps_gets_an_explicit_scaled_eps() -> None:
    model = Stack(8, 1, norm=nn.RMSNorm).double()
    assert model.norm.eps is None
    netsurgeon.widen(model, {"embed": 2}, example_inputs=inputs())
    assert model.norm.eps == pytest.approx(torch.finfo(torch.float64).eps * 8 / 10, rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(sorted(STACKS)), draw=st.integers(1, 8), seed=st.integers(0, 99))
def test_a_drifted_mirror_follows_a_padded_or_tiled_stream_exactly(kind, draw, seed) -> None:
    """The mirror (an EMA that has drifted from the model) gets the stream's construction applied
    to its own entries: its new channels are the mean of *its* channels, its norms rescaled."""
    torch.manual_seed(seed)
    model = Stack(8, 2, **STACKS[kind]).double()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in ema.parameters():
            tensor.add_(0.1 * torch.randn_like(tensor))
    x = inputs(seed=seed)
    graph = netsurgeon.trace(model, (x,))
    plan = _plan(graph, _stream_k(_stream(graph), draw), 1 + draw % 3)
    reference = copy.deepcopy(ema).eval()
    twin = copy.deepcopy(ema)  # the mirror widened on its own, with the same draws
    netsurgeon.widen(
        model, plan, mirrors=[ema], graph=graph, generator=torch.Generator().manual_seed(1)
    )
    netsurgeon.widen(twin, plan, example_inputs=(x,), generator=torch.Generator().manual_seed(1))
    ema.eval()
    with torch.no_grad():
        torch.testing.assert_close(ema(x), reference(x), rtol=1e-9, atol=1e-12)
    for key, value in twin.state_dict().items():
        assert torch.equal(ema.state_dict()[key], value), key


def test_a_mirror_on_another_device_is_refused_for_a_padded_stream_and_nothing_changes() -> None:
    model = Stack(8, 1).double()
    ema = copy.deepcopy(model).to("meta")
    snapshot = [t.clone() for t in model.state_dict().values()]
    with pytest.raises(WidenError, match=r"mirrors\[0\].*is on meta, the model's on cpu"):
        netsurgeon.widen(model, {"embed": 2}, mirrors=[ema], example_inputs=inputs())
    after = list(model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(snapshot, after, strict=True))
    assert ema.embed.out_features == 8


class _WeightNormed(nn.Module):
    """A weight-normalised producer: its rows are ``g v / |v|``, no mean of ``v`` rows pads."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.utils.parametrizations.weight_norm(nn.Linear(4, 6))
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.norm(self.a(x)))


def test_a_weight_normalised_producer_tiles() -> None:
    model = _WeightNormed().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    before = model(x)
    graph = netsurgeon.trace(model, x)
    assert graph.group_of("a").constructions == ("tile",)
    netsurgeon.widen(model, {"a": 6}, graph=graph)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["pre-LN", "pre-RMS"])
def test_a_cost_preview_of_a_padded_stream_runs_on_meta_and_changes_nothing(kind) -> None:
    model = Stack(8, 2, **STACKS[kind])
    x = inputs(dtype=torch.float32)
    graph = netsurgeon.trace(model, x)
    snapshot = [t.clone() for t in model.state_dict().values()]
    preview = netsurgeon.preview(model, {"embed": 3}, x, graph=graph)
    assert preview.total.params_after > preview.total.params_before
    assert all(
        torch.equal(a, b) for a, b in zip(snapshot, model.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("kind", ["pre-LN", "pre-RMS", "post-LN"])
def test_a_grown_streams_checkpoint_loads_into_a_fresh_model_exactly(kind) -> None:
    model = Stack(8, 2, **STACKS[kind]).double().eval()
    x = inputs()
    graph = netsurgeon.trace(model, x)
    tiled = graph.group_of("embed").construction == "tile"
    netsurgeon.widen(model, {"embed": 8 if tiled else 3}, graph=graph)
    netsurgeon.widen(model, {"embed": 16 if tiled else 2}, example_inputs=x)  # in two steps
    fresh = Stack(8, 2, **STACKS[kind]).double().eval()
    rng = torch.get_rng_state()
    netsurgeon.load_state_dict(fresh, model.state_dict(), example_inputs=x)
    assert torch.equal(torch.get_rng_state(), rng)  # no random number drawn
    torch.testing.assert_close(fresh(x), model(x), rtol=1e-12, atol=1e-12)
    assert fresh.norm.eps == pytest.approx(model.norm.eps, rel=1e-12)
