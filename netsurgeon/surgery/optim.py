"""Carrying optimizer state across a widening.

Policy: every per-parameter state tensor with the parameter's old shape (AdamW ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``; SGD ``momentum_buffer``; RMSprop ``square_avg``; Adagrad
``sum``; ...) is grown with the parameter's own insertions: old entries bit-identical, new entries
holding the value a fresh optimizer starts from (zero, except Rprop's ``step_size``, which starts
at the group's ``lr``, and Adagrad's ``sum``, at ``initial_accumulator_value``). Scalars
(``step``) are untouched. The parameter objects themselves do not change, so ``param_groups``
need no edit and foreach/fused implementations keep working.

Consequence for Adam-family optimizers: a new coordinate starts with ``exp_avg = exp_avg_sq = 0``
but shares the step count ``t``, so its first update gets the bias corrections of step ``t + 1``:
``|delta| = lr * (1 - b1) / (1 - b1^(t+1)) * sqrt((1 - b2^(t+1)) / (1 - b2))`` (eps ignored),
against ``lr`` for a fresh parameter at step 1. With the default betas that is 0.98x at
``t = 100``, 2.5x at ``t = 1000`` and tends to ``(1 - b1) / sqrt(1 - b2) = 3.16x``: the b2
correction takes thousands of steps to reach 1. ``docs/widen.md`` records the measurement
(``benchmarks/adam_new_units.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from netsurgeon.errors import WidenError
from netsurgeon.graph import Insertion
from netsurgeon.surgery.index import grow

__all__ = ["grown_state"]


def grown_state(
    optimizer: torch.optim.Optimizer,
    param: torch.Tensor,
    inserts: Mapping[int, Sequence[Insertion]],
    name: str,
) -> dict[str, torch.Tensor]:
    """The replacement state tensors of ``param`` for ``new_shape`` (nothing is modified).

    Args:
        optimizer: holds the state.
        param: a parameter about to grow.
        inserts: ``{dim: insertions}``, as for the parameter itself.
        name: the parameter's qualified name, for error messages.

    Returns:
        ``{state key: new tensor}`` for the keys that grow; other keys stay as they are.

    Raises:
        WidenError: a state tensor is neither scalar nor of the parameter's shape (a factored
            optimizer such as Adafactor), so there is no faithful way to grow it.
    """
    state = optimizer.state.get(param)
    if not state:
        return {}
    grown: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            continue
        if value.shape != param.shape:
            raise WidenError(
                f"optimizer state '{key}' of parameter '{name}' has shape {tuple(value.shape)}, "
                f"expected {tuple(param.shape)} or a scalar; {type(optimizer).__name__} keeps "
                "factored state that cannot be grown. Fix: widen without optimizer= and build a "
                "new optimizer afterwards."
            )
        grown[key] = grow(value, inserts, fill=_initial_value(optimizer, param, key))
    return grown


def _initial_value(optimizer: torch.optim.Optimizer, param: torch.Tensor, key: str) -> float:
    """The value a fresh ``optimizer`` gives state ``key`` of ``param`` (zero for most)."""
    if isinstance(optimizer, torch.optim.Rprop) and key == "step_size":
        return float(_group_of(optimizer, param)["lr"])
    if isinstance(optimizer, torch.optim.Adagrad) and key == "sum":
        return float(_group_of(optimizer, param)["initial_accumulator_value"])
    return 0.0


def _group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
