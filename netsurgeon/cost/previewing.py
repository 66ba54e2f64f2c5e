"""``preview``: what a widening will cost, before anything changes.

The preview stages the real widening on a shape-only copy of the model (:mod:`.meta`): it calls
the public ``netsurgeon.widen`` on that copy, so it refuses exactly what ``widen`` refuses and
agrees with it on every shape, whatever the graph decides to grow together. Parameters are
counted on the copy; forward FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``
on a forward pass of the copy with ``meta`` inputs (eval mode, no gradients), so they are the
numbers ``FlopCounterMode`` reports on the real model: matrix multiplications and convolutions,
two FLOPs per multiply-add; element-wise ops, norms and activations count zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from netsurgeon.cost.meta import meta_inputs, meta_model, meta_optimizer
from netsurgeon.graph import trace
from netsurgeon.guards import check_plain_module
from netsurgeon.surgery import InitStrategy, widen

__all__ = ["CostPreview", "LayerCost", "count_flops", "preview"]


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


def preview(
    model: nn.Module,
    plan: Mapping[str, int],
    example_inputs: Any = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    init: str | InitStrategy = "paper",
) -> CostPreview:
    """Widths, parameters and forward FLOPs before and after ``widen(model, plan)``; changes nothing.

    Args:
        model: the user's model (not modified; no RNG is consumed).
        plan: ``{layer name: units to add}``, as for ``netsurgeon.widen``.
        example_inputs: a tensor or tuple of forward arguments (any device; only shapes and
            dtypes are used) for the FLOP count; ``None`` skips FLOPs.
        optimizer: checked as ``widen(..., optimizer=)`` would check it (e.g. factored state).
        init: checked as ``widen(..., init=)`` would check it.

    Returns:
        A :class:`CostPreview`; ``print`` it for a table.

    Raises:
        WidenError, TypeError, ValueError: exactly what ``widen(model, plan, optimizer=,
            init=)`` would raise; the model is untouched either way.
        RuntimeError: the forward pass on meta tensors failed (data-dependent control flow);
            pass ``example_inputs=None`` to preview without FLOPs.

    Example:
        >>> import torch, torch.nn as nn, netsurgeon
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> cost = netsurgeon.preview(net, {"0": 4}, torch.randn(1, 4))
        >>> cost.params_before, cost.params_after, cost.flops_before, cost.flops_after
        (58, 86, 96, 144)
        >>> net[0].out_features   # unchanged
        8
    """
    check_plain_module(model, "preview")
    twin, tensors = meta_model(model)
    stand_in = None if optimizer is None else _stand_in(optimizer, tensors)
    inputs = None if example_inputs is None else meta_inputs(example_inputs)
    widths_before = trace(twin, strict=False).widths()
    layers = list(widths_before)
    params_before = _layer_params(twin, layers)
    flops_before = None if inputs is None else count_flops(twin, inputs, layers)
    total_before = _count(twin)
    # A private generator: no global RNG state is consumed, and the values do not matter on meta.
    widen(twin, plan, optimizer=stand_in, generator=torch.Generator(), init=init)
    widths_after = trace(twin, strict=False).widths()
    params_after = _layer_params(twin, layers)
    flops_after = None if inputs is None else count_flops(twin, inputs, layers)
    rows = tuple(
        LayerCost(
            name,
            widths_before[name],
            widths_after[name],
            params_before[name],
            params_after[name],
            None if flops_before is None else flops_before[1][name],
            None if flops_after is None else flops_after[1][name],
        )
        for name in layers
    )
    return CostPreview(
        plan={name: int(k) for name, k in plan.items()},
        layers=rows,
        params_before=total_before,
        params_after=_count(twin),
        flops_before=None if flops_before is None else flops_before[0],
        flops_after=None if flops_after is None else flops_after[0],
        inputs=None if inputs is None else _describe(inputs),
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
