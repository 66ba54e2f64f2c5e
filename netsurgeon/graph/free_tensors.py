"""Parameters and buffers read in ``forward`` (``get_attr`` nodes) that meet the channels.

A layer scale ``h * self.gamma[None, :, None, None]`` or a per-channel buffer must grow with the
group it multiplies or shifts, or the forward breaks after a widening. :func:`free_tensor_chain`
finds the tensor behind an operand through indexing, ``view``/``reshape``, ``(un)squeeze``,
``expand`` and casts; :func:`follower_dim` decides which of its dims lands on the channels by
replaying those ops on coordinate tensors, so no op needs its own rule here.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

__all__ = ["follower_dim", "free_tensor_chain", "stray_use"]

_INDEXING_METHODS = frozenset(
    {"expand", "expand_as", "to", "type_as", "view", "reshape", "unsqueeze", "squeeze",
     "contiguous", "float", "double", "half", "bfloat16", "detach"}
)  # fmt: skip
_INDEXING_FUNCTIONS = (operator.getitem, torch.unsqueeze, torch.reshape, torch.squeeze)


def free_tensor_chain(node: fx.Node) -> list[fx.Node] | None:
    """``[get_attr, op, ..., node]`` when ``node`` is a parameter or buffer read through
    indexing, ``view``/``reshape``, ``(un)squeeze``, ``expand`` or a cast with constant
    arguments (``expand_as``'s tensor aside); else ``None``."""
    chain = [node]
    while node.op != "get_attr":
        if not _is_indexing(node):
            return None
        node = node.args[0]  # type: ignore[assignment]
        chain.append(node)
    return chain[::-1]


def _is_indexing(node: fx.Node) -> bool:
    """An op of a :func:`free_tensor_chain` on its first argument (constants otherwise)."""
    indexing = (node.op == "call_method" and node.target in _INDEXING_METHODS) or (
        node.op == "call_function" and node.target in _INDEXING_FUNCTIONS
    )
    if not indexing or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    rest = [*node.args[1:], *node.kwargs.values()]
    if node.target == "expand":  # sizes read off the input (``x.shape[0]``): kept when replayed
        return True
    return node.target == "expand_as" or not any(_has_node(a) for a in rest)


def stray_use(
    graph: fx.Graph, target: str, accepted: set[tuple[fx.Node, fx.Node]]
) -> fx.Node | None:
    """A node reading ``target`` (through indexing ops) other than the ``(join, operand)`` pairs
    in ``accepted``, or ``None``."""
    for node in graph.nodes:
        if node.op != "get_attr" or str(node.target) != target:
            continue
        stack = [node]
        while stack:
            current = stack.pop()
            for user in current.users:
                if (user, current) in accepted:
                    continue
                if _is_indexing(user) and user.args[0] is current:
                    stack.append(user)
                    continue
                return user
    return None


def follower_dim(chain: list[fx.Node], shape: tuple[int, ...], channel: int, rank: int) -> Any:
    """Which dim of the tensor read by ``chain`` lands on the channel dim ``channel`` of a
    rank-``rank`` operand: an int, ``"broadcast"`` (size 1 there), or why it cannot follow.

    Replays the chain on coordinate tensors (entry = its index along one dim), at the tensor's
    size and at sizes grown by 1 and 2 along the found dim, so a literal size in a ``view`` that
    would break after a widening is caught here.
    """
    try:
        out = _replay(chain, torch.zeros(shape, dtype=torch.float64))
    except Exception as e:
        return f"replaying its indexing failed ({type(e).__name__}: {e})"
    where = channel - (rank - out.dim())
    if where < 0 or out.shape[where] == 1:
        return "broadcast"
    for dim in range(len(shape)):
        if all(_maps_onto(chain, shape, dim, grow, where) for grow in (0, 1, 2)):
            return dim
    return f"none of its dims maps one-to-one onto the {out.shape[where]} channels"


def replay_key(chain: list[fx.Node]) -> str | None:
    """What :func:`follower_dim` reads of ``chain`` besides the shape (each replayed op and its
    arguments), as a key to reuse its answer for equal chains (a model's layer scales), or
    ``None`` when an argument is a tensor (its ``repr`` may elide entries)."""
    ops = [(node.op, node.target, node.args[1:], node.kwargs) for node in chain[1:]]
    if any(isinstance(a, torch.Tensor) for op in ops for a in (*op[2], *op[3].values())):
        return None
    return repr(ops)


def _maps_onto(chain: list[fx.Node], shape: tuple[int, ...], dim: int, grow: int, where: int):
    """Whether, with ``dim`` grown by ``grow``, the replayed entries along ``where`` are ``dim``'s
    indices in order and no other dim varies along ``where``."""
    grown = list(shape)
    grown[dim] += grow
    try:
        for other in range(len(shape)):
            view = [1] * len(shape)
            view[other] = grown[other]
            coords = torch.arange(grown[other], dtype=torch.float64).view(view).expand(grown)
            out = _replay(chain, coords)
            if where >= out.dim():
                return False
            along = out.movedim(where, -1)
            if other == dim:
                if along.shape[-1] != grown[dim]:
                    return False
                expected = torch.arange(grown[dim], dtype=torch.float64).expand_as(along)
            else:
                expected = along[..., :1].expand_as(along)
            if not torch.equal(along, expected):
                return False
    except Exception:
        return False
    return True


def _replay(chain: list[fx.Node], tensor: torch.Tensor) -> torch.Tensor:
    for node in chain[1:]:
        args = node.args[1:]
        if node.target == "expand_as":
            continue  # broadcasting against the operand does the same
        if node.target == "expand":  # a size read (a batch size) keeps the replayed dim
            args = tuple(-1 if isinstance(a, fx.Node) else a for a in _sizes(args))
        if node.op == "call_method":
            tensor = getattr(tensor, str(node.target))(*args, **node.kwargs)
        else:
            tensor = node.target(tensor, *args, **node.kwargs)  # type: ignore[operator]
    return tensor


def _sizes(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``expand``'s sizes, given as ``(a, b)`` or ``((a, b),)``."""
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def _has_node(value: Any) -> bool:
    if isinstance(value, fx.Node):
        return True
    if isinstance(value, (tuple, list)):
        return any(_has_node(v) for v in value)
    if isinstance(value, slice):
        return any(_has_node(v) for v in (value.start, value.stop, value.step))
    return False
