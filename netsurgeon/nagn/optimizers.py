"""Which optimizers growth carries faithfully, and the warning when it may not.

``widen(..., optimizer=)`` pads every per-parameter state tensor of the parameter's shape and
keeps scalars (docs/widen.md). That policy is tested for the classes in
:data:`KNOWN_OPTIMIZERS`; any other optimizer works if its state follows the same pattern, and
fails at the growth (``WidenError``) if it keeps state of another shape. An optimizer the grower
is not given at all is the silent case: the model grows, and the next ``step()`` of the user's
momentum optimizer fails with a shape error. The grower warns about both at construction.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from netsurgeon.errors import NetsurgeonWarning

__all__ = ["KNOWN_OPTIMIZERS", "optimizer_is_known", "warn_about_optimizer"]

#: Optimizer classes whose state carrying is covered by netsurgeon's tests (docs/widen.md).
#: Subclasses do not count: they may keep state of their own that ``widen`` does not know.
KNOWN_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Rprop,
)


def optimizer_is_known(optimizer: torch.optim.Optimizer | None) -> bool:
    """Whether ``optimizer`` is one of :data:`KNOWN_OPTIMIZERS` (exact class)."""
    return optimizer is not None and type(optimizer) in KNOWN_OPTIMIZERS


def warn_about_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, *, stacklevel: int = 2
) -> None:
    """Warn (:class:`~netsurgeon.errors.NetsurgeonWarning`) when growth will not carry the state
    of the optimizer that trains ``model`` faithfully: none given, a class the tests do not
    cover, or an optimizer that holds none of the model's parameters."""
    if optimizer is None:
        warnings.warn(
            "Grower has no optimizer: growth will not carry any optimizer state. If this model "
            "is trained with an optimizer, pass it (Grower(model, optimizer, ...)); otherwise, "
            "after the first growth, an optimizer with per-parameter state (momentum, Adam) "
            "fails at its next step() with a shape mismatch. Every GrowthEvent records "
            "optimizer=None.",
            NetsurgeonWarning,
            stacklevel=stacklevel + 1,
        )
        return
    if not optimizer_is_known(optimizer):
        warnings.warn(
            f"Grower got a {type(optimizer).__name__} optimizer, which netsurgeon's tests do not "
            "cover: at each growth, its per-parameter state tensors of the parameter's shape are "
            "padded with zeros and scalar state is kept; state of any other shape makes the "
            "growth fail (WidenError). Tested: "
            f"{', '.join(c.__name__ for c in KNOWN_OPTIMIZERS)}. Events record "
            "optimizer_known=False.",
            NetsurgeonWarning,
            stacklevel=stacklevel + 1,
        )
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in held for p in model.parameters()):
        warnings.warn(
            f"the {type(optimizer).__name__} given to Grower holds none of the model's "
            "parameters; pass the optimizer that trains this model.",
            NetsurgeonWarning,
            stacklevel=stacklevel + 1,
        )
