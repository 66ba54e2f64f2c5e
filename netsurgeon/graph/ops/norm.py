"""Normalisations, module and function spellings.

Followers (one entry per channel, grown with the groups they read): ``BatchNormNd``,
``SyncBatchNorm``, torchvision's ``FrozenBatchNorm2d`` (registered by name), ``InstanceNormNd``
and ``GroupNorm`` (with several channels per group it grows by whole groups). In training the
statistics are per channel, so new channels leave the old ones unchanged.

``LayerNorm``/``RMSNorm`` (normalising across the channels) are in :mod:`.layer_norm`.
``F.batch_norm``/``F.group_norm``/``F.instance_norm`` take per-channel tensors passed in, which
netsurgeon cannot grow: they block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import fx, nn

from netsurgeon.graph.axes import Axis
from netsurgeon.graph.layout import Layout
from netsurgeon.graph.nodes import first_layout
from netsurgeon.graph.ops.base import FollowerHandler, present
from netsurgeon.graph.registry import OpHandler, register_function, register_module

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "BatchNormHandler",
    "FrozenBatchNormHandler",
    "GroupNormHandler",
    "InstanceNormHandler",
]


@register_module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
class BatchNormHandler(FollowerHandler):
    """``BatchNormNd`` and ``SyncBatchNorm`` (the norm under DDP) normalise each channel of dim 1
    (after a flatten: ``C x m`` features). In training the statistics are per channel, reduced
    over the batch (and, synced, over the ranks), so new channels leave the old ones unchanged."""

    scalars = ("num_batches_tracked",)

    def entries(self, module: nn.Module) -> tuple[Axis, ...]:
        return present(
            module, {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
        )


@register_module("torchvision.ops.misc.FrozenBatchNorm2d")
class FrozenBatchNormHandler(FollowerHandler):
    """torchvision's ``FrozenBatchNorm2d`` (detection backbones): four per-channel buffers.

    ``y = x * w / sqrt(rv + eps) + b - rm * w / sqrt(rv + eps)`` per channel; new channels get
    ``w = 1, b = 0, rm = 0, rv = 1``. It keeps no size attribute (its width is its buffers').
    Registered by name: torchvision is not imported.
    """

    def width(self, module: nn.Module) -> int:
        return int(module.weight.shape[0])

    def follower_attrs(self, module: nn.Module, added: int) -> dict[str, int]:
        return {}

    def entries(self, module: nn.Module) -> tuple[Axis, ...]:
        return present(
            module, {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
        )


@register_module(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
class InstanceNormHandler(BatchNormHandler):
    """``InstanceNormNd``: per sample and channel; affine and running statistics optional."""


@register_module(nn.GroupNorm)
class GroupNormHandler(FollowerHandler):
    """``GroupNorm``: per channel with one channel per group; else it grows by whole groups.

    Normalisation groups are contiguous runs of ``C / G`` channels. New channels that form whole
    new groups (``k`` a multiple of ``C / G`` per insertion point) leave every old group's
    statistics untouched, so the widening stays exact; ``num_groups`` grows with them.
    """

    width_attr = "num_channels"

    def entries(self, module: nn.Module) -> tuple[Axis, ...]:
        return present(module, {"weight": 1.0, "bias": 0.0})

    def follower_attrs(self, module: nn.Module, added: int) -> dict[str, int]:
        per_group = module.num_channels // module.num_groups
        return {
            "num_channels": module.num_channels + added,
            "num_groups": module.num_groups + added // per_group,
        }

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = super().flow(node, ctx)
        module = ctx.module_of(node)
        per_group = module.num_channels // module.num_groups
        if layout is not None and per_group > 1:
            if len(layout.segments) != 1 or layout.flattened:
                ctx.block(
                    node,
                    layout,
                    f"GroupNorm with {per_group} channels per group over a concatenation mixes "
                    "the statistics of several groups",
                )
            else:
                ctx.require_unit(layout, per_group)
        return layout


@register_function(F.group_norm, F.batch_norm, F.instance_norm)
class NormFunctionHandler(OpHandler):
    """Functional normalisations with parameters passed in: the parameters' sizes are fixed."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        layout = first_layout(node, ctx)
        ctx.block(
            node,
            layout,
            f"functional '{ctx.op_name(node)}' takes per-channel tensors netsurgeon cannot grow; "
            "use the nn module",
        )
        return layout
