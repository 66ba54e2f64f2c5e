"""The records of the analysis: channel groups, their consumers and followers, and index maps.

A :class:`ChannelGroup` is a set of channels that must grow together:

* its **producers**: one or more width-owning layers whose outputs are joined elementwise (a
  residual stream's blocks, the two sides of a gate);
* its **consumers**: layers that read the channels, each through an :class:`IndexMap` saying where
  the group's channels sit among the consumer's input columns;
* its **followers**: per-channel modules and parameters on the way (BatchNorm, a depthwise conv,
  a layer scale), each with its own index map.

Growing a group by ``k`` with ``splits = s`` inserts ``k / s`` channels at the end of each of its
``s`` equal splits (``s = 1``: at the end). Every map turns that into entry positions.

Example, ``torch.cat([a(x), b(x)], 1) -> conv``: the consumer ``conv`` reads ``a`` through
``IndexMap((Piece("a", 0, 4, 1), Piece("b", 0, 6, 1)))``; growing ``a`` by 2 inserts two zero
columns at position 4, growing ``b`` inserts them at 10 (12 if ``a`` grows too).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter

__all__ = [
    "ChannelGroup",
    "ConsumerRef",
    "Edge",
    "FollowerRef",
    "IndexMap",
    "Insertion",
    "Insertions",
    "Piece",
    "regular_pattern",
]


@dataclass(frozen=True)
class Piece:
    """Channels ``[start, stop)`` of ``group`` along a dim, ``multiplicity`` entries each.

    An untracked piece (``group`` None) is a fixed block of ``multiplicity * (stop - start)``
    entries (features concatenated from the model input, for example).
    """

    group: str | None
    start: int
    stop: int
    multiplicity: int = 1

    @property
    def entries(self) -> int:
        return (self.stop - self.start) * self.multiplicity

    @property
    def per_channel(self) -> int:
        """Deprecated name of :attr:`multiplicity`."""
        return self.multiplicity


@dataclass(frozen=True)
class Insertion:
    """``count`` new entries at ``position`` (in old coordinates) for new channels of ``group``.

    ``new_channels`` are the indices ``0..k-1`` of the group's new channels that the inserted
    entries hold, in order, each ``multiplicity`` entries wide.
    """

    position: int
    count: int
    group: str
    new_channels: range
    multiplicity: int

    @property
    def per_channel(self) -> int:
        """Deprecated name of :attr:`multiplicity`."""
        return self.multiplicity


_count = attrgetter("count")
_position = attrgetter("position")


def regular_pattern(size: int, inserts: Sequence[Insertion]) -> tuple[int, int, int] | None:
    """``(b, s, c)`` when ``inserts`` put ``c`` new entries after each of ``b`` equal blocks of
    ``s`` old entries (``size == b * s``), else ``None``."""
    if not inserts:
        return None
    b, c = len(inserts), inserts[0].count
    if size % b:
        return None
    s = size // b
    if list(map(_count, inserts)) != [c] * b:
        return None
    if list(map(_position, inserts)) != (list(range(s, size + 1, s)) if s else [0] * b):
        return None
    return b, s, c


class Insertions(list):
    """The insertions along one dim of ``size`` old entries, sorted by position.

    A ``list`` (equal to a list of the same insertions) that knows, computed once, the entries it
    adds (``added``) and its regular pattern (``pattern``, see :func:`regular_pattern`). Every
    tensor that an index map grows reads them: a depthwise stream's map holds one insertion per
    channel and grows dozens of tensors. Do not mutate one.
    """

    def __init__(self, found: Iterable[Insertion] = (), size: int = 0) -> None:
        super().__init__(found)
        self.size = size
        self.added = sum(map(_count, self))
        self.pattern = regular_pattern(size, self)


@dataclass(frozen=True)
class IndexMap:
    """How the entries of one dim are made of group channels: pieces in order."""

    pieces: tuple[Piece, ...]

    @property
    def size(self) -> int:
        return sum(p.entries for p in self.pieces)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.group for p in self.pieces if p.group is not None))

    def offsets(self) -> Iterator[tuple[int, Piece]]:
        offset = 0
        for piece in self.pieces:
            yield offset, piece
            offset += piece.entries

    def entries_of(self, group: str, channel: int) -> list[int]:
        """Positions (old coordinates) of every entry of ``group``'s ``channel``."""
        found: list[int] = []
        for offset, p in self.offsets():
            if p.group == group and p.start <= channel < p.stop:
                first = offset + (channel - p.start) * p.multiplicity
                found.extend(range(first, first + p.multiplicity))
        return found

    def insertions(self, growth: Mapping[str, tuple[int, int, int]]) -> Insertions:
        """Where new entries go when groups grow.

        Args:
            growth: ``{group: (width, k, splits)}``; split ``j`` of ``[j*w/s, (j+1)*w/s)``
                gains new channels ``[j*k/s, (j+1)*k/s)`` at its end.

        Returns:
            Insertions sorted by position (ties keep piece order), with their total and pattern.
        """
        found: list[Insertion] = []
        for offset, p in self.offsets():
            if p.group is None or p.group not in growth:
                continue
            width, k, splits = growth[p.group]
            size, per_split = width // splits, k // splits
            if size == 0:
                continue
            # the splits ending inside the piece: p.start < (j + 1) * size <= p.stop
            for j in range(p.start // size, min(p.stop // size, splits)):
                found.append(
                    Insertion(
                        position=offset + ((j + 1) * size - p.start) * p.multiplicity,
                        count=per_split * p.multiplicity,
                        group=p.group,
                        new_channels=range(j * per_split, (j + 1) * per_split),
                        multiplicity=p.multiplicity,
                    )
                )
        return Insertions(sorted(found, key=_position), self.size)


@dataclass(frozen=True)
class Edge:
    """Producer ``producer``'s channel ``c`` feeds consumer input columns ``[off + c*m, ...+m)``.

    Attributes:
        producer: a producer of the group (qualified layer name).
        consumer: the consuming layer.
        multiplicity: ``m``, entries per channel at the consumer (1 unless flattened).
        path: labels of the ops between the group's last join (or producer) and the consumer.
        flattened: whether a flatten/reshape lies on the path.
        offset: where the group's first channel sits among the consumer's input columns.
        group: the group's name.
    """

    producer: str
    consumer: str
    multiplicity: int
    path: tuple[str, ...]
    flattened: bool = False
    offset: int = 0
    group: str = ""


@dataclass(frozen=True)
class ConsumerRef:
    """A layer reading one or more groups on its input dim, through ``index_map``.

    ``groups`` is the layer's ``groups`` (grouped conv): its weight's input dim holds
    ``size / groups`` columns, and each conv group reads one equal block of the map.
    ``zero_input``: the constructions under which the new entries it reads are 0 (a LayerNorm's
    output over a mean-padded stream), so its new columns may take any value.
    """

    layer: str
    index_map: IndexMap
    paths: tuple[tuple[str, ...], ...] = ()
    flattened: bool = False
    groups: int = 1
    zero_input: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FollowerRef:
    """A per-channel module or free parameter that grows with the groups in ``index_map``.

    Attributes:
        name: module path (``kind == "module"``) or parameter/buffer path (``"parameter"``).
        kind: ``"module"`` or ``"parameter"``.
        index_map: where the groups' channels sit along the follower's channel dim.
        dim: the parameter's grown dim (``"parameter"`` only).
        fill: the value a new entry gets under the paper's init (``"parameter"`` only).
    """

    name: str
    kind: str
    index_map: IndexMap
    dim: int = 0
    fill: float = 0.0

    @property
    def multiplicity(self) -> int:
        """Entries per channel of the first piece (1 unless the follower comes after a flatten)."""
        return self.index_map.pieces[0].multiplicity if self.index_map.pieces else 1


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must grow together, with everything that grows along (module docstring).

    Attributes:
        name: stable name (its first producer in depth order), usable as a plan key.
        producers: width-owning layers whose outputs carry these channels.
        consumers: layers reading them.
        followers: per-channel modules and parameters that grow with them.
        width: the number of channels when traced.
        splits: equal parts that grow alike, each at its end (``chunk(n)`` or a grouped conv
            cut the group into ``n`` splits; 1: the group grows at its end).
        granularity: a widening's ``k`` must be a multiple of it.
        reaches_output: the channels reach the model output (then never widened).
        blocked: why the group cannot be widened (``None`` when it can, apart from the output).
        multiplicity: ``(producer, m)`` for producers whose rows hold ``m`` entries per channel
            (grouped-query attention's query projection, ``m = H / H_kv``; others hold 1).
        head_size: ``d`` when the group is cut into attention heads of ``d`` channels (0: not).
            A fused ``qkv`` group's splits are one head's ``q``, ``k`` and ``v``: an init that
            copies channels would have to copy the same old head in each split.
        construction: how new channels are made exact (:mod:`netsurgeon.graph.constructions`):
            ``"append"`` (independent units), ``"mean_pad"``, ``"zero_pad"`` or ``"tile"``
            (``granularity`` is then the width).
        constructions: every construction exact for the group, preferred first.
        requirements: what the readers that restrict the constructions need, and where.
        excluded: why each construction preferred over ``construction`` is not exact
            (``"not mean_pad: ..."``, the first requirement that rules it out; ``summary()``).
        row_scales: ``(producer, parameter)`` pairs: a layer scale multiplies that producer's
            output alone (mean-padding weights the producer's new rows by it).
    """

    name: str
    producers: tuple[str, ...]
    consumers: tuple[ConsumerRef, ...] = ()
    followers: tuple[FollowerRef, ...] = ()
    width: int = 0
    splits: int = 1
    granularity: int = 1
    reaches_output: bool = False
    blocked: str | None = None
    multiplicity: tuple[tuple[str, int], ...] = ()
    head_size: int = 0

    def rows_per_channel(self, producer: str) -> int:
        """Rows of ``producer`` per channel of the group (:attr:`multiplicity`)."""
        return dict(self.multiplicity).get(producer, 1)

    construction: str = "append"
    constructions: tuple[str, ...] = ("append", "mean_pad", "zero_pad", "tile")
    requirements: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    row_scales: tuple[tuple[str, str], ...] = ()

    @property
    def blocks(self) -> int:
        """Deprecated name of :attr:`splits` ("block" means forbid: :attr:`blocked`)."""
        warnings.warn(
            "ChannelGroup.blocks is deprecated; use ChannelGroup.splits",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.splits

    @property
    def widenable(self) -> bool:
        return not self.reaches_output and self.blocked is None

    @property
    def reason(self) -> str | None:
        """Why the group cannot be widened, or ``None`` if it can."""
        if self.blocked is not None:
            return self.blocked
        if self.reaches_output:
            return (
                "its output reaches the model output, so widening it would change the output shape"
            )
        return None

    @property
    def edges(self) -> tuple[Edge, ...]:
        """One edge per (producer, consumer), at the group's first piece in that consumer."""
        found = []
        for consumer in self.consumers:
            for i, (offset, piece) in enumerate(consumer.index_map.offsets()):
                if piece.group != self.name:
                    continue
                path = consumer.paths[i] if i < len(consumer.paths) else ()
                for producer in self.producers:
                    found.append(
                        Edge(
                            producer,
                            consumer.layer,
                            piece.multiplicity,
                            path,
                            consumer.flattened,
                            offset,
                            self.name,
                        )
                    )
                break
        return tuple(found)
