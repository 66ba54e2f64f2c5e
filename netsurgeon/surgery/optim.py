"""Carrying optimizer state across a widening.

Policy: every per-parameter state tensor with the parameter's old shape (AdamW ``exp_avg``,
``exp_avg_sq``, ``max_exp_avg_sq``; SGD ``momentum_buffer``; RMSprop ``square_avg``; Adagrad
``sum``; ...) is embedded in a zero tensor of the new shape: old slices bit-identical, grown
slices zero. Scalars (``step``) are untouched. The parameter objects themselves do not change,
so ``param_groups`` need no edit and foreach/fused implementations keep working.

Consequence for Adam-family optimizers: a new coordinate starts with ``exp_avg = exp_avg_sq = 0``
but the shared ``step`` is already large, so its bias correction is ~1 and its first update is
``lr * g / (sqrt(1 - beta2) * |g| + eps)``-like, i.e. ``(1 - beta1) / sqrt(1 - beta2) ~ 3.16x``
``lr`` in magnitude for the default betas, against ``lr`` for a fresh parameter at step 1.
``docs/widen.md`` records the measurement.
"""

from __future__ import annotations

import torch

from netsurgeon.errors import WidenError
from netsurgeon.surgery.tensors import embed

__all__ = ["grown_state"]


def grown_state(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, new_shape: tuple[int, ...], name: str
) -> dict[str, torch.Tensor]:
    """The replacement state tensors of ``param`` for ``new_shape`` (nothing is modified).

    Args:
        optimizer: holds the state.
        param: a parameter about to grow from ``param.shape`` to ``new_shape``.
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
        grown[key] = embed(value, new_shape)
    return grown
