"""Layers: ``Conv1d/2d/3d``, ``ConvTranspose1d/2d/3d``, ``Linear`` and ``Embedding``.

Each handler has two parts (the base classes are in :mod:`netsurgeon.graph.ops.base`):

* the **flow** (:meth:`flow`), used by the analysis: how the module reads and passes channels;
* the **layout**, used by the surgery: which ``(tensor, dim)`` pairs hold a layer's output units
  (``row_dim``) and input units (``col_dim``), what a new entry holds, the Kaiming fan-in
  (``fan_in``), and which size attributes change. Records: :mod:`netsurgeon.graph.axes`. A new
  layer type is one class here.

A layer produces a group and consumes its input's groups (an ``Embedding`` reads none). Roles are
decided per instance: a depthwise conv (``groups == in == out``) is a follower with a weight; a
grouped conv with ``1 < groups`` is a layer whose input and output are split into ``groups``
equal splits. The functional spellings (``F.conv2d``, ``F.linear`` with weights passed in) mix
channels with tensors netsurgeon cannot grow: ``F.linear`` is in :mod:`.attention` with the other
mixing ops.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import fx, nn

from netsurgeon.graph.axes import Axis, module_tensor
from netsurgeon.graph.batch_channels import batch_input
from netsurgeon.graph.layout import Layout, Segment
from netsurgeon.graph.ops.base import LayerHandler
from netsurgeon.graph.registry import register_module

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "ConvHandler",
    "ConvTransposeHandler",
    "EmbeddingHandler",
    "LinearHandler",
    "is_depthwise",
]


@register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvHandler(LayerHandler):
    """``ConvNd``: channels on dim 1. ``groups == in == out`` makes it a (depthwise) follower."""

    out_attr = "out_channels"
    in_attr = "in_channels"
    relies_on = ("forward", "_conv_forward")

    def role_of(self, module: nn.Module) -> str:
        return "follower" if is_depthwise(module) else "layer"

    def fan_in(self, module: nn.Module) -> float:
        return module.in_channels // module.groups * math.prod(module.kernel_size)

    def output_layout(self, node, module, group, ctx) -> Layout:
        rank = ctx.rank_of(node)
        return Layout(
            dim=1,
            rank=rank if rank is not None else module.weight.dim(),
            segments=(Segment(group, 0, self.out_width(module)),),
        )

    def check_input(self, node, module, layout, ctx) -> None:
        if layout.rank is None and layout.dim < 0:  # a conv's batched input has its weight's rank
            layout = layout.replace(rank=module.weight.dim())
        if layout.flattened or layout.normalized_dim() != 1:
            ctx.refuse(
                node,
                f"it reads channels on dim 1 but they arrive on dim {layout.normalized_dim()} "
                f"(flattened={layout.flattened})",
                fix="feed convolutions a channel-first map",
            )

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout:
        module = ctx.module_of(node)
        if not is_depthwise(module):
            return super().flow(node, ctx)
        layout = ctx.input(node)
        if layout is None:
            return None  # type: ignore[return-value]
        self.check_input(node, module, layout, ctx)
        ctx.follow(node, str(node.target), layout, module.in_channels)
        return layout.with_path(type(module).__name__)

    # -- as a follower (depthwise) ---------------------------------------------------------------
    def entries(self, module: nn.Module) -> tuple[Axis, ...]:
        """Per-channel filters (new: Kaiming over the kernel) and biases (new: 0)."""
        bias = (Axis("bias", 0, 0.0),) if module.bias is not None else ()
        return (Axis("weight", 0, None), *bias)

    def follower_attrs(self, module: nn.Module, added: int) -> dict[str, int]:
        return {
            "in_channels": module.in_channels + added,
            "out_channels": module.out_channels + added,
            "groups": module.groups + added,
        }

    def tensor_names(self, module: nn.Module) -> frozenset[str]:
        if self.role_of(module) == "follower":
            return frozenset(a.tensor for a in self.entries(module))
        return super().tensor_names(module)


@register_module(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
class ConvTransposeHandler(ConvHandler):
    """``ConvTransposeNd``: channels on dim 1; its weight is ``(in, out / groups, *kernel)``.

    The rows (output units) are the weight's dim 1 and the columns its dim 0; ``stride``,
    ``padding``, ``output_padding`` and ``dilation`` act on the spatial dims only. Grouped ones
    (``groups > 1``) are refused: dim 1 holds one conv group's share of the output units, so a
    new unit's row would be shared by a unit in every group, and a net2net copy can copy only
    one source per row.
    """

    row_dim, col_dim = 1, 0
    grouped = None
    relies_on = ("forward", "_output_padding")

    def role_of(self, module: nn.Module) -> str:
        return "layer"

    def fan_in(self, module: nn.Module) -> float:
        """Taps per output entry: ``in / groups`` times ``max(1, k / s)`` per spatial dim."""
        taps = math.prod(
            max(1.0, k / s) for k, s in zip(module.kernel_size, module.stride, strict=True)
        )
        return module.in_channels // module.groups * taps

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if module.groups > 1:
            return (
                f"grouped transposed convolution (groups={module.groups}): its weight holds one "
                "group's share of the output units, so they cannot grow one group at a time"
            )
        return None

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout:
        return LayerHandler.flow(self, node, ctx)


def is_depthwise(module: nn.Module) -> bool:
    """A conv whose every channel is filtered on its own: ``groups == in == out > 1``."""
    groups = getattr(module, "groups", 1)
    return groups > 1 and groups == module.in_channels == module.out_channels


@register_module(nn.Linear)
class LinearHandler(LayerHandler):
    """``Linear``: features on the last dim; reads a flattened map as ``C x multiplicity``.

    Channels on another dim are a batch dim of it: it applies one map to each channel, which
    append and tile keep exact and padding does not (:mod:`netsurgeon.graph.batch_channels`).
    Its output then carries its own group on the last dim and those channels in ``batch``.
    """

    out_attr = "out_features"
    in_attr = "in_features"
    knows_batch = True

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout:
        layout = ctx.input(node)
        if layout is None or (layout.batch is None and layout.is_last_dim()):
            return super().flow(node, ctx)
        module = ctx.module_of(node)
        reason = self.unsupported_reason(module)
        if reason is not None:
            ctx.refuse(node, reason, fix="replace it with a supported layer")
        features, carried = batch_input(node, layout, ctx)
        if features is not None:
            self.check_input(node, module, features, ctx)
            ctx.consume(node, features, self.in_width(module))
        group = ctx.new_group(str(node.target), self.out_width(module))
        return self.output_layout(node, module, group, ctx).replace(batch=carried)

    def fan_in(self, module: nn.Module) -> float:
        return module.in_features

    def output_layout(self, node, module, group, ctx) -> Layout:
        rank = ctx.rank_of(node)
        if rank is None:  # a Linear keeps its input's rank; unknown: count from the end
            source = ctx.input(node)
            rank = source.rank if source is not None else ctx.rank_of(node.args[0])
        return Layout(
            dim=-1 if rank is None else rank - 1,
            rank=rank,
            segments=(Segment(group, 0, self.out_width(module)),),
        )

    def check_input(self, node, module, layout, ctx) -> None:
        if not layout.is_last_dim():
            ctx.refuse(
                node,
                f"it reads features on the last dim but the channels are on dim "
                f"{layout.normalized_dim()} of a rank-{layout.rank} tensor",
                fix="flatten the map first (torch.flatten(x, 1)) or move the channels last",
            )


@register_module(nn.Embedding)
class EmbeddingHandler(LayerHandler):
    """``Embedding``: a producer of ``embedding_dim`` features on the last dim, read from indices.

    Its weight is ``(num_embeddings, embedding_dim)``: the output units are dim 1 and there are
    no input units (a one-hot input: the fan-in is 1). New units are new entries of every token's
    vector. The ``padding_idx`` vector stays zero when it is zero. ``max_norm`` is refused: the
    lookup rescales each vector whose norm over the units exceeds it, so new entries would change
    the old ones. ``sparse=True`` is refused: a sparse gradient cannot be grown in place.
    """

    out_attr = "embedding_dim"
    row_dim, col_dim = 1, None
    grouped = None

    def fan_in(self, module: nn.Module) -> float:
        return 1.0

    def unsupported_reason(self, module: nn.Module) -> str | None:
        if module.max_norm is not None:
            return (
                f"Embedding(max_norm={module.max_norm}) rescales each looked-up vector by its "
                "norm over the features, which new features would change"
            )
        if module.sparse:
            return "Embedding(sparse=True) has sparse gradients, which cannot be grown"
        return None

    def check_input(self, node, module, layout, ctx) -> None:
        ctx.refuse(
            node,
            "its indices are computed from channels",
            fix="index an Embedding with token ids from the model input",
        )

    def output_layout(self, node, module, group, ctx) -> Layout:
        rank = ctx.rank_of(node)
        if rank is None:  # one more dim than the indices; unknown: count from the end
            indices = ctx.rank_of(node.args[0])
            rank = None if indices is None else indices + 1
        return Layout(
            dim=-1 if rank is None else rank - 1,
            rank=rank,
            segments=(Segment(group, 0, self.out_width(module)),),
        )

    def fill_new_units(self, module, tensors, rows) -> None:
        """A zero ``padding_idx`` vector stays zero (a tensor op: the meta preview runs it too)."""
        if module.padding_idx is None or not rows:
            return
        name = self.rows(module)[0].tensor
        old = module_tensor(module, name)[module.padding_idx]
        new = tensors[name][module.padding_idx]
        shift = 0
        for ins in rows:
            entries = new.narrow(0, ins.position + shift, ins.count)
            entries.copy_(torch.where((old == 0).all(), torch.zeros_like(entries), entries))
            shift += ins.count
