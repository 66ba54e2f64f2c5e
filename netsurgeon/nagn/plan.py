"""Records of a growth plan: one :class:`LayerPlan` row per layer inside a :class:`GrowthPlan`.

The decision rule (:mod:`netsurgeon.nagn.decision`) fills them; the grower, the benchmark's reports and
checkpoints read them back (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from netsurgeon.nagn.checks import DEFAULT_MAX_STEP
from netsurgeon.nagn.groups import GroupNAGN
from netsurgeon.nagn.settings import PLANNER_FIELDS, PlannerSettings

if TYPE_CHECKING:
    from netsurgeon.cost import CostPreview

__all__ = ["GrowthPlan", "LayerPlan"]


@dataclass(frozen=True)
class LayerPlan:
    """One layer's row of a :class:`GrowthPlan`.

    Attributes:
        name: qualified module name.
        width: width ``n_l`` before growth.
        nagn: ``NAGN_l``.
        neighbour: neighbourhood mean ``g~_l`` actually used for the contrast.
        neighbour_rule: ``"interior"``, ``"extrapolated"``, ``"adjacent"`` (end layer whose
            extrapolation was <= 0, or ``end_rule="adjacent"``), ``"end-none"`` (end layer under
            ``end_rule="none"``: ``r = 0``), ``"single"`` (one-layer profile) or ``"zero"``
            (neighbourhood mean is 0: no evidence, ``r = 0``).
        extrapolated: the raw extrapolation for end layers (may be <= 0), else ``None``.
        contrast: relative contrast ``r_l``.
        excess: ``p_l = max(r_l - tau, 0)``.
        score: ``s_l`` in [0, 1] (0 for output layers and under the fallback).
        raw_increment: ``dn_l`` from the contrast rule or the fallback, before the constraint.
        increment: final ``dn_l`` after the non-decreasing constraint.
        is_output: output layer (never grows).
        adjusted: the non-decreasing constraint raised this layer's increment.
    """

    name: str
    width: int
    nagn: float
    neighbour: float
    neighbour_rule: str
    extrapolated: float | None
    contrast: float
    excess: float
    score: float
    raw_increment: int
    increment: int
    is_output: bool
    adjusted: bool


@dataclass(frozen=True)
class GrowthPlan:
    """What the planner decided and why: the settings, one :class:`LayerPlan` per layer, the rule.

    Attributes:
        rows: one row per layer, in profile (depth) order.
        rule: ``"contrast"`` (some growable layer cleared ``tau``), ``"fallback:<name>"``, or
            ``"no growable layers"``.
        median_slope: ``m`` used by the end-layer extrapolation (``nan`` for one layer).
        max_excess: ``max_j p_j`` over growable layers.
        settings: the :class:`~netsurgeon.nagn.settings.PlannerSettings` the plan was made
            with, as used: a per-layer plan records ``combine`` at its default and
            ``neighbourhood_order="depth"`` (a chain). ``plan.tau``, ``plan.score``, ... read
            them; ``plan.combine`` is ``None`` for a per-layer plan.
        monotone_groups: the layer groups the constraint was applied to.
        on_groups: the rows are channel groups (:func:`netsurgeon.nagn.plan_group_growth`),
            not layers.
        groups: for a group plan, each group's record (:class:`~netsurgeon.nagn.groups.GroupNAGN`:
            per-producer NAGN, granularity, neighbours), in row order; ``()`` otherwise.
        cost: what applying ``increments`` costs (widths, parameters and FLOPs before and after,
            a :class:`~netsurgeon.cost.CostPreview`), when attached with :meth:`with_cost`
            (the grower does); ``None`` otherwise.

    The dict form (:meth:`to_dict`) keeps the settings flat (``"tau"``, ..., ``"combine"``:
    ``None`` for a per-layer plan), as every record since the first; records written before a
    setting existed read back with its default, which is what they were planned with.
    """

    rows: tuple[LayerPlan, ...]
    rule: str
    median_slope: float
    max_excess: float
    settings: PlannerSettings = field(default_factory=PlannerSettings)
    monotone_groups: tuple[tuple[str, ...], ...] = field(default=())
    on_groups: bool = False
    groups: tuple[GroupNAGN, ...] = ()
    cost: CostPreview | None = None

    # -- the settings, read through (records and reports read them flat) ---------------------
    @property
    def tau(self) -> float:
        """The contrast threshold the plan used."""
        return self.settings.tau

    @property
    def max_step(self) -> int | None:
        """The per-step cap the plan used."""
        return self.settings.max_step

    @property
    def monotone(self) -> bool:
        """Whether the non-decreasing constraint ran."""
        return self.settings.monotone

    @property
    def fallback(self) -> str:
        """The fallback rule the plan used."""
        return self.settings.fallback

    @property
    def fallback_fraction(self) -> float:
        """The fallback fraction the plan used."""
        return self.settings.fallback_fraction

    @property
    def neighbourhood(self) -> str:
        """``"arithmetic"`` or ``"geometric"``."""
        return self.settings.neighbourhood

    @property
    def end_rule(self) -> str:
        """The end layers' neighbourhood."""
        return self.settings.end_rule

    @property
    def score(self) -> str:
        """The score reading."""
        return self.settings.score

    @property
    def drag_limit(self) -> str:
        """How far the constraint may raise a layer per step."""
        return self.settings.drag_limit

    @property
    def combine(self) -> str | None:
        """The group statistic of a group plan; ``None`` for a per-layer plan."""
        return self.settings.combine if self.on_groups else None

    @property
    def neighbourhood_order(self) -> str:
        """``"graph"`` or ``"depth"``; a per-layer plan is a depth chain."""
        return self.settings.neighbourhood_order if self.on_groups else "depth"

    def with_cost(self, cost: CostPreview) -> GrowthPlan:
        """This plan with ``cost`` attached (e.g. ``netsurgeon.preview(model, plan.increments,
        x)``); ``str(plan)`` then shows widths, parameters and FLOPs before and after."""
        return replace(self, cost=cost)

    @property
    def layers(self) -> list[str]:
        """Layer names in profile order."""
        return [row.name for row in self.rows]

    @property
    def increments(self) -> dict[str, int]:
        """``{layer: dn}`` for layers that grow (``dn > 0``), in depth order; ready for ``widen``."""
        return {row.name: row.increment for row in self.rows if row.increment > 0}

    @property
    def grows(self) -> bool:
        """Whether any layer grows."""
        return any(row.increment > 0 for row in self.rows)

    @property
    def profile(self) -> dict[str, float]:
        """The NAGN profile the plan was made from."""
        return {row.name: row.nagn for row in self.rows}

    @property
    def contrasts(self) -> dict[str, float]:
        """``{layer: r_l}`` for every layer, output layers included."""
        return {row.name: row.contrast for row in self.rows}

    @property
    def widths_before(self) -> dict[str, int]:
        """Widths the plan was made for."""
        return {row.name: row.width for row in self.rows}

    @property
    def widths_after(self) -> dict[str, int]:
        """Widths once the plan is applied."""
        return {row.name: row.width + row.increment for row in self.rows}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict with every setting and intermediate (non-finite floats as None)."""
        out = asdict(self)
        del out["settings"], out["on_groups"]
        out.update(self.settings.to_dict())
        out["combine"], out["neighbourhood_order"] = self.combine, self.neighbourhood_order
        out["monotone_groups"] = [list(g) for g in self.monotone_groups]
        out["increments"] = self.increments
        out["cost"] = None if self.cost is None else self.cost.to_dict()
        return _finite_or_none(out)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GrowthPlan:
        """Inverse of :meth:`to_dict` (``None`` floats come back as ``nan``); reads every record
        format written so far."""
        rows = tuple(
            LayerPlan(**{k: _nan_if_none(k, v) for k, v in row.items()}) for row in data["rows"]
        )
        cost = data.get("cost")
        if cost is not None:
            from netsurgeon.cost import CostPreview  # records stay importable without torch

            cost = CostPreview.from_dict(cost)
        on_groups = data.get("combine") is not None
        settings = {k: v for k, v in data.items() if k in PLANNER_FIELDS and v is not None}
        settings["max_step"] = data.get("max_step", DEFAULT_MAX_STEP)
        if not on_groups or "neighbourhood_order" not in data:
            settings["neighbourhood_order"] = "depth"  # a chain; the record format's default
        return cls(
            rows=rows,
            rule=data["rule"],
            median_slope=_nan_if_none("median_slope", data["median_slope"]),
            max_excess=_nan_if_none("max_excess", data["max_excess"]),
            settings=PlannerSettings.from_dict(settings),
            monotone_groups=tuple(tuple(g) for g in data.get("monotone_groups", ())),
            on_groups=on_groups,
            groups=tuple(_group_from_dict(g) for g in data.get("groups", ())),
            cost=cost,
        )

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(self.to_dict(), **kwargs)``."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        head = (
            f"GrowthPlan(rule={self.rule}, tau={self.tau:g}, max_step={self.max_step}, "
            f"monotone={self.monotone}, fallback={self.fallback}, m={self.median_slope:.4g}"
            + "".join(
                f", {name}={getattr(self, name)}"
                for name, default in _READING_DEFAULTS.items()
                if getattr(self, name) != default
            )
            + (
                f", groups: combine={self.combine}, order={self.neighbourhood_order}"
                if self.combine is not None
                else ""
            )
            + ")"
        )
        first = "layer" if self.combine is None else "group"
        cols = (first, "n", "NAGN", "nbr", "how", "r", "p", "s", "dn0", "dn")
        cost_cols = ("n'", "params", "params'", "FLOPs", "FLOPs'") if self.cost else ()
        cols = (*cols, *cost_cols, "")
        lines = [
            (
                row.name,
                str(row.width),
                f"{row.nagn:.4g}",
                f"{row.neighbour:.4g}",
                row.neighbour_rule,
                f"{row.contrast:+.4f}",
                f"{row.excess:.4f}",
                f"{row.score:.3f}",
                str(row.raw_increment),
                str(row.increment),
                *self._cost_cells(row.name),
                ("output" if row.is_output else "") + (" monotone" if row.adjusted else ""),
            )
            for row in self.rows
        ]
        if self.cost is not None:
            total = self.cost.total
            lines.append(("total", *[""] * 9, *self._cost_cells(None, total), ""))
        widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(cols)]

        def fmt(cells: Sequence[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = (
                c.rjust(w) if i < len(cols) - 2 else c
                for i, (c, w) in enumerate(zip(cells[1:], widths[1:], strict=True))
            )
            return "  ".join([first, *rest]).rstrip()

        inside = [
            f"  {g.name}: {self.combine} of "
            + ", ".join(f"{name} {value:.4g}" for name, value in g.producers)
            for g in self.groups
            if len(g.producers) > 1
        ]
        return "\n".join([head, fmt(cols), *(fmt(line) for line in lines), *inside])

    def _cost_cells(self, name: str | None, row: Any = None) -> tuple[str, ...]:
        """The cost columns of layer ``name`` (or of ``row``): n', params, params', FLOPs, FLOPs'."""
        if self.cost is None:
            return ()
        if row is None:
            try:
                row = self.cost.row(name)
            except KeyError:
                return ("",) * 5

        def num(x: int | None) -> str:
            return "-" if x is None else f"{x:,}"

        return (
            str(row.width_after) if row.width_after else "",
            num(row.params_before),
            num(row.params_after),
            num(row.flops_before),
            num(row.flops_after),
        )


_READING_DEFAULTS = {
    "neighbourhood": "arithmetic",
    "end_rule": "extrapolate",
    "score": "normalised",
    "drag_limit": "step",
}
_FLOAT_FIELDS = frozenset(
    {"nagn", "neighbour", "contrast", "excess", "score", "median_slope", "max_excess"}
)


def _group_from_dict(data: Mapping[str, Any]) -> GroupNAGN:
    return GroupNAGN(
        **{
            **data,
            "nagn": _nan_if_none("nagn", data["nagn"]),
            "producers": tuple((name, _nan_if_none("nagn", v)) for name, v in data["producers"]),
            "before": tuple(data.get("before", ())),
            "after": tuple(data.get("after", ())),
        }
    )


def _nan_if_none(key: str, value: Any) -> Any:
    return math.nan if value is None and key in _FLOAT_FIELDS else value


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- math
