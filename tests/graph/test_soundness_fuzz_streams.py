"""The soundness fuzzer for normalised streams: a widening the graph allows never breaks a model.

Property. Build a random token model ``(B, T, C)`` from steps that put LayerNorm/RMSNorm readers
across the channels in every position a construction has to cope with: a new ``Linear`` width,
pre-norm residual blocks (optionally with a layer scale), post-norm blocks, a norm without
weight, ``F.layer_norm``/``F.rms_norm`` with the module's parameters, an activation or a
per-channel scale on the stream before a norm, a position embedding added, a token-mixing MLP
(a ``Linear`` over the tokens: the channels on its batch dim), ``torch.roll`` over the tokens, a
norm over two copies of the stream side by side (Swin's patch merging in small), a per-channel
parameter raised to a power, and ``nn.TransformerEncoderLayer`` (pre- or post-norm). Trace it (with or
without example inputs), draw any plan over the groups the graph calls widenable (counts a
multiple of the granularity) and any ``init`` (``paper``, ``net2net``, ``mean_pad``,
``zero_pad``, ``tile``). Then exactly one of:

* ``widen`` raises a :class:`~netsurgeon.errors.NetsurgeonError`, and every parameter, buffer and
  optimizer state tensor is bit-identical to before;
* ``widen`` succeeds and in float64 eval mode the output is unchanged to ``1e-9`` relative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

import netsurgeon
from netsurgeon.errors import NetsurgeonError

TOKENS, FEATURES = 3, 4
NORMS = ("layer", "layer", "layer", "rms", "layer-no-weight", "functional-layer", "functional-rms")
STEPS = (
    *("linear", "pre", "pre-scaled", "post", "norm", "gelu", "scale", "pos"),
    *("token", "roll", "copies", "power", "encoder"),
)


def make_norm(kind: str, c: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(c)
    if kind == "rms":
        return nn.RMSNorm(c, eps=1e-6)
    if kind == "layer-no-weight":
        return nn.LayerNorm(c, elementwise_affine=False)
    return FunctionalNorm(c, kind == "functional-rms")


class FunctionalNorm(nn.Module):
    """``F.layer_norm``/``F.rms_norm`` with this module's own parameters, sized by the input."""

    def __init__(self, c: int, rms: bool) -> None:
        super().__init__()
        self.rms = rms
        self.weight = nn.Parameter(torch.randn(c))
        self.bias = nn.Parameter(torch.randn(c))

    def forward(self, x):
        if self.rms:
            return F.rms_norm(x, (x.shape[-1],), self.weight, 1e-6)
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, 1e-5)


class Step(nn.Module):
    def __init__(self, kind: str, c: int, cout: int, norm: str) -> None:
        super().__init__()
        self.kind = kind
        self.out_channels = cout if kind == "linear" else c
        uses = {  # only what the forward calls: an unused layer would block every group
            "fc": kind in ("linear", "pre", "pre-scaled", "post", "copies"),
            "norm": kind in ("pre", "pre-scaled", "post", "norm", "token", "copies"),
            "gamma": kind in ("pre-scaled", "scale", "power"),
            "pos": kind == "pos",
        }
        into = 2 * c if kind == "copies" else c
        self.fc = nn.Linear(into, self.out_channels) if uses["fc"] else None
        self.norm = make_norm(norm, into) if uses["norm"] else None  # "copies": over both
        self.gamma = nn.Parameter(torch.rand(c) + 0.1) if uses["gamma"] else None
        self.pos = nn.Parameter(torch.randn(TOKENS, c)) if uses["pos"] else None
        if kind == "token":  # mixes the tokens: the channels ride on its batch dim
            self.mix = nn.Sequential(nn.Linear(TOKENS, 3), nn.GELU(), nn.Linear(3, TOKENS))
        if kind == "encoder":
            heads = 2 if c % 2 == 0 else 1
            self.layer = nn.TransformerEncoderLayer(
                c, heads, 2 * c, dropout=0.0, batch_first=True, norm_first=norm != "rms"
            )

    def forward(self, x):
        if self.kind == "linear":
            return self.fc(x)
        if self.kind == "pre":
            return x + self.fc(F.gelu(self.norm(x)))
        if self.kind == "pre-scaled":
            return x + self.gamma * self.fc(F.gelu(self.norm(x)))
        if self.kind == "post":
            return self.norm(x + self.fc(F.gelu(x)))
        if self.kind == "norm":
            return self.norm(x)
        if self.kind == "gelu":
            return F.gelu(x)
        if self.kind == "scale":
            return x * self.gamma
        if self.kind == "token":
            return x + self.mix(self.norm(x).transpose(1, 2)).transpose(1, 2)
        if self.kind == "roll":
            return torch.roll(x, 1, dims=1)
        if self.kind == "copies":
            return self.fc(self.norm(torch.cat([x, x.flip(1)], dim=-1)))
        if self.kind == "power":
            return x * self.gamma**2
        if self.kind == "encoder":
            return self.layer(x)
        return x + self.pos


class Fuzzed(nn.Module):
    def __init__(self, steps: list[Step], stem: int) -> None:
        super().__init__()
        self.stem = nn.Linear(FEATURES, stem)
        self.steps = nn.ModuleList(steps)
        self.head = nn.Linear(steps[-1].out_channels if steps else stem, 2)

    def forward(self, x):
        x = self.stem(x)
        for step in self.steps:
            x = step(x)
        return self.head(x.mean(1))


@st.composite
def models(draw) -> Fuzzed:
    torch.manual_seed(draw(st.integers(0, 2**16)))
    width = st.integers(2, 5)
    c = stem = draw(width)
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(STEPS))
        step = Step(kind, c, draw(width), draw(st.sampled_from(NORMS)))
        steps.append(step)
        c = step.out_channels
    model = Fuzzed(steps, stem)
    with torch.no_grad():  # norms away from their identity init
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and module.weight is not None:
                module.weight.normal_(1.0, 0.3)
    return model


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = {f"p:{n}": p.detach().clone() for n, p in model.named_parameters()}
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor):
                state[f"o:{i}:{key}"] = value.detach().clone()
    return state


@settings(max_examples=150)
@given(
    model=models(),
    data=st.data(),
    with_shapes=st.sampled_from((True, True, False)),
    init=st.sampled_from(("paper", "paper", "net2net", "mean_pad", "zero_pad", "tile")),
)
def test_a_stream_widening_that_the_graph_allows_never_breaks_the_model(
    model, data, with_shapes, init
):
    model = model.double()
    x = torch.randn(2, TOKENS, FEATURES, dtype=torch.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(x).square().sum().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        expected = model(x)
    example = x if with_shapes else None
    graph = netsurgeon.trace(model, example, strict=False)
    widenable = [g for g in graph.groups if g.widenable]
    if not widenable:
        event("nothing widenable")
        return
    chosen = data.draw(st.lists(st.sampled_from(widenable), min_size=1, unique_by=lambda g: g.name))
    plan = {g.name: g.granularity * data.draw(st.integers(1, 3)) for g in chosen}
    event(f"constructions {sorted({g.construction for g in chosen})}")
    before = _state(model, optimizer)
    try:
        netsurgeon.widen(model, plan, optimizer=optimizer, example_inputs=example, init=init)
    except NetsurgeonError:
        event("widen refused")
        after = _state(model, optimizer)
        assert before.keys() == after.keys()
        assert all(torch.equal(v, after[k]) for k, v in before.items())
        return
    event("widened")
    for kind in {step.kind for step in model.steps}:
        event(f"widened through a {kind} step")
    with torch.no_grad():
        got = model(x)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * max(scale, 1.0))
