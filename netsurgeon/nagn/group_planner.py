"""The planner on channel groups: section 3 of the paper where ``widen`` works, per group.

:func:`plan_group_growth` runs the decision rule (:func:`netsurgeon.nagn.decision.decide`)
on the sequence of channel groups instead of layers:

1. the profile is combined per group (:func:`~netsurgeon.nagn.groups.group_profile`, ``combine``);
2. the contrast uses each group's neighbours on the group graph (``neighbourhood_order="graph"``)
   or the groups in depth order as a chain (``"depth"``);
3. unwidenable groups (the output, a LayerNorm'd stream, ...) keep a contrast, feed their
   neighbours' means, and never grow;
4. the non-decreasing constraint runs along the backbone chain
   (:func:`~netsurgeon.nagn.groups.backbone_chain`: a VGG's conv layers, a ResNet's stage streams);
5. each increment is rounded up to a multiple of its group's ``granularity``, never past doubling.

For a chain of single-producer groups with granularity 1 (a VGG) every step is the per-layer rule
with ``monotone_groups=conv layers``, exactly (tested on recorded VGG profiles). Plan keys are
group names, which ``netsurgeon.widen`` accepts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from netsurgeon.errors import PlanError
from netsurgeon.nagn.checks import _check_groups, _check_inputs
from netsurgeon.nagn.contrast import chain_neighbours
from netsurgeon.nagn.decision import Nodes, decide
from netsurgeon.nagn.groups import GroupNAGN, backbone_chain, group_profile
from netsurgeon.nagn.plan import GrowthPlan
from netsurgeon.nagn.settings import PlannerSettings

if TYPE_CHECKING:
    from netsurgeon.graph import LayerGraph

__all__ = ["plan_group_growth"]


def plan_group_growth(
    profile: Mapping[str, float],
    graph: LayerGraph,
    *,
    monotone_groups: Iterable[Iterable[str]] | None = None,
    settings: PlannerSettings | None = None,
    **overrides: Any,
) -> GrowthPlan:
    """Decide how many channels each group gains from a per-layer NAGN profile.

    Args:
        profile: ``{layer: NAGN}`` (``NAGNMonitor.profile()``); layers of ``graph``.
        graph: ``netsurgeon.trace(model)`` at the current widths; pass the same graph to
            ``netsurgeon.widen(model, plan.increments, graph=graph)``.
        monotone_groups: chains of group names for the non-decreasing constraint; default
            ``[backbone_chain(graph)]``.
        settings: the rule's settings (:class:`~netsurgeon.nagn.settings.PlannerSettings`),
            the group readings among them: ``combine`` (the group statistic: ``"rms"``,
            ``"max"`` or ``"mean"``) and ``neighbourhood_order`` (``"graph"``: the groups a
            group reads and is read by, or ``"depth"``: groups in depth order as a chain).
        **overrides: settings by name, on top of ``settings``.

    Returns:
        A :class:`GrowthPlan` with one row per profiled group (``rows[i].name`` is the group's
        name) and ``plan.groups`` holding each group's per-producer NAGN.

    Raises:
        ConfigError: an unknown or bad setting.
        PlanError: a profiled name is not a layer of ``graph``, or a monotone group naming a
            group that is not profiled.

    Example:
        >>> import torch, netsurgeon
        >>> from netsurgeon.models import resnet
        >>> model = resnet((4, 8, 8), blocks=1)
        >>> graph = netsurgeon.trace(model)
        >>> profile = {name: 1.0 for name in graph.layers}
        >>> profile["stages.1.0.conv1"] = 3.0                    # one block interior starves
        >>> plan_group_growth(profile, graph).increments
        {'stages.1.0.conv1': 8}
    """
    chosen = (settings or PlannerSettings()).updated(**overrides)
    _check_inputs(profile, {name: 1 for name in profile})  # NAGN values: finite, >= 0
    records = group_profile(profile, graph, chosen.combine)
    nodes = group_nodes(records, chosen.neighbourhood_order)
    chains = None
    if chosen.monotone:
        chains = _monotone_chains(graph, nodes.names, monotone_groups)
    return decide(nodes, chosen, chains, on_groups=True, groups=records)


def group_nodes(records: Sequence[GroupNAGN], neighbourhood_order: str) -> Nodes:
    """The decision rule's nodes for ``records`` (one per group, in depth order): unwidenable
    groups never grow; neighbours on the group graph (``"graph"``) or a chain (``"depth"``)."""
    names = tuple(r.name for r in records)
    index = {name: i for i, name in enumerate(names)}
    if neighbourhood_order == "graph":
        before = [[index[b] for b in r.before] for r in records]
        after = [[index[a] for a in r.after] for r in records]
    else:
        before, after = chain_neighbours(len(records))
    return Nodes(
        names=names,
        nagn=tuple(r.nagn for r in records),
        widths=tuple(r.width for r in records),
        outputs=frozenset(r.name for r in records if not r.widenable),
        before=tuple(tuple(b) for b in before),
        after=tuple(tuple(a) for a in after),
        granularity=tuple(r.granularity for r in records),
    )


def _monotone_chains(
    graph: LayerGraph, names: Sequence[str], monotone_groups: Iterable[Iterable[str]] | None
) -> tuple[tuple[str, ...], ...]:
    """The chains of the non-decreasing constraint: ``monotone_groups`` checked against the
    group names, or the graph's backbone chain."""
    if monotone_groups is None:
        present = set(names)
        chain = tuple(name for name in backbone_chain(graph) if name in present)
        return (chain,) if chain else ()
    try:
        return _check_groups(monotone_groups, names)
    except PlanError as e:
        raise PlanError(f"{e} (group planner: name groups by group name)") from e
