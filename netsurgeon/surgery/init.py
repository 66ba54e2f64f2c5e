"""Initialisation strategies for new units: how grown rows, columns and channels are filled.

Every strategy preserves the model's output exactly. A producer of width ``n`` gains ``k`` units;
each consumer reading it with multiplicity ``m`` gains ``k*m`` input columns; followers gain
``k*m`` entries. A strategy sees every weight as a view ``(out, in, *rest)`` (rows first, columns
second), whatever order the layer stores it in: the layer's handler says which dims are which
(:mod:`netsurgeon.graph.axes`, staged by :mod:`netsurgeon.surgery.staging`), and the fan-in too.

* ``"paper"`` (Wang, Mille, Hidane, eq. 1): new rows ``N(0, 2/fan_in)`` over the old inputs, with
  ``fan_in`` the handler's (a conv: ``in / groups * kernel volume``), zero over new inputs; new
  biases 0; new consumer columns 0; each follower entry its handler's neutral value (BatchNorm
  weight 1, bias 0, running mean 0, running var 1). The zero columns keep the output, and the
  loss gradient w.r.t. them is nonzero, so the new units start learning.
* ``"net2net"``: each new unit copies a random existing unit (rows, bias, follower entries and
  running statistics); the consumer columns of a unit and its copies share the original column,
  split into fractions that sum to one (with a little ``split_noise`` so copies do not stay
  identical forever).

A new strategy is one class with the four methods of :class:`InitStrategy` and a
``register_init("name")`` decorator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, TypeVar

import torch

from netsurgeon.graph import IndexMap, Insertion
from netsurgeon.surgery.index import kept_index, place, slots

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
    """How to fill the grown part of each tensor. Subclasses implement the four methods.

    Every method works on a tensor whose old entries are already in place (see
    :mod:`netsurgeon.surgery.index`) and whose new entries are zero; ``inserts`` say where the new
    entries are, ``index_map`` which group channels the entries of a dim hold, and ``sources``
    (per group) which old channel each new channel derives from.
    """

    name: ClassVar[str] = ""

    def sources(
        self,
        width: int,
        k: int,
        blocks: int,
        generator: torch.Generator | None,
        *,
        unit: int = 1,
    ) -> torch.Tensor | None:
        """For each of the ``k`` new channels, the old channel it derives from (``None``: none).

        New channels ``[j*k/b, (j+1)*k/b)`` go to block ``j``; their sources must lie in it.
        With ``unit > 1`` (a GroupNorm of ``unit`` channels per group) new channels come in runs
        of ``unit`` that must copy whole old normalisation groups, in order.
        """
        return None

    def fill_columns(
        self,
        weight: torch.Tensor,
        *,
        index_map: IndexMap,
        inserts: Sequence[Insertion],
        sources: Mapping[str, torch.Tensor | None],
        widths: Mapping[str, int],
        generator: torch.Generator | None,
    ) -> None:
        """Write the new input columns (dim 1) of ``weight``, a view ``(out, in_new, *rest)``.

        ``widths`` are the old widths of the groups in ``index_map``.
        """
        raise NotImplementedError

    def fill_rows(
        self,
        weight: torch.Tensor,
        *,
        row_inserts: Sequence[Insertion],
        col_inserts: Sequence[Insertion],
        fan_in: float,
        sources: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> None:
        """Write the new output rows (dim 0) of ``weight``, a view ``(out_new, in_new, *rest)``.

        ``fan_in`` is the number of inputs one output entry reads (the layer handler's). Every
        entry of the new rows must be written, except the new columns (already zero).
        """
        raise NotImplementedError

    def fill_entries(
        self,
        tensor: torch.Tensor,
        *,
        dim: int,
        index_map: IndexMap,
        inserts: Sequence[Insertion],
        fill: float | torch.Tensor | None,
        sources: Mapping[str, torch.Tensor | None],
        generator: torch.Generator | None,
    ) -> None:
        """Write the new entries of a per-channel tensor (a bias, BatchNorm, a depthwise filter).

        ``fill`` is the paper's value for a new entry; ``None`` means Kaiming over the rest of
        the entry (a depthwise filter over its kernel); a tensor holds one value per new entry,
        in order (weight norm's ``g``: the norms of the new rows of ``v``).
        """
        raise NotImplementedError


@register_init("paper")
class PaperInit(InitStrategy):
    """The paper's scheme (module docstring): Kaiming rows, zero columns, neutral followers."""

    def fill_columns(self, weight, *, index_map, inserts, sources, widths, generator):
        pass  # new columns stay zero

    def fill_rows(self, weight, *, row_inserts, col_inserts, fan_in, sources, generator):
        std = math.sqrt(2.0 / fan_in)
        old_in = weight.shape[1] - sum(i.count for i in col_inserts)
        for at, ins in slots(row_inserts):
            rows = weight.narrow(0, at, ins.count)
            if not col_inserts:
                normal_(rows, std, generator)
                continue
            draw = rows.new_empty((ins.count, old_in, *weight.shape[2:]))
            normal_(draw, std, generator)
            place(draw, rows, {1: col_inserts})

    def fill_entries(self, tensor, *, dim, index_map, inserts, fill, sources, generator):
        done = 0
        for at, ins in slots(inserts):
            entries = tensor.narrow(dim, at, ins.count)
            if isinstance(fill, torch.Tensor):
                values = fill[done : done + ins.count].to(entries.dtype)
                entries.copy_(
                    values.view(*[ins.count if d == dim else 1 for d in range(entries.dim())])
                )
                done += ins.count
            elif fill is None:
                std = math.sqrt(2.0 / math.prod(tensor.shape[dim + 1 :]))
                normal_(entries, std, generator)
            else:
                entries.fill_(fill)


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

    def sources(self, width, k, blocks, generator, *, unit=1):
        size, per_block = width // blocks, k // blocks
        device = _device_of(generator)
        if blocks == 1 and unit == 1:
            return torch.randint(0, width, (k,), generator=generator, device=device).cpu()
        parts = []
        for j in range(blocks):  # whole normalisation groups of the block, copied in order
            picks = torch.randint(
                0, size // unit, (per_block // unit,), generator=generator, device=device
            ).cpu()
            parts.append((j * size + picks[:, None] * unit + torch.arange(unit)).flatten())
        return torch.cat(parts)

    def fill_columns(self, weight, *, index_map, inserts, sources, widths, generator):
        """Each copy's columns take a share of its source's columns; shares sum to one."""
        kept = kept_index(index_map.size, inserts, weight.device)
        added = {id(ins): at for at, ins in slots(inserts)}
        originals = weight.clone()
        for group in index_map.groups:
            source = sources.get(group)
            if source is None:
                continue
            width = widths[group]
            owner = torch.cat([torch.arange(width), source])
            copies = torch.bincount(owner, minlength=width).to(torch.float64)
            noise = (
                torch.rand(
                    owner.numel(),
                    generator=generator,
                    dtype=torch.float64,
                    device=_device_of(generator),
                ).cpu()
                * 2
                - 1
            )
            noise *= self.split_noise
            totals = torch.zeros(width, dtype=torch.float64).index_add_(0, owner, noise)
            noise -= totals[owner] / copies[owner]
            fraction = ((1.0 + noise) / copies[owner]).to(weight.dtype).to(weight.device)
            for offset, piece in index_map.offsets():
                if piece.group != group:
                    continue
                m = piece.per_channel
                for c in range(piece.start, piece.stop):
                    if copies[c] > 1:
                        first = offset + (c - piece.start) * m
                        cols = kept[first : first + m]
                        weight[:, cols] = originals[:, cols] * fraction[c]
            for ins in inserts:
                if ins.group != group:
                    continue
                at = added[id(ins)]
                for n, i in enumerate(ins.new_channels):
                    cols = _entries_in_piece(index_map, ins, int(source[i]), kept)
                    dst = slice(at + n * ins.per_channel, at + (n + 1) * ins.per_channel)
                    weight[:, dst] = originals[:, cols] * fraction[width + i]

    def fill_rows(self, weight, *, row_inserts, col_inserts, fan_in, sources, generator):
        kept = kept_index(weight.shape[0] - sum(i.count for i in row_inserts), row_inserts)
        for at, ins in slots(row_inserts):
            src = kept[sources[list(ins.new_channels)]].to(weight.device)
            weight.narrow(0, at, ins.count).copy_(weight[src])

    def fill_entries(self, tensor, *, dim, index_map, inserts, fill, sources, generator):
        kept = kept_index(index_map.size, inserts, tensor.device)
        for at, ins in slots(inserts):
            source = sources.get(ins.group)
            for n, i in enumerate(ins.new_channels):
                cols = _entries_in_piece(index_map, ins, int(source[i]), kept)
                dst = tensor.narrow(dim, at + n * ins.per_channel, ins.per_channel)
                dst.copy_(tensor.index_select(dim, cols))


def _device_of(generator: torch.Generator | None) -> torch.device | None:
    """Draw where the generator lives (a CUDA generator cannot fill a CPU tensor)."""
    return None if generator is None else generator.device


def _entries_in_piece(
    index_map: IndexMap, ins: Insertion, channel: int, kept: torch.Tensor
) -> torch.Tensor:
    """New positions of ``channel``'s entries in the piece that ``ins`` extends."""
    for offset, piece in index_map.offsets():
        end = offset + piece.entries
        if (
            piece.group == ins.group
            and offset < ins.position <= end
            and piece.start <= channel < piece.stop
        ):
            first = offset + (channel - piece.start) * piece.per_channel
            return kept[first : first + piece.per_channel]
    first_entries = index_map.entries_of(ins.group, channel)[: ins.per_channel]
    return kept[torch.tensor(first_entries, dtype=torch.long)]


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
