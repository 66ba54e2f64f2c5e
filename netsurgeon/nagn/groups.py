"""NAGN of channel groups: one value per group, its neighbours, and the backbone chain.

The monitor measures layers; ``widen`` grows channel groups (``netsurgeon.trace(model).groups``).
A group with several producers (a residual stream written by a stem and by every block of a
stage) needs one value, and a plan needs, for each group, the groups around it. Three pure rules,
each a named choice:

* **combine** (:func:`combine_nagn`): the group's NAGN from its producers' NAGN ``g_1 .. g_P``.
  ``"rms"`` (default) ``sqrt(mean(g_p^2))``: NAGN is itself a root mean square over elements, so
  this is the NAGN of the concatenated outputs of producers of equal size; one strongly starved
  producer raises it, but less than ``"max"`` does. ``"max"``: the most starved producer decides.
  ``"mean"``: the arithmetic mean. All three are the producer's own NAGN for one producer, so a
  chain of single-producer groups (a VGG) plans exactly as per layer.
* **neighbourhood order** (:func:`group_neighbours`): ``"graph"`` (default): a group reads from
  the groups one of its producers consumes (``before``) and is read by the groups whose producers
  consume it (``after``); ``"depth"``: the groups in depth order of their first producer, as a
  chain. On a chain of groups the two are the same.
* **backbone chain** (:func:`backbone_chain`): where the non-decreasing width constraint applies:
  the groups every input-to-output path goes through (dominators of the output in the group
  graph), in path order, whose producers all have a spatial kernel (``weight.dim() > 2``), up to
  the first that does not. A VGG gives its conv layers; a ResNet its stage streams (its block
  interiors lie on a side path, so they are free); an MLP nothing.

Example (a residual stream ``s`` of two producers, a block interior ``b``, the output ``o``)::

    s  <-> b      (b reads s; s's second producer reads b)
    s  ->  o
    before: s: (b,), b: (s,), o: (s,)     after: s: (b, o), b: (s,), o: ()
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import nn

from netsurgeon.errors import PlanError
from netsurgeon.graph.constructions import granularity_under
from netsurgeon.surgery.constructions import exact_under
from netsurgeon.surgery.init import get_init

if TYPE_CHECKING:
    from netsurgeon.graph import LayerGraph

__all__ = [
    "COMBINES",
    "NEIGHBOURHOOD_ORDERS",
    "Combine",
    "GroupNAGN",
    "NeighbourhoodOrder",
    "backbone_chain",
    "combine_nagn",
    "group_neighbours",
    "group_profile",
    "has_spatial_kernel",
    "round_to_granularity",
    "under_init",
]

Combine = Literal["rms", "max", "mean"]
COMBINES: tuple[str, ...] = ("rms", "max", "mean")
NeighbourhoodOrder = Literal["graph", "depth"]
NEIGHBOURHOOD_ORDERS: tuple[str, ...] = ("graph", "depth")


@dataclass(frozen=True)
class GroupNAGN:
    """One channel group's NAGN, with the per-producer values it was combined from.

    Attributes:
        name: the group's name (its first producer), a plan key.
        nagn: the combined value.
        producers: ``((producer, NAGN), ...)`` for the group's profiled producers, depth order.
        width: the group's width when traced.
        granularity: a widening's ``k`` must be a multiple of it.
        widenable: whether ``widen`` accepts the group.
        before: profiled groups this group's producers read from (graph order).
        after: profiled groups whose producers read this group.
    """

    name: str
    nagn: float
    producers: tuple[tuple[str, float], ...]
    width: int
    granularity: int = 1
    widenable: bool = True
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


def combine_nagn(values: Sequence[float], combine: Combine = "rms") -> float:
    """One NAGN for a group from its producers' NAGN (module docstring).

    Args:
        values: ``(P,)`` NAGN of the group's producers, ``P >= 1``.
        combine: ``"rms"``, ``"max"`` or ``"mean"``.

    Example:
        >>> combine_nagn([1.0, 7.0]), combine_nagn([1.0, 7.0], "max"), combine_nagn([3.0], "mean")
        (5.0, 7.0, 3.0)
    """
    if combine not in COMBINES:
        raise PlanError(
            f"combine={combine!r} is not a group statistic; expected one of {COMBINES}."
        )
    if not values:
        raise PlanError("combine_nagn needs at least one producer's NAGN; found none.")
    if len(values) == 1:
        return float(values[0])
    if combine == "max":
        return float(max(values))
    if combine == "mean":
        return math.fsum(values) / len(values)
    return math.sqrt(math.fsum(v * v for v in values) / len(values))


#: ``group_neighbours`` per graph: a ``LayerGraph`` is a snapshot, so its neighbours never change;
#: a plan reads them twice (``group_profile`` and ``backbone_chain``) and computes them once.
_NEIGHBOURS: weakref.WeakKeyDictionary[LayerGraph, dict[str, tuple[tuple[str, ...], ...]]] = (
    weakref.WeakKeyDictionary()
)


def group_neighbours(graph: LayerGraph) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """``{group: (groups it reads from, groups that read it)}``, each in depth order.

    A group ``H`` is read by ``G`` when a consumer of ``H`` is a producer of ``G``; a group that
    reads itself (a producer consuming its own stream) is not its own neighbour. Computed once
    per graph (a graph is a snapshot); each call returns a new dict.
    """
    try:
        found = _NEIGHBOURS.get(graph)
    except TypeError:  # a graph-like object that cannot be weakly referenced
        return _neighbours(graph)
    if found is None:
        found = _NEIGHBOURS[graph] = _neighbours(graph)
    return dict(found)


def _neighbours(graph: LayerGraph) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    order = [g.name for g in graph.groups]
    rank = {name: i for i, name in enumerate(order)}
    before: dict[str, set[str]] = {name: set() for name in order}
    after: dict[str, set[str]] = {name: set() for name in order}
    for group in graph.groups:
        for consumer in group.consumers:
            reader = graph.group_of(consumer.layer).name
            if reader != group.name:
                after[group.name].add(reader)
                before[reader].add(group.name)
    return {
        name: (
            tuple(sorted(before[name], key=rank.__getitem__)),
            tuple(sorted(after[name], key=rank.__getitem__)),
        )
        for name in order
    }


def group_profile(
    profile: Mapping[str, float], graph: LayerGraph, combine: Combine = "rms"
) -> tuple[GroupNAGN, ...]:
    """Combine a per-layer NAGN profile into one :class:`GroupNAGN` per group.

    Groups none of whose producers is in ``profile`` are left out, and so are they as neighbours.

    Args:
        profile: ``{layer: NAGN}`` (e.g. ``NAGNMonitor.profile()``).
        graph: ``netsurgeon.trace(model)`` of the same model, at the same widths.
        combine: the group statistic (module docstring).

    Returns:
        The groups in depth order of their first producer.

    Raises:
        PlanError: a profiled name is not a layer of ``graph``, or a bad ``combine``.
    """
    if combine not in COMBINES:
        raise PlanError(
            f"combine={combine!r} is not a group statistic; expected one of {COMBINES}."
        )
    layers = set(graph.layers)
    unknown = [name for name in profile if name not in layers]
    if unknown:
        raise PlanError(
            f"profile names {unknown}, which are not layers of the traced graph (layers: "
            f"{graph.layers}). Profile and trace the same model, at the same widths."
        )
    profiled = [g for g in graph.groups if any(p in profile for p in g.producers)]
    names = {g.name for g in profiled}
    neighbours = group_neighbours(graph)
    out = []
    for group in profiled:
        values = tuple((p, float(profile[p])) for p in group.producers if p in profile)
        before, after = neighbours[group.name]
        out.append(
            GroupNAGN(
                name=group.name,
                nagn=combine_nagn([v for _, v in values], combine),
                producers=values,
                width=group.width,
                granularity=group.granularity,
                widenable=group.widenable,
                before=tuple(n for n in before if n in names),
                after=tuple(n for n in after if n in names),
            )
        )
    return tuple(out)


def backbone_chain(graph: LayerGraph) -> tuple[str, ...]:
    """The groups the non-decreasing width constraint runs along (module docstring).

    Example:
        >>> import torch.nn as nn, netsurgeon
        >>> m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(),
        ...                   nn.Linear(64, 8), nn.Linear(8, 2))
        >>> backbone_chain(netsurgeon.trace(m))
        ('0', '1')
    """
    import networkx as nx

    source, sink = object(), object()
    digraph = nx.DiGraph()
    digraph.add_nodes_from([source, sink])
    for name, (_, after) in group_neighbours(graph).items():
        group = graph.resolve(name)
        digraph.add_node(name)
        digraph.add_edges_from((name, reader) for reader in after)
        if any(not graph.edges_into(p) for p in group.producers):
            digraph.add_edge(source, name)  # a producer reads only the model input
        if group.reaches_output:
            digraph.add_edge(name, sink)
    if not nx.has_path(digraph, source, sink):
        return ()
    idom = nx.immediate_dominators(digraph, source)
    path: list[str] = []
    node = idom[sink]
    while node is not source:
        path.append(node)
        node = idom[node]
    chain: list[str] = []
    for name in reversed(path):
        group = graph.resolve(name)
        if not all(has_spatial_kernel(graph.module(p)) for p in group.producers):
            break
        if group.widenable:
            chain.append(name)
    return tuple(chain)


def has_spatial_kernel(module: nn.Module) -> bool:
    """Whether ``module`` has a weight with a spatial kernel (a conv, not a linear layer)."""
    weight = getattr(module, "weight", None)
    if weight is None or isinstance(weight, nn.parameter.UninitializedParameter):
        return False
    return weight.dim() > 2


def round_to_granularity(
    increments: Mapping[str, int], widths: Mapping[str, int], granularity: Mapping[str, int]
) -> dict[str, int]:
    """Each ``k`` rounded up to the next multiple of its group's granularity, within doubling.

    A ``k`` that would round above ``max(n, k)`` (past doubling, or past what
    ``drag_limit="none"`` already allowed) rounds down instead; a ``k`` that rounds to 0 is
    dropped; a multiple is kept as it is. Names missing from ``granularity`` have granularity 1.

    Example:
        >>> round_to_granularity({"a": 3, "b": 5, "c": 1}, {"a": 8, "b": 6, "c": 2},
        ...                      {"a": 2, "b": 4, "c": 4})
        {'a': 4, 'b': 4}
    """
    out = {}
    for name, k in increments.items():
        step = max(1, int(granularity.get(name, 1)))
        up = -(-int(k) // step) * step
        if name in widths and up > max(widths[name], k):
            up = int(k) // step * step
        if up > 0:
            out[name] = up
    return out


def under_init(
    graph: LayerGraph, groups: Iterable[str], init: str
) -> tuple[dict[str, int], list[str], dict[str, str]]:
    """``({group: granularity}, growable, {group: why not})`` under ``init`` (a registered name).

    The granularity is the one the init widens by (a stream tiled under ``"net2net"`` grows by
    multiples of its width); a widenable group the init cannot widen exactly (``"net2net"`` on
    the heads of a fused ``qkv``) is not growable, with the reason.
    """
    strategy = get_init(init)
    granularity, growable, refused = {}, [], {}
    for name in groups:
        group = graph.resolve(name)
        granularity[name] = granularity_under(group, strategy.name)
        if group.widenable:
            why = exact_under(group, strategy)
            if why is None:
                growable.append(name)
            else:
                refused[name] = why
    return granularity, growable, refused
