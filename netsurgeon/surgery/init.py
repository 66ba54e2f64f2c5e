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
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, TypeVar

import torch

__all__ = [
    "INIT_STRATEGIES",
    "InitStrategy",
    "Net2NetInit",
    "PaperInit",
    "get_init",
    "normal_",
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
        out: torch.Tensor,
        *,
        width: int,
        k: int,
        multiplicity: int,
        sources: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> None:
        """Write ``weight`` ``(o, i, *kernel)`` grown to ``(o, i + k*m, *kernel)`` into ``out``.

        ``width`` is the producer's old width (``i = width * m``).
        """
        raise NotImplementedError

    def new_rows(
        self,
        weight: torch.Tensor,
        out: torch.Tensor,
        *,
        old_in: int,
        sources: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> None:
        """Write the ``k`` new output rows ``(k, i, *kernel)`` into ``out``.

        ``weight`` ``(o, i, *kernel)`` already has its grown input columns; ``old_in`` is the
        input width before this widening (the columns carrying signal).
        """
        raise NotImplementedError

    def new_bias(self, bias: torch.Tensor, k: int, sources: torch.Tensor | None) -> torch.Tensor:
        """The ``(k,)`` biases of the new outputs."""
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

    def grow_columns(self, weight, out, *, width, k, multiplicity, sources, generator):
        out[:, : weight.shape[1]].copy_(weight)
        out[:, weight.shape[1] :].zero_()

    def new_rows(self, weight, out, *, old_in, sources, generator):
        std = math.sqrt(2.0 / (old_in * math.prod(weight.shape[2:])))
        out[:, old_in:].zero_()
        normal_(out[:, :old_in], std, generator)

    def new_bias(self, bias, k, sources):
        return bias.new_zeros(k)

    def grow_channelwise(self, tensor, *, k, multiplicity, fill, sources):
        return torch.cat([tensor, tensor.new_full((k * multiplicity,), fill)])


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

    def grow_columns(self, weight, out, *, width, k, multiplicity, sources, generator):
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
        grown = blocks[:, owner.to(weight.device)]
        grown *= _broadcast(fraction.to(weight.device), blocks.dim(), 1)
        out.copy_(grown.flatten(1, 2))

    def new_rows(self, weight, out, *, old_in, sources, generator):
        assert sources is not None
        out.copy_(weight[sources.to(weight.device)])

    def new_bias(self, bias, k, sources):
        assert sources is not None
        return bias[sources.to(bias.device)].clone()

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


#: Draws of at least this many elements are split into fixed chunks filled in parallel on CPU.
PARALLEL_NORMAL_MIN = 1 << 22
_CHUNK = 1 << 20  # elements per chunk: fixed, so the values do not depend on the thread count


def normal_(out: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    """Fill ``out`` (any strides) with ``N(0, std^2)`` draws, deterministic given ``generator``.

    PyTorch draws normals serially on CPU; a large draw (the new rows of a wide classifier) is
    split into chunks of fixed size, each with its own generator seeded from ``generator``, and
    filled by a thread pool. Small draws and non-CPU tensors use one ``normal_``.
    """
    if out.numel() < PARALLEL_NORMAL_MIN or out.device.type != "cpu":
        if out.is_contiguous():
            out.normal_(0.0, std, generator=generator)
        else:
            draw = torch.empty(out.shape, dtype=out.dtype, device=out.device)
            out.copy_(draw.normal_(0.0, std, generator=generator))
        return
    rows = max(1, _CHUNK // max(1, out[0].numel()))
    chunks = out.split(rows)
    seeds = torch.randint(2**62, (len(chunks),), generator=generator).tolist()

    def fill(chunk: torch.Tensor, seed: int) -> None:
        rng = torch.Generator().manual_seed(seed)
        draw = chunk if chunk.is_contiguous() else torch.empty(chunk.shape, dtype=chunk.dtype)
        draw.normal_(0.0, std, generator=rng)
        if draw is not chunk:
            chunk.copy_(draw)

    with ThreadPoolExecutor(max_workers=torch.get_num_threads()) as pool:
        list(pool.map(fill, chunks, seeds))


def _broadcast(vector: torch.Tensor, rank: int, dim: int) -> torch.Tensor:
    shape = [1] * rank
    shape[dim] = -1
    return vector.view(shape)
