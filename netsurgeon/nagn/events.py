"""``GrowthEvent``: the record of one growth."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from netsurgeon.cost import CostPreview
from netsurgeon.nagn.plan import GrowthPlan

__all__ = ["GrowthEvent"]


@dataclass(frozen=True)
class GrowthEvent:
    """One growth: when, why (the NAGN profile and the planner's record) and what changed.

    Attributes:
        epoch: the epoch (1-based count of ``step`` calls) at whose end the model grew.
        window_accuracy: mean validation accuracy of the window that triggered.
        where: the criterion that spread the budget.
        profile: NAGN per layer during the epoch (every producer of a stream has its own value;
            ``plan.groups`` has the combined ones).
        plan: the planner's record (its increments are the NAGN plan's; ``plan.cost`` is their
            cost when they were applied as planned, else ``None``: ``cost`` is what was applied).
        increments: units actually added per channel group, keyed by group name (its first
            producer; a VGG's layer names), equal to the plan's for ``"nagn"`` within the caps.
        widths_before, widths_after: layer widths.
        params_before, params_after: parameter counts.
        optimizer: class name of the optimizer whose state was carried, ``None`` when the grower
            has none (a momentum or Adam optimizer the grower does not know about then fails at
            its next ``step()``).
        optimizer_known: the optimizer is one of :data:`netsurgeon.nagn.optimizers.KNOWN_OPTIMIZERS`.
        requested: the increments before the caps of ``GrowthConfig`` (``max_width``,
            ``max_params``, ``max_flops``).
        limited_by: the caps that cut ``requested`` down to ``increments``; empty if none did.
        cost: widths, parameters and FLOPs before and after, per layer
            (:class:`~netsurgeon.cost.CostPreview`; FLOPs when the grower has example inputs).
    """

    epoch: int
    window_accuracy: float
    where: str
    profile: dict[str, float]
    plan: GrowthPlan
    increments: dict[str, int]
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    params_before: int
    params_after: int
    optimizer: str | None = None
    optimizer_known: bool = False
    requested: dict[str, int] = field(default_factory=dict)
    limited_by: tuple[str, ...] = ()
    cost: CostPreview | None = None

    def summary(self) -> str:
        """One line: what grew, why, and what it cost (the grower logs it)."""
        cost = self.cost
        flops = (
            ""
            if cost is None or cost.flops_before is None
            else f", FLOPs {cost.flops_before:,} -> {cost.flops_after:,}"
        )
        cut = (
            f"; cut from {self.requested} by {', '.join(self.limited_by)}"
            if self.limited_by
            else ""
        )
        return (
            f"grow {self.increments} (where={self.where}, rule={self.plan.rule}): params "
            f"{self.params_before:,} -> {self.params_after:,}{flops}{cut}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["plan"] = self.plan.to_dict()
        out["limited_by"] = list(self.limited_by)
        out["cost"] = None if self.cost is None else self.cost.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GrowthEvent:
        """Inverse of :meth:`to_dict`; records written before the later fields load too."""
        cost = data.get("cost")
        return cls(
            **{
                **data,
                "plan": GrowthPlan.from_dict(data["plan"]),
                "limited_by": tuple(data.get("limited_by", ())),
                "cost": None if cost is None else CostPreview.from_dict(cost),
            }
        )
