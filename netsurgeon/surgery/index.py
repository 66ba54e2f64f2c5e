"""Pure functions that grow a tensor by inserting entries along one or more dims.

An insertion list (sorted :class:`~netsurgeon.graph.groups.Insertion` s, positions in old
coordinates) is computed once per tensor dim from the group's index map; the weight, its
``.grad`` and every optimizer state tensor of the same shape are grown with the same list. Old
entries keep their order; everything between them is new.

Example: a dim of 5 entries with 2 inserted at position 2 and 1 at position 5::

    runs  -> [(0, 2, 0), (2, 5, 4)]          old [0:2) -> new [0:2), old [2:5) -> new [4:7)
    slots -> [(2, 2), (7, 1)]                 new [2:4) and [7:8) are new entries

**How the entries are written.** Almost every dim grows *regularly*: ``b`` equal blocks of ``s``
old entries, each followed by ``c`` new ones (``b = 1``: appended at the end; ``b > 1``: a group
of a grouped convolution, or one read per block). Splitting such a dim into ``(b, s + c)`` (a view,
no copy) turns the old entries into one strided slice ``[:, :s]`` and the new ones into
``[:, s:]``, whatever ``b`` is, so a tensor grows with one copy of its old entries and one fill
per grown dim: a single pass over memory, with a constant number of calls. Other dims (a
consumer of a concatenation whose pieces grow unevenly) are copied run by run along that dim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import attrgetter

import torch

from netsurgeon.graph import Insertion
from netsurgeon.graph.groups import Insertions, regular_pattern
from netsurgeon.surgery.tensors import memory_format_of

__all__ = [
    "added",
    "fill_new_",
    "grow",
    "grown_size",
    "kept_index",
    "kept_part",
    "place",
    "place_new",
    "regular",
    "runs",
    "slots",
]

Inserts = Sequence[Insertion]


_count = attrgetter("count")


def added(inserts: Inserts) -> int:
    """How many entries ``inserts`` add."""
    if isinstance(inserts, Insertions):
        return inserts.added
    return sum(map(_count, inserts))


def grown_size(size: int, inserts: Inserts) -> int:
    return size + added(inserts)


def runs(size: int, inserts: Inserts) -> list[tuple[int, int, int]]:
    """``(old_start, old_stop, new_start)`` of each run of old entries."""
    found, start, shift = [], 0, 0
    for ins in inserts:
        if ins.position > start:
            found.append((start, ins.position, start + shift))
        start = max(start, ins.position)
        shift += ins.count
    if size > start:
        found.append((start, size, start + shift))
    return found


def slots(inserts: Inserts) -> list[tuple[int, Insertion]]:
    """``(new_start, insertion)`` of each inserted run."""
    found, shift = [], 0
    for ins in inserts:
        found.append((ins.position + shift, ins))
        shift += ins.count
    return found


def kept_index(size: int, inserts: Inserts, device: torch.device | None = None) -> torch.Tensor:
    """New positions of the old entries, ``(size,)``."""
    parts = [torch.arange(n, n + stop - start) for start, stop, n in runs(size, inserts)]
    return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)).to(device)


def regular(size: int, inserts: Inserts) -> tuple[int, int, int] | None:
    """``(b, s, c)`` when ``inserts`` put ``c`` new entries after each of ``b`` equal blocks of
    ``s`` old entries (``size == b * s``), else ``None`` (read off an index map's
    :class:`~netsurgeon.graph.groups.Insertions`, computed once)."""
    if isinstance(inserts, Insertions) and inserts.size == size:
        return inserts.pattern
    return regular_pattern(size, inserts)


def _split(
    old: torch.Tensor | None, new: torch.Tensor, inserts: Mapping[int, Inserts]
) -> tuple[torch.Tensor | None, torch.Tensor, list[tuple[int, Inserts]]]:
    """Views of ``old`` and ``new`` in which the regular grown dims are split into
    ``(b, s)`` / ``(b, s + c)`` and cut to their old entries; the other grown dims (renumbered
    for the split) are returned with their insertions, for a run-by-run copy."""
    grown = sorted((d, ins) for d, ins in inserts.items() if ins)
    irregular: list[tuple[int, Inserts]] = []
    shift = 0
    for d, ins in grown:
        pattern = regular(new.shape[d + shift] - added(ins), ins)
        if pattern is None:
            irregular.append((d + shift, ins))
            continue
        b, s, c = pattern
        new = new.unflatten(d + shift, (b, s + c)).narrow(d + shift + 1, 0, s)
        old = None if old is None else old.unflatten(d + shift, (b, s))
        shift += 1
    return old, new, irregular


def place(old: torch.Tensor, new: torch.Tensor, inserts: Mapping[int, Inserts]) -> None:
    """Copy ``old`` into ``new`` (any strides, a view included) at the kept positions of the grown
    dims; the new entries of ``new`` are not touched."""
    old, new, irregular = _split(old, new, inserts)
    _copy_runs(old, new, irregular)


def _copy_runs(old: torch.Tensor, new: torch.Tensor, irregular: list[tuple[int, Inserts]]) -> None:
    if not irregular:
        new.copy_(old)
        return
    (d, ins), rest = irregular[0], irregular[1:]
    for start, stop, at in runs(old.shape[d], ins):
        _copy_runs(old.narrow(d, start, stop - start), new.narrow(d, at, stop - start), rest)


def kept_part(new: torch.Tensor, inserts: Mapping[int, Inserts]) -> torch.Tensor:
    """The old entries of a grown ``new``, in old order and shape (a view where it can be)."""
    _, kept, irregular = _split(None, new, inserts)
    if not irregular:
        return _merge(kept, inserts)
    for d, ins in inserts.items():
        if ins:
            size = new.shape[d] - added(ins)
            new = new.index_select(d, kept_index(size, ins, new.device))
    return new


def _merge(kept: torch.Tensor, inserts: Mapping[int, Inserts]) -> torch.Tensor:
    """Undo :func:`_split`'s splitting of the grown dims (all regular): the ``i``-th grown dim
    ``d`` (ascending) sits at ``(d + i, d + i + 1)``; merge from the last so none moves."""
    grown = sorted(d for d, ins in inserts.items() if ins)
    for i, d in reversed(list(enumerate(grown))):
        kept = kept.flatten(d + i, d + i + 1)
    return kept


def fill_new_(new: torch.Tensor, dim: int, inserts: Inserts, value: float) -> None:
    """Set every new entry along ``dim`` of a grown ``new`` to ``value``, in place."""
    if not inserts:
        return
    pattern = regular(new.shape[dim] - added(inserts), inserts)
    if pattern is not None:
        b, s, c = pattern
        new.unflatten(dim, (b, s + c)).narrow(dim + 1, s, c).fill_(value)
        return
    for at, ins in slots(inserts):
        new.narrow(dim, at, ins.count).fill_(value)


def grow(
    old: torch.Tensor,
    inserts: Mapping[int, Inserts],
    fill: float = 0.0,
    *,
    written: int | None = None,
) -> torch.Tensor:
    """``old`` with ``fill`` inserted along the grown dims (a new tensor: same dtype, device and
    memory format). Each entry is written once.

    ``written``: a dim whose new entries the caller writes next (an init strategy's new rows):
    they are left unwritten, except where another grown dim's new entries cross them.
    """
    if (
        written is None and old.dim() == 1 and inserts.get(0)
    ):  # a bias or norm entry: appended in one concatenation
        pattern = regular(old.shape[0], inserts[0])
        if pattern is not None and pattern[0] == 1:
            return torch.cat((old, old.new_full((pattern[2],), fill)))
    shape = list(old.shape)
    for d, ins in inserts.items():
        shape[d] = grown_size(shape[d], ins)
    if tuple(shape) == tuple(old.shape):
        return old.clone()
    new = torch.empty(
        shape, dtype=old.dtype, device=old.device, memory_format=memory_format_of(old)
    )
    place(old, new, inserts)
    for d, ins in inserts.items():
        if d != written:
            fill_new_(new, d, ins, fill)
    return new


def place_new(
    values: torch.Tensor,
    new: torch.Tensor,
    dim: int,
    inserts: Inserts,
    others: Mapping[int, Inserts],
) -> None:
    """Write ``values`` into the new entries along ``dim`` of a grown ``new``.

    ``values`` holds the new entries along ``dim`` in order (``sum(count)`` of them) and the old
    entries along the dims of ``others`` (placed at their kept positions; the new entries of
    those dims are not touched).
    """
    pattern = regular(new.shape[dim] - added(inserts), inserts)
    if pattern is not None:
        b, s, c = pattern
        region = new.unflatten(dim, (b, s + c)).narrow(dim + 1, s, c)
        shifted = {d + (d > dim): ins for d, ins in others.items()}
        place(values.unflatten(dim, (b, c)), region, shifted)
        return
    done = 0
    for at, ins in slots(inserts):
        place(values.narrow(dim, done, ins.count), new.narrow(dim, at, ins.count), others)
        done += ins.count
