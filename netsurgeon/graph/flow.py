"""What the dependency walker carries along a path, and what a handler answers.

A producer's output channels live on one dimension of every tensor downstream of it, until a
consumer layer reads them. :class:`ChannelState` records where they are:

* ``dim`` - the dimension holding the channels (non-negative when the rank is known, else -1
  for "last dimension", which is where ``nn.Linear`` puts its features),
* ``rank`` - the tensor rank when known (from shape propagation or the producer's type),
* ``multiplicity`` - after a flatten, how many consecutive features each channel owns
  (``H*W`` for a ``C x H x W`` map); ``1`` before any flatten; ``None`` when a flatten happened
  but the spatial size is not known yet (it is then inferred from the consumer's width).

Example: ``Conv2d(3, 8) -> BatchNorm2d -> ReLU -> MaxPool2d -> flatten -> Linear(8*16*16, 10)``
starts as ``ChannelState(dim=1, rank=4)`` after the conv, stays so through BN, ReLU and pooling,
and becomes ``ChannelState(dim=1, rank=2, multiplicity=256)`` after the flatten (with shapes) or
``multiplicity=None`` (without), which the Linear resolves to ``2048 / 8 = 256``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

__all__ = ["ChannelState", "Flow", "FlowKind"]


@dataclass(frozen=True)
class ChannelState:
    """Where a producer's channels sit in the tensor at one node (see module docstring)."""

    dim: int
    rank: int | None
    multiplicity: int | None = 1
    flattened: bool = False

    def normalized_dim(self) -> int | None:
        """The channel dimension as a non-negative index, or ``None`` when it cannot be known."""
        if self.dim >= 0:
            return self.dim
        return None if self.rank is None else self.rank + self.dim

    def is_last_dim(self) -> bool:
        """Whether the channels are on the last dimension (what ``nn.Linear`` reads)."""
        if self.dim == -1:
            return True
        return self.rank is not None and self.dim == self.rank - 1

    def replace(self, **changes: object) -> ChannelState:
        return dataclasses.replace(self, **changes)


class FlowKind(Enum):
    """How a node treats the channels arriving at it."""

    PASS = "pass"  # width-preserving: channels continue, maybe with a new state
    FOLLOWER = "follower"  # channel-wise parameters (BatchNorm): grows with the producer
    CONSUMER = "consumer"  # a layer reads the channels on its input dimension
    QUERY = "query"  # reads only metadata (``x.size(0)``): no data flows on
    BLOCK = "block"  # the channels may flow on, but the producer can no longer be widened


@dataclass(frozen=True)
class Flow:
    """A handler's answer for one node on one producer's path.

    Attributes:
        kind: what the node does to the channels.
        state: the channel state on the node's output (for ``PASS``/``FOLLOWER``/``BLOCK``).
        label: a short description of the op, shown in summaries and edge data.
        reason: for ``BLOCK``, why the producer cannot be widened and how to fix it.
    """

    kind: FlowKind
    state: ChannelState | None = None
    label: str = ""
    reason: str | None = None
