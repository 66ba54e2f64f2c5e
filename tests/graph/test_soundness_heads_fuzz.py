"""The soundness fuzzer for attention heads: a model that ``widen`` accepts is never broken.

Property. Build a random attention block from spellings that are exact to grow by whole heads
(``view(B, N, -1, d)``, a fused ``(B, N, 3, -1, d)`` cut, ``chunk``, RoPE, scalar and per-``d``
scales, causal masks, SDPA or ``q @ k^T``, the head-major merge) and spellings that are not (a
literal head count, a per-head table, a per-head mask, a mean over each head, a ``d``-major merge,
a merge to a literal or to the stream's width). Trace it with ``strict=False``, take any plan over
the groups the graph calls widenable, and widen (paper or net2net init). Then exactly one of:
``widen`` raises and every tensor is bit-identical, or the output in float64 eval mode is
unchanged to ``1e-9`` relative. (Net2net once copied a fused ``qkv``'s splits from different old
heads: 2-4 % off. It is refused there now.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import event, given
from hypothesis import strategies as st
from torch import nn

import netsurgeon
from netsurgeon.errors import NetsurgeonError

CUTS = ("view", "literal heads", "fused", "chunk", "separate")
EXTRAS = ("none", "scale", "rope", "per-d scale", "per-head scale", "mean over d", "softmax over d")
PRODUCTS = ("sdpa", "sdpa causal", "matmul", "matmul causal", "matmul per-head mask")
MERGES = ("reshape -1", "flatten", "d-major", "literal", "stream width")
T = 5


class Block(nn.Module):
    def __init__(self, heads: int, d: int, cut: str, extra: str, product: str, merge: str):
        super().__init__()
        self.heads, self.d, self.cut, self.extra, self.product, self.merge = (
            heads, d, cut, extra, product, merge
        )  # fmt: skip
        width = heads * d
        self.stem = nn.Linear(4, width)
        if cut == "separate":  # ``qkv`` makes q only; k and v have their own projections
            self.qkv = nn.Linear(width, width)
            self.k_proj, self.v_proj = nn.Linear(width, width), nn.Linear(width, width)
        else:
            self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.head = nn.Linear(width, 2)
        self.per_d = nn.Parameter(torch.rand(d) + 0.5)
        self.per_head = nn.Parameter(torch.rand(heads, 1, 1) + 0.5)
        self.table = nn.Parameter(torch.randn(1, heads, T, T))
        self.register_buffer("causal", torch.ones(T, T, dtype=torch.bool).tril())
        angle = torch.arange(T)[:, None] * torch.linspace(0.1, 1.0, d)[None]
        self.register_buffer("cos", angle.cos())
        self.register_buffer("sin", angle.sin())

    def _cut(self, x):
        B, N, _ = x.shape
        if self.cut == "fused":
            qkv = self.qkv(x).reshape(B, N, 3, -1, self.d).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            return q, k, v
        if self.cut == "separate":
            q, k, v = self.qkv(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        count = self.heads if self.cut == "literal heads" else -1
        q = q.view(B, N, count, self.d).transpose(1, 2)
        k = k.view(B, N, count, self.d).transpose(1, 2)
        v = v.view(B, N, count, self.d).transpose(1, 2)
        return q, k, v

    def _extra(self, t):
        if self.extra == "scale":
            return t * 0.7
        if self.extra == "rope":
            half = t.shape[-1] // 2
            rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
            return t * self.cos + rotated * self.sin
        if self.extra == "per-d scale":
            return t * self.per_d
        if self.extra == "per-head scale":
            return t * self.per_head
        if self.extra == "mean over d":
            return t - t.mean(dim=-1, keepdim=True)
        if self.extra == "softmax over d":
            return t.softmax(dim=-1)
        return t

    def _attend(self, q, k, v):
        causal = self.product.endswith("causal")
        if self.product.startswith("sdpa"):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        att = q @ k.transpose(-2, -1) * q.size(-1) ** -0.5
        if causal:
            att = att.masked_fill(~self.causal, float("-inf"))
        if self.product.endswith("mask"):
            att = att + self.table
        return att.softmax(dim=-1) @ v

    def _merge(self, y, x):
        B, N, C = x.shape
        if self.merge == "flatten":
            return y.transpose(1, 2).flatten(2)
        if self.merge == "d-major":
            return y.permute(0, 2, 3, 1).reshape(B, N, -1)
        if self.merge == "literal":
            return y.transpose(1, 2).reshape(B, N, self.heads * self.d)
        if self.merge == "stream width":
            return y.transpose(1, 2).reshape(B, N, C)
        return y.transpose(1, 2).reshape(B, N, -1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        q, k, v = self._cut(x)
        y = self._attend(self._extra(q), self._extra(k), v)
        return self.head(x + self.out(self._merge(y, x)))


@st.composite
def blocks(draw) -> Block:
    return Block(
        draw(st.integers(1, 3)),
        draw(st.sampled_from([2, 4])),
        draw(st.sampled_from(CUTS)),
        draw(st.sampled_from(EXTRAS)),
        draw(st.sampled_from(PRODUCTS)),
        draw(st.sampled_from(MERGES)),
    )


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


@given(blocks(), st.data())
def test_a_head_widening_that_the_graph_allows_never_breaks_the_model(model, data) -> None:
    torch.manual_seed(0)
    model = model.double().eval()
    x = torch.randn(2, T, 4, dtype=torch.float64)
    before_out = model(x)
    graph = netsurgeon.trace(model, x, strict=False)
    widenable = [g for g in graph.groups if g.widenable]
    head_group = graph.group_of("qkv")
    event(f"head group widenable: {head_group.widenable}")
    if not widenable:
        return
    chosen = data.draw(st.lists(st.sampled_from(widenable), min_size=1, unique_by=lambda g: g.name))
    plan = {g.name: g.granularity * data.draw(st.integers(1, 2)) for g in chosen}
    init = data.draw(st.sampled_from(["paper", "net2net"]))
    before = _state(model)
    try:
        netsurgeon.widen(model, plan, graph=graph, init=init)
    except NetsurgeonError:
        after = _state(model)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[n], after[n]) for n in before)
        return
    scale = before_out.abs().max().item()
    torch.testing.assert_close(model(x), before_out, rtol=1e-9, atol=1e-9 * scale)


def test_exact_spellings_leave_the_head_group_widenable() -> None:
    for cut in ("view", "fused", "chunk", "separate"):
        for extra in ("none", "scale", "rope", "per-d scale", "softmax over d"):
            for product in ("sdpa", "sdpa causal", "matmul", "matmul causal"):
                for merge in ("reshape -1", "flatten"):
                    model = Block(2, 4, cut, extra, product, merge)
                    graph = netsurgeon.trace(model, torch.randn(1, T, 4), strict=False)
                    group = graph.group_of("qkv")
                    assert group.widenable, (cut, extra, product, merge, group.reason)


def test_inexact_spellings_block_the_head_group() -> None:
    for change in (
        {"cut": "literal heads"},
        {"extra": "per-head scale"},
        {"extra": "mean over d"},
        {"product": "matmul per-head mask"},
        {"merge": "d-major"},
        {"merge": "literal"},
        {"merge": "stream width"},
    ):
        spec = {"cut": "view", "extra": "none", "product": "matmul", "merge": "reshape -1"} | change
        model = Block(2, 4, **spec)
        graph = netsurgeon.trace(model, torch.randn(1, T, 4), strict=False)
        assert not graph.group_of("qkv").widenable, change
