"""Pure functions that grow a tensor by inserting entries along one or two dims.

An insertion list (sorted :class:`~netsurgeon.graph.groups.Insertion` s, positions in old
coordinates) is computed once per tensor dim from the group's index map; the weight, its
``.grad`` and every optimizer state tensor of the same shape are grown with the same list. Old
entries keep their order; everything between them is new.

Example: a dim of 5 entries with 2 inserted at position 2 and 1 at position 5::

    runs  -> [(0, 2, 0), (2, 5, 4)]          old [0:2) -> new [0:2), old [2:5) -> new [4:7)
    slots -> [(2, 2), (7, 1)]                 new [2:4) and [7:8) are new entries
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from netsurgeon.graph import Insertion

__all__ = ["grow", "grown_size", "kept_index", "place", "runs", "slots"]

Inserts = Sequence[Insertion]


def grown_size(size: int, inserts: Inserts) -> int:
    return size + sum(i.count for i in inserts)


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


def place(old: torch.Tensor, new: torch.Tensor, inserts: Mapping[int, Inserts]) -> None:
    """Copy ``old`` into ``new`` at the kept positions of the grown dims (at most two)."""
    dims = sorted(d for d, ins in inserts.items() if ins)
    if not dims:
        new.copy_(old)
        return
    spans = [runs(old.shape[d], inserts[d]) for d in dims]
    if len(dims) == 1:
        (d,), (span,) = dims, spans
        for start, stop, at in span:
            new.narrow(d, at, stop - start).copy_(old.narrow(d, start, stop - start))
        return
    (d0, d1), (span0, span1) = dims, spans
    for s0, e0, n0 in span0:
        src0, dst0 = old.narrow(d0, s0, e0 - s0), new.narrow(d0, n0, e0 - s0)
        for s1, e1, n1 in span1:
            dst0.narrow(d1, n1, e1 - s1).copy_(src0.narrow(d1, s1, e1 - s1))


def grow(old: torch.Tensor, inserts: Mapping[int, Inserts], fill: float = 0.0) -> torch.Tensor:
    """``old`` with ``fill`` inserted along the grown dims (a new tensor, same dtype/device)."""
    shape = list(old.shape)
    for d, ins in inserts.items():
        shape[d] = grown_size(shape[d], ins)
    if tuple(shape) == tuple(old.shape):
        return old.clone()
    new = torch.full(shape, fill, dtype=old.dtype, device=old.device)
    place(old, new, inserts)
    return new
