"""Channels on a batch dim of a Linear: MLP-Mixer's token MLP, read by the analysis.

``fc1(norm1(x).transpose(1, 2))`` maps each channel's token vector with one function: the channels
are a batch dim of ``fc1``. The analysis must

* follow the stream through the transpose, both token Linears and the transpose back, into the
  residual ``add`` (the stream is one group, and the token Linears are neither its producers nor
  its consumers);
* give the token MLP's hidden dim (``fc1`` out, read by ``fc2``) its own ordinary group;
* block ``fc2``'s group (its units are the tokens, a size fixed by the input);
* restrict the stream to ``append``/``tile`` (padding is not exact through a shared map) and say
  so in ``summary()``;
* refuse, blocking the stream, any op that does not know channels on a batch dim.
"""

from __future__ import annotations

import pytest
import torch
from mixer_models import Mixer, inputs
from torch import nn

import netsurgeon


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.RMSNorm, None], ids=["LN", "RMS", "none"])
def test_the_stream_passes_the_token_mlp_as_one_group(norm) -> None:
    graph = netsurgeon.trace(Mixer(norm=norm), inputs())
    stream = graph.group_of("embed")
    assert set(stream.producers) == {"embed", "blocks.0.channel.fc2", "blocks.1.channel.fc2"}
    consumers = graph.consumers_of("embed")
    assert "blocks.0.token.fc1" not in consumers and "blocks.0.channel.fc1" in consumers
    assert stream.widenable, stream.reason
    hidden = graph.group_of("blocks.0.token.fc1")
    assert hidden.widenable and hidden.construction == "append"
    assert graph.consumers_of("blocks.0.token.fc1") == ["blocks.0.token.fc2"]
    assert "fixed by that tensor" in graph.unwidenable_reason("blocks.0.token.fc2")


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.RMSNorm], ids=["LN", "RMS"])
def test_a_normalised_stream_through_a_token_mlp_tiles_and_the_summary_says_why(norm) -> None:
    graph = netsurgeon.trace(Mixer(width=6, norm=norm), inputs())
    stream = graph.group_of("embed")
    assert stream.construction == "tile" and stream.constructions == ("tile",)
    assert stream.granularity == 6
    padding = "mean_pad" if norm is nn.LayerNorm else "zero_pad"
    why = [e for e in stream.excluded if e.startswith(f"not {padding}:")]
    assert why and "'blocks.0.token.fc1' applies one map to each of these channels" in why[0]
    line = next(x for x in graph.summary().splitlines() if x.startswith("embed builds by tile"))
    assert f"not {padding}: 'blocks.0.token.fc1' applies one map" in line


def test_without_a_norm_the_stream_appends_through_the_token_mlp() -> None:
    stream = netsurgeon.trace(Mixer(norm=None), inputs()).group_of("embed")
    assert stream.construction == "append" and stream.granularity == 1
    assert "mean_pad" not in stream.constructions and "tile" in stream.constructions


def test_a_layer_reading_its_features_keeps_todays_layout() -> None:
    """The channel MLP reads the stream on its feature dim: an ordinary consumer and producer."""
    graph = netsurgeon.trace(Mixer(norm=None, depth=1), inputs())
    assert graph.consumers_of("blocks.0.channel.fc1") == ["blocks.0.channel.fc2"]
    assert "blocks.0.channel.fc1" in graph.consumers_of("embed")


class WrongWayBack(Mixer):
    """The token MLP's output is put back with a ``reshape`` instead of a transpose: a
    different tensor, and an op that does not follow channels on a batch dim."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            mixed = block.token(block.norm1(x).transpose(1, 2))
            x = x + mixed.reshape(x.shape)
            x = x + block.channel(block.norm2(x))
        return self.head(self.norm(x).mean(1))


class MixesTheChannels(Mixer):
    """A cumulative sum over the carried channels between the token Linears."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            hidden = torch.nn.functional.gelu(block.token.fc1(block.norm1(x).transpose(1, 2)))
            mixed = block.token.fc2(hidden.cumsum(1))
            x = x + mixed.transpose(1, 2)
            x = x + block.channel(block.norm2(x))
        return self.head(self.norm(x).mean(1))


@pytest.mark.parametrize(
    ("model", "op"), [(WrongWayBack, ".reshape()"), (MixesTheChannels, ".cumsum()")]
)
def test_an_op_that_does_not_know_batch_channels_blocks_the_stream(model, op) -> None:
    graph = netsurgeon.trace(model(depth=1), inputs(), strict=False)
    reason = graph.unwidenable_reason("embed") or ""
    assert f"'{op}' takes a tensor whose channels on dim" in reason
    assert "a batch dim of an earlier layer" in reason
    with pytest.raises(netsurgeon.UnsupportedModelError, match="batch dim of an earlier layer"):
        netsurgeon.trace(model(depth=1), inputs(), strict=True)


def test_flattened_channels_on_a_batch_dim_are_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(1, 2), nn.Linear(6, 2))
    graph = netsurgeon.trace(model, torch.randn(2, 3, 6, 6), strict=False)
    assert "flattened" in (graph.unwidenable_reason("0") or "")


class ScalesByTheWidth(Mixer):
    """Reads the stream's width off the token branch, where the stream is a batch dim."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            mixed = block.token(block.norm1(x).transpose(1, 2)).transpose(1, 2)
            x = x + mixed / mixed.shape[-1]
            x = x + block.channel(block.norm2(x))
        return self.head(self.norm(x).mean(1))


def test_a_size_read_of_channels_on_a_batch_dim_is_a_channel_read() -> None:
    graph = netsurgeon.trace(ScalesByTheWidth(depth=1), inputs(), strict=False)
    reason = graph.unwidenable_reason("embed") or ""
    assert "is a channel-carrying dim" in reason and "truediv" in reason
    assert graph.group_of("blocks.0.token.fc1").widenable  # the read is of the stream alone


class ScalesByTheBatch(Mixer):
    """Reads the batch size and the rank of the token branch: plain numbers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            mixed = block.token(block.norm1(x).transpose(1, 2))
            shape = (mixed.shape[0],) + (1,) * (mixed.ndim - 1)
            x = x + (mixed * mixed.new_ones(shape) / mixed.size(0)).transpose(1, 2)
            x = x + block.channel(block.norm2(x))
        return self.head(self.norm(x).mean(1))


def test_batch_size_and_rank_reads_of_a_batch_layout_are_plain_numbers() -> None:
    graph = netsurgeon.trace(ScalesByTheBatch(depth=1), inputs(), strict=False)
    assert graph.group_of("embed").widenable, graph.unwidenable_reason("embed")
