"""The two kinds of module handler that own tensors: layers and followers.

A :class:`LayerHandler` owns a width: its module produces a channel group and reads its input's
groups. Besides its flow (the analysis) it says where its units are (the surgery): which
``(tensor, dim)`` pairs are its rows (output units) and columns (input units), as
:class:`~netsurgeon.graph.axes.Axis` records, its Kaiming fan-in and its size attributes. A
:class:`FollowerHandler`'s module holds one entry per channel of the groups it reads. Both answer
what the soundness checks ask (``tensor_names``, ``models_parametrization``, ``models_hook``).
The concrete handlers are in the family files of :mod:`netsurgeon.graph.ops`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import fx, nn

from netsurgeon.graph.axes import (
    Axis,
    NormOf,
    legacy_weight_norm,
    module_tensor,
    weight_names,
    weight_norm_dim,
)
from netsurgeon.graph.groups import Insertion
from netsurgeon.graph.layout import Layout
from netsurgeon.graph.module_attrs import module_attr
from netsurgeon.graph.registry import OpHandler

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["FollowerHandler", "LayerHandler", "present"]


class LayerHandler(OpHandler):
    """A module that owns a width; it owns its tensor layout too (:mod:`netsurgeon.graph.axes`).

    ``row_dim``/``col_dim`` are the dims of the weight that hold the output and input units
    (``col_dim`` ``None``: the layer reads no channels, as an ``Embedding``). ``grouped`` names
    the side whose dim holds one conv group's share of the units when ``groups > 1``.
    """

    role = "layer"
    out_attr: str = ""
    in_attr: str = ""
    row_dim: int = 0
    col_dim: int | None = 1
    grouped: str | None = "columns"
    relies_on: tuple[str, ...] = ("forward",)

    def out_width(self, module: nn.Module) -> int:
        return int(getattr(module, self.out_attr))

    def in_width(self, module: nn.Module) -> int:
        return int(getattr(module, self.in_attr))

    def conv_groups(self, module: nn.Module) -> int:
        return int(getattr(module, "groups", 1))

    # -- layout (used by the surgery) --------------------------------------------------------------
    def rows(self, module: nn.Module) -> tuple[Axis, ...]:
        """Tensors indexed by output unit; the first is the weight the init strategy fills."""
        names = weight_names(module)
        split = self.grouped == "rows" and self.conv_groups(module) > 1
        found = [Axis(names.v, self.row_dim, None, per_group=split)]
        if names.g is not None:
            found.append(Axis(names.g, self.row_dim, NormOf(names.v), per_group=split))
        if module_attr(module, "bias") is not None:
            found.append(Axis("bias", 0, 0.0))
        return tuple(found)

    def columns(self, module: nn.Module) -> tuple[Axis, ...]:
        """Tensors indexed by input unit (new entries 0 under the paper's init)."""
        if self.col_dim is None:
            return ()
        split = self.grouped == "columns" and self.conv_groups(module) > 1
        return (Axis(weight_names(module).v, self.col_dim, 0.0, per_group=split),)

    def fan_in(self, module: nn.Module) -> float:
        """Inputs that reach one output entry (the Kaiming scale of a new row)."""
        raise NotImplementedError

    def size_attrs(self, module: nn.Module, *, out_width: int, in_width: int) -> dict[str, int]:
        """``{attribute: value}`` after growing to these widths (``repr`` and forward agree)."""
        return {self.out_attr: out_width} | ({self.in_attr: in_width} if self.in_attr else {})

    def fill_new_units(
        self, module: nn.Module, tensors: Mapping[str, torch.Tensor], rows: Sequence[Insertion]
    ) -> None:
        """Adjust the staged ``tensors`` (by :class:`Axis` name) after the init; default none."""

    def derived_attrs(
        self, module: nn.Module, tensors: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Plain attributes recomputed from the staged tensors: the legacy weight norm's cached
        ``weight`` (its pre-hook refreshes it at the next forward; until then it would be stale).
        """
        names = weight_names(module)
        if names.g is None or legacy_weight_norm(module) is None:
            return {}
        v, g = (tensors.get(n, module_tensor(module, n)) for n in (names.v, names.g))
        return {"weight": torch._weight_norm(v, g, names.dim)}

    # -- what the soundness checks ask ------------------------------------------------------------
    def tensor_names(self, module: nn.Module) -> frozenset[str]:
        return frozenset(a.tensor for a in (*self.rows(module), *self.columns(module)))

    def models_parametrization(self, module: nn.Module, tensor: str, parametrizations) -> bool:
        """Weight norm over the rows' dim is grown exactly (``docs/widen.md``)."""
        return (
            tensor == "weight"
            and self.role_of(module) == "layer"
            and weight_norm_dim(module) == self.row_dim
        )

    def models_hook(self, module: nn.Module, hook: object) -> bool:
        """The legacy ``weight_norm`` pre-hook, on the same terms as the parametrization."""
        return (
            hook is legacy_weight_norm(module)
            and self.role_of(module) == "layer"
            and weight_norm_dim(module) == self.row_dim
        )

    def unsupported_reason(self, module: nn.Module) -> str | None:
        """Why this module can be neither widened nor read as a consumer, or ``None``."""
        return None

    def output_layout(
        self, node: fx.Node, module: nn.Module, group: int, ctx: FlowContext
    ) -> Layout:
        raise NotImplementedError

    def check_input(self, node: fx.Node, module: nn.Module, layout: Layout, ctx: FlowContext):
        raise NotImplementedError

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout:
        module = ctx.module_of(node)
        reason = self.unsupported_reason(module)
        if reason is not None:
            ctx.refuse(node, reason, fix="replace it with a supported layer")
        layout = ctx.input(node)
        if layout is not None:
            self.check_input(node, module, layout, ctx)
            ctx.consume(node, layout, self.in_width(module), groups=self.conv_groups(module))
        group = ctx.new_group(str(node.target), self.out_width(module))
        out = self.output_layout(node, module, group, ctx)
        ctx.require_splits(node, out, self.conv_groups(module), what="grouped convolution")
        return out


class FollowerHandler(OpHandler):
    """A per-channel module: each of :meth:`entries` holds one entry per channel.

    ``entries`` are the :class:`~netsurgeon.graph.axes.Axis` records of its per-channel tensors
    with the value a new channel gets under the paper's init; ``scalars`` are other own tensors
    that do not depend on the width (``num_batches_tracked``). The module reads channels on dim 1.
    """

    role = "follower"
    width_attr = "num_features"
    scalars: tuple[str, ...] = ()

    def width(self, module: nn.Module) -> int:
        return int(getattr(module, self.width_attr))

    def follower_attrs(self, module: nn.Module, added: int) -> dict[str, int]:
        """``{attribute: value}`` after ``added`` channels (sizes the forward reads)."""
        return {self.width_attr: self.width(module) + added}

    def entries(self, module: nn.Module) -> tuple[Axis, ...]:
        raise NotImplementedError

    def tensor_names(self, module: nn.Module) -> frozenset[str]:
        own = {a.tensor for a in self.entries(module)}
        return frozenset(own | {n for n in self.scalars if module_attr(module, n) is not None})

    def flow(self, node: fx.Node, ctx: FlowContext) -> Layout | None:
        module = ctx.module_of(node)
        layout = ctx.input(node)
        if layout is None:
            return None
        if layout.rank is None and layout.dim == -1:  # a Linear's (B, C) output, unchecked
            layout = layout.replace(dim=1, rank=2)
        if layout.normalized_dim() != 1:
            ctx.refuse(
                node,
                f"{type(module).__name__} reads channels on dim 1 but they arrive on dim "
                f"{layout.normalized_dim()}",
                fix="apply it to a channel-first tensor",
            )
        ctx.follow(node, str(node.target), layout, self.width(module))
        return layout.with_path(type(module).__name__)


def present(module: nn.Module, fills: dict[str, float]) -> tuple[Axis, ...]:
    """Axes (dim 0) of the tensors among ``fills`` that the module has."""
    return tuple(
        Axis(name, 0, fill) for name, fill in fills.items() if module_attr(module, name) is not None
    )
