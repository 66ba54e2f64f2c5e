"""torchvision's ``VisionTransformer`` widens whole: its stream, heads and MLPs, exactly.

``_process_input`` reshapes the patch embedding with ``x.reshape(n, self.hidden_dim, n_h * n_w)``,
which symbolic tracing records as a literal. The literal is accepted only because it is the
attribute itself (found by identity while tracing, :mod:`netsurgeon.graph.width_attrs`) of a
module whose handler vouches for it, and the widening grows ``hidden_dim`` with the stream. The
stream is mean-padded (pre-LN blocks; the class token and position embedding get the mean of their
entries), the attention grows by whole heads, each MLP on its own. A literal that is not the
attribute (computed from it, or written as a number) still blocks with the reason it always had.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import netsurgeon
from netsurgeon.errors import WidenError
from netsurgeon.graph.registry import REGISTRY
from netsurgeon.graph.width_attrs import WidthOwnerHandler

torchvision = pytest.importorskip("torchvision")
from torchvision.models.vision_transformer import VisionTransformer  # noqa: E402

LAYERS = (nn.Linear, nn.Conv2d)


def _vit(heads: int = 2, hidden: int = 16, layers: int = 2) -> VisionTransformer:
    model = VisionTransformer(32, 8, layers, heads, hidden, 32, num_classes=5)
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision's head starts at 0
    return model


def _relative(after: torch.Tensor, before: torch.Tensor) -> float:
    return ((after - before).abs().max() / before.abs().max()).item()


def _widen_everything(model, x, scale: int = 1, **kwargs):
    graph = netsurgeon.trace(model, x)
    plan = {g.name: scale * g.granularity for g in graph.groups if g.widenable}
    netsurgeon.widen(model, plan, graph=graph, **kwargs)
    return graph, plan


def test_every_non_output_layer_of_a_small_vit_is_in_a_widenable_group() -> None:
    model, x = _vit(), torch.randn(2, 3, 32, 32)
    graph = netsurgeon.trace(model, x)
    layers = [n for n in graph.layers if isinstance(graph.module(n), LAYERS)]
    assert [n for n in layers if graph.group_of(n).reaches_output] == ["heads.head"]
    assert all(graph.group_of(n).widenable for n in layers if n != "heads.head")
    stream = graph.group_of("conv_proj")
    assert stream.construction == "mean_pad"
    assert stream.granularity == 8  # one head of hidden_dim / num_heads channels
    assert "" in [f.name for f in stream.followers]  # the model itself: its hidden_dim


@given(
    heads=st.integers(1, 3),
    head_dim=st.sampled_from([2, 4]),
    scale=st.integers(1, 3),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_widening_every_group_of_a_vit_at_once_keeps_the_output_in_float64(
    heads, head_dim, scale, batch, seed
) -> None:
    torch.manual_seed(seed)
    model = _vit(heads, heads * head_dim).double().eval()
    x = torch.randn(batch, 3, 32, 32, dtype=torch.float64)  # a batch of one included
    with torch.no_grad():
        before = model(x)
    _, plan = _widen_everything(model, x, scale)
    assert plan["conv_proj"] == scale * head_dim
    grown = heads * head_dim + scale * head_dim
    assert model.hidden_dim == model.conv_proj.out_channels == grown
    assert model.encoder.pos_embedding.shape[-1] == model.class_token.shape[-1] == grown
    for block in model.encoder.layers:
        assert block.self_attention.num_heads == block.num_heads == heads + scale
        assert block.self_attention.head_dim == head_dim
    with torch.no_grad():
        assert _relative(model(x), before) <= 1e-9


def test_widening_a_vit_in_train_mode_keeps_the_output_in_float32() -> None:
    torch.manual_seed(0)
    model, x = _vit().train(), torch.randn(3, 3, 32, 32)  # dropout 0: train mode is deterministic
    optimizer = torch.optim.AdamW(model.parameters())
    model(x).square().mean().backward()
    optimizer.step()
    before = model(x)
    _widen_everything(model, x, 2, optimizer=optimizer)
    after = model(x)
    assert _relative(after, before) <= 1e-5  # float32: rounding through 2 blocks and 5 norms
    after.square().mean().backward()  # the grown model trains
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_widened_vit_round_trips_through_a_checkpoint() -> None:
    torch.manual_seed(0)
    model, x = _vit().double().eval(), torch.randn(2, 3, 32, 32, dtype=torch.float64)
    _widen_everything(model, x)
    fresh = _vit().double().eval()
    netsurgeon.load_state_dict(fresh, model.state_dict(), example_inputs=x)
    assert fresh.hidden_dim == model.hidden_dim == 24
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


class OwnInput(VisionTransformer):
    def _process_input(self, x):
        n = x.shape[0]
        return self.conv_proj(x).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)


class OwnForward(VisionTransformer):
    def forward(self, x):
        return super().forward(x)


@pytest.mark.parametrize(
    ("kind", "method"), [(OwnInput, "_process_input"), (OwnForward, "forward")]
)
def test_a_subclass_overriding_what_reads_hidden_dim_keeps_the_stream_blocked(kind, method) -> None:
    model, x = kind(32, 8, 1, 2, 16, 32), torch.randn(2, 3, 32, 32)
    graph = netsurgeon.trace(model, x, strict=False)
    stream = graph.group_of("conv_proj")
    assert not stream.widenable
    assert "fixes a size that depends on these channels' width" in stream.reason
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WidenError, match="fixes a size"):
        netsurgeon.widen(model, {"conv_proj": 8}, example_inputs=x)
    assert model.hidden_dim == 16
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# -- the width attribute is accepted only as itself ---------------------------------------------


class Patches(nn.Module):
    """A patch embedding sized by its own ``dim`` in one of several spellings."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.dim, self.spelling = 6, spelling
        self.embed = nn.Conv2d(3, 6, 4, stride=4)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        n = x.shape[0]
        y = self.embed(x)
        if self.spelling == "attribute":
            y = y.reshape(n, self.dim, -1)
        elif self.spelling == "tuple":
            y = y.reshape((n, self.dim, -1))
        elif self.spelling == "computed":
            y = y.reshape(n, self.dim * 1, -1)
        elif self.spelling == "int":
            y = y.reshape(n, int(self.dim), -1)
        elif self.spelling == "stray":  # vouched here, and used again where nothing vouches
            y = y.reshape(n, self.dim, -1) + x.new_zeros(self.dim).sum()
        else:  # the same number, written down
            y = y.reshape(n, 6, -1)
        return self.head(torch.relu(y).mean(-1))


class PatchesHandler(WidthOwnerHandler):
    width_attrs = ("dim",)


@pytest.fixture
def registered():
    REGISTRY.add_module(Patches, PatchesHandler())
    yield
    REGISTRY._modules.pop(Patches)


@pytest.mark.parametrize("spelling", ["attribute", "tuple"])
def test_a_width_attribute_used_as_itself_grows_with_its_group(registered, spelling) -> None:
    torch.manual_seed(0)
    model, x = Patches(spelling).double(), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    before = model(x)
    netsurgeon.widen(model, {"embed": 3}, example_inputs=x)
    assert model.dim == model.embed.out_channels == 9
    torch.testing.assert_close(model(x), before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spelling", ["computed", "int", "literal"])
def test_a_size_computed_from_a_width_attribute_or_written_down_still_blocks(
    registered, spelling
) -> None:
    model, x = Patches(spelling), torch.randn(2, 3, 8, 8)
    graph = netsurgeon.trace(model, x, strict=False)
    assert "fixes a size that depends on these channels' width" in graph.unwidenable_reason("embed")
    assert model.dim == 6 and type(model.dim) is int  # the attribute is the very object again


def test_a_width_attribute_also_used_where_nothing_vouches_blocks_its_group(registered) -> None:
    model, x = Patches("stray"), torch.randn(2, 3, 8, 8)
    graph = netsurgeon.trace(model, x, strict=False)
    reason = graph.unwidenable_reason("embed")
    assert "the model's 'dim' (the width of these channels, which grows with them)" in reason
    assert "is also used at node" in reason


@pytest.mark.slow
def test_torchvision_vit_b_16_widens_every_group_at_once_exactly() -> None:
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16().double().eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    graph = netsurgeon.trace(model, x)
    layers = [
        n
        for n in graph.layers
        if isinstance(graph.module(n), LAYERS) and not graph.group_of(n).reaches_output
    ]
    assert len(layers) == 25 and all(graph.group_of(n).widenable for n in layers)
    with torch.no_grad():
        before = model(x)
        plan = {g.name: g.granularity for g in graph.groups if g.widenable}
        netsurgeon.widen(model, plan, graph=graph)
        assert _relative(model(x), before) <= 1e-9
    assert model.hidden_dim == 768 + 64
