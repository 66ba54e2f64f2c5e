"""Restoring a grown model onto a freshly constructed instance of the user's original class.

No plan needs to be stored: a checkpoint's weight shapes say how wide each layer is. Loading
traces the fresh model, derives the plan ``{layer: checkpoint width - current width}``, widens
(staged, so a checkpoint that does not fit changes nothing), and then loads the values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from netsurgeon.errors import WidenError
from netsurgeon.graph import LayerGraph, trace
from netsurgeon.guards import check_plain_module
from netsurgeon.surgery.index import slots
from netsurgeon.surgery.init import PaperInit
from netsurgeon.surgery.widening import stage

__all__ = ["load_state_dict", "plan_from_state_dict"]


class _Placeholder(PaperInit):
    """Zero rows: the checkpoint's values overwrite them, and no random number is drawn. It fills
    every group, whatever its construction (a padded norm's ``eps`` is still rescaled)."""

    placeholder = True

    def fill_rows(self, weight, *, row_inserts, col_inserts, fan_in, sources, generator):
        for at, ins in slots(row_inserts):
            weight.narrow(0, at, ins.count).zero_()

    def fill_entries(self, tensor, *, dim, index_map, inserts, fill, sources, generator):
        if fill is not None:
            super().fill_entries(
                tensor,
                dim=dim,
                index_map=index_map,
                inserts=inserts,
                fill=fill,
                sources=sources,
                generator=generator,
            )


def plan_from_state_dict(
    model: nn.Module, state_dict: Mapping[str, Any], *, example_inputs: Any = None
) -> dict[str, int]:
    """``{layer: units to add}`` that makes ``model``'s layers as wide as in ``state_dict``.

    Raises:
        WidenError: a layer is wider in the model than in the checkpoint (surgery never shrinks).
    """
    return _plan(trace(model, example_inputs, strict=False), state_dict)


def _plan(graph: LayerGraph, state_dict: Mapping[str, Any]) -> dict[str, int]:
    plan: dict[str, int] = {}
    for name, width in graph.widths().items():
        module = graph.module(name)
        axis = graph.handler(name).rows(module)[0]  # the weight, as the layer's handler lays it out
        weight = state_dict.get(f"{name}.{axis.tensor}")
        if not isinstance(weight, torch.Tensor) or weight.dim() <= axis.dim:
            continue
        found = int(weight.shape[axis.dim])
        diff = found - width
        if diff < 0:
            raise WidenError(
                f"layer '{name}' has {width} units but the checkpoint has {found} (dim "
                f"{axis.dim} of '{name}.{axis.tensor}'); netsurgeon only widens. Load into a "
                "model built with the checkpoint's widths."
            )
        if diff:  # a grouped-query q projection holds g rows per channel of its group
            plan[name] = diff // graph.group_of(name).rows_per_channel(name)
    return plan


def load_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    *,
    strict: bool = True,
    example_inputs: Any = None,
) -> nn.Module:
    """Widen ``model`` to the checkpoint's widths, then load it (like ``nn.Module.load_state_dict``).

    Build the optimizer on ``model`` before or after this call and load its state dict
    afterwards: the parameters are the same objects, now of the checkpoint's shapes. Pass the
    same ``example_inputs`` as to ``widen`` when the model needs them (a BatchNorm1d after a
    flatten). No random number is drawn: the global RNG state is left as it was.

    Raises:
        WidenError: the checkpoint does not fit (a narrower layer, a shape the widening cannot
            produce); the model is unchanged.

    Example:
        >>> import torch.nn as nn, netsurgeon
        >>> make = lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> grown = netsurgeon.widen(make(), {"0": 3})
        >>> fresh = netsurgeon.load_state_dict(make(), grown.state_dict())
        >>> fresh[0].out_features
        11
    """
    check_plain_module(model, "load_state_dict")
    graph = trace(model, example_inputs, strict=False)
    plan = _plan(graph, state_dict)
    if strict:  # before anything changes: torch's own strict load raises only after copying
        _check_keys(model, state_dict)
    if not plan:
        model.load_state_dict(state_dict, strict=strict)
        return model
    surgery = stage(graph, plan, _Placeholder())
    current = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    current.update(surgery.new_shapes())
    for key, shape in current.items():
        value = state_dict.get(key)
        if isinstance(value, torch.Tensor) and tuple(value.shape) != shape:
            raise WidenError(
                f"after widening to the checkpoint's widths, '{key}' would be {shape} but the "
                f"checkpoint has {tuple(value.shape)}; the checkpoint was not produced by "
                "widening this model"
            )
    surgery.commit(None)
    model.load_state_dict(state_dict, strict=strict)
    return model


def _check_keys(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """A strict load's key check (widening changes shapes, never keys)."""
    keys = set(model.state_dict())
    missing, unexpected = keys - set(state_dict), set(state_dict) - keys
    if missing or unexpected:
        raise WidenError(
            f"the checkpoint does not match {type(model).__name__}: missing keys "
            f"{sorted(missing)}, unexpected keys {sorted(unexpected)}. Fix: load a checkpoint "
            "of this model class, or pass strict=False."
        )
