"""Where channels sit in a tensor: the index map from channel groups to positions on one dim.

Every tensor downstream of a width-owning layer carries a :class:`Layout`: which dimension holds
channels (``dim``), and how the entries of that dimension belong to channel groups, as an ordered
tuple of :class:`Segment` s. One segment is a contiguous range ``[start, stop)`` of one group's
channels, each channel owning ``multiplicity * layout.factor`` consecutive entries (more than one
after a channel-major flatten). The maps compose:

* a producer layer starts a new group: one segment ``[0, width)``, multiplicity 1;
* ``flatten`` multiplies every multiplicity by the flattened spatial size (``factor`` stays
  unknown, ``None``, when shapes were not propagated; the consumer's width then resolves it);
* ``torch.cat`` along the channel dim concatenates the operands' segments: growing operand ``i``
  inserts at the end of its own segment and shifts every later one;
* ``chunk`` along the channel dim slices the segments;
* ``permute``/``transpose``/``movedim`` move ``dim``;
* an elementwise join (``add``, ``mul``, ...) unifies the groups segment by segment.

Example: ``cat([conv_a(x), conv_b(x)], 1)`` with widths 4 and 6, then ``flatten`` of a 2x2 map::

    Layout(dim=1, rank=2, segments=(Segment(a, 0, 4, 4), Segment(b, 0, 6, 4)), flattened=True)

Channel 2 of ``b`` owns the entries ``[4*4 + 2*4, 4*4 + 3*4)`` of that dim. Growing ``a`` by 1
inserts 4 entries at position 16 and moves all of ``b``'s entries 4 to the right.

**Attention heads.** A reshape ``(B, N, H*d) -> (B, N, -1, d)`` with ``d`` fixed cuts the channels
into heads (see :mod:`netsurgeon.graph.ops.heads`). The layout then carries :class:`Heads`: ``dim``
is the *head dim*, each of its entries is ``d`` channels of the segments (a segment of ``c``
channels spans ``c / d`` entries), and ``heads.inner`` is the dim holding each head's ``d``
channels (fixed entries that belong to the head; ``None`` once a ``q @ k^T`` contracted it, as in
the attention scores ``(B, H, N, N)``). A fused ``(B, N, 3, -1, d)`` keeps the split dim in
``heads.split`` until ``unbind``/indexing picks one of its ``heads.splits`` parts. The segments stay
in channels, so the merge ``(B, N, H, d) -> (B, N, -1)`` gives back the same segments; a group cut
into heads grows by whole heads (``require_unit(d)``). Ops that do not know heads refuse such a
layout (the walker checks ``knows_heads`` on the handler). Example, GPT-2's ``q`` after
``view(B, T, -1, 64).transpose(1, 2)`` of a ``Linear(768, 768)`` ``g``::

    Layout(dim=1, rank=4, segments=(Segment(g, 0, 768),), heads=Heads(size=64, inner=3))

**Channels on a batch dim.** A layer that maps the last dim of a tensor whose channels sit on
another dim (MLP-Mixer's token MLP: ``fc1(norm(x).transpose(1, 2))``, a ``(B, C, N)`` tensor)
applies one map to every channel: those channels are a batch dim of it. Its output carries its own
new group on the last dim and the old channels in ``batch``, a second layout (no heads, not
flattened, no ``batch`` of its own) of the same tensor (:mod:`netsurgeon.graph.batch_channels`).
Ops that do not know batch channels refuse such a layout (the walker checks ``knows_batch``)::

    Layout(dim=2, rank=3, segments=(Segment(fc1, 0, 384),),
           batch=Layout(dim=1, rank=3, segments=(Segment(stream, 0, 768),)))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["Heads", "Layout", "Segment"]


@dataclass(frozen=True)
class Segment:
    """Channels ``[start, stop)`` of group ``group``, ``multiplicity`` entries each.

    The analysis' form of a :class:`~netsurgeon.graph.groups.Piece`: ``group`` is a raw group id
    (the union-find resolves it to a group name when the analysis ends) and ``path`` records the
    ops the channels went through. ``group`` is ``None`` for a fixed piece netsurgeon does not track (the model's input
    concatenated to features); its size is ``stop - start`` entries when known.
    """

    group: int | None
    start: int
    stop: int
    multiplicity: int = 1
    path: tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        return self.stop - self.start

    def with_path(self, label: str) -> Segment:
        return Segment(self.group, self.start, self.stop, self.multiplicity, (*self.path, label))


@dataclass(frozen=True)
class Heads:
    """The channels cut into attention heads of ``size`` channels (module docstring).

    Attributes:
        size: ``d``, channels per head (fixed: a group cut into heads grows by whole heads).
        inner: the dim holding each head's ``d`` channels; ``None`` when contracted away.
        split: the dim of a fused ``(3, H, d)`` cut (``q, k, v``), ``None`` once picked.
        splits: that dim's size (1 without one).
        copies: a dim along which every head is the same (``k[:, :, None].expand(...)``, the
            first half of grouped-query attention's ``repeat_kv``), ``None`` without one.
    """

    size: int
    inner: int | None
    split: int | None = None
    splits: int = 1
    copies: int | None = None

    def moved(self, where: dict[int, int | None]) -> Heads | None:
        """The dims renumbered by ``where`` (old dim -> new dim); ``None`` if ``inner`` or
        ``split`` is dropped (dropping ``copies``, indexing one copy, leaves plain heads)."""
        found = {name: None if (old := getattr(self, name)) is None else where.get(old)
                 for name in ("inner", "split", "copies")}  # fmt: skip
        if any(getattr(self, n) is not None and found[n] is None for n in ("inner", "split")):
            return None
        return dataclasses.replace(self, **found)


@dataclass(frozen=True)
class Layout:
    """The channel layout of one tensor (see the module docstring).

    Attributes:
        dim: the channel dimension; non-negative when the rank is known, else counted from the
            end (``-1``: the last dim, where ``nn.Linear`` puts its features).
        rank: the tensor's rank when known.
        segments: the groups' channel ranges along ``dim``, in order.
        flattened: a flatten merged the channels with trailing dims.
        factor: entries per unit of ``multiplicity``; ``None`` after a flatten of unknown size.
        heads: the channels are cut into attention heads (:class:`Heads`), ``None`` otherwise.
        batch: other channels of the same tensor, on a dim a layer treats as batch (module
            docstring), ``None`` otherwise.
    """

    dim: int
    rank: int | None
    segments: tuple[Segment, ...]
    flattened: bool = False
    factor: int | None = 1
    heads: Heads | None = None
    batch: Layout | None = None

    def normalized_dim(self) -> int | None:
        """The channel dimension as a non-negative index, or ``None`` when it cannot be known."""
        if self.dim >= 0:
            return self.dim
        return None if self.rank is None else self.rank + self.dim

    def is_last_dim(self) -> bool:
        if self.dim == -1:
            return True
        return self.rank is not None and self.dim == self.rank - 1

    def same_dim(self, dim: int) -> bool | None:
        """Whether ``dim`` (as the user wrote it) is the channel dim; ``None``: cannot tell."""
        channel = self.normalized_dim()
        if dim < 0 and self.rank is None:
            return dim == self.dim if self.dim < 0 else None
        if dim < 0:
            dim += self.rank  # type: ignore[operator]
        return None if channel is None else dim == channel

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(s.group for s in self.segments if s.group is not None))

    @property
    def all_groups(self) -> tuple[int, ...]:
        """The groups on ``dim`` and those carried on a batch dim (``batch``)."""
        carried = () if self.batch is None else self.batch.groups
        return tuple(dict.fromkeys((*self.groups, *carried)))

    def units(self) -> int:
        """Entries along ``dim`` in units of ``factor``."""
        return sum(s.channels * s.multiplicity for s in self.segments)

    def replace(self, **changes: object) -> Layout:
        """``dataclasses.replace`` (Layout has no ``__post_init__``), at a dict copy's cost: the
        walker replaces layouts at most nodes."""
        if not changes.keys() <= _LAYOUT_FIELDS:
            return dataclasses.replace(self, **changes)  # raises its TypeError
        new = object.__new__(Layout)
        vars(new).update(vars(self), **changes)
        return new

    def with_path(self, label: str) -> Layout:
        return self.replace(segments=tuple(s.with_path(label) for s in self.segments))


_LAYOUT_FIELDS = frozenset(f.name for f in dataclasses.fields(Layout))
