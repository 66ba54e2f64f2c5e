"""The reference decoders (``tests/transformer_models.py``) and timm's ViT attention, widened.

Every head group and MLP hidden group of the GPT-2 and LLaMA style decoders is widenable, and
widening all of them at once keeps the logits (float64, eval). timm's ``Attention`` spells its
head count ``self.num_heads`` (a literal once traced): its handler vouches for it and updates
``num_heads``/``attn_dim``, with ``fused_attn`` either way.
"""

from __future__ import annotations

import pytest
import torch
from transformer_models import GPT2, Llama

import netsurgeon
from netsurgeon.errors import WidenError

DECODERS = {
    "gpt2 chunk+sdpa": lambda: GPT2(),
    "gpt2 fused view": lambda: GPT2(fused_view=True),
    "gpt2 explicit attention": lambda: GPT2(sdpa=False),
    "llama repeat_interleave": lambda: Llama(),
    "llama enable_gqa": lambda: Llama(gqa="enable_gqa"),
    "llama repeat_kv": lambda: Llama(gqa="repeat_kv"),
    "llama repeat_kv, one kv head": lambda: Llama(heads=4, kv_heads=1, gqa="repeat_kv"),
    "llama 3 query heads per kv head": lambda: Llama(heads=6, kv_heads=2, head_dim=4),
}


def _attention_and_mlp_layers(model) -> list[str]:
    names = ("c_attn", "c_fc", "q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    return [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in names]


@pytest.mark.parametrize("make", [GPT2, Llama], ids=["gpt2", "llama"])
def test_every_non_output_layer_of_the_decoders_is_widenable(make) -> None:
    graph = netsurgeon.trace(make(), torch.randint(0, 50, (1, 6)), strict=False)
    inner = [n for n in graph.layers if n not in graph.output_layers]
    assert graph.widenable_layers == inner  # streams (LayerNorm, RMSNorm), heads and MLPs
    if make is GPT2:  # its position embedding (T, C) broadcasts into the (B, T, C) stream
        assert graph.group_of("wpe") is graph.group_of("wte")


@pytest.mark.parametrize("name", list(DECODERS))
def test_decoder_heads_and_mlps_are_widenable_and_widen_exactly_at_once(name: str) -> None:
    torch.manual_seed(0)
    model = DECODERS[name]().double().eval()
    x = torch.randint(0, 50, (2, 9))
    graph = netsurgeon.trace(model, x, strict=False)  # the streams are another matter
    for layer in _attention_and_mlp_layers(model):
        assert graph.group_of(layer).widenable, (layer, graph.group_of(layer).reason)
    before = model(x)
    plan = {g.name: 2 * g.granularity for g in graph.groups if g.widenable}
    netsurgeon.widen(model, plan, graph=graph)
    assert model(x).shape == before.shape
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-9 * before.abs().max().item())


def test_llama_query_heads_grow_with_their_key_value_heads() -> None:
    torch.manual_seed(0)
    model = Llama(heads=6, kv_heads=2, head_dim=4)
    graph = netsurgeon.trace(model, torch.randint(0, 50, (1, 5)), strict=False)
    group = graph.group_of("layers.0.self_attn.q_proj")
    assert group.granularity == 4 and group.rows_per_channel("layers.0.self_attn.q_proj") == 3
    netsurgeon.widen(model, {group.name: 4}, graph=graph)
    attn = model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (36, 12)
    assert attn.o_proj.in_features == 36


def test_grouped_query_heads_refuse_net2net_and_change_nothing() -> None:
    model, x = Llama(), torch.randint(0, 50, (2, 6))
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(WidenError, match="use init='paper'"):
        netsurgeon.widen(model, {"layers.0.self_attn.k_proj": 8}, init="net2net", example_inputs=x)
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())


@pytest.mark.parametrize("fused", [True, False])
def test_timm_vit_attention_grows_by_heads_and_updates_its_head_count(fused: bool) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = (
        timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2
        )
        .double()
        .eval()
    )
    for block in model.blocks:
        block.attn.fused_attn = fused
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    graph = netsurgeon.trace(model, x, strict=False)
    group = graph.group_of("blocks.0.attn.qkv")
    assert group.widenable and group.granularity == 3 * 64
    before = model(x)
    netsurgeon.widen(model, {group.name: 2 * group.granularity}, graph=graph)
    attn = model.blocks[0].attn
    assert (attn.num_heads, attn.attn_dim, attn.proj.in_features) == (5, 320, 320)
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-9 * before.abs().max().item())


@pytest.mark.parametrize("make", [Llama, GPT2], ids=["llama", "gpt2"])
def test_a_grown_decoder_checkpoint_loads_into_a_fresh_one(make) -> None:
    torch.manual_seed(0)
    grown, x = make().double().eval(), torch.randint(0, 50, (2, 7))
    graph = netsurgeon.trace(grown, x, strict=False)
    netsurgeon.widen(
        grown, {g.name: g.granularity for g in graph.groups if g.widenable}, graph=graph
    )
    fresh = netsurgeon.load_state_dict(make().double().eval(), grown.state_dict(), example_inputs=x)
    torch.testing.assert_close(fresh(x), grown(x), rtol=0, atol=0)


def test_a_timm_attention_subclass_with_its_own_forward_is_not_vouched_for() -> None:
    timm_attention = pytest.importorskip("timm.models.vision_transformer").Attention

    class Own(timm_attention):
        def forward(self, x):  # the parent's arithmetic, but netsurgeon cannot know it
            B, N, _ = x.shape
            qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return self.proj(y.transpose(1, 2).reshape(B, N, self.attn_dim))

    for attention, widenable in ((timm_attention(16, 2), True), (Own(16, 2), False)):
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), attention, torch.nn.Linear(16, 2))
        graph = netsurgeon.trace(model, torch.randn(1, 5, 4), strict=False)
        group = graph.group_of("1.qkv")
        assert group.widenable == widenable
        assert widenable or "fixes the head count at 2" in group.reason
