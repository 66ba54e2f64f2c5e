"""Recurrent modules (``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` and their cells): the channels stop here.

A recurrent module reads its input's last dim as ``input_size`` features, the columns of
``weight_ih_l0`` (``(gates * hidden_size, input_size)``), whatever ``batch_first`` says about the
two dims before it. netsurgeon does not grow those columns, so the groups that reach a recurrent
module block, with a reason naming the module and, when the channels arrive on another dim, what
the module reads there. Its output has ``hidden_size`` features of its own, which do not follow
any group: nothing downstream is tracked. ``trace(strict=True)`` accepts such a model; only the
groups feeding the module stay unwidenable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import fx, nn

from netsurgeon.graph.registry import OpHandler, register_module

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext
    from netsurgeon.graph.layout import Layout

__all__ = ["RecurrentHandler"]


@register_module(nn.RNNBase, nn.RNNCellBase)
class RecurrentHandler(OpHandler):
    """Blocks the groups it reads (see the module docstring); its output is untracked."""

    #: it blocks whatever the module computes, so no subclass (``LSTM``, ``GRU``) needs checking
    relies_on = ()

    def flow(self, node: fx.Node, ctx: FlowContext) -> None:
        module = ctx.module_of(node)
        layout = ctx.input(node)
        if layout is not None:
            ctx.block(node, layout, _reason(node, module, layout))
        states = [lay for n in node.all_input_nodes[1:] if (lay := ctx.layout(n)) is not None]
        if states:  # an initial state (h0, c0) computed from channels
            ctx.block(
                node,
                states,
                f"{type(module).__name__} '{node.target}' takes these channels as its initial "
                f"state, whose size is fixed by hidden_size={module.hidden_size}",
            )
        return None


def _reason(node: fx.Node, module: nn.Module, layout: Layout) -> str:
    kind = type(module).__name__
    names = _dim_names(module, layout.rank)
    flag = "" if isinstance(module, nn.RNNCellBase) else f", batch_first={module.batch_first}"
    where = f"{kind} '{node.target}' reads ({', '.join(names)}){flag}"
    channel = layout.normalized_dim()
    if not layout.is_last_dim():
        what = names[channel] if channel is not None and channel < len(names) else "not features"
        return (
            f"{where}, and these channels arrive on dim {channel}, its {what} dim: widening "
            "them would change the shape it iterates over"
        )
    weight = "weight_ih" if isinstance(module, nn.RNNCellBase) else "weight_ih_l0"
    return (
        f"{where}: these channels are its input_size={module.input_size} features, the columns "
        f"of {weight}, which netsurgeon does not grow"
    )


def _dim_names(module: nn.Module, rank: int | None) -> tuple[str, ...]:
    if isinstance(module, nn.RNNCellBase):
        return ("features",) if rank == 1 else ("batch", "features")
    if rank == 2:
        return ("seq", "features")
    return ("batch", "seq", "features") if module.batch_first else ("seq", "batch", "features")
