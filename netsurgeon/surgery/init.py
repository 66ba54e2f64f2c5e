"""Initialisation strategies for new units: how grown rows, columns and channels are filled.

Every strategy preserves the model's output exactly. A producer of width ``n`` gains ``k`` units;
each consumer reading it with multiplicity ``m`` gains ``k*m`` input columns; followers gain
``k*m`` entries. Shapes follow :mod:`netsurgeon.surgery.tensors`: weights ``(out, in, *kernel)``.

* ``"paper"`` (Wang, Mille, Hidane, eq. 1): new rows ``N(0, 2/fan_in)`` over the old inputs with
  ``fan_in = n_in * kernel volume``, zero over new inputs; new biases 0; new consumer columns 0;
  BatchNorm weight 1, bias 0, running mean 0, running var 1. The zero columns keep the output,
  and the loss gradient w.r.t. them is nonzero, so the new units start learning.
* ``"net2net"``: each new unit copies a random existing unit (rows, bias, follower entries and
  running statistics); the consumer columns of a unit and its copies share the original column,
  split into fractions that sum to one (with a little ``split_noise`` so copies do not stay
  identical forever).

A new strategy is one class with the four methods of :class:`InitStrategy` and a
``register_init("name")`` decorator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, TypeVar

import torch

__all__ = [
    "INIT_STRATEGIES",
    "InitStrategy",
    "Net2NetInit",
    "PaperInit",
    "get_init",
    "register_init",
]

INIT_STRATEGIES: dict[str, type[InitStrategy]] = {}
S = TypeVar("S", bound=type["InitStrategy"])


def register_init(name: str) -> Callable[[S], S]:
    """Class decorator: make a strategy available as ``widen(..., init=name)``."""

    def decorate(cls: S) -> S:
        cls.name = name
        INIT_STRATEGIES[name] = cls
        return cls

    return decorate


class InitStrategy:
    """How to fill the grown part of each tensor. Subclasses implement the four methods."""

    name: ClassVar[str] = ""

    def sources(self, width: int, k: int, generator: torch.Generator | None) -> torch.Tensor | None:
        """Which old unit each of the ``k`` new units derives from (``None``: from none)."""
        return None

    def grow_columns(
        self,
        weight: torch.Tensor,
        *,
        width: int,
        k: int,
        multiplicity: int,
        sources: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """``(out, in, *kernel)`` -> ``(out, in + k*m, *kernel)`` for a producer of ``width``."""
        raise NotImplementedError

    def new_rows(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        k: int,
        old_in: int,
        sources: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows ``(k, in, *kernel)`` and bias ``(k,)`` for ``k`` new outputs.

        ``weight`` already has its grown input columns; ``old_in`` is the input width before
        this widening (the columns carrying signal).
        """
        raise NotImplementedError

    def grow_channelwise(
        self,
        tensor: torch.Tensor,
        *,
        k: int,
        multiplicity: int,
        fill: float,
        sources: torch.Tensor | None,
    ) -> torch.Tensor:
        """A follower's per-channel tensor ``(n*m,)`` -> ``((n + k)*m,)``."""
        raise NotImplementedError


@register_init("paper")
class PaperInit(InitStrategy):
    """The paper's scheme (module docstring): Kaiming rows, zero columns, neutral followers."""

    def grow_columns(self, weight, *, width, k, multiplicity, sources, generator):
        return _append(
            weight, 1, weight.new_zeros((weight.shape[0], k * multiplicity, *weight.shape[2:]))
        )

    def new_rows(self, weight, bias, *, k, old_in, sources, generator):
        kernel = tuple(weight.shape[2:])
        std = math.sqrt(2.0 / (old_in * math.prod(kernel)))
        rows = torch.zeros((k, *weight.shape[1:]), dtype=weight.dtype, device=weight.device)
        rows[:, :old_in].normal_(0.0, std, generator=generator)
        new_bias = None if bias is None else bias.new_zeros(k)
        return rows, new_bias

    def grow_channelwise(self, tensor, *, k, multiplicity, fill, sources):
        return _append(tensor, 0, tensor.new_full((k * multiplicity,), fill))


@register_init("net2net")
class Net2NetInit(InitStrategy):
    """Split existing units (module docstring).

    Args:
        split_noise: relative spread of the column fractions of a unit and its copies
            (0 gives exact halves, which keeps copies identical under gradient descent).
    """

    def __init__(self, split_noise: float = 0.1) -> None:
        if not 0.0 <= split_noise < 1.0:
            raise ValueError(f"split_noise must be in [0, 1), got {split_noise}")
        self.split_noise = split_noise

    def sources(self, width, k, generator):
        return torch.randint(0, width, (k,), generator=generator)

    def grow_columns(self, weight, *, width, k, multiplicity, sources, generator):
        assert sources is not None  # set by ``sources``; an internal invariant
        owner = torch.cat([torch.arange(width), sources])  # unit -> original unit
        copies = torch.bincount(owner, minlength=width).to(weight.dtype)
        noise = torch.rand(owner.numel(), generator=generator, dtype=torch.float64) * 2 - 1
        noise *= self.split_noise
        # Centre the noise within each original and its copies: their fractions sum to one.
        totals = torch.zeros(width, dtype=torch.float64).index_add_(0, owner, noise)
        noise -= totals[owner] / copies.double()[owner]
        fraction = (1.0 + noise.to(weight.dtype)) / copies[owner]
        blocks = weight.unflatten(1, (width, multiplicity))
        grown = blocks[:, owner] * _broadcast(fraction.to(weight.device), blocks.dim(), 1)
        return grown.flatten(1, 2)

    def new_rows(self, weight, bias, *, k, old_in, sources, generator):
        assert sources is not None
        index = sources.to(weight.device)
        return weight[index].clone(), None if bias is None else bias[index].clone()

    def grow_channelwise(self, tensor, *, k, multiplicity, fill, sources):
        assert sources is not None
        blocks = tensor.unflatten(0, (-1, multiplicity))
        return torch.cat([blocks, blocks[sources.to(tensor.device)]]).flatten()


def get_init(init: str | InitStrategy) -> InitStrategy:
    """Resolve ``init`` (a registered name or a strategy instance)."""
    if isinstance(init, InitStrategy):
        return init
    if isinstance(init, str) and init in INIT_STRATEGIES:
        return INIT_STRATEGIES[init]()
    raise ValueError(
        f"unknown init strategy {init!r}; expected one of {sorted(INIT_STRATEGIES)} or an "
        "InitStrategy instance"
    )


def _append(tensor: torch.Tensor, dim: int, extra: torch.Tensor) -> torch.Tensor:
    return torch.cat([tensor, extra], dim=dim)


def _broadcast(vector: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    shape = [1] * rank
    shape[dim] = -1
    return vector.view(shape)
