"""Attention grows by whole heads, exactly: new q/k/v rows, zero columns in the output projection.

The invariant: heads are independent. Head ``h``'s output is ``softmax(q_h k_h^T / sqrt(d)) v_h``,
computed from its own ``d`` rows of the ``q``, ``k`` and ``v`` projections; the output projection
reads head ``h`` through its own ``d`` columns. Appending heads (whatever their rows) with zero
output columns leaves every old head, and so the output, unchanged; ``d`` stays, so the softmax
scale stays. With grouped-query attention each new key/value head brings ``g`` new query heads.
Gradient: the new output columns get gradient at the first step (they read the new heads' nonzero
outputs); the new q/k/v rows only at the second (their gradient flows through those columns, 0
at the first step).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from transformer_models import repeat_kv

import netsurgeon
from netsurgeon.errors import WidenError


class Attention(nn.Module):
    """One attention block over a Linear stem, in the spellings the analysis follows."""

    def __init__(self, d, heads, groups, qkv, product, causal, gqa, dim=12):
        super().__init__()
        self.d, self.groups, self.qkv, self.product, self.causal, self.gqa = (
            d, groups, qkv, product, causal, gqa
        )  # fmt: skip
        kv = heads // groups
        self.stem = nn.Linear(5, dim)
        if qkv == "separate":
            self.q = nn.Linear(dim, heads * d)
            self.k = nn.Linear(dim, kv * d)
            self.v = nn.Linear(dim, kv * d)
        else:
            self.qkv_proj = nn.Linear(dim, 3 * heads * d)
        self.out = nn.Linear(heads * d, dim)
        self.head = nn.Linear(dim, 3)
        self.register_buffer("mask", torch.ones(16, 16, dtype=torch.bool).tril())

    def _heads(self, x):
        B, T, _ = x.shape
        if self.qkv == "separate":
            q, k, v = self.q(x), self.k(x), self.v(x)
        elif self.qkv == "chunk":
            q, k, v = self.qkv_proj(x).chunk(3, -1)
        else:
            qkv = self.qkv_proj(x).reshape(B, T, 3, -1, self.d).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
            return q, k, v
        return tuple(t.reshape(B, T, -1, self.d).transpose(1, 2) for t in (q, k, v))

    def forward(self, x):
        x = torch.relu(self.stem(x))
        B, T, _ = x.shape
        q, k, v = self._heads(x)
        self_gqa = self.gqa == "enable_gqa" and self.product == "sdpa"
        if self.groups > 1 and self.gqa == "repeat_kv":
            k, v = repeat_kv(k, self.groups), repeat_kv(v, self.groups)
        elif self.groups > 1 and not self_gqa:
            k = k.repeat_interleave(self.groups, dim=1)
            v = v.repeat_interleave(self.groups, dim=1)
        if self.product == "sdpa":
            extra = {"enable_gqa": True} if self.groups > 1 and self_gqa else {}
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, **extra)
        else:
            att = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5
            if self.causal:
                att = att.masked_fill(~self.mask[:T, :T], float("-inf"))
            y = att.softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.head(x + self.out(y))


@st.composite
def attention_models(draw):
    qkv = draw(st.sampled_from(["separate", "chunk", "fused_view"]))
    groups = draw(st.sampled_from([1, 2, 3])) if qkv == "separate" else 1
    kv = draw(st.integers(1, 3))
    model = Attention(
        d=draw(st.sampled_from([2, 4, 6])),
        heads=kv * groups,
        groups=groups,
        qkv=qkv,
        product=draw(st.sampled_from(["sdpa", "matmul"])),
        causal=draw(st.booleans()),
        gqa=draw(st.sampled_from(["repeat_interleave", "enable_gqa", "repeat_kv"])),
    )
    return model, draw(st.integers(1, 3)), draw(st.integers(0, 2**16))


def _head_group(model: Attention, graph) -> netsurgeon.graph.ChannelGroup:
    return graph.group_of("q" if model.qkv == "separate" else "qkv_proj")


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


@given(attention_models())
def test_widening_by_whole_heads_keeps_the_output(case) -> None:
    model, heads, seed = case
    torch.manual_seed(seed)
    model = model.double().eval()
    x = torch.randn(2, 5, 5, dtype=torch.float64)
    graph = netsurgeon.trace(model, x)
    group = _head_group(model, graph)
    splits = 3 if model.qkv != "separate" else 1
    assert group.widenable, group.reason
    assert group.granularity == splits * model.d
    before = model(x)
    old_out = model.out.in_features
    netsurgeon.widen(model, {group.name: heads * group.granularity}, graph=graph)
    after = model(x)
    assert model.out.in_features == old_out + heads * model.d * splits * model.groups // splits
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9 * before.abs().max().item())


@given(attention_models())
def test_every_widenable_group_at_once_keeps_the_output(case) -> None:
    model, _, seed = case
    torch.manual_seed(seed)
    model = model.double().eval()
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    graph = netsurgeon.trace(model, x)
    before = model(x)
    plan = {g.name: 2 * g.granularity for g in graph.groups if g.widenable}
    assert _head_group(model, graph).name in plan
    netsurgeon.widen(model, plan, graph=graph)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-9 * before.abs().max().item())


@given(attention_models())
def test_float32_train_mode_widening_keeps_the_output(case) -> None:
    model, heads, seed = case
    torch.manual_seed(seed)
    model.train()
    x = torch.randn(2, 5, 5)
    graph = netsurgeon.trace(model, x)
    group = _head_group(model, graph)
    before = model(x)
    netsurgeon.widen(model, {group.name: heads * group.granularity}, graph=graph)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5 * before.abs().max().item())


def test_grouped_query_heads_grow_with_their_key_value_heads() -> None:
    torch.manual_seed(0)
    model = Attention(
        4, heads=6, groups=3, qkv="separate", product="sdpa", causal=True, gqa="repeat_interleave"
    )
    graph = netsurgeon.trace(model.double(), torch.randn(1, 3, 5, dtype=torch.float64))
    group = graph.group_of("q")
    assert group.name == "k" and set(group.producers) == {"q", "k", "v"}
    assert group.rows_per_channel("q") == 3 and group.granularity == 4
    netsurgeon.widen(model, {"k": 4}, graph=graph)
    assert (model.k.out_features, model.v.out_features, model.q.out_features) == (12, 12, 36)
    assert model.out.in_features == 36


@pytest.mark.parametrize("qkv", ["separate", "fused_view"])
def test_a_growth_that_is_not_whole_heads_is_refused_and_changes_nothing(qkv: str) -> None:
    torch.manual_seed(0)
    model = Attention(
        4, heads=2, groups=1, qkv=qkv, product="sdpa", causal=False, gqa="repeat_interleave"
    )
    x = torch.randn(1, 3, 5)
    graph = netsurgeon.trace(model, x)
    group = _head_group(model, graph)
    before = _tensors(model)
    with pytest.raises(WidenError, match=f"multiples of {group.granularity}"):
        netsurgeon.widen(model, {group.name: group.granularity - 1}, graph=graph)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def test_new_output_columns_get_gradient_at_the_first_step_and_qkv_rows_at_the_second() -> None:
    torch.manual_seed(0)
    model = Attention(
        4, heads=2, groups=1, qkv="separate", product="sdpa", causal=True, gqa="repeat_interleave"
    )
    x, target = torch.randn(4, 6, 5), torch.randn(4, 6, 3)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model(x)
    netsurgeon.widen(model, {"q": 8}, optimizer=opt, example_inputs=x)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)  # float32, train mode
    grads = []
    for _ in range(2):
        opt.zero_grad()
        F.mse_loss(model(x), target).backward()
        new = {
            "out columns": model.out.weight.grad[:, 8:],
            **{f"{p} rows": getattr(model, p).weight.grad[8:] for p in "qkv"},
        }
        grads.append({name: g.abs().max().item() for name, g in new.items()})
        opt.step()
    assert grads[0]["out columns"] > 0
    assert all(grads[0][f"{p} rows"] == 0 for p in "qkv")
    assert all(grads[1][f"{p} rows"] > 0 for p in "qkv")


class Spelled(nn.Module):
    """Attention spelled in a way whose head count or head size would go stale."""

    def __init__(self, spelling: str, heads: int = 2, d: int = 4):
        super().__init__()
        self.spelling, self.heads, self.d = spelling, heads, d
        self.qkv = nn.Linear(8, 3 * heads * d)
        self.out = nn.Linear(heads * d, 8)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.spelling == "literal heads":
            split = (B, T, self.heads, self.d)
        elif self.spelling == "size from the stream":
            split = (B, T, -1, C // self.heads)
        else:
            split = (B, T, -1, self.d)
        q, k, v = (
            q.view(*split).transpose(1, 2),
            k.view(*split).transpose(1, 2),
            v.view(*split).transpose(1, 2),
        )
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        merged = (B, T, C) if self.spelling == "merge to the stream width" else (B, T, -1)
        return x + self.out(y.reshape(*merged))


@pytest.mark.parametrize(
    ("spelling", "reason"),
    [
        ("literal heads", "fixes the head count at 2"),
        ("size from the stream", "computed from a width"),
        ("merge to the stream width", "grow differently"),
    ],
)
def test_head_counts_and_sizes_that_would_go_stale_block_with_the_reason(spelling, reason) -> None:
    model = nn.Sequential(nn.Linear(3, 8), Spelled(spelling), nn.Linear(8, 2))
    graph = netsurgeon.trace(model, torch.randn(1, 5, 3), strict=False)
    group = graph.group_of("1.qkv")
    assert not group.widenable and reason in group.reason


def test_a_per_head_attention_mask_blocks() -> None:
    class Masked(Spelled):
        def __init__(self):
            super().__init__("ok")
            self.bias = nn.Parameter(torch.randn(1, self.heads, 5, 5))  # one table per head

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.qkv(x).chunk(3, -1)
            q, k, v = (t.view(B, T, -1, self.d).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
            return self.out(y.transpose(1, 2).reshape(B, T, -1))

    graph = netsurgeon.trace(Masked(), torch.randn(1, 5, 8), strict=False)
    group = graph.group_of("qkv")
    assert not group.widenable and "per-head mask" in group.reason


class Unfollowed(Spelled):
    """An op netsurgeon does not follow per head (a mean over each head's channels)."""

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, -1)
        q, k, v = (t.view(B, T, -1, self.d).transpose(1, 2) for t in (q, k, v))
        q = q - q.mean(dim=-1, keepdim=True)
        y = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(y.transpose(1, 2).reshape(B, T, -1))


def test_an_op_that_does_not_follow_heads_blocks_the_group_naming_it() -> None:
    model = nn.Sequential(nn.Linear(3, 8), Unfollowed("ok"), nn.Linear(8, 2))
    graph = netsurgeon.trace(model, torch.randn(1, 5, 3), strict=False)
    reason = graph.unwidenable_reason("1.qkv")
    assert "'.mean()' takes channels cut into attention heads" in reason
    assert graph.group_of("0").widenable  # the stream is not touched
