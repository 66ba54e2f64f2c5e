"""The records of a cost preview: :class:`CostPreview` and its rows, :class:`LayerCost`.

Plain data (JSON round trip with ``to_dict``/``from_dict``) and a printable table; how the numbers
are measured is :mod:`netsurgeon.cost.baseline`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CostPreview", "LayerCost"]


@dataclass(frozen=True)
class LayerCost:
    """One width-owning layer of a :class:`CostPreview` (or the ``(other)`` / ``total`` rows).

    Attributes:
        name: qualified module name.
        width_before, width_after: output units (0 for the summary rows).
        params_before, params_after: parameters of the layer module itself (weight and bias).
        flops_before, flops_after: forward FLOPs inside the layer module; ``None`` without inputs.
    """

    name: str
    width_before: int
    width_after: int
    params_before: int
    params_after: int
    flops_before: int | None
    flops_after: int | None

    @property
    def changed(self) -> bool:
        """Whether the widening changes this row."""
        return (self.width_before, self.params_before, self.flops_before) != (
            self.width_after,
            self.params_after,
            self.flops_after,
        )


@dataclass(frozen=True)
class CostPreview:
    """Widths, parameters and forward FLOPs of a model before and after a widening plan.

    Attributes:
        plan: the plan previewed, ``{layer: units}``.
        layers: one :class:`LayerCost` per width-owning layer (``netsurgeon.trace(model).layers``).
        params_before, params_after: parameters of the whole model (shared ones counted once).
        flops_before, flops_after: forward FLOPs of the whole model on ``inputs``, or ``None``.
        inputs: shapes of the example inputs the FLOPs were counted on, or ``None``.
    """

    plan: dict[str, int]
    layers: tuple[LayerCost, ...]
    params_before: int
    params_after: int
    flops_before: int | None
    flops_after: int | None
    inputs: str | None

    @property
    def widths_before(self) -> dict[str, int]:
        return {row.name: row.width_before for row in self.layers}

    @property
    def widths_after(self) -> dict[str, int]:
        return {row.name: row.width_after for row in self.layers}

    @property
    def other(self) -> LayerCost:
        """Everything outside the layer modules (norms, followers; pooling is 0 FLOPs)."""

        def rest(total: int | None, parts: list[int | None]) -> int | None:
            return None if total is None else total - sum(p or 0 for p in parts)

        return LayerCost(
            "(other)",
            0,
            0,
            rest(self.params_before, [r.params_before for r in self.layers]) or 0,
            rest(self.params_after, [r.params_after for r in self.layers]) or 0,
            rest(self.flops_before, [r.flops_before for r in self.layers]),
            rest(self.flops_after, [r.flops_after for r in self.layers]),
        )

    @property
    def total(self) -> LayerCost:
        return LayerCost(
            "total",
            0,
            0,
            self.params_before,
            self.params_after,
            self.flops_before,
            self.flops_after,
        )

    def row(self, name: str) -> LayerCost:
        """The row of layer ``name``."""
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(
            f"no layer {name!r} in this preview; layers: {[r.name for r in self.layers]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable."""
        return asdict(self) | {"layers": [asdict(r) for r in self.layers]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostPreview:
        """Inverse of :meth:`to_dict`."""
        return cls(
            **{**data, "plan": dict(data["plan"])}
            | {"layers": tuple(LayerCost(**row) for row in data["layers"])}
        )

    def __str__(self) -> str:
        head = f"CostPreview(plan={self.plan}, inputs={self.inputs})"
        cols = ("layer", "width", "", "params", "", "FLOPs", "")
        lines = [cols]
        for row in (*self.layers, self.other, self.total):
            lines.append(
                (
                    row.name,
                    *(_pair(row.width_before, row.width_after) if row.width_before else ("", "")),
                    *_pair(row.params_before, row.params_after),
                    *_pair(row.flops_before, row.flops_after),
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(cols))]
        out = [head]
        for line in lines:
            cells = [line[0].ljust(widths[0])]
            cells += [
                c.rjust(w) if i % 2 == 0 else c.ljust(w)
                for i, (c, w) in enumerate(zip(line[1:], widths[1:], strict=True))
            ]
            out.append("  ".join(cells).rstrip())
        return "\n".join(out)


def _pair(before: int | None, after: int | None) -> tuple[str, str]:
    if before is None or after is None:
        return "-", ""
    if before == after:
        return f"{before:,}", ""
    return f"{before:,}", f"-> {after:,} (x{after / before:.2f})" if before else f"-> {after:,}"
