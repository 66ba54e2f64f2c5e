"""``Baseline``: a model's widths, parameters and FLOPs as they are, to price plans against.

A preview stages the real widening on a shape-only copy of the model (:mod:`.meta`): it calls
the public ``netsurgeon.widen`` on that copy with the model's own graph, so it refuses exactly
what ``widen`` refuses and agrees with it on every shape, whatever the graph decides to grow
together. Parameters are counted on the copy; forward FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` on a forward pass of the copy with ``meta`` inputs
(eval mode, no gradients), so they are the numbers ``FlopCounterMode`` reports on the real model:
matrix multiplications and convolutions, two FLOPs per multiply-add; element-wise ops, norms and
activations count zero.

What it costs: the model is traced once, only when no graph is given (``graph=``: not at all);
the copy is never traced (:func:`~netsurgeon.cost.meta.meta_graph`). The "before" numbers are
counted once, on one meta copy; each plan priced widens a meta copy of its own (the first reuses
that one) and, when FLOPs are asked for, runs one forward pass on it. Widths after a plan are
computed from the plan: every producer of a group grown by ``k`` gains ``k`` units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from netsurgeon.cost.meta import meta_graph, meta_inputs, meta_model, meta_optimizer
from netsurgeon.cost.records import CostPreview, LayerCost
from netsurgeon.graph import LayerGraph, trace, trace_with_shapes_of
from netsurgeon.guards import check_plain_module
from netsurgeon.surgery import InitStrategy, widen
from netsurgeon.surgery.widening import check_graph, resolve_plan, validate_plan

__all__ = ["Baseline", "count_flops"]


class Baseline:
    """The costs of ``model`` at its current widths; :meth:`cost` prices a plan against them.

    Args:
        model: the user's model (never modified; no RNG is consumed).
        example_inputs: a tensor or tuple of forward arguments (any device; only shapes and
            dtypes are used) for the FLOP counts; ``None`` counts no FLOPs.
        graph: ``netsurgeon.trace(model)`` at the model's current widths, as for
            ``widen(..., graph=)``; ``None`` traces the model (once, here), with the shapes of
            ``example_inputs`` propagated on the meta copy (as ``widen(...,
            example_inputs=)`` reads them; nothing runs on the model).
        optimizer: checked by every :meth:`cost` as ``widen(..., optimizer=)`` would check it.
        init: checked by every :meth:`cost` as ``widen(..., init=)`` would check it.

    A baseline is a snapshot, like the graph it reads: after the model changes width, build a new
    one (a later :meth:`cost` may refuse the graph as stale, as ``widen`` does).

    Raises:
        WidenError: a wrapped model (DDP, ``torch.compile``), or a ``graph`` of another model or
            of other widths (as ``widen`` says).
        TraceError: the model cannot be traced (as ``widen`` says).
        RuntimeError: FLOPs cannot be counted on meta tensors (pass ``example_inputs=None``).

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> basis = Baseline(net, torch.randn(1, 4))
        >>> [basis.cost({"0": k}).params_after for k in (1, 2, 4)]
        [65, 72, 86]
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any = None,
        *,
        graph: LayerGraph | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        init: str | InitStrategy = "paper",
    ) -> None:
        check_plain_module(model, "preview")
        self.inputs = None if example_inputs is None else meta_inputs(example_inputs)
        twin, tensors = meta_model(model)
        if graph is None and self.inputs is None:
            graph = trace(model, strict=False)  # what widen(model, plan) traces
        elif graph is None:  # shapes as widen(..., example_inputs=) reads them, from the twin
            graph = trace_with_shapes_of(model, twin, self.inputs)
        else:
            check_graph(model, graph)
        self.model, self.graph, self.optimizer, self.init = model, graph, optimizer, init
        self.widths = graph.widths()
        self.params = _count(twin)
        self.layer_params = _layer_params(twin, self.widths)
        self.flops = None if self.inputs is None else count_flops(twin, self.inputs, self.widths)
        self._spare: tuple[nn.Module, dict[int, torch.Tensor]] | None = (twin, tensors)

    def cost(self, plan: Mapping[str, int], *, flops: bool = True) -> CostPreview:
        """Widths, parameters and FLOPs before and after ``widen(model, plan)``; changes nothing.

        Args:
            plan: ``{group or layer name: units to add}``, as for ``netsurgeon.widen``.
            flops: count FLOPs (when the baseline has example inputs); ``False`` leaves them
                ``None`` and saves the forward pass.

        Raises:
            WidenError, NetsurgeonTypeError: exactly what ``widen(model, plan, optimizer=,
                init=, graph=)`` would raise.
        """
        twin, tensors = self._spare or meta_model(self.model)
        stand_in = None if self.optimizer is None else _stand_in(self.optimizer, tensors)
        # A private generator: no global RNG state is consumed, and the values do not matter on meta.
        read = meta_graph(self.graph, twin)
        widen(
            twin, plan, optimizer=stand_in, generator=torch.Generator(), init=self.init, graph=read
        )
        self._spare = None  # widened: the "before" copy is spent
        growth = resolve_plan(self.graph, validate_plan(plan))
        grown = {  # a grouped-query q projection holds g rows per channel of its group
            name: growth.get((group := self.graph.group_of(name)).name, 0)
            * group.rows_per_channel(name)
            for name in self.widths
        }
        counted = flops and self.inputs is not None
        after = count_flops(twin, self.inputs, self.widths) if counted else None
        before = self.flops if counted else None
        layer_params = _layer_params(twin, self.widths)
        rows = tuple(
            LayerCost(
                name,
                width,
                width + grown[name],
                self.layer_params[name],
                layer_params[name],
                None if before is None else before[1][name],
                None if after is None else after[1][name],
            )
            for name, width in self.widths.items()
        )
        return CostPreview(
            plan={name: int(k) for name, k in plan.items()},
            layers=rows,
            params_before=self.params,
            params_after=_count(twin),
            flops_before=None if before is None else before[0],
            flops_after=None if after is None else after[0],
            inputs=_describe(self.inputs) if counted else None,
        )


def count_flops(
    model: nn.Module, inputs: Any, layers: Sequence[str] = ()
) -> tuple[int, dict[str, int]]:
    """Forward FLOPs of ``model(*inputs)`` in eval mode without gradients, in total and per layer.

    ``model`` should be a meta copy (:func:`~netsurgeon.cost.meta.meta_model`): the mode is set
    on it and restored afterwards.

    Returns:
        ``(total, {layer: FLOPs inside that module})``.
    """
    from torch.utils.flop_counter import FlopCounterMode  # on use: it imports triton (0.2 s)

    args = inputs if isinstance(inputs, tuple) else (inputs,)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args)
    except Exception as e:
        raise RuntimeError(
            f"counting FLOPs needs a forward pass of {type(model).__qualname__} on meta tensors "
            f"of the example inputs' shapes, and it failed: {type(e).__name__}: {e}\n"
            "Fix: pass example_inputs=None to preview without FLOPs (data-dependent control "
            "flow such as .item() cannot run on meta tensors)."
        ) from e
    finally:
        for module, training in modes.items():
            module.training = training
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    per_layer = {name: int(sum(per_module.get(f"{root}.{name}", {}).values())) for name in layers}
    return int(counter.get_total_flops()), per_layer


def _stand_in(
    optimizer: torch.optim.Optimizer, tensors: dict[int, torch.Tensor]
) -> torch.optim.Optimizer | Any:
    if not isinstance(optimizer, torch.optim.Optimizer):
        return optimizer  # widen raises its own NetsurgeonTypeError on the copy
    return meta_optimizer(optimizer, tensors)


def _layer_params(model: nn.Module, layers: Sequence[str]) -> dict[str, int]:
    return {name: _count(model.get_submodule(name)) for name in layers}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _describe(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return str(tuple(inputs.shape))
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(_describe(x) for x in inputs) + ")"
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in inputs.items()) + "}"
    return type(inputs).__name__
