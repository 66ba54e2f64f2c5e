"""``nn.TransformerEncoderLayer`` (and ``TransformerEncoder``) widen whole, exactly.

The tracer traces the slow path of the layer's ``forward``, the function its fused kernel
computes (:mod:`netsurgeon.graph.ops.transformer`): the stream (the layer's input and every
producer writing into it: the input projection, ``self_attn`` by whole heads, ``linear2``) and the
feed-forward width (``linear1``) are widenable. Pre-LN (``norm_first=True``) streams mean-pad,
post-LN streams tile (the norm's output is added back into the stream). After the widening the
module's own ``forward`` computes the same function: the slow path (train mode, or gradients on)
and the fused kernel (eval mode without gradients) alike. A subclass that overrides a block method,
or a hooked layer, stays a leaf and blocks with the reason; the model is left bit-identical.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import netsurgeon
from netsurgeon.errors import WidenError


class Encoder(nn.Module):
    """``Linear -> TransformerEncoderLayer(s) -> Linear`` over ``(B, T, 5)`` tokens."""

    def __init__(self, layer: nn.Module, *, batch_first: bool = True, stack: int = 0) -> None:
        super().__init__()
        width = layer.linear1.in_features
        self.inp = nn.Linear(5, width)
        self.body = (
            nn.TransformerEncoder(layer, stack, enable_nested_tensor=False) if stack else layer
        )
        self.head = nn.Linear(width, 3)
        self.batch_first = batch_first

    def forward(self, x, mask=None):
        h = self.inp(x if self.batch_first else x.transpose(0, 1))
        h = self.body(h, src_key_padding_mask=mask) if mask is not None else self.body(h)
        return self.head(h if self.batch_first else h.transpose(0, 1))


def _layer(
    heads=2, head_dim=4, hidden=12, norm_first=False, batch_first=True, act="relu", bias=True
):
    return nn.TransformerEncoderLayer(
        heads * head_dim, heads, hidden, dropout=0.0, activation=act,
        batch_first=batch_first, norm_first=norm_first, bias=bias,
    )  # fmt: skip


def _relative(after: torch.Tensor, before: torch.Tensor) -> float:
    return ((after - before).abs().max() / before.abs().max()).item()


def _plan(graph, scale: int = 1) -> dict[str, int]:
    return {g.name: scale * g.granularity for g in graph.groups if g.widenable}


@st.composite
def encoders(draw):
    heads, head_dim = draw(st.integers(1, 3)), draw(st.sampled_from([2, 4]))
    batch_first = draw(st.booleans())
    layer = _layer(
        heads,
        head_dim,
        draw(st.integers(3, 16)),
        norm_first=draw(st.booleans()),
        batch_first=batch_first,
        act=draw(st.sampled_from(["relu", "gelu", F.silu, nn.GELU()])),
        bias=draw(st.booleans()),
    )
    model = Encoder(layer, batch_first=batch_first, stack=draw(st.sampled_from([0, 2])))
    return model, draw(st.integers(1, 2)), draw(st.integers(0, 2**16))


@given(encoders())
def test_every_group_of_an_encoder_layer_widens_at_once_exactly(case) -> None:
    model, scale, seed = case
    torch.manual_seed(seed)
    model = model.double()
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    graph = netsurgeon.trace(model, x)
    layers = [n for n in graph.layers if isinstance(graph.module(n), nn.Linear) and n != "head"]
    assert len(layers) >= 3 and all(graph.group_of(n).widenable for n in layers)
    layer = (
        model.body if isinstance(model.body, nn.TransformerEncoderLayer) else model.body.layers[0]
    )
    stream = graph.group_of("inp")
    assert stream.construction == ("mean_pad" if layer.norm_first else "tile")
    assert not graph.opaque_modules()
    model.eval()
    with torch.no_grad():
        before_eval = model(x)
    before_train = model.train()(x)
    netsurgeon.widen(model, _plan(graph, scale), graph=graph)
    assert model.inp.out_features == layer.self_attn.embed_dim == layer.norm1.normalized_shape[0]
    assert _relative(model(x), before_train) <= 1e-9  # train mode: the slow path
    model.eval()
    with torch.no_grad():
        assert _relative(model(x), before_eval) <= 1e-9  # eval, no gradients: fused if it can


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-LN", "post-LN"])
def test_the_fused_kernel_computes_the_same_after_widening(monkeypatch, norm_first) -> None:
    calls = []
    fused = torch._transformer_encoder_layer_fwd

    def counted(*args):
        calls.append(args[2])  # num_heads
        return fused(*args)

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", counted)
    torch.manual_seed(0)
    model = Encoder(_layer(2, 4, 12, norm_first=norm_first)).double().eval()
    x = torch.randn(3, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        graph = netsurgeon.trace(model, x)
        scale = 2 if norm_first else 1  # 2 heads more, or the stream tiled once: 4 heads
        netsurgeon.widen(model, _plan(graph, scale), graph=graph)
        after = model(x)
    assert calls == [2, 4]  # the fused kernel ran before and after, with the grown head count
    assert _relative(after, before) <= 1e-9
    assert model.body.norm1.eps == model.body.norm2.eps


def test_a_float32_encoder_layer_widens_in_train_mode_and_its_new_units_learn() -> None:
    torch.manual_seed(0)
    model, x = Encoder(_layer(norm_first=True)).train(), torch.randn(4, 6, 5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    graph = netsurgeon.trace(model, x)
    before = model(x)
    old = {n: p.detach().clone() for n, p in model.named_parameters()}
    netsurgeon.widen(model, _plan(graph), graph=graph, optimizer=optimizer)
    assert _relative(model(x), before) <= 1e-5  # float32 rounding through two norms
    moved = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for _ in range(2):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        for n, p in model.named_parameters():
            moved[n] |= p.grad != 0
        optimizer.step()
    for n in moved:  # every new entry has had gradient after two steps
        new = torch.ones_like(moved[n])
        new[tuple(slice(0, s) for s in old[n].shape)] = False
        assert moved[n][new].all(), n


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("nested", [False, True], ids=["padded", "nested-tensor fast path"])
def test_a_key_padding_mask_passes_to_the_attention(monkeypatch, nested) -> None:
    packed = []
    pack = torch._nested_tensor_from_mask
    monkeypatch.setattr(
        torch, "_nested_tensor_from_mask", lambda *a, **k: packed.append(1) or pack(*a, **k)
    )
    torch.manual_seed(0)
    model = Encoder(_layer(norm_first=False), stack=2).double().eval()
    model.body.enable_nested_tensor = model.body.use_nested_tensor = nested
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 4:] = True
    with torch.no_grad():
        before = model(x, mask)
    graph = netsurgeon.trace(model, (x, mask))
    netsurgeon.widen(model, _plan(graph), graph=graph)
    with torch.no_grad():
        assert _relative(model(x, mask), before) <= 1e-9
    assert len(packed) == (2 if nested else 0)  # the nested path ran before and after


class OwnBlock(nn.TransformerEncoderLayer):
    def _ff_block(self, x):
        return self.linear2(F.relu(self.linear1(x)) ** 2)


def _hooked() -> nn.TransformerEncoderLayer:
    layer = _layer()
    layer.register_forward_hook(lambda m, i, o: 2 * o)
    return layer


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: OwnBlock(8, 2, 12, dropout=0.0, batch_first=True), "overrides '_ff_block'"),
        (_hooked, "forward hook"),
    ],
    ids=["subclass", "hook"],
)
def test_an_encoder_layer_it_does_not_describe_stays_a_leaf_and_blocks(make, why) -> None:
    torch.manual_seed(0)
    model, x = Encoder(make()), torch.randn(2, 6, 5)
    graph = netsurgeon.trace(model, x, strict=False)
    assert list(graph.opaque_modules()) == ["body"]
    assert why in graph.unwidenable_reason("inp")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WidenError, match=r"'body\.linear1' is inside 'body'"):
        netsurgeon.widen(model, {"body.linear1": 4}, example_inputs=x)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_per_head_attention_mask_blocks_the_stream() -> None:
    class Masked(Encoder):
        def forward(self, x, mask):
            return self.head(self.body(self.inp(x), src_mask=mask))

    model = Masked(_layer())
    x, mask = torch.randn(2, 6, 5), torch.zeros(2 * 2, 6, 6)
    graph = netsurgeon.trace(model, (x, mask), strict=False)
    assert "3-d" in graph.unwidenable_reason("inp")
    assert graph.group_of("body.linear1").widenable


def test_a_decoder_layer_is_traced_and_its_cross_attention_blocks_with_the_reason() -> None:
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.mem = nn.Linear(5, 8), nn.Linear(5, 8)
            self.body = nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x, m):
            return self.head(self.body(self.inp(x), self.mem(m)))

    torch.manual_seed(0)
    model = Decoder().double().eval()
    x, m = torch.randn(2, 6, 5, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    graph = netsurgeon.trace(model, (x, m), strict=False)
    assert not graph.opaque_modules()
    assert "cross-attention" in graph.unwidenable_reason("inp")
    before = model(x, m)
    netsurgeon.widen(model, {"body.linear1": 4}, graph=graph)
    assert _relative(model(x, m), before) <= 1e-9
