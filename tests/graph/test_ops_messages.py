"""Crashes and unclear messages found while tracing everyday models, each pinned by a test.

* ``y.expand_as(x)`` of an untracked ``y`` (an SE block whose gate was blocked, or a slice of
  the channels) crashed the analysis without ``example_inputs``.
* A join of channels on a known dim with channels counted from the end of a tensor of unknown
  rank said ``channels on dim None``; it now says what is unknown and to pass ``example_inputs``.
* Recurrent modules block the groups they read, naming the module and what it reads.
* ``nn.TransformerEncoder`` is traced through its slow path; a layer it does not describe (a
  subclass overriding ``_sa_block``) is read as one op: ``summary()``, ``opaque_modules()`` and
  the error for a layer inside it say why, and a hand-written encoder block traces and widens.
"""

from __future__ import annotations

import re

import pytest
import torch
from ops_helpers import widen_all_and_compare
from torch import nn

import netsurgeon
from netsurgeon.errors import UnknownLayerError, WidenError


class SELayer(nn.Module):
    """The squeeze-excitation layer as the widely used SENet repository writes it."""

    def __init__(self, channel: int, reduction: int = 4) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SENet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.se = SELayer(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.se(self.conv(x)))


class FirstChannelGate(nn.Module):
    """``x * x[..., :1].expand_as(x)`` on a sequence (channels last)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.fc(x)
        return self.head(h * h[..., :1].expand_as(h))


class Film(nn.Module):
    """Two inputs: a conv map scaled by features of a second input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(5, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x, meta):
        return self.head(self.conv(x) * self.fc(meta).unsqueeze(-1).unsqueeze(-1))


X = torch.randn(2, 3, 6, 6)
SEQ = torch.randn(2, 5, 3)
FILM = (X, torch.randn(2, 5))


@pytest.mark.parametrize(("make", "inputs"), [(SENet, X), (FirstChannelGate, SEQ)])
def test_expand_as_of_an_untracked_tensor_blocks_and_asks_for_example_inputs(make, inputs):
    graph = netsurgeon.trace(make(), strict=False)  # raised AttributeError before
    first = graph.layers[0]
    assert re.search(
        r"expand_as gives '\w+' the shape of these channels", graph.unwidenable_reason(first)
    )
    assert "pass example_inputs" in graph.unwidenable_reason(first)


@pytest.mark.parametrize(("make", "inputs"), [(SENet, X), (FirstChannelGate, SEQ)])
def test_expand_as_models_widen_exactly_with_example_inputs(make, inputs):
    widen_all_and_compare(make, inputs)  # whatever is widenable stays exact


def test_a_broadcast_expanded_over_the_channels_carries_their_layout():
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            h = self.conv(x)
            return self.head(h * torch.sigmoid(x.mean(1, keepdim=True)).expand_as(h))

    graph = netsurgeon.trace(Gate(), X)
    assert graph.group_of("conv").widenable
    widened, _ = widen_all_and_compare(Gate, X, init="net2net")
    assert widened == ["conv"]


def test_a_fixed_tensor_stretched_over_the_channels_blocks_them():
    class Stretch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 2, 1)
            self.register_buffer("table", torch.rand(8, 1, 1))

        def forward(self, x):
            h = self.conv(x)
            return self.head(h + (self.table * 2).expand_as(h))

    graph = netsurgeon.trace(Stretch(), X, strict=True)
    assert "expand_as stretches a fixed tensor of 8 entries" in graph.unwidenable_reason("conv")


def test_a_join_whose_ranks_are_unknown_says_what_is_unknown_and_to_pass_example_inputs():
    graph = netsurgeon.trace(Film(), strict=False)
    reason = graph.unwidenable_reason("conv")
    assert "dim None" not in reason
    assert re.search(
        r"'mul' combines channels on dim 1 of a rank-4 tensor and dim -3 \(counted from the end\) "
        r"of a tensor of unknown rank.*pass example_inputs",
        reason,
    )
    assert set(netsurgeon.trace(Film(), FILM).group_of("conv").producers) == {"conv", "fc"}


def test_a_two_input_model_with_example_inputs_widens_the_joined_group_exactly():
    widened, _ = widen_all_and_compare(Film, FILM)
    assert widened == ["conv"]


# -- recurrent modules ----------------------------------------------------------------------------


class ConvRnn(nn.Module):
    def __init__(self, rnn: nn.Module, permute: tuple[int, ...]) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.rnn = rnn
        self.permute = permute
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.rnn(self.conv(x).permute(*self.permute))[0])


@pytest.mark.parametrize(
    ("rnn", "permute", "match"),
    [
        (nn.LSTM(8, 6, batch_first=True), (0, 2, 1),
         r"LSTM 'rnn' reads \(batch, seq, features\), batch_first=True: these channels are its "
         r"input_size=8 features, the columns of weight_ih_l0"),
        (nn.GRU(8, 6), (2, 0, 1),
         r"GRU 'rnn' reads \(seq, batch, features\), batch_first=False: these channels are its "
         r"input_size=8"),
        (nn.RNN(5, 6), (1, 0, 2),
         r"RNN 'rnn' reads \(seq, batch, features\), batch_first=False, and these channels "
         r"arrive on dim 0, its seq dim"),
    ],
    ids=["lstm-batch-first", "gru", "rnn-channels-as-batch"],
)  # fmt: skip
def test_a_recurrent_module_blocks_the_group_it_reads_naming_the_module(rnn, permute, match):
    x = torch.randn(2, 3, 5)
    graph = netsurgeon.trace(ConvRnn(rnn, permute), x, strict=True)
    assert re.search(match, graph.unwidenable_reason("conv")), graph.unwidenable_reason("conv")
    assert graph.layers == ["conv", "head"]


def test_an_lstm_cell_blocks_the_features_it_reads():
    class Cell(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 8)
            self.cell = nn.LSTMCell(8, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.cell(self.fc(x))[0])

    graph = netsurgeon.trace(Cell(), strict=True)
    assert "LSTMCell 'cell' reads (batch, features)" in graph.unwidenable_reason("fc")
    assert "columns of weight_ih," in graph.unwidenable_reason("fc")


# -- TransformerEncoder -------------------------------------------------------------------------


class SquaredAttention(nn.TransformerEncoderLayer):
    """A layer whose own ``_sa_block`` the slow path netsurgeon traces does not describe."""

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal=False):
        return super()._sa_block(x, attn_mask, key_padding_mask, is_causal) ** 2


class Encoder(nn.Module):
    def __init__(self, embed: bool, layer_type: type = SquaredAttention) -> None:
        super().__init__()
        self.inp = nn.Embedding(10, 16) if embed else nn.Linear(4, 16)
        layer = layer_type(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.enc(self.inp(x)))


def test_a_transformer_encoder_traces_through_and_every_inner_layer_is_widenable():
    graph = netsurgeon.trace(
        Encoder(True, nn.TransformerEncoderLayer), torch.randint(0, 10, (2, 5))
    )
    assert not graph.opaque_modules()
    assert graph.widenable_layers == [n for n in graph.layers if n != "head"]
    assert "enc.layers.1.linear1" in graph.widenable_layers


@pytest.mark.parametrize("embed", [True, False], ids=["embedding-input", "linear-input"])
def test_a_transformer_layer_it_does_not_describe_is_reported_as_opaque_with_the_reason(embed):
    graph = netsurgeon.trace(Encoder(embed), strict=True)
    opaque = graph.opaque_modules()
    assert list(opaque) == ["enc.layers.0", "enc.layers.1"]
    assert re.search(r"'enc\.layers\.0' \(SquaredAttention\) is read as one opaque op because "
                     r"netsurgeon traces it through the slow path .* overrides '_sa_block' .* "
                     r"the 4 layers inside it", opaque["enc.layers.0"])  # fmt: skip
    summary = graph.summary()
    assert re.search(
        r"opaque modules .*\n  'enc\.layers\.0', 'enc\.layers\.1' \(SquaredAttention\): read as "
        r"one opaque op because .*; fix: use the torch class as it is",
        summary,
    )
    if not embed:  # the Linear feeding it is blocked, naming the layer and why
        reason = graph.unwidenable_reason("inp")
        assert "SquaredAttention 'enc.layers.0' reads these channels as its d_model" in reason
        assert "overrides '_sa_block'" in reason


def test_widening_a_layer_inside_an_opaque_transformer_layer_says_why_it_cannot():
    model = Encoder(embed=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        WidenError,
        match=r"'enc\.layers\.0\.linear1' is inside 'enc\.layers\.0' \(SquaredAttention\), "
        r"which netsurgeon reads as one opaque op because .* Fix: use the torch class",
    ):
        netsurgeon.widen(model, {"enc.layers.0.linear1": 8})
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_an_unknown_layer_name_outside_opaque_modules_keeps_the_did_you_mean_error():
    with pytest.raises(
        UnknownLayerError, match=r"'hed' is not a layer of Encoder\. Did you mean 'head'"
    ):
        netsurgeon.trace(Encoder(embed=True)).check_layer("hed")


class EncoderBlock(nn.Module):
    """The post-norm encoder layer written from traceable parts, as the fix suggests."""

    def __init__(self, d: int = 16, ff: int = 32) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        x = self.norm1(x + self.attn(x, x, x, need_weights=False)[0])
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))


class HandWritten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 16)
        self.blocks = nn.Sequential(EncoderBlock(), EncoderBlock())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.blocks(self.inp(x)))


def test_a_hand_written_encoder_block_traces_and_its_feed_forward_width_widens_exactly():
    seq = torch.randn(2, 5, 4)
    graph = netsurgeon.trace(HandWritten(), seq, strict=True)
    assert not graph.opaque_modules()  # MultiheadAttention is a layer (it grows by heads)
    stream = graph.group_of("blocks.0.attn")  # post-norm: the stream tiles, the attention with it
    assert stream.construction == "tile" and graph.group_of("inp") is stream
    assert graph.widenable_layers == [n for n in graph.layers if n != "head"]
    widened, _ = widen_all_and_compare(HandWritten, seq)
    assert widened == ["blocks.0.linear1", "blocks.1.linear1", "inp"]


def test_an_initial_state_computed_from_channels_blocks_naming_hidden_size():
    class Stateful(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.init = nn.Linear(3, 6)
            self.rnn = nn.GRU(4, 6, batch_first=True)
            self.head = nn.Linear(6, 2)

        def forward(self, x, z):
            return self.head(self.rnn(self.fc(x), self.init(z).unsqueeze(0))[0])

    graph = netsurgeon.trace(Stateful(), (SEQ, torch.randn(2, 3)), strict=True)
    assert (
        "GRU 'rnn' takes these channels as its initial state, whose size is fixed by "
        "hidden_size=6" in graph.unwidenable_reason("init")
    )
    assert "these channels are its input_size=4 features" in graph.unwidenable_reason("fc")


@pytest.mark.parametrize("kind", ["layer", "encoder"])
def test_torch_fx_cannot_trace_a_transformer_encoders_own_forward_which_is_why_its_slow_path_is_traced(
    kind,
):
    """The claim behind tracing the slow path: if a torch release makes this trace, revisit it."""
    from netsurgeon.graph.tracer import SurgeonTracer

    class TraceInto(SurgeonTracer):
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            if isinstance(m, (nn.TransformerEncoder, nn.TransformerEncoderLayer)):
                return False
            return super().is_leaf_module(m, name)

        def call_module(self, m, forward, args, kwargs):  # the module's own forward
            return torch.fx.Tracer.call_module(self, m, forward, args, kwargs)

    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    module = layer if kind == "layer" else nn.TransformerEncoder(layer, 1)
    with pytest.raises(torch.fx.proxy.TraceError, match="cannot be used as inputs to control flow"):
        TraceInto().trace(nn.Sequential(module))  # called as a model calls it: masks None
