"""``netsurgeon.models.vit``: shapes, parameter count, groups, validation, widths read back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import netsurgeon
from netsurgeon.models import vit, vit_widths_of


def _parameters(dim: int, width: int, hidden: int, depth: int, tokens: int, classes: int) -> int:
    """Counted by hand: patch conv (3*4*4 + 1 per channel), pos, per block two LayerNorms,
    qkv, proj, fc1, fc2, then the final LayerNorm and the head."""
    block = 2 * 2 * dim + (dim + 1) * 3 * width + (width + 1) * dim
    block += (dim + 1) * hidden + (hidden + 1) * dim
    return (48 + 1) * dim + tokens * dim + depth * block + 2 * dim + (dim + 1) * classes


def test_vit_has_its_hand_counted_size_and_shapes() -> None:
    model = vit([(64, 64, 128)] * 4)
    assert sum(p.numel() for p in model.parameters()) == _parameters(64, 64, 128, 4, 64, 10)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert vit_widths_of(model) == ((64, 64, 128),) * 4


def test_vit_attention_is_multi_head_attention_with_heads_of_head_dim() -> None:
    torch.manual_seed(0)
    model = vit([(48, 48, 64)], head_dim=16).double()
    attn, x = model.blocks[0].attn, torch.randn(2, 5, 48, dtype=torch.float64)
    mha = torch.nn.MultiheadAttention(48, 3, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    expected, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(attn(x), expected, rtol=1e-12, atol=1e-12)


def test_vit_blocks_are_pre_layer_norm_residual_blocks() -> None:
    torch.manual_seed(0)
    block = vit([(16, 16, 32)]).blocks[0].double()
    x = torch.randn(2, 4, 16, dtype=torch.float64)
    h = x + block.attn(F.layer_norm(x, (16,), block.norm1.weight, block.norm1.bias))
    h = h + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(h))))
    torch.testing.assert_close(block(x), h, rtol=1e-12, atol=1e-12)


def test_vit_mlp_hidden_groups_are_widenable_and_widen_exactly() -> None:
    torch.manual_seed(0)
    model = vit([(16, 16, 32)] * 2, image_size=16).double().eval()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    graph = netsurgeon.trace(model, example_inputs=(x,))
    hidden = [f"blocks.{i}.mlp.fc1" for i in range(2)]
    assert all(graph.resolve(name).widenable for name in hidden)
    before = model(x)
    netsurgeon.widen(
        model, {name: 5 for name in hidden}, generator=torch.Generator().manual_seed(1)
    )
    assert vit_widths_of(model) == ((16, 16, 37),) * 2
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("widths", "kwargs", "match"),
    [
        ([], {}, "rows"),
        ([(16, 16)], {}, "rows"),
        ([(16, 16, 32), (24, 16, 32)], {}, "shares its stream"),
        ([(16, 20, 32)], {"head_dim": 16}, "multiple of head_dim"),
        ([(16, 16, 32)], {"patch": 5}, "multiple of the patch"),
    ],
)
def test_vit_refuses_inconsistent_widths(widths, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        vit(widths, **kwargs)


def test_vit_takes_device_and_dtype() -> None:
    model = vit([(16, 16, 32)], device="cpu", dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
