"""Ops that mix the channels with weights netsurgeon cannot grow: matmul-like ops and attention.

``matmul``/``bmm``/``einsum``/``F.linear`` with a weight passed in, and
``F.scaled_dot_product_attention``, mix the channels they read: those groups block.
``nn.MultiheadAttention`` splits its embedding dim into heads (blocked; its output is a new
blocked group). ``nn.Transformer*`` modules stay leaves (torch.fx cannot trace their fast-path
checks, see :mod:`netsurgeon.graph.opaque`): the groups they read block, their output is
untracked.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import fx, nn

from netsurgeon.graph.layout import Layout, Segment
from netsurgeon.graph.opaque import TRANSFORMER_TYPES
from netsurgeon.graph.registry import OpHandler, register_function, register_module

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["MixingHandler", "MultiheadAttentionHandler", "TransformerHandler"]


_MIXING_FUNCTIONS = (
    torch.matmul, operator.matmul, torch.bmm, torch.mm, torch.einsum, F.linear, torch.baddbmm,
    F.scaled_dot_product_attention,
)  # fmt: skip


@register_function(*_MIXING_FUNCTIONS)
class MixingHandler(OpHandler):
    """``matmul``, ``einsum``, ``F.linear``, attention: they mix channels with other tensors.

    The groups they read cannot grow (the other operand's size is fixed by the forward); what they
    produce is not tracked.
    """

    def flow(self, node: fx.Node, ctx: FlowContext) -> None:
        ctx.block(
            node,
            ctx.tracked_inputs(node),
            f"'{ctx.op_name(node)}' mixes these channels with a tensor of fixed size",
        )
        return None


@register_module(nn.MultiheadAttention)
class MultiheadAttentionHandler(OpHandler):
    """``nn.MultiheadAttention``: its embedding dim cannot grow; the result is a new blocked group."""

    def flow(self, node: fx.Node, ctx: FlowContext) -> tuple[Layout | None, ...]:
        module = ctx.module_of(node)
        reason = (
            f"the embedding dim of attention '{node.target}' (embed_dim={module.embed_dim}) is "
            "split into heads and mixed by the attention weights; widening it is not supported"
        )
        ctx.block(node, ctx.tracked_inputs(node), reason)
        group = ctx.new_group(str(node.target), module.embed_dim, producer=False)
        ctx.blocked[group].append(reason)
        query = ctx.input(node)
        rank = query.rank if query is not None else ctx.rank_of(node.args[0])
        segments = (Segment(group, 0, module.embed_dim),)
        out = Layout(dim=-1 if rank is None else rank - 1, rank=rank, segments=segments)
        return (out, None)


@register_module(*TRANSFORMER_TYPES)
class TransformerHandler(OpHandler):
    """``nn.TransformerEncoder(Layer)`` and friends: the groups they read block; output untracked.

    Their input features are ``d_model``, normalised by LayerNorm and mixed by attention inside
    the module, so they cannot grow; their output has ``d_model`` features of the module's own.
    """

    #: it blocks whatever the module computes, so a subclass needs no check
    relies_on = ()

    def flow(self, node: fx.Node, ctx) -> None:
        module = ctx.module_of(node)
        ctx.block(
            node,
            ctx.tracked_inputs(node),
            f"{type(module).__name__} '{node.target}' reads these channels as its d_model "
            "features, which LayerNorm and attention inside it fix; torch.fx cannot trace into "
            "it (fast-path checks on the input), so netsurgeon reads it as one op",
        )
        return None
