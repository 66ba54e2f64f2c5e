"""timm's transformers widen their LayerNorm residual streams exactly.

``vit_tiny_patch16_224`` (built for 32x32 images): pre-LN blocks, a class token concatenated on the
token dim and a position embedding added, so its stream mean-pads (any ``k``); ``convnext_nano``:
a depthwise conv and a layer scale between the stream and each LayerNorm, so its stage streams
tile (``k`` a multiple of the width). Widening every widenable group at once keeps the output:
float64 eval mode to ``1e-9 * (1 + max |y|)``, float32 train mode (dropout off) to ``1e-5``.
"""

from __future__ import annotations

import pytest
import torch

import netsurgeon

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.slow

MODELS = {
    "vit_tiny_patch16_224": ({"img_size": 32}, "patch_embed.proj", "mean_pad"),
    "convnext_nano": ({}, "stem.0", "tile"),
}


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **MODELS[name][0])


def _plan(graph) -> dict[str, int]:
    return {
        g.name: g.granularity * (1 if g.construction == "tile" else 3)
        for g in graph.groups
        if g.widenable
    }


@pytest.mark.parametrize("name", list(MODELS))
def test_timm_stream_gets_its_construction_and_widens_exactly(name: str) -> None:
    _, stream, construction = MODELS[name]
    model = _model(name).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = model(x)
    graph = netsurgeon.trace(model, x)
    assert graph.group_of(stream).widenable, graph.group_of(stream).reason
    assert graph.group_of(stream).construction == construction
    width = graph.group_of(stream).width
    netsurgeon.widen(model, _plan(graph), graph=graph)
    assert graph.module(stream).out_channels > width
    error = (model(x) - before).abs().max().item()
    assert error <= 1e-9 * (1 + before.abs().max().item())


def test_timm_vit_widens_exactly_in_train_mode_float32() -> None:
    model = _model("vit_tiny_patch16_224").train()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    before = model(x)
    graph = netsurgeon.trace(model, x)
    optimizer = torch.optim.AdamW(model.parameters())
    netsurgeon.widen(model, _plan(graph), graph=graph, optimizer=optimizer)
    error = (model(x) - before).abs().max().item()
    assert error <= 1e-5 * (1 + before.abs().max().item())
