"""The Grower under ``init="net2net"`` on a ViT: each group grows by its granularity *under the
init* (a LayerNorm stream is tiled, so by multiples of its width), groups the init cannot widen
exactly (heads of a fused ``qkv``) do not grow, and the model computes the same function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import netsurgeon
from netsurgeon.graph.constructions import construction_under, granularity_under
from netsurgeon.models import vit
from netsurgeon.nagn import Grower, GrowthConfig
from netsurgeon.surgery.constructions import exact_under
from netsurgeon.surgery.init import get_init


def _model():
    torch.manual_seed(0)
    return vit([(32, 32, 64)] * 2, image_size=16)


def test_every_group_is_exact_under_its_own_construction_and_heads_refuse_net2net() -> None:
    model = _model()
    graph = netsurgeon.trace(model, (torch.randn(2, 3, 16, 16),))
    stream = graph.resolve("embed.proj")
    qkv = graph.resolve("blocks.0.attn.qkv")
    assert construction_under(stream, "paper") == "mean_pad"
    assert (construction_under(stream, "net2net"), granularity_under(stream, "net2net")) == (
        "tile",
        stream.width,
    )
    assert granularity_under(stream, "paper") == stream.granularity == 1
    for group in graph.groups:
        if group.widenable:
            assert exact_under(group, get_init("paper")) is None
    assert "fused projection" in exact_under(qkv, get_init("net2net"))
    assert exact_under(graph.resolve("blocks.0.mlp.fc1"), get_init("net2net")) is None


@pytest.mark.parametrize("where", ["nagn", "uniform", "random"])
def test_net2net_growth_tiles_the_stream_skips_the_heads_and_keeps_the_function(where) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    config = GrowthConfig(w_acc=1, delta_acc=1e6, every=1, where=where, init="net2net", seed=3)
    grower = Grower(model, optimizer, config, example_inputs=(x[:2],))
    for epoch in range(2):  # the trigger is forced at the end of the second epoch
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        model.eval()
        with torch.no_grad():
            before = model(x[:8])
        event = grower.step(0.1 * (epoch + 1))
    assert event is not None and event.increments
    assert not any(name.endswith("qkv") for name in event.increments)
    for name, k in event.increments.items():
        if name == "embed.proj":  # the stream: tiled
            assert k % event.widths_before[name] == 0
    model.eval()
    with torch.no_grad():
        after = model(x[:8])
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
