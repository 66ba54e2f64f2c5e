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

from netsurgeon.errors import WidenError
from netsurgeon.graph import IndexMap, Insertion
from netsurgeon.surgery.index import added, fill_new_, kept_index, place_new, slots

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
        old_in = weight.shape[1] - added(col_inserts)
        draw = weight.new_empty((added(row_inserts), old_in, *weight.shape[2:]))
        normal_(draw, std, generator)  # one draw for every new row, in order, whatever the layout
        place_new(draw, weight, 0, row_inserts, {1: col_inserts})

    def fill_entries(self, tensor, *, dim, index_map, inserts, fill, sources, generator):
        if not isinstance(fill, torch.Tensor) and fill is not None:
            fill_new_(tensor, dim, inserts, fill)
            return
        shape = list(tensor.shape)
        shape[dim] = added(inserts)
        if fill is None:  # Kaiming over the rest of each entry: one draw, new entries in order
            values = tensor.new_empty(shape)
            normal_(values, math.sqrt(2.0 / math.prod(tensor.shape[dim + 1 :])), generator)
        else:
            along = [shape[dim] if d == dim else 1 for d in range(tensor.dim())]
            values = fill.to(tensor.dtype).view(along).expand(shape)
        place_new(values, tensor, dim, inserts, {})


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
        """Each copy's columns take a share of its source's columns; shares sum to one.

        Per group: the old columns of every channel that gains copies are scaled by its share,
        and each new column is its source's old column times the copy's share (all read before
        any is written: one gather and one scatter per kind).
        """
        kept = kept_index(index_map.size, inserts, weight.device)
        at = {id(ins): start for start, ins in slots(inserts)}
        for group in index_map.groups:
            source = sources.get(group)
            if source is None:
                continue
            width = widths[group]
            fraction, copies = self._shares(width, source, generator)
            fraction = fraction.to(weight.dtype).to(weight.device)
            old_cols, old_share = _split_columns(index_map, group, copies, kept)
            mine = [ins for ins in inserts if ins.group == group]
            dst, src, new_channels = _copy_columns(index_map, mine, at, source, kept)
            scaled = weight.index_select(1, old_cols) * _along(fraction[old_share], 1, weight)
            copied = weight.index_select(1, src) * _along(fraction[width + new_channels], 1, weight)
            weight.index_copy_(1, old_cols, scaled)
            weight.index_copy_(1, dst, copied)

    def _shares(
        self, width: int, source: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 share of each old channel then each new one, and each old channel's copies."""
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
        return (1.0 + noise) / copies[owner], copies

    def fill_rows(self, weight, *, row_inserts, col_inserts, fan_in, sources, generator):
        kept = kept_index(weight.shape[0] - sum(i.count for i in row_inserts), row_inserts)
        dst = torch.cat([torch.arange(at, at + ins.count) for at, ins in slots(row_inserts)])
        channels = torch.cat([torch.as_tensor(ins.new_channels) for ins in row_inserts])
        src = kept[sources[channels]].to(weight.device)
        weight.index_copy_(0, dst.to(weight.device), weight.index_select(0, src))

    def fill_entries(self, tensor, *, dim, index_map, inserts, fill, sources, generator):
        kept = kept_index(index_map.size, inserts, tensor.device)
        at = {id(ins): start for start, ins in slots(inserts)}
        for group in dict.fromkeys(ins.group for ins in inserts):
            mine = [ins for ins in inserts if ins.group == group]
            dst, src, _ = _copy_columns(index_map, mine, at, sources.get(group), kept)
            tensor.index_copy_(dim, dst, tensor.index_select(dim, src))


def _device_of(generator: torch.Generator | None) -> torch.device | None:
    """Draw where the generator lives (a CUDA generator cannot fill a CPU tensor)."""
    return None if generator is None else generator.device


def _along(values: torch.Tensor, dim: int, like: torch.Tensor) -> torch.Tensor:
    """``values`` shaped to broadcast along ``dim`` of ``like``."""
    return values.view(*[values.numel() if d == dim else 1 for d in range(like.dim())])


def _split_columns(
    index_map: IndexMap, group: str, copies: torch.Tensor, kept: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """New positions of the entries of ``group``'s channels that gain copies, and the channel of
    each entry (``per_channel`` entries per channel, in index-map order)."""
    cols, owners = [kept.new_zeros(0)], [torch.zeros(0, dtype=torch.long)]
    for offset, piece in index_map.offsets():
        if piece.group != group:
            continue
        channels = torch.arange(piece.start, piece.stop)
        channels = channels[copies[channels] > 1]
        m = piece.per_channel
        first = offset + (channels - piece.start) * m
        cols.append(kept[(first[:, None] + torch.arange(m)).flatten().to(kept.device)])
        owners.append(channels.repeat_interleave(m))
    return torch.cat(cols), torch.cat(owners)


def _copy_columns(
    index_map: IndexMap,
    inserts: Sequence[Insertion],
    at: Mapping[int, int],
    source: torch.Tensor,
    kept: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every entry of every new channel of ``inserts``: its new position, the new position
    of the matching entry of its source channel, and the new channel's index."""
    dst, src, channels = (
        [kept.new_zeros(0)],
        [kept.new_zeros(0)],
        [torch.zeros(0, dtype=torch.long)],
    )
    for ins in inserts:
        new = torch.as_tensor(ins.new_channels, dtype=torch.long)
        m = ins.per_channel
        dst.append((at[id(ins)] + torch.arange(new.numel() * m)).to(kept.device))
        src.append(_source_entries(index_map, ins, source[new], kept))
        channels.append(new.repeat_interleave(m))
    return torch.cat(dst), torch.cat(src), torch.cat(channels)


def _source_entries(
    index_map: IndexMap, ins: Insertion, channels: torch.Tensor, kept: torch.Tensor
) -> torch.Tensor:
    """New positions of the entries of each of ``channels`` (old channels of ``ins.group``), in
    the piece that ``ins`` extends, or else wherever the map first holds them, flattened."""
    m = ins.per_channel
    first = torch.full_like(channels, -1)
    for offset, piece in index_map.offsets():
        if piece.group == ins.group and offset < ins.position <= offset + piece.entries:
            inside = (channels >= piece.start) & (channels < piece.stop)
            first = torch.where(inside, offset + (channels - piece.start) * m, first)
            break
    rows = first[:, None] + torch.arange(m)
    for n in torch.nonzero(first < 0).flatten().tolist():
        entries = index_map.entries_of(ins.group, int(channels[n]))[:m]
        if len(entries) != m:
            raise WidenError(
                f"init='net2net' copies channel {int(channels[n])} of group '{ins.group}', but a "
                f"consumer's index map holds {len(entries)} entries of it where {m} are needed; "
                "widen this group with init='paper'"
            )
        rows[n] = torch.tensor(entries, dtype=torch.long)
    return kept[rows.flatten().to(kept.device)]


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
