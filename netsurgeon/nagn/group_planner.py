"""The planner on channel groups: section 3 of the paper where ``widen`` works, per group.

:func:`plan_group_growth` runs the per-layer planner's math (:func:`netsurgeon.nagn.planner.decide`)
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

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from netsurgeon.errors import PlanError
from netsurgeon.nagn.checks import (
    DEFAULT_MAX_STEP,
    DragLimit,
    Fallback,
    Score,
    _check_groups,
    _check_inputs,
    _check_readings,
    _check_settings,
)
from netsurgeon.nagn.contrast import EndRule, Neighbourhood, chain_neighbours
from netsurgeon.nagn.groups import (
    COMBINES,
    NEIGHBOURHOOD_ORDERS,
    Combine,
    NeighbourhoodOrder,
    _check_choice,
    backbone_chain,
    group_profile,
)
from netsurgeon.nagn.plan import GrowthPlan
from netsurgeon.nagn.planner import decide

if TYPE_CHECKING:
    from netsurgeon.graph import LayerGraph

__all__ = ["plan_group_growth"]


def plan_group_growth(
    profile: Mapping[str, float],
    graph: LayerGraph,
    *,
    combine: Combine = "rms",
    neighbourhood_order: NeighbourhoodOrder = "graph",
    tau: float = 0.05,
    max_step: int | None = DEFAULT_MAX_STEP,
    monotone: bool = True,
    monotone_groups: Iterable[Iterable[str]] | None = None,
    fallback: Fallback = "fraction",
    fallback_fraction: float = 0.125,
    neighbourhood: Neighbourhood = "arithmetic",
    end_rule: EndRule = "extrapolate",
    score: Score = "normalised",
    drag_limit: DragLimit = "step",
) -> GrowthPlan:
    """Decide how many channels each group gains from a per-layer NAGN profile.

    Args:
        profile: ``{layer: NAGN}`` (``NAGNMonitor.profile()``); layers of ``graph``.
        graph: ``netsurgeon.trace(model)`` at the current widths; pass the same graph to
            ``netsurgeon.widen(model, plan.increments, graph=graph)``.
        combine: the group statistic: ``"rms"`` (default), ``"max"`` or ``"mean"``.
        neighbourhood_order: ``"graph"`` (default: the groups a group reads and is read by) or
            ``"depth"`` (groups in depth order as a chain).
        monotone_groups: chains of group names for the non-decreasing constraint; default
            ``[backbone_chain(graph)]``.
        tau, max_step, monotone, fallback, fallback_fraction, neighbourhood, end_rule, score,
            drag_limit: as :func:`netsurgeon.nagn.plan_growth`.

    Returns:
        A :class:`GrowthPlan` with one row per profiled group (``rows[i].name`` is the group's
        name) and ``plan.groups`` holding each group's per-producer NAGN.

    Raises:
        PlanError: a profiled name is not a layer of ``graph``, a bad setting, or a monotone
            group naming a group that is not profiled.

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
    _check_settings(tau, max_step, fallback, fallback_fraction)
    _check_readings(neighbourhood, end_rule, score, drag_limit)
    _check_choice("combine", combine, COMBINES)
    _check_choice("neighbourhood_order", neighbourhood_order, NEIGHBOURHOOD_ORDERS)
    _check_inputs(profile, {name: 1 for name in profile})  # NAGN values: finite, >= 0
    records = group_profile(profile, graph, combine)
    names = [r.name for r in records]
    index = {name: i for i, name in enumerate(names)}
    if neighbourhood_order == "graph":
        before = [[index[b] for b in r.before] for r in records]
        after = [[index[a] for a in r.after] for r in records]
    else:
        before, after = chain_neighbours(len(records))
    groups = None
    if monotone:
        if monotone_groups is None:
            chain = tuple(name for name in backbone_chain(graph) if name in index)
            groups = (chain,) if chain else ()
        else:
            try:
                groups = _check_groups(monotone_groups, names)
            except PlanError as e:
                raise PlanError(f"{e} (group planner: name groups by group name)") from e
    return decide(
        names,
        [r.nagn for r in records],
        [r.width for r in records],
        frozenset(r.name for r in records if not r.widenable),
        before,
        after,
        groups,
        tau=tau,
        max_step=max_step,
        fallback=fallback,
        fallback_fraction=fallback_fraction,
        neighbourhood=neighbourhood,
        end_rule=end_rule,
        score=score,
        drag_limit=drag_limit,
        granularity=[r.granularity for r in records],
        combine=combine,
        neighbourhood_order=neighbourhood_order,
        groups=records,
    )
