"""Ops over the spatial dims: pooling, interpolation, padding, pixel (un)shuffle, flip and roll.

Pooling and interpolation (module and function spellings share :func:`spatial_flow`) work on the
trailing spatial dims of a channel-first map, every channel alike: the channels pass.

Padding a spatial dim, flipping or rolling it works on every channel alike: the channels pass.
Two of these ops reach the channel dim itself:

* ``F.pad`` with ``mode="constant"`` over the channel dim (the CIFAR ResNet "option A" shortcut,
  ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))``) concatenates constant channels around the
  operand. The result is the concatenation ``[p untracked | x's segments | p untracked]``: growing
  ``x``'s group inserts at the end of its own segment, exactly as for ``torch.cat``.
* ``PixelUnshuffle(r)`` turns channel ``c`` of a ``(*, C, H*r, W*r)`` map into the ``r**2``
  consecutive channels ``[c*r**2, (c+1)*r**2)`` of its ``(*, C*r**2, H, W)`` output: each channel
  owns ``r**2`` entries of the output's channel dim (``factor`` grows ``r**2``-fold), and new
  channels appended to a group append whole runs of ``r**2`` entries. Exact.
* ``PixelShuffle(r)`` is the inverse: output channel ``c`` gathers input channels
  ``c*r**2 + i``. When the input's channels already own ``r**2``-entry runs (after an unshuffle)
  the runs fold back (``factor // r**2``). Otherwise an output channel would be made of ``r**2``
  of the group's channels; new channels in whole runs of ``r**2`` would leave the old output
  channels intact, but a layout cannot state ``1 / r**2`` entries per channel, so the group is
  blocked with that reason.

Flipping or rolling the channel dim reverses or rotates channel order, so new channels appended
at the end would land among the old ones: those groups block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from netsurgeon.graph.layout import Layout, Segment
from netsurgeon.graph.nodes import first_layout, node_arg
from netsurgeon.graph.registry import OpHandler, register_function, register_method, register_module
from netsurgeon.graph.sizes import SizeValue

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["channel_position_from_end", "pad_flow", "spatial_flow"]


_POOL_MODULES = {
    1: (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d),
    2: (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d),
    3: (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d),
}


_POOL_FUNCTIONS = {
    1: (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d,
        torch.max_pool1d, torch.avg_pool1d, torch.adaptive_avg_pool1d, torch.adaptive_max_pool1d),
    2: (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
        torch.max_pool2d),
    3: (F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d,
        torch.max_pool3d),
}  # fmt: skip


@register_module(*_POOL_MODULES[1], *_POOL_MODULES[2], *_POOL_MODULES[3], nn.Upsample)
class PoolModuleHandler(OpHandler):
    """Pooling and upsampling over the trailing spatial dims keep the channels."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        module = ctx.module_of(node)
        if getattr(module, "return_indices", False):
            ctx.refuse(node, "pooling with return_indices=True", fix="use return_indices=False")
        spatial = next((d for d, types in _POOL_MODULES.items() if isinstance(module, types)), 0)
        return spatial_flow(node, ctx.input(node), spatial, type(module).__name__, ctx)


@register_function(*(f for fs in _POOL_FUNCTIONS.values() for f in fs), F.interpolate)
class PoolFunctionHandler(OpHandler):
    """Functional pooling and interpolation over the trailing spatial dims."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        if node.kwargs.get("return_indices"):
            ctx.refuse(node, "pooling with return_indices=True", fix="use return_indices=False")
        spatial = next((d for d, fs in _POOL_FUNCTIONS.items() if node.target in fs), 0)
        return spatial_flow(node, first_layout(node, ctx), spatial, ctx.op_name(node), ctx)


def spatial_flow(
    node: fx.Node, layout: Layout | None, spatial: int, label: str, ctx: FlowContext
) -> Layout | None:
    """An op over the last ``spatial`` dims (0: unknown, at least one): channels must be before."""
    if layout is None:
        return None
    channel = layout.normalized_dim()
    inside = layout.flattened or channel is None
    if not inside and layout.rank is not None:
        inside = channel >= layout.rank - max(spatial, 1)
    if inside:
        ctx.refuse(
            node,
            f"'{label}' works on the trailing spatial dims but the channels are on dim "
            f"{channel} (flattened={layout.flattened})",
            fix="apply it to a channel-first map before flattening",
        )
    return layout.with_path(label)


_PAD_MODULES = {
    1: (nn.ReflectionPad1d, nn.ReplicationPad1d, nn.ZeroPad1d, nn.ConstantPad1d, nn.CircularPad1d),
    2: (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.CircularPad2d),
    3: (nn.ReflectionPad3d, nn.ReplicationPad3d, nn.ZeroPad3d, nn.ConstantPad3d, nn.CircularPad3d),
}


_PAD_MODES = {
    "Reflection": "reflect",
    "Replication": "replicate",
    "Circular": "circular",
    "Zero": "constant",
    "Constant": "constant",
}


def channel_position_from_end(layout: Layout) -> int | None:
    """Where the channels are, counted from the last dim (0: the last dim); ``None``: unknown."""
    if layout.dim < 0:
        return -layout.dim - 1
    if layout.rank is None:
        return None
    return layout.rank - 1 - layout.dim


@register_module(*(m for ms in _PAD_MODULES.values() for m in ms))
class PadModuleHandler(OpHandler):
    """``ReflectionPad2d``, ``ZeroPad2d``, ...: they pad the trailing 1, 2 or 3 spatial dims."""

    def stream_effect_of(self, node: fx.Node, ctx: FlowContext) -> str:
        module = ctx.module_of(node)
        return _padding_effect(node, tuple(module.padding), getattr(module, "value", 0), ctx)

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        module = ctx.module_of(node)
        mode = next((m for kind, m in _PAD_MODES.items() if kind in type(module).__name__), None)
        return pad_flow(node, ctx.input(node), tuple(module.padding), mode, ctx)


@register_function(F.pad, torch.constant_pad_nd)
class PadHandler(OpHandler):
    """``F.pad(x, pad, mode, value)`` pads the last ``len(pad) // 2`` dims (see the module doc)."""

    def stream_effect_of(self, node: fx.Node, ctx: FlowContext) -> str:
        if node.target is F.pad:
            mode = node_arg(node, 2, "mode", "constant")
            value = node_arg(node, 3, "value", None) if mode == "constant" else 0
        else:
            value = node_arg(node, 2, "value", 0)
        return _padding_effect(node, node_arg(node, 1, "pad", ()), value, ctx)

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        pad = node_arg(node, 1, "pad", ())
        mode = node_arg(node, 2, "mode", "constant") if node.target is F.pad else "constant"
        return pad_flow(node, first_layout(node, ctx), pad, mode, ctx)


def pad_flow(
    node: fx.Node, layout: Layout | None, pad: Any, mode: Any, ctx: FlowContext
) -> Layout | None:
    """Padding of the trailing dims; constant padding of the channel dim adds fixed segments."""
    if layout is None:
        return None
    position = channel_position_from_end(layout)
    if not isinstance(pad, (tuple, list)) or not all(_fixed_size(p, ctx) for p in pad):
        ctx.block(
            node,
            layout,
            f"F.pad with computed sizes {pad!r}: netsurgeon cannot tell which dims it pads, or "
            "a size depends on a width",
        )
        return None
    if position is None:
        ctx.unknown(node, f"pad {tuple(pad)} of a tensor whose rank is unknown")
    if position >= len(pad) // 2:  # only dims after the channels are padded
        return layout.with_path(ctx.op_name(node))
    before, after = pad[2 * position], pad[2 * position + 1]
    if not (isinstance(before, int) and isinstance(after, int)):
        ctx.block(
            node,
            layout,
            f"F.pad with computed sizes {pad!r} pads the channel dim by a computed amount",
        )
        return None
    if mode != "constant" or before < 0 or after < 0:
        ctx.block(
            node,
            layout,
            f"pad {tuple(pad)} (mode={mode!r}) over the channel dim "
            + ("crops channels" if min(before, after) < 0 else "copies channels into the padding")
            + ", which changes when channels are added",
        )
        return None
    if layout.factor is None:
        ctx.unknown(
            node, f"pad of the channels flattened to an unknown size ({ctx.describe(layout)})"
        )
    segments = [Segment(None, 0, before)] if before else []
    segments += [
        Segment(s.group, s.start, s.stop, s.multiplicity * layout.factor, s.path)
        for s in layout.segments
    ]
    segments += [Segment(None, 0, after)] if after else []
    label = ctx.op_name(node)
    return layout.replace(segments=tuple(s.with_path(label) for s in segments), factor=1)


def _padding_effect(node: fx.Node, pad: Any, value: Any, ctx: FlowContext) -> str:
    """``"same"`` when other dims than the channels are padded with zeros or copies (a new
    position holds 0, or a copied position, in every channel, so a channel holding the mean of
    the others, or 0, still does); a nonzero constant would put itself in a zero channel, and
    padding the channels adds fixed ones: ``"opaque"``."""
    layout = first_layout(node, ctx)
    position = None if layout is None else channel_position_from_end(layout)
    if position is None or not isinstance(pad, (tuple, list)):
        return "opaque"
    if position < len(pad) // 2 and (pad[2 * position], pad[2 * position + 1]) != (0, 0):
        return "opaque"
    return "same" if value in (None, 0, 0.0) else "opaque"


def _fixed_size(arg: Any, ctx: FlowContext) -> bool:
    """A literal, or a number computed from sizes no widening changes (Swin's padding to whole
    windows, ``(w - W % w) % w`` of a spatial size ``W``): which dim it pads is its position."""
    if isinstance(arg, int):
        return True
    value = ctx.layouts.get(arg) if isinstance(arg, fx.Node) else None
    return isinstance(value, SizeValue) and not value.depends


@register_module(nn.PixelShuffle, nn.PixelUnshuffle)
class PixelShuffleModuleHandler(OpHandler):
    """``nn.PixelShuffle(r)`` / ``nn.PixelUnshuffle(r)`` (see the module docstring)."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        module = ctx.module_of(node)
        if isinstance(module, nn.PixelShuffle):
            return pixel_shuffle_flow(node, ctx.input(node), module.upscale_factor, True, ctx)
        return pixel_shuffle_flow(node, ctx.input(node), module.downscale_factor, False, ctx)


@register_function(F.pixel_shuffle, F.pixel_unshuffle, torch.pixel_shuffle, torch.pixel_unshuffle)
class PixelShuffleHandler(OpHandler):
    """``F.pixel_shuffle(x, r)`` / ``F.pixel_unshuffle(x, r)``."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        shuffle = "unshuffle" not in node.target.__name__  # type: ignore[union-attr]
        factor = node_arg(node, 1, "upscale_factor" if shuffle else "downscale_factor", None)
        return pixel_shuffle_flow(node, first_layout(node, ctx), factor, shuffle, ctx)


def pixel_shuffle_flow(
    node: fx.Node, layout: Layout | None, r: Any, shuffle: bool, ctx: FlowContext
) -> Layout | None:
    """Channels on dim -3 trade ``r**2`` entries with the two dims after them."""
    if layout is None:
        return None
    label = ctx.op_name(node)
    position = channel_position_from_end(layout)
    if position is None or not isinstance(r, int):
        ctx.unknown(node, f"{label} of a tensor of unknown rank or with a computed factor")
    if position > 2:  # the channels are a batch dim of the op
        return layout.with_path(label)
    if position < 2 or layout.flattened or layout.factor is None:
        ctx.block(
            node,
            layout,
            f"{label} moves entries between dims -3, -2 and -1 but the channels are on dim "
            f"{-position - 1} (flattened={layout.flattened})",
        )
        return None
    blocks = r * r
    if not shuffle:
        return layout.replace(factor=layout.factor * blocks).with_path(label)
    if layout.factor % blocks == 0:
        return layout.replace(factor=layout.factor // blocks).with_path(label)
    ctx.block(
        node,
        layout,
        f"{label} (r={r}) folds each run of {blocks} channels into one output channel; new "
        f"channels in whole runs of {blocks} would keep the old ones intact, but netsurgeon "
        f"cannot follow a channel made of {blocks} of a group's channels",
    )
    return None


@register_module(nn.ChannelShuffle)
class ChannelShuffleModuleHandler(OpHandler):
    """``nn.ChannelShuffle(g)`` interleaves the channels of ``g`` blocks: it blocks."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> None:
        ctx.block(
            node,
            ctx.tracked_inputs(node),
            f"ChannelShuffle({ctx.module_of(node).groups}) interleaves the channels, so new "
            "channels would land among the old ones",
        )
        return None


@register_function(torch.flip, torch.fliplr, torch.flipud, torch.roll)
@register_method("flip", "fliplr", "flipud", "roll")
class FlipRollHandler(OpHandler):
    """``flip``/``roll`` over other dims pass; over the channels they reorder them and block."""

    stream_effect = "same"  # positions move, each with all its channels: a mean stays a mean

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        if layout is None:
            return None
        name = str(getattr(node.target, "__name__", node.target))
        dims: Any = {"fliplr": 1, "flipud": 0}.get(name)
        if dims is None:
            dims = node_arg(node, 2, "dims", None) if name == "roll" else _flip_dims(node)
        dims = (dims,) if isinstance(dims, int) else dims
        if not dims:  # roll without dims rolls the flattened tensor
            ctx.block(node, layout, f"{name} without dims shifts entries across the channels")
            return None
        if any(not isinstance(d, int) or layout.same_dim(d) is None for d in dims):
            ctx.unknown(node, f"{name} over dims {dims!r} of a tensor of unknown rank")
        if any(layout.same_dim(d) for d in dims):
            ctx.block(
                node,
                layout,
                f"{name} over the channel dim reorders the channels, so new channels would land "
                "among the old ones",
            )
            return None
        return layout.with_path(name)


def _flip_dims(node: fx.Node) -> Any:
    if node.op == "call_method" and len(node.args) > 2:  # x.flip(2, 3)
        return tuple(node.args[1:])
    return node_arg(node, 1, "dims", None)
