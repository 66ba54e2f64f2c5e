"""How a group's new channels are made exact: the constructions, and the values they carry.

A group grows by ``k`` channels. Most groups are read only by layers and per-channel ops, and any
new units do (``"append"``: independent units, zero consumer columns; ``init="paper"`` or
``"net2net"``). A group read by a normalisation across its channels (a transformer's residual
stream before ``LayerNorm``/``RMSNorm``) needs new channels whose values keep the statistics:

* ``"mean_pad"`` (LayerNorm streams, any ``k``): every producer's new row is the mean of its
  old rows, so each new channel carries the mean of the old ones at every position; the
  LayerNorm's mean is unchanged, its variance scaled by ``s = C / (C + k)``.
* ``"zero_pad"`` (RMSNorm streams, any ``k``): new channels are 0; the mean square scales by
  ``s``.
* ``"tile"`` (``k`` a multiple of the width): every channel is copied, statistics unchanged.

Handlers state what they need (:meth:`FlowContext.require_construction`); the analysis
intersects the requirements of a group and picks the first allowed in :data:`PREFERENCE`.

**Values.** Whether a tensor's new channels hold what a normalisation needs depends on the ops
between the producers and the norm. The walker gives each node a set of *tags*, true of its new
channels under a construction: ``"mean"`` (the mean of the old channels, under ``mean_pad``),
``"zero_mp"`` (0 under ``mean_pad``: a LayerNorm's output), ``"zero_zp"`` (0 under
``zero_pad``). A producer's output carries ``{"mean", "zero_zp"}``; an op whose handler says
``stream_effect = "same"`` (dropout, identity, permute, reshape, indexing other dims) passes its
input's tags; joins combine them (:func:`join_tags`); anything else carries none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import fx

from netsurgeon.graph.axes import NormOf
from netsurgeon.graph.free_tensors import free_tensor_chain

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = [
    "ALL",
    "APPEND",
    "MEAN_PAD",
    "PREFERENCE",
    "TILE",
    "ZERO_PAD",
    "choose",
    "construction_under",
    "excluded",
    "granularity_under",
    "join_tags",
    "layer_tags",
    "zero_under",
]

APPEND, MEAN_PAD, ZERO_PAD, TILE = "append", "mean_pad", "zero_pad", "tile"
PREFERENCE = (APPEND, MEAN_PAD, ZERO_PAD, TILE)
ALL = frozenset(PREFERENCE)

MEAN, ZERO_MP, ZERO_ZP = "mean", "zero_mp", "zero_zp"
_ADDITIVE = frozenset({"add", "sub", "iadd", "isub", "cat", "stack", "add_", "sub_"})
_MULTIPLICATIVE = frozenset({"mul", "imul", "truediv", "div", "itruediv", "mul_", "div_"})


def layer_tags() -> frozenset[str]:
    """A producer's output: its new rows are the mean of its old rows (``mean_pad``) or 0."""
    return frozenset({MEAN, ZERO_ZP})


def norm_tags() -> frozenset[str]:
    """A normalisation's output over a padded stream: its new channels are ``0 * gamma + 0``."""
    return frozenset({ZERO_MP, ZERO_ZP})


def zero_under(tags: frozenset[str]) -> frozenset[str]:
    """The constructions under which a tensor with ``tags`` has zero new channels (a consumer
    reading it may then give its new columns any value)."""
    return frozenset(c for c, tag in ((MEAN_PAD, ZERO_MP), (ZERO_PAD, ZERO_ZP)) if tag in tags)


def join_tags(ctx: FlowContext, node: fx.Node, operands: list[Any], label: str) -> frozenset[str]:
    """The tags of an element-wise join's output (see the module docstring).

    ``a + b``: the mean of a sum is the sum of means, zeros add to zero. A free parameter added
    (a position embedding, a class token concatenated on the token dim) gets new entries equal to
    the mean of its old ones under ``mean_pad`` and 0 under ``zero_pad``: the mean survives, a
    zero under ``mean_pad`` does not. A scalar or a per-position tensor (size 1 on the channels)
    keeps the mean under ``+`` and both under ``*``. ``a * b`` of two streams keeps only zeros; a
    per-channel parameter multiplied in (a layer scale) keeps zeros, not the mean.
    """
    additive, multiplicative = label in _ADDITIVE, label in _MULTIPLICATIVE
    if not (additive or multiplicative):
        return frozenset()
    tracked = [a for a in operands if ctx.layout(a) is not None]
    states = [ctx.states.get(a, frozenset()) for a in tracked]
    if multiplicative and len(states) > 1:
        return frozenset({ZERO_MP, ZERO_ZP}) & frozenset().union(*states)
    tags = frozenset.intersection(*states) if states else frozenset()
    followed = {op for uses in ctx.free_uses.values() for join, op, _, _ in uses if join is node}
    for arg in operands:
        if ctx.layout(arg) is not None:
            continue
        if not isinstance(arg, fx.Node):  # a Python number
            tags &= {MEAN} if additive else tags
        elif arg in followed and additive:  # a per-channel parameter added
            tags &= {MEAN, ZERO_ZP}
        elif arg in followed:  # multiplied in: a layer scale
            scaled = _layer_scale(ctx, node, tracked, arg, label)
            tags &= {MEAN, ZERO_MP, ZERO_ZP} if scaled else {ZERO_MP, ZERO_ZP}
        else:  # broadcast along the channels (a per-position or per-sample tensor)
            tags &= {MEAN} if additive else tags
    return tags


def _layer_scale(
    ctx: FlowContext, node: fx.Node, tracked: list, scale: fx.Node, label: str
) -> bool:
    """``layer(x) * gamma``, the layer's output read nowhere else: mean-padding keeps the mean by
    giving the layer's new rows ``mean_c(gamma_c row_c) / gamma_new`` (recorded for the surgery)."""
    if label not in ("mul", "imul", "mul_") or len(tracked) != 1:
        return False
    producer = tracked[0]
    if producer.op != "call_module" or len(producer.users) != 1:
        return False
    if MEAN not in ctx.states.get(producer, frozenset()):
        return False
    chain = free_tensor_chain(scale)
    if chain is None:
        return False
    ctx.row_scales.append((str(producer.target), str(chain[0].target)))
    return True


def choose(
    requirements: list[tuple[frozenset[str], str]], width: int, splits: int, unit: int
) -> tuple[str | None, tuple[str, ...], str | None]:
    """``(construction, allowed in preference order, why none)`` for one group.

    ``requirements`` are ``(allowed, message)`` pairs recorded by handlers. ``tile`` needs the
    width to cut into the group's splits and normalisation units.
    """
    allowed = frozenset(ALL)
    for found, _ in requirements:
        allowed &= found
    if (width // max(splits, 1)) % max(unit, 1) or width % max(splits, 1):
        allowed -= {TILE}
    if splits > 1:  # a grouped producer's new row reads one split: the mean of all rows is wrong
        allowed -= {MEAN_PAD}
    ordered = tuple(c for c in PREFERENCE if c in allowed)
    if ordered:
        return ordered[0], ordered, None
    messages = "; ".join(dict.fromkeys(m for _, m in requirements))
    return None, (), f"no construction keeps it exact: {messages}"


def construction_under(group: Any, init: str) -> str:
    """The construction a widening with ``init`` (a registered name) gives ``group``.

    A construction's own name applies to every group; ``"net2net"`` tiles a group that is not
    ``append`` (copies at random would change a norm's statistics); any other init keeps the
    group's own construction. Whether the result is exact for the group is
    ``result in group.constructions``.

    Example:
        >>> from netsurgeon.graph.groups import ChannelGroup
        >>> stream = ChannelGroup("embed", ("embed",), width=16, construction="mean_pad")
        >>> construction_under(stream, "paper"), construction_under(stream, "net2net")
        ('mean_pad', 'tile')
    """
    if init in (MEAN_PAD, ZERO_PAD, TILE):
        return init
    if init == "net2net" and group.construction != APPEND:
        return TILE
    return group.construction


def granularity_under(group: Any, init: str) -> int:
    """The multiple a widening of ``group`` with ``init`` must grow by: its width where the
    channels are tiled, else ``group.granularity``.

    Example:
        >>> from netsurgeon.graph.groups import ChannelGroup
        >>> stream = ChannelGroup("embed", ("embed",), width=16, construction="mean_pad")
        >>> granularity_under(stream, "paper"), granularity_under(stream, "net2net")
        (1, 16)
    """
    return group.width if construction_under(group, init) == TILE else group.granularity


def excluded(requirements: list[tuple[frozenset[str], str]], chosen: str | None) -> tuple[str, ...]:
    """Why each construction preferred over ``chosen`` is not exact: ``"not X: message"``, the
    first requirement ruling ``X`` out (a width that does not tile says nothing here)."""
    if chosen is None:
        return ()
    found = []
    for better in PREFERENCE[: PREFERENCE.index(chosen)]:
        message = next((m for allowed, m in requirements if better not in allowed), None)
        if message is not None:
            found.append(f"not {better}: {message}")
    return tuple(found)


def record_tags(node: fx.Node, handler: Any, is_layer: bool, ctx: FlowContext) -> None:
    """The tags of ``node``'s output, unless its handler set them (a join, a norm); a layer's
    input tags also say where its new input columns may take any value."""
    # a tuple-valued input counts too (``MultiheadAttention``'s ``(out, weights)``, read by getitem)
    inputs = [n for n in node.all_input_nodes if ctx.layouts.get(n) is not None]
    first = ctx.states.get(inputs[0], frozenset()) if inputs else frozenset()
    if is_layer:
        ctx.zero_inputs[str(node.target)] = zero_under(first)
        rows = handler.rows(ctx.module_of(node))
        # weight norm's rows are g v / |v|: neither a mean of v rows nor zero v rows pad
        plain = not any(isinstance(a.fill, NormOf) for a in rows)
        ctx.states[node] = layer_tags() if plain else frozenset()
    elif node not in ctx.states:
        same = handler is not None and handler.stream_effect_of(node, ctx) == "same"
        ctx.states[node] = first if same else frozenset()
