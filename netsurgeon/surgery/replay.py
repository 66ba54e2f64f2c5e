"""Widths an exported forward depends on: the widening replayed on a copy and exported again.

``torch.export`` records the ops of the branch the traced widths take (``if x.shape[1] == 64:``)
and nothing of the condition, so a graph from the export front end cannot show that a forward
branches on a channel count. Before a widening with such a graph commits, the plan is applied to
a copy of the model, the copy is exported with the traced inputs, and the two programs are
compared op by op (literal sizes aside): a different op sequence refuses the widening, naming the
first op that differs, and the model is untouched. Symbolic tracing needs none of this: it fails
on such a branch.

Models on the ``meta`` device (the cost previews' copies) are not replayed: a preview prices a
plan, the real widening checks it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from netsurgeon.errors import TraceError, WidenError
from netsurgeon.graph import LayerGraph
from netsurgeon.graph.export import (
    EXPORT_META,
    OpRecord,
    export_program,
    first_difference,
    program_ops,
)

__all__ = ["check_replay", "twin_generator"]


def check_replay(
    model: nn.Module, graph: LayerGraph, apply: Callable[[nn.Module, LayerGraph], None]
) -> None:
    """Refuse a widening that changes what ``model``'s exported forward computes.

    Args:
        model: the model ``graph`` was traced from (not modified).
        graph: a graph; only one from the export front end is replayed.
        apply: widens a copy in place, given the copy and its graph (the staged plan).

    Raises:
        WidenError: the widened copy exports to other ops (or does not export), naming where.
    """
    recorded = graph.gm.meta.get(EXPORT_META)
    if recorded is None or any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return
    inputs, traced = recorded
    twin, twin_graph = copy.deepcopy((model, graph), {id(graph.registry): graph.registry})
    apply(twin, twin_graph)
    try:
        widened = program_ops(export_program(twin, inputs).graph_module.graph)
    except TraceError as e:
        raise WidenError(
            f"the widened model no longer exports with the traced inputs: {e}\nFix: trace with "
            "frontend='symbolic', or make the forward independent of the widths."
        ) from e
    diff = first_difference(traced, widened)
    if diff is not None:
        raise WidenError(_message(*diff))


def _message(before: OpRecord | None, after: OpRecord | None) -> str:
    def show(op: OpRecord | None) -> str:
        if op is None:
            return "nothing"
        return f"{op.target} ({op.name}, in '{op.module or 'the model'}')"

    return (
        "cannot widen: the exported forward changes with the widths (control flow on a channel "
        f"count?): where the traced forward runs {show(before)}, the widened one runs "
        f"{show(after)}; torch.export recorded only the branch the traced widths take.\n"
        "Fix: make the forward independent of the channel counts, or trace with "
        "frontend='symbolic' (it refuses such branches)."
    )


def twin_generator(model: nn.Module) -> torch.Generator:
    """A private generator on the model's device: the replay draws nothing from global RNG."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.Generator(device=device).manual_seed(0)
