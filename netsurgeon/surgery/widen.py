"""``widen``: add units to layers in place, keeping the function the model computes.

Data flow: ``model -> trace -> channel groups -> validated plan -> staged tensors -> commit``.
Staging computes every new tensor (weights, biases, follower entries, optimizer state) without
touching the model; only then does the commit swap them in. A plan that fails validation, or a
staging that fails, leaves the model and the optimizer bit-identical.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from netsurgeon.errors import NetsurgeonTypeError, WidenError
from netsurgeon.graph import LayerGraph, trace
from netsurgeon.guards import check_plain_module
from netsurgeon.surgery.init import InitStrategy, get_init
from netsurgeon.surgery.optim import grown_state
from netsurgeon.surgery.tensors import like_format, replace_tensor_

__all__ = ["Surgery", "stage", "validate_plan", "widen"]


@dataclass
class Surgery:
    """Everything a widening will change, computed but not yet applied.

    Attributes:
        tensors: ``(qualified name, tensor object, new value)`` for parameters and buffers.
        widths: ``(module, handler, new widths)`` attribute updates.
        optimizer_state: ``(parameter, {state key: new value})``.
    """

    tensors: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    widths: list[tuple[nn.Module, Any, dict[str, int]]] = field(default_factory=list)
    optimizer_state: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = field(
        default_factory=list
    )

    def new_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(new.shape) for name, _, new in self.tensors}

    def commit(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Apply the staged changes. Nothing here validates or allocates beyond ``.grad``."""
        for _, tensor, new in self.tensors:
            replace_tensor_(tensor, new)
        for module, handler, widths in self.widths:
            if handler.role == "layer":
                handler.set_widths(module, **widths)
            else:
                handler.set_width(module, widths["width"])
        if optimizer is not None:
            for param, state in self.optimizer_state:
                optimizer.state[param].update(state)


def widen(
    model: nn.Module,
    plan: Mapping[str, int],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    init: str | InitStrategy = "paper",
    example_inputs: Any = None,
) -> nn.Module:
    """Add ``plan[name]`` output units to each named layer, in place, preserving the output.

    Consumers get matching zero (``"paper"``) input columns, repeated with the flatten
    multiplicity; followers (BatchNorm) grow; module attributes (``out_channels``,
    ``in_features``, ``num_features``) are updated. Parameters stay the same ``nn.Parameter``
    objects (their data is replaced), so optimizers, schedulers and hooks remain valid.

    Args:
        model: the user's module, modified in place.
        plan: ``{layer name: units to add}``; names as in ``netsurgeon.trace(model).layers``.
        optimizer: if given, its per-parameter state is grown with zeros (old slices kept).
        generator: random source for new weights (on the model's device).
        init: ``"paper"`` (default), ``"net2net"``, or an ``InitStrategy`` instance.
        example_inputs: forwarded to :func:`netsurgeon.trace` for shape propagation.

    Returns:
        ``model`` itself.

    Raises:
        WidenError: unknown layer (with close matches), output layer, unwidenable layer (with
            the reason), bad count, wrapped model (DDP/FSDP/``torch.compile``), optimizer state
            that cannot be grown. Nothing is changed when it raises.
        TypeError: ``plan`` is not a mapping of ``str`` to ``int``.

    Example:
        >>> import torch, torch.nn as nn, netsurgeon
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> x = torch.randn(3, 4); before = model(x)
        >>> _ = netsurgeon.widen(model, {"0": 4})
        >>> model[0].out_features, torch.allclose(model(x), before, atol=1e-6)
        (12, True)
    """
    check_plain_module(model, "widen")
    strategy = get_init(init)
    plan = validate_plan(plan)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise NetsurgeonTypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    graph = trace(model, example_inputs, strict=False)
    surgery = stage(graph, plan, strategy, generator=generator, optimizer=optimizer)
    surgery.commit(optimizer)
    return model


def validate_plan(plan: Mapping[str, int]) -> dict[str, int]:
    """Check the plan's types and counts (layer names are checked against the graph later)."""
    if not isinstance(plan, Mapping):
        raise NetsurgeonTypeError(
            f"plan must be a mapping {{layer name: units}}, got {type(plan).__name__}"
        )
    checked: dict[str, int] = {}
    for name, k in plan.items():
        if not isinstance(name, str):
            raise NetsurgeonTypeError(f"plan keys must be layer names (str), got {name!r}")
        count = _as_count(k)
        if count is None or count < 1:
            raise WidenError(
                f"plan[{name!r}] = {k!r}: expected a positive int number of units to add; "
                "drop layers that should not grow from the plan"
            )
        checked[name] = count
    return checked


def _as_count(k: object) -> int | None:
    """``k`` as an int if it is integral (int, numpy integer, 0-d integer tensor), else ``None``."""
    if isinstance(k, bool):
        return None
    try:
        return operator.index(k)
    except TypeError:
        return None


def stage(
    graph: LayerGraph,
    plan: Mapping[str, int],
    strategy: InitStrategy,
    *,
    generator: torch.Generator | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> Surgery:
    """Compute every tensor the plan changes, without modifying the model.

    Raises:
        WidenError: a planned layer is unknown, an output layer, or marked unwidenable.
    """
    for name in plan:
        graph.check_layer(name)
        reason = graph.unwidenable_reason(name)
        if reason is not None:
            raise WidenError(f"cannot widen layer '{name}': {reason}")
    widths = graph.widths()
    sources = {name: strategy.sources(widths[name], k, generator) for name, k in plan.items()}
    surgery = Surgery()
    with torch.no_grad():
        for name in graph.layers:
            incoming = [e for e in graph.edges_into(name) if e.producer in plan]
            if name in plan or incoming:
                _stage_layer(
                    graph, name, plan, incoming, sources, widths, strategy, generator, surgery
                )
        for name, k in plan.items():
            for follower in graph.group(name).followers:
                _stage_follower(graph, follower, k, sources[name], strategy, surgery)
        if optimizer is not None:
            _stage_optimizer(optimizer, surgery)
    return surgery


def _stage_layer(graph, name, plan, incoming, sources, widths, strategy, generator, surgery):
    """Stage one layer's weight and bias: grown input columns, then new output rows.

    The new weight is allocated once and written region by region: old rows (with their grown
    columns) on top, new rows below.
    """
    module, handler = graph.module(name), graph.handler(name)
    weight, bias = module.weight, module.bias
    old_out, old_in = handler.out_width(module), handler.in_width(module)
    new_in = old_in + sum(plan[e.producer] * e.multiplicity for e in incoming)
    new_out = old_out + plan.get(name, 0)
    new = weight.new_empty((new_out, new_in, *weight.shape[2:]))
    top = new[:old_out]
    if incoming:  # one producer per consumer today; it owns all input columns
        (edge,) = incoming
        strategy.grow_columns(
            weight.detach(),
            top,
            width=widths[edge.producer],
            k=plan[edge.producer],
            multiplicity=edge.multiplicity,
            sources=sources[edge.producer],
            generator=generator,
        )
    else:
        top.copy_(weight)
    if name in plan:
        strategy.new_rows(
            top, new[old_out:], old_in=old_in, sources=sources[name], generator=generator
        )
        if bias is not None:
            extra = strategy.new_bias(bias.detach(), plan[name], sources[name])
            surgery.tensors.append((f"{name}.bias", bias, torch.cat([bias.detach(), extra])))
    surgery.tensors.append((f"{name}.weight", weight, like_format(new, weight)))
    surgery.widths.append((module, handler, {"out_width": new_out, "in_width": new_in}))


def _stage_follower(graph, follower, k, sources, strategy, surgery):
    module, handler = graph.module(follower.name), graph.handler(follower.name)
    for attr, fill in handler.tensors(module).items():
        tensor = getattr(module, attr)
        new = strategy.grow_channelwise(
            tensor.detach(), k=k, multiplicity=follower.multiplicity, fill=fill, sources=sources
        )
        surgery.tensors.append((f"{follower.name}.{attr}", tensor, new))
    surgery.widths.append(
        (module, handler, {"width": handler.width(module) + k * follower.multiplicity})
    )


def _stage_optimizer(optimizer, surgery):
    for name, tensor, new in surgery.tensors:
        if isinstance(tensor, nn.Parameter):
            state = grown_state(optimizer, tensor, tuple(new.shape), name)
            if state:
                surgery.optimizer_state.append((tensor, state))
