"""``nn.MultiheadAttention`` grows by whole heads with the stream it reads, exactly.

Its ``embed_dim`` is its query's width, its output's width and ``num_heads * head_dim`` at once:
growing the stream by ``k = m * head_dim`` adds ``m`` heads (``head_dim`` and the softmax scale
stay). The old heads read the new stream channels through zero ``in_proj`` columns, the new heads
are read through zero ``out_proj`` columns: the old output channels are unchanged, and the new
ones are read by nothing that had weights (zero columns downstream, no norm in these models).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import netsurgeon
from netsurgeon.errors import WidenError


class SelfAttention(nn.Module):
    def __init__(self, heads, head_dim, *, batch_first, bias, bias_kv, cross_kdim, causal):
        super().__init__()
        embed = heads * head_dim
        self.inp = nn.Linear(4, embed)
        self.attn = nn.MultiheadAttention(
            embed, heads, bias=bias, add_bias_kv=bias_kv, batch_first=batch_first,
            kdim=cross_kdim, vdim=cross_kdim,
        )  # fmt: skip
        self.memory = nn.Parameter(torch.randn(5, 1, cross_kdim)) if cross_kdim else None
        self.causal, self.batch_first = causal, batch_first
        self.register_buffer("mask", torch.ones(5, 5).triu(1).bool())
        self.head = nn.Linear(embed, 3)

    def forward(self, x):  # x: (B, 5, 4) tokens, batch first
        h = self.inp(x if self.batch_first else x.transpose(0, 1))
        if self.memory is None:
            kv = h
        else:
            kv = self.memory.expand(-1, x.shape[0], -1)
            kv = kv.transpose(0, 1) if self.batch_first else kv
        mask = self.mask if self.causal else None
        y = self.attn(h, kv, kv, need_weights=False, attn_mask=mask)[0]
        return self.head(torch.relu(h + y))


@st.composite
def models(draw):
    head_dim = draw(st.sampled_from([2, 3, 4]))
    return (
        SelfAttention(
            draw(st.integers(1, 3)),
            head_dim,
            batch_first=draw(st.booleans()),
            bias=draw(st.booleans()),
            bias_kv=draw(st.booleans()),
            cross_kdim=draw(st.sampled_from([None, 5])),  # 5: never embed_dim here
            causal=draw(st.booleans()),
        ),
        draw(st.integers(1, 3)),
        draw(st.integers(0, 2**16)),
    )


@given(models())
def test_multihead_attention_grows_by_heads_keeping_the_output(case) -> None:
    model, m, seed = case
    torch.manual_seed(seed)
    model = model.double().eval()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    graph = netsurgeon.trace(model, x)
    group = graph.group_of("attn")
    assert group.widenable, group.reason
    assert group.name == "inp" and group.granularity == model.attn.head_dim
    optimizer = torch.optim.Adam(model.parameters())
    model(x).sum().backward()
    optimizer.step()
    before, heads = model(x), model.attn.num_heads
    netsurgeon.widen(model, {"attn": m * model.attn.head_dim}, graph=graph, optimizer=optimizer)
    assert model.attn.num_heads == heads + m
    assert model.attn.embed_dim == model.inp.out_features == (heads + m) * model.attn.head_dim
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-9 * before.abs().max().item())
    for p in model.parameters():  # Adam's moments follow every grown tensor
        assert optimizer.state[p]["exp_avg"].shape == p.shape


def _model(**changes) -> SelfAttention:
    kwargs = dict(batch_first=True, bias=True, bias_kv=False, cross_kdim=None, causal=False)
    return SelfAttention(2, 4, **(kwargs | changes))


def test_net2net_grows_the_stream_and_draws_the_new_heads_exactly() -> None:
    torch.manual_seed(0)
    model, x = _model().double().eval(), torch.randn(2, 5, 4, dtype=torch.float64)
    before = model(x)
    netsurgeon.widen(model, {"attn": 4}, init="net2net", example_inputs=x)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-9 * before.abs().max().item())
    new_q_rows = model.attn.in_proj_weight[8:12, :8]
    assert new_q_rows.abs().min() > 0  # drawn, not copies of the old heads' rows
    assert not torch.equal(new_q_rows, model.attn.in_proj_weight[:4, :8])


def test_a_growth_that_is_not_whole_heads_is_refused() -> None:
    with pytest.raises(WidenError, match="multiples of 4"):
        netsurgeon.widen(_model(), {"attn": 2}, example_inputs=torch.randn(2, 5, 4))


class Fixed(nn.Module):
    """A key/value of ``embed_dim`` features that carries no tracked channels."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.memory = nn.Parameter(torch.randn(1, 5, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        kv = self.memory.expand(x.shape[0], -1, -1)
        return self.head(self.attn(self.inp(x), kv, kv, need_weights=False)[0])


def test_a_fixed_key_of_embed_dim_features_blocks_with_the_reason() -> None:
    graph = netsurgeon.trace(Fixed(), torch.randn(2, 5, 4), strict=False)
    assert "its key is a fixed tensor of embed_dim features" in graph.unwidenable_reason("attn")


def test_nagn_reads_multihead_attention_output_the_same_either_batch_layout() -> None:
    from netsurgeon.nagn.monitor import NAGNMonitor

    torch.manual_seed(0)
    first = _model(batch_first=True).double()
    second = _model(batch_first=False).double()
    second.load_state_dict(first.state_dict())
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    profiles = []
    for model in (first, second):
        with NAGNMonitor(model, every=1) as monitor:
            model(x).square().mean().backward()
            profiles.append(monitor.profile())
    assert profiles[0]["attn"] > 0
    assert profiles[0]["attn"] == pytest.approx(profiles[1]["attn"], rel=1e-9)


class PreNorm(nn.Module):
    """A pre-norm encoder: ``x + attn(norm(x))``, ``x + mlp(norm(x))``, a final norm."""

    def __init__(self, dim: int = 8, heads: int = 2, norm=nn.LayerNorm):
        super().__init__()
        self.inp = nn.Linear(4, dim)
        self.norm1, self.norm2, self.norm = norm(dim), norm(dim), norm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.inp(x)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.fc2(torch.relu(self.fc1(self.norm2(x))))
        return self.head(self.norm(x))


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.RMSNorm], ids=["layernorm", "rmsnorm"])
def test_multihead_attention_in_a_normalised_stream_grows_with_it_exactly(norm) -> None:
    torch.manual_seed(0)
    model, x = PreNorm(norm=norm).double().eval(), torch.randn(2, 5, 4, dtype=torch.float64)
    graph = netsurgeon.trace(model, x)
    stream = graph.group_of("attn")
    assert stream.widenable and stream.name == "inp" and stream.granularity == 4  # head_dim
    assert stream.construction == ("mean_pad" if norm is nn.LayerNorm else "zero_pad")
    before, k = model(x), stream.granularity
    netsurgeon.widen(model, {"inp": k}, graph=graph)
    assert (model.attn.embed_dim, model.attn.num_heads) == (8 + k, (8 + k) // 4)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-9 * before.abs().max().item())


def test_a_grown_attention_checkpoint_loads_into_a_fresh_model_drawing_nothing() -> None:
    torch.manual_seed(0)
    grown, x = PreNorm().double().eval(), torch.randn(2, 5, 4, dtype=torch.float64)
    netsurgeon.widen(grown, {"inp": 4, "fc1": 2}, example_inputs=x)
    fresh = PreNorm().double().eval()
    state = torch.random.get_rng_state()
    netsurgeon.load_state_dict(fresh, grown.state_dict(), example_inputs=x)
    assert torch.equal(state, torch.random.get_rng_state())
    assert (fresh.attn.embed_dim, fresh.attn.num_heads) == (12, 3)
    torch.testing.assert_close(fresh(x), grown(x), rtol=0, atol=0)
