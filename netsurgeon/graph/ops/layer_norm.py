"""Normalisations across the channels: ``LayerNorm`` and ``RMSNorm``, module and function spellings.

Over other dims they are per channel and pass. Across the channels (a transformer's residual
stream) adding channels changes their statistics, so the group needs a construction
(:mod:`netsurgeon.graph.constructions`) that keeps them:

* ``nn.LayerNorm`` with a ``weight``: ``mean_pad`` (new channels carry the mean of the old ones;
  the surgery scales ``weight`` by ``sqrt(s)`` and ``eps`` by ``s``, ``s = C / (C + k)``) or
  ``tile``; without a weight only ``tile`` (nothing can undo the variance's scaling).
* ``nn.RMSNorm`` with a weight: ``zero_pad`` (new channels 0) or ``tile``; without one ``tile``.
* ``F.layer_norm``/``F.rms_norm``: ``eps`` is a constant of the forward, which netsurgeon cannot
  change, so only ``tile``; a ``weight``/``bias`` passed in must be a parameter of the model
  read directly (it grows with the channels, copied).

Mean-padding needs the norm's input to carry the mean on its new channels: the walker's tags
(:mod:`netsurgeon.graph.constructions`) say whether it does; when an op between the producers and
the norm changes values channel by channel (a depthwise conv, an activation, a layer scale) or a
norm's own output is added back (post-LN), only ``tile`` is exact. The norm's output has zero new
channels under either padding, so the layers reading it may give their new columns any value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import fx, nn

from netsurgeon.graph.axes import Axis
from netsurgeon.graph.constructions import MEAN, MEAN_PAD, TILE, ZERO_PAD, ZERO_ZP, norm_tags
from netsurgeon.graph.free_tensors import free_tensor_chain
from netsurgeon.graph.layout import Layout
from netsurgeon.graph.nodes import first_layout, node_arg
from netsurgeon.graph.ops.base import FollowerHandler, present
from netsurgeon.graph.registry import OpHandler, register_function, register_module
from netsurgeon.graph.sizes import claim_channel_size

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "LayerNorm2dHandler",
    "LayerNormHandler",
    "RMSNormHandler",
    "norm_reader_flow",
]

# the padding each norm's statistics allow, and the tag its input must carry for it
_PADDING = {"LayerNorm": (MEAN_PAD, MEAN), "RMSNorm": (ZERO_PAD, ZERO_ZP)}


@register_module(nn.LayerNorm)
class LayerNormHandler(FollowerHandler):
    """``nn.LayerNorm`` over the last dims: a follower of the channels it normalises (module
    docstring); over other dims it passes. ``norm_reader``: the surgery rescales it."""

    kind = "LayerNorm"
    norm_reader = True
    eps_attr = "eps"  # the attribute the surgery scales under a padding

    def width(self, module: nn.Module) -> int:
        return int(module.normalized_shape[-1])

    def normalized_dims(self, module: nn.Module) -> int:
        """How many trailing dims it normalises over."""
        return len(module.normalized_shape)

    def follower_attrs(self, module: nn.Module, added: int) -> dict[str, object]:
        shape = tuple(module.normalized_shape)
        return {"normalized_shape": (*shape[:-1], shape[-1] + added)}

    def entries(self, module: nn.Module) -> tuple[Axis, ...]:
        return present(module, {"weight": 1.0, "bias": 0.0})

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = ctx.input(node)
        if layout is None:
            return None
        module = ctx.module_of(node)
        read = norm_reader_flow(
            node, layout, self.normalized_dims(module), ctx, kind=self.kind,
            padding=module.weight is not None,
        )  # fmt: skip
        if read == "read":
            ctx.follow(node, str(node.target), layout, self.width(module))
        return layout.with_path(self.kind)


@register_module("torchvision.models.convnext.LayerNorm2d")
class LayerNorm2dHandler(LayerNormHandler):
    """A LayerNorm over dim 1 of an ``(N, C, H, W)`` tensor: torchvision's ConvNeXt
    ``LayerNorm2d`` (registered by name) and timm's (:mod:`.timm`) permute, apply
    ``F.layer_norm`` with the module's own tensors over the last dim, and permute back."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = ctx.input(node)
        if layout is None:
            return None
        if layout.normalized_dim() != 1 or layout.rank != 4:
            if layout.normalized_dim() is None:
                ctx.unknown(node, f"{self.kind} over dim 1 of a tensor of unknown rank")
            return layout.with_path(self.kind)  # normalises another dim: per channel
        module = ctx.module_of(node)
        last = layout.replace(dim=3)
        read = norm_reader_flow(
            node, last, 1, ctx, kind=self.kind, padding=module.weight is not None
        )
        if read == "read":
            ctx.follow(node, str(node.target), layout, self.width(module))
        return layout.with_path(self.kind)


@register_module(nn.RMSNorm)
class RMSNormHandler(LayerNormHandler):
    """``nn.RMSNorm``: like ``LayerNorm`` with ``zero_pad`` for ``mean_pad`` (no bias)."""

    kind = "RMSNorm"


@register_function(F.layer_norm, F.rms_norm)
class LayerNormFunctionHandler(OpHandler):
    """``F.layer_norm(x, shape, weight, bias, eps)``/``F.rms_norm(x, shape, weight, eps)``:
    ``tile`` only across the channels; a weight or bias passed in must be a parameter."""

    stream_effect = "opaque"

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        if layout is None:
            return None
        shape = node_arg(node, 1, "normalized_shape", ())
        kind = "LayerNorm" if node.target is F.layer_norm else "RMSNorm"
        if norm_reader_flow(node, layout, len(shape), ctx, kind=kind, padding=False) != "read":
            return layout.with_path(ctx.op_name(node))
        if not claim_channel_size(ctx, shape[-1] if shape else None, layout):
            ctx.block(
                node,
                layout,
                f"'{ctx.op_name(node)}' normalises across these channels with the fixed "
                f"normalized_shape {tuple(shape)!r}, which would not grow; pass x.shape[-1]",
            )
            return layout.with_path(ctx.op_name(node))
        names = ("weight", "bias") if kind == "LayerNorm" else ("weight",)
        for i, (name, fill) in enumerate(zip(names, (1.0, 0.0), strict=False)):
            value = node_arg(node, 2 + i, name, None)
            if value is not None:
                _follow_passed(node, value, name, fill, layout, ctx)
        return layout.with_path(ctx.op_name(node))


def _follow_passed(node, value, name: str, fill: float, layout: Layout, ctx: FlowContext):
    """A ``weight``/``bias`` passed to a functional norm: a parameter read directly follows."""
    chain = free_tensor_chain(value) if isinstance(value, fx.Node) else None
    tensor = ctx.attr(chain[0]) if chain is not None and len(chain) == 1 else None
    if tensor is None or tensor.dim() != 1 or tensor.shape[0] != layout.units():
        ctx.block(
            node,
            layout,
            f"'{ctx.op_name(node)}' takes a {name} that is not a parameter of one entry per "
            "channel read directly, so netsurgeon cannot grow it",
        )
        return
    target = str(chain[0].target)
    ctx.follow(node, target, layout, tensor.shape[0], kind="parameter", dim=0, fill=fill)
    ctx.free_uses.setdefault(target, []).append((node, value, layout, 0))


def norm_reader_flow(
    node: fx.Node, layout: Layout, normalized: int, ctx: FlowContext, *, kind: str, padding: bool
) -> str:
    """``"pass"`` (it normalises other dims), ``"blocked"`` (across channels it cannot follow) or
    ``"read"`` (across one whole group: what it needs is recorded, it grows with the group).

    Args:
        normalized: how many trailing dims it normalises.
        kind: ``"LayerNorm"`` or ``"RMSNorm"``.
        padding: it has a weight the surgery can rescale and an ``eps`` it can change (a module),
            so its padding construction is possible; else only ``tile``.
    """
    if not _over_channels(layout, normalized):
        return "pass"
    label = f"{kind} '{node.target}'" if node.op == "call_module" else f"'{ctx.op_name(node)}'"
    copies = _whole_copies(layout, ctx)
    seg = layout.segments[0] if len(layout.segments) == 1 or copies else None
    problem = None
    if seg is None or seg.group is None:
        problem = "a concatenation of several groups"
    elif normalized != 1 or layout.flattened or seg.multiplicity != 1 or layout.factor != 1:
        problem = "channels merged with other dims"
    elif seg.start != 0 or seg.stop != ctx.widths[ctx.find(seg.group)]:
        problem = "part of a group"
    if problem is not None:
        ctx.block(
            node,
            layout,
            f"{label} normalises across {problem}; adding channels changes its mean and "
            "variance, so the widening cannot be exact",
        )
        return "blocked"
    pad, tag = _PADDING[kind]
    if copies:
        allowed = {TILE}
        reason = (
            f"{label} normalises across {len(layout.segments)} copies of these channels side by "
            "side (Swin's patch merging: the 2x2 neighbours); each copy's new channels would "
            f"carry its own mean, so {pad} is not exact: tile"
        )
    elif not padding:
        why = "it has no weight to rescale" if node.op == "call_module" else "its eps is fixed"
        allowed, reason = {TILE}, f"{label} normalises across these channels and {why}: tile"
    elif tag not in ctx.states.get(node.args[0], frozenset()):  # type: ignore[arg-type]
        allowed = {TILE}
        reason = (
            f"{label} normalises across these channels, but what reaches it is not the sum of "
            "the stream's producers (an op between them changes values channel by channel, a "
            f"norm's output is added back, or a producer is weight-normalised), so {pad} is not "
            "exact: tile"
        )
    else:
        allowed, reason = {pad, TILE}, f"{label} normalises across these channels: {pad} or tile"
    ctx.require_construction(node, layout, allowed, reason)
    ctx.states[node] = norm_tags()
    return "read"


def _whole_copies(layout: Layout, ctx: FlowContext) -> bool:
    """Several segments side by side, each the whole of one and the same group (a concatenation
    of shifted copies of a stream): tiling keeps the statistics, every copy holding copies."""
    segments = layout.segments
    if len(segments) < 2 or segments[0].group is None:
        return False
    root = ctx.find(segments[0].group)
    width = ctx.widths[root]
    return all(
        s.group is not None
        and ctx.find(s.group) == root
        and (s.start, s.stop, s.multiplicity) == (0, width, 1)
        for s in segments
    )


def _over_channels(layout: Layout, normalized: int) -> bool:
    channel = layout.normalized_dim()
    over = layout.dim < 0 and -layout.dim <= normalized
    if channel is not None and layout.rank is not None:
        over = channel >= layout.rank - normalized
    elif layout.dim >= 0 and layout.rank is None:
        over = True  # cannot tell: be safe
    return over
