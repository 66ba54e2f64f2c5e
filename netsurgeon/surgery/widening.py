"""``widen``: add units to layers in place, keeping the function the model computes.

Data flow: ``model -> trace -> channel groups -> validated plan -> staged tensors -> commit``.
Staging computes every new tensor (weights, biases, follower entries, optimizer state) without
touching the model; only then does the commit swap them in. A plan that fails validation, or a
staging that fails, leaves the model and the optimizer bit-identical.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from netsurgeon.errors import NetsurgeonTypeError, UnknownLayerError, WidenError
from netsurgeon.graph import LayerGraph, trace
from netsurgeon.guards import check_plain_module
from netsurgeon.surgery.ahead import draws_ahead
from netsurgeon.surgery.constructions import PerGroupInit, resolve_constructions, scaled_state
from netsurgeon.surgery.init import InitStrategy, PaperInit, get_init
from netsurgeon.surgery.mirror import (
    DrawReplay,
    MirrorSurgery,
    check_mirror,
    check_optimizer_holds,
    mirror_memo,
    mirror_module,
    stage_mirrors,
)
from netsurgeon.surgery.norms import stage_layer_scale, stage_norm_reader
from netsurgeon.surgery.optim import grown_state
from netsurgeon.surgery.replay import check_replay, twin_generator
from netsurgeon.surgery.staging import (
    AttrChange,
    Growth,
    Surgery,
    TensorChange,
    stage_follower,
    stage_layer,
)

__all__ = [
    "AttrChange",
    "Surgery",
    "TensorChange",
    "resolve_plan",
    "stage",
    "validate_plan",
    "widen",
]


def widen(
    model: nn.Module,
    plan: Mapping[str, int],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    init: str | InitStrategy = "paper",
    example_inputs: Any = None,
    graph: LayerGraph | None = None,
    mirrors: Sequence[nn.Module] = (),
) -> nn.Module:
    """Add ``plan[key]`` channels to each named group, in place, preserving the output.

    A key names a channel group (``graph.groups[i].name``) or one of its producers. Producers get
    ``k`` new output units, consumers matching input columns where the group sits in their input,
    followers (BatchNorm, depthwise convs, layer scales) new entries; size attributes follow. The
    ``nn.Parameter`` objects stay the same, so optimizers, schedulers and hooks remain valid.

    Args:
        model: the user's module, modified in place.
        plan: ``{group or layer name: channels to add}``; each ``k`` a positive multiple of the
            group's ``granularity``.
        optimizer: its state is grown; it must hold every grown parameter that requires grad.
        generator: the random source for new weights (on the model's device).
        init: ``"paper"`` (default: independent units, and a normalised stream its own
            ``ChannelGroup.construction``), ``"net2net"`` (streams tiled), ``"mean_pad"``,
            ``"zero_pad"``, ``"tile"``, or an ``InitStrategy``; an inexact choice raises.
        example_inputs: forwarded to :func:`netsurgeon.trace` for shape propagation.
        graph: a graph just traced from ``model`` (saves a trace); it must match its widths.
        mirrors: copies of the model (EMA, ``AveragedModel``) grown with it (own old entries).

    Returns ``model`` itself.

    Raises:
        WidenError: an unknown key, an output or unwidenable group (with the reason), a bad
            count, two counts for one group, a stale ``graph``, a wrapped model, optimizer state
            that cannot grow, a mirror of other widths. Nothing changes when it raises.
        NetsurgeonTypeError: ``plan`` is not a mapping of ``str`` to ``int``; ``optimizer``,
            ``generator`` or a mirror has the wrong type.

    Example:
        >>> import torch, torch.nn as nn, netsurgeon
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> x = torch.randn(3, 4); before = model(x)
        >>> _ = netsurgeon.widen(model, {"0": 4})
        >>> model[0].out_features, torch.allclose(model(x), before, atol=1e-6)
        (12, True)
    """
    check_plain_module(model, "widen")
    strategy, plan = get_init(init), validate_plan(plan)
    _check_optimizer_and_generator(optimizer, generator)
    graph = _graph_of(model, graph, example_inputs)
    draws = DrawReplay.capture(generator, model) if mirrors else None  # before any draw
    surgery = stage(graph, plan, strategy, generator=generator, optimizer=optimizer)
    check_optimizer_holds(optimizer, surgery.tensors, model)
    mirrored = _stage_mirrors(graph, plan, strategy, surgery, mirrors, draws)
    check_replay(model, graph, lambda twin, g: _replay(twin, g, plan, strategy))
    surgery.commit(optimizer)
    mirrored.commit()
    return model


def _graph_of(model: nn.Module, graph: LayerGraph | None, example_inputs: Any) -> LayerGraph:
    """The graph ``widen`` reads: ``graph`` checked against ``model``, or a new trace."""
    if graph is None:
        return trace(model, example_inputs, strict=False)
    check_graph(model, graph)
    return graph


def _stage_mirrors(
    graph: LayerGraph,
    plan: Mapping[str, int],
    strategy: InitStrategy,
    surgery: Surgery,
    mirrors: Sequence[Any],
    draws: DrawReplay | None,
) -> MirrorSurgery:
    """Every mirror's widening (:mod:`netsurgeon.surgery.mirror`): the model's new entries copied
    where every planned group appends fresh units; else the plan staged on the mirror's own
    entries with the model's draws replayed."""
    if not mirrors:
        return MirrorSurgery()
    groups = {g.name: g for g in graph.groups}
    chosen, _ = resolve_constructions(groups, resolve_plan(graph, plan), strategy)
    if isinstance(strategy, PaperInit) and set(chosen.values()) <= {"append"}:
        return stage_mirrors(graph.model, surgery, mirrors, strategy.name)
    staged = MirrorSurgery()
    for index, mirror in enumerate(mirror_module(m) for m in mirrors):
        where = f"mirrors[{index}] ({type(mirror).__name__})"
        check_mirror(graph.model, mirror, surgery, where)
        memo = mirror_memo(graph.model, mirror, where)
        memo[id(graph.registry)] = graph.registry
        own = copy.deepcopy(graph, memo)
        with draws.replay() as generator:
            staged.restaged.append(stage(own, plan, strategy, generator=generator))
    return staged


def _replay(twin: nn.Module, graph: LayerGraph, plan: dict[str, int], strategy: Any) -> None:
    """The plan applied to a copy (:mod:`netsurgeon.surgery.replay`)."""
    stage(graph, plan, strategy, generator=twin_generator(twin)).commit(None)


def _check_optimizer_and_generator(optimizer: object, generator: object) -> None:
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise NetsurgeonTypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    _check_generator(generator)


def _check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise NetsurgeonTypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__} "
            f"({generator!r}); pass a generator, e.g. generator=torch.Generator().manual_seed(0)"
        )


def check_graph(model: nn.Module, graph: LayerGraph) -> None:
    """Refuse a graph traced from another model, or before the model last changed width."""
    if graph.model is not model:
        raise WidenError(
            f"graph= was traced from another model ({type(graph.model).__name__} at "
            f"{id(graph.model):#x}); pass the graph of this model or omit graph="
        )
    for name, width in graph.widths().items():
        module = graph.module(name)
        current = graph.handler(name).out_width(module)
        if current != width:
            raise WidenError(
                f"graph= is stale: layer '{name}' was traced at width {width} but is now "
                f"{current}; trace the model again (netsurgeon.trace) or omit graph="
            )


def validate_plan(plan: Mapping[str, int]) -> dict[str, int]:
    """Check the plan's types and counts (names are checked against the graph later)."""
    if not isinstance(plan, Mapping):
        raise NetsurgeonTypeError(
            f"plan must be a mapping {{group or layer name: units}}, got {type(plan).__name__}"
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


def resolve_plan(graph: LayerGraph, plan: Mapping[str, int]) -> dict[str, int]:
    """``{group name: k}`` from a plan naming groups or producers (checked).

    Raises:
        WidenError: unknown name, unwidenable or output group, ``k`` not a multiple of the
            group's granularity, or two keys for one group with different ``k``.
    """
    growth: dict[str, int] = {}
    named_by: dict[str, str] = {}
    for key, k in plan.items():
        try:
            group = graph.resolve(key)
        except UnknownLayerError as e:  # a plan key: the widening is refused
            raise WidenError(str(e)) from e
        if group.reason is not None:
            what = f"layer '{key}'" if key in graph.widths() else f"group '{key}'"
            if len(group.producers) > 1:
                what += f" (group '{group.name}' of {', '.join(group.producers)})"
            raise WidenError(f"cannot widen {what}: {group.reason}")
        if k % group.granularity:
            low = k - k % group.granularity
            options = ", ".join(str(v) for v in (low, low + group.granularity) if v > 0)
            why = (
                f"it is tiled, every channel copied: {'; '.join(group.requirements)}"
                if group.construction == "tile"
                else f"its channels are cut into {group.splits} equal splits"
                + (" and normalisation groups" if group.granularity != group.splits else "")
            )
            raise WidenError(
                f"plan[{key!r}] = {k}: group '{group.name}' grows in multiples of "
                f"{group.granularity} ({why}); use {options}"
            )
        if group.name in growth and growth[group.name] != k:
            raise WidenError(
                f"plan[{key!r}] = {k} and plan[{named_by[group.name]!r}] = "
                f"{growth[group.name]} name the same group '{group.name}' "
                f"(producers {', '.join(group.producers)}); give one count"
            )
        growth[group.name] = k
        named_by[group.name] = key
    return growth


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
        WidenError: see :func:`resolve_plan`.
    """
    growth = resolve_plan(graph, plan)
    groups = {g.name: g for g in graph.groups}
    common, scaled, constructions = _growth(graph, groups, growth, strategy, generator)
    spec = common.spec
    consumers = {c.layer: c for name in growth for c in groups[name].consumers}
    followers = {f.name: f for name in growth for f in groups[name].followers}
    parts: list[Surgery] = []
    with torch.no_grad():
        with draws_ahead(common.strategy, graph.model) as ahead:  # the layers' rows drawn aside
            layers = replace(common, ahead=ahead)
            for layer in graph.layers:
                own = graph.group_of(layer).name
                consumer = consumers.get(layer)
                if own in growth or consumer is not None:
                    parts.append(stage_layer(graph, layer, own, consumer, layers))
        for f in followers.values():
            if _padded_norm(graph, f, constructions):
                parts.append(stage_norm_reader(graph, f, spec))
            elif f.kind == "parameter" and f.name in scaled.values():
                parts.append(stage_layer_scale(graph, f, spec))
            else:
                parts.append(stage_follower(graph, f, common))
    surgery = Surgery(
        tensors=[t for part in parts for t in part.tensors],
        attrs=[a for part in parts for a in part.attrs],
    )
    if optimizer is not None:
        _stage_optimizer(surgery, optimizer)
    return surgery


def _growth(
    graph: LayerGraph,
    groups: Mapping[str, Any],
    growth: Mapping[str, int],
    strategy: InitStrategy,
    generator: torch.Generator | None,
) -> tuple[Growth, dict[str, str], dict[str, str]]:
    """The plan as the staging reads it (each group's strategy and sources), ``{producer: layer
    scale}`` of the mean-padded producers a layer scale multiplies, and each group's
    construction. A ``placeholder`` strategy (the checkpoint loader's) fills every group."""
    constructions, strategies = resolve_constructions(groups, growth, strategy)
    if any(s is not strategy for s in strategies.values()):
        strategy = PerGroupInit(strategies)
    sources = {
        name: strategies[name].sources(
            groups[name].width,
            k,
            groups[name].splits,
            generator,
            unit=groups[name].granularity // groups[name].splits,
        )
        for name, k in growth.items()
    }
    spec = {name: (groups[name].width, k, groups[name].splits) for name, k in growth.items()}
    widths = {g.name: g.width for g in graph.groups}
    scaled = {
        producer: param
        for name, c in constructions.items()
        if c == "mean_pad"
        for producer, param in groups[name].row_scales
    }
    row_scales = {producer: _tensor(graph.model, param) for producer, param in scaled.items()}
    if getattr(strategy, "placeholder", False):  # values overwritten later: draw nothing
        return Growth(spec, sources, widths, strategy, generator), scaled, constructions
    common = Growth(spec, sources, widths, strategy, generator, constructions, row_scales)
    return common, scaled, constructions


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, attr)


def _padded_norm(graph: LayerGraph, follower: Any, constructions: Mapping[str, str]) -> bool:
    """A LayerNorm/RMSNorm module over a mean- or zero-padded group (rescaled, not appended)."""
    if follower.kind != "module" or not getattr(graph.handler(follower.name), "norm_reader", False):
        return False
    return any(constructions.get(g) in ("mean_pad", "zero_pad") for g in follower.index_map.groups)


def _stage_optimizer(surgery: Surgery, optimizer: torch.optim.Optimizer) -> None:
    """The optimizer state of every grown parameter: grown, and rescaled with a rescaled one."""
    for change in surgery.tensors:
        if isinstance(change.tensor, nn.Parameter):
            state = grown_state(optimizer, change.tensor, change.inserts, change.name)
            if state and change.grad_scale != 1.0:
                state = scaled_state(state, change.grad_scale, optimizer, change.name)
            if state:
                surgery.optimizer_state.append((change.tensor, state))
