"""Checks of the planner's inputs, and the names of its readings (the settings themselves are
checked by :class:`~netsurgeon.nagn.settings.PlannerSettings`).

Shared by the per-layer planner (:mod:`netsurgeon.nagn.planner`) and the group planner
(:mod:`netsurgeon.nagn.group_planner`); each failure raises :class:`~netsurgeon.errors.PlanError`
naming the value, what was expected and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from netsurgeon.errors import PlanError

__all__ = ["DEFAULT_MAX_STEP", "DRAG_LIMITS", "FALLBACKS", "SCORES"]

Fallback = Literal["fraction", "unit", "none"]
FALLBACKS: tuple[str, ...] = ("fraction", "unit", "none")

#: Default per-step cap on added units (Delta_max); see docs/nagn.md for the reasoning.
DEFAULT_MAX_STEP = 32

Score = Literal["normalised", "damped", "excess"]
SCORES: tuple[str, ...] = ("normalised", "damped", "excess")
DragLimit = Literal["step", "double", "none"]
DRAG_LIMITS: tuple[str, ...] = ("step", "double", "none")


# ----------------------------------------------------------------------------- checks


def _check_inputs(
    profile: Mapping[str, float], widths: Mapping[str, int]
) -> tuple[list[str], list[float], list[int]]:
    if not isinstance(profile, Mapping) or not isinstance(widths, Mapping):
        raise PlanError(
            "profile and widths must be mappings {layer: value}; found "
            f"{type(profile).__name__} and {type(widths).__name__}."
        )
    names = list(profile)
    if not names:
        raise PlanError("profile is empty: expected one NAGN value per layer, found none.")
    if set(names) != set(widths):
        missing = [n for n in names if n not in widths]
        extra = [n for n in widths if n not in profile]
        raise PlanError(
            "profile and widths name different layers: "
            f"missing from widths {missing}, missing from profile {extra}. "
            "Pass both for the same layers (e.g. monitor.profile() and graph.widths())."
        )
    values: list[float] = []
    for name in names:
        v = profile[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise PlanError(
                f"NAGN of layer {name!r} must be a finite number >= 0; found {v!r}. "
                "A nan usually means the layer received no gradient while the monitor collected."
            )
        values.append(float(v))
    ints: list[int] = []
    for name in names:
        w = widths[name]
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise PlanError(f"width of layer {name!r} must be an int >= 1; found {w!r}.")
        ints.append(w)
    return names, values, ints


def _check_groups(
    groups: Iterable[Iterable[str]], names: Sequence[str]
) -> tuple[tuple[str, ...], ...]:
    index = {n: i for i, n in enumerate(names)}
    seen: set[str] = set()
    out = []
    for group in groups:
        if isinstance(group, str):
            raise PlanError(
                f"monotone_groups must be a sequence of sequences of layer names; found the "
                f"string {group!r} as a group. Wrap it: [[{group!r}, ...]]."
            )
        group = tuple(group)
        for name in group:
            if name not in index:
                raise PlanError(
                    f"monotone group names layer {name!r}, which is not in the profile "
                    f"(layers: {list(names)})."
                )
            if name in seen:
                raise PlanError(f"layer {name!r} appears in more than one monotone group.")
            seen.add(name)
        order = [index[n] for n in group]
        if order != sorted(order):
            raise PlanError(
                f"monotone group {list(group)} is not in profile (depth) order; "
                "list its layers from input to output."
            )
        out.append(group)
    return tuple(out)
