"""The handler interface: what a handler may ask and record while the analysis walks the graph.

The walker (:mod:`netsurgeon.graph.analysis`) visits every fx node once, in topological order,
and asks the node's handler for the :class:`~netsurgeon.graph.layout.Layout` of its output. The
handler reads its inputs' layouts and records what it finds through this context: a new group
(a producer layer), a consumer, a follower, a join of groups, a constraint (``k`` must be a
multiple of ``n``), or a block (the groups it touches cannot grow, with the reason). Handlers
never see the walker, and the walker knows no op types.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
from torch import fx, nn

from netsurgeon.errors import UnsupportedModelError
from netsurgeon.graph.constructions import join_tags
from netsurgeon.graph.free_tensors import follower_dim, free_tensor_chain, replay_key, stray_use
from netsurgeon.graph.layout import Layout

__all__ = ["FlowContext", "Refusal"]


class Refusal(Exception):
    """Raised by :meth:`FlowContext.refuse` in non-strict mode: blocks what the node touches."""


@dataclass
class _RawConsumerRef:
    """A :class:`~netsurgeon.graph.groups.ConsumerRef` before the groups are final (a layout)."""

    layer: str
    layout: Layout
    factor: int
    groups: int


@dataclass
class _RawFollowerRef:
    """A :class:`~netsurgeon.graph.groups.FollowerRef` before the groups are final (a layout)."""

    name: str
    kind: str
    layout: Layout
    factor: int
    dim: int = 0
    fill: float = 0.0


@dataclass
class FlowContext:
    """Questions about the graph, and the records the analysis accumulates (module docstring)."""

    gm: fx.GraphModule
    registry: Any
    strict: bool
    modules: dict[str, nn.Module] = field(init=False)
    layouts: dict[fx.Node, Layout | None] = field(default_factory=dict)
    # per raw group id (union-find over them gives the final groups)
    parent: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    producers: list[list[str]] = field(default_factory=list)
    blocked: list[list[str]] = field(default_factory=list)
    splits: list[int] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    outputs: set[int] = field(default_factory=set)
    consumers: list[_RawConsumerRef] = field(default_factory=list)
    followers: list[_RawFollowerRef] = field(default_factory=list)
    node: fx.Node | None = None  # the node being analysed, for messages
    # size reads (netsurgeon.graph.sizes): arguments the current node's handler understood, and
    # (node, read layout, target layout) pairs whose channels must stay of one width
    size_claims: set[fx.Node] = field(default_factory=set)
    same_widths: list[tuple[fx.Node, Layout, Layout]] = field(default_factory=list)
    # parameters/buffers that became followers: target -> (join node, operand node, layout, dim)
    free_uses: dict[str, list[tuple[fx.Node, fx.Node, Layout, int]]] = field(default_factory=dict)
    # grouped-query attention: (node, query segment, key/value segment, g), netsurgeon.graph.ratios
    ratios: list[tuple[fx.Node, Any, Any, int]] = field(default_factory=list)
    # raw group -> head size d, for groups cut into attention heads (netsurgeon.graph.ops.heads)
    head_sizes: dict[int, int] = field(default_factory=dict)
    # the traced model: modules fx traced through (absent from ``gm``) by their path
    root: nn.Module | None = None
    # constructions (netsurgeon.graph.constructions): per raw group, (allowed, why) pairs; per
    # node, the tags of its new channels; per consumer layer, where its new inputs are zero
    requirements: list[list[tuple[frozenset[str], str]]] = field(default_factory=list)
    states: dict[fx.Node, frozenset[str]] = field(default_factory=dict)
    zero_inputs: dict[str, frozenset[str]] = field(default_factory=dict)
    row_scales: list[tuple[str, str]] = field(default_factory=list)  # (producer, layer scale)

    def __post_init__(self) -> None:
        self.modules = dict(self.gm.named_modules())
        # follower_dim's answers by (replay_key, shape, channel, rank): equal layer scales repeat
        self._follower_dims: dict[tuple[str, tuple[int, ...], int, int], Any] = {}

    # -- questions ------------------------------------------------------------------------------
    def traced_module(self, path: str) -> nn.Module | None:
        """A module of the traced model by path, including those fx traced through (``gm``
        holds only the modules it calls, under plain containers)."""
        try:
            return None if self.root is None else self.root.get_submodule(path)
        except AttributeError:
            return None

    def module_of(self, node: fx.Node) -> nn.Module:
        return self.modules[str(node.target)]

    def shape_of(self, value: Any) -> tuple[int, ...] | None:
        if not isinstance(value, fx.Node):
            return None
        if value.op == "get_attr":
            tensor = self.attr(value)
            return tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
        shape = getattr(value.meta.get("tensor_meta"), "shape", None)
        return None if shape is None else tuple(shape)

    def rank_of(self, value: Any) -> int | None:
        shape = self.shape_of(value)
        return None if shape is None else len(shape)

    def attr(self, node: fx.Node) -> Any:
        value: Any = self.gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value

    def op_name(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return type(self.module_of(node)).__name__
        if node.op == "call_method":
            return f".{node.target}()"
        return getattr(node.target, "__name__", str(node.target))

    def layout(self, value: Any) -> Layout | None:
        """The layout of a tensor argument (``None`` for constants and untracked tensors)."""
        found = self.layouts.get(value) if isinstance(value, fx.Node) else None
        return found if isinstance(found, Layout) else None

    def input(self, node: fx.Node, index: int = 0) -> Layout | None:
        return self.layout(node.args[index]) if len(node.args) > index else None

    def tracked_inputs(self, node: fx.Node) -> list[Layout]:
        """Every layout reaching ``node`` (the pieces of a multi-output input included)."""
        return [lay for n in node.all_input_nodes for lay in _layouts(self.layouts.get(n))]

    def width(self, group: int) -> int:
        return self.widths[group]

    # -- records --------------------------------------------------------------------------------
    def new_group(self, name: str, width: int, *, producer: bool = True) -> int:
        """A new group of ``width`` channels made by ``name`` (a producer layer, unless not)."""
        gid = len(self.parent)
        self.parent.append(gid)
        self.names.append(name)
        self.widths.append(width)
        self.producers.append([name] if producer else [])
        self.blocked.append([])
        self.splits.append(1)
        self.units.append(1)
        self.requirements.append([])
        return gid

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            keep, drop = (ra, rb) if ra < rb else (rb, ra)
            self.parent[drop] = keep

    def consume(self, node: fx.Node, layout: Layout, in_width: int, *, groups: int = 1) -> None:
        """Record layer ``node`` reading ``layout`` as its ``in_width`` input columns."""
        factor = self.resolve_factor(node, layout, in_width, what="input width")
        if groups > 1:
            self.require_splits(node, layout, groups, what=f"grouped convolution (groups={groups})")
        self.consumers.append(_RawConsumerRef(str(node.target), layout, factor, groups))

    def follow(
        self,
        node: fx.Node,
        name: str,
        layout: Layout,
        found: int,
        *,
        kind: str = "module",
        dim: int = 0,
        fill: float = 0.0,
    ) -> None:
        """Record a per-channel module or parameter holding ``found`` entries along ``layout``."""
        factor = self.resolve_factor(node, layout, found, what=f"'{name}' width")
        self.followers.append(_RawFollowerRef(name, kind, layout, factor, dim, fill))

    def resolve_factor(self, node: fx.Node, layout: Layout, found: int, *, what: str) -> int:
        """The flatten factor that makes ``layout`` hold ``found`` entries (checked)."""
        units = layout.units()
        if layout.factor is not None:
            if units * layout.factor != found:
                self.refuse(
                    node,
                    f"{what} is {found} but the channels arriving deliver {units * layout.factor}"
                    f" ({self.describe(layout)})",
                    fix="check the model's layer sizes",
                )
            return layout.factor
        if units == 0 or found % units:
            self.refuse(
                node,
                f"{what} {found} is not a multiple of the {units} channels arriving "
                f"({self.describe(layout)})",
                fix="check the flatten, or pass example_inputs so shapes are known",
            )
        return found // units

    def require_splits(self, node: fx.Node, layout: Layout, n: int, *, what: str) -> None:
        """The node cuts the channels into ``n`` equal splits: each must grow alike."""
        if n == 1:
            return
        segments = layout.segments
        if len(segments) != 1 or segments[0].group is None:
            self.block(node, layout, f"{what} over a concatenation of several groups")
            return
        seg = segments[0]
        gid = self.find(seg.group)
        if seg.start != 0 or seg.stop != self.widths[gid] or self.widths[gid] % n:
            self.block(node, layout, f"{what} over part of a group")
            return
        self.splits[gid] = math.lcm(self.splits[gid], n)

    def require_unit(self, layout: Layout, unit: int) -> None:
        """Each split of these groups may only grow by multiples of ``unit`` channels."""
        for gid in layout.groups:
            root = self.find(gid)
            self.units[root] = math.lcm(self.units[root], unit)

    def require_construction(
        self, node: fx.Node, layout: Layout, allowed: Iterable[str], reason: str
    ) -> None:
        """Only the constructions in ``allowed`` keep what ``node`` computes exact on these groups
        (:mod:`netsurgeon.graph.constructions`); ``reason`` says what ``node`` needs."""
        message = f"{reason} (at {node.format_node()})"
        for gid in layout.groups:
            self.requirements[gid].append((frozenset(allowed), message))

    def block(self, node: fx.Node, layout: Layout | Iterable[Layout] | None, reason: str) -> None:
        """Mark every group in ``layout`` unwidenable, naming ``node`` (not an error)."""
        layouts = [layout] if isinstance(layout, Layout) or layout is None else list(layout)
        message = f"{reason} (at {node.format_node()})"
        for lay in layouts:
            for gid in lay.all_groups if lay is not None else ():
                self.blocked[gid].append(message)

    def mark_output(self, layout: Layout) -> None:
        self.outputs.update(layout.all_groups)

    def require_same_width(self, node: fx.Node, read: Layout, target: Layout) -> None:
        """A size read off ``read``'s channels sizes ``target``'s: they must grow alike (checked
        when the groups are final; otherwise both are blocked, naming ``node``)."""
        self.same_widths.append((node, read, target))

    def check_same_widths(self) -> None:
        """Block the pairs recorded by :meth:`require_same_width` whose channels differ."""
        for node, read, target in self.same_widths:
            if self._entries_key(read) != self._entries_key(target):
                self.block(
                    node,
                    [read, target],
                    f"the size read here ({self.describe(read)}) sizes a tensor whose channels "
                    f"grow differently ({self.describe(target)})",
                )

    def check_free_tensors(self) -> None:
        """A parameter or buffer that grows with a group must be read nowhere else (its other
        reads would see the new entries) and follow channels that grow alike at every join."""
        for target, uses in self.free_uses.items():
            keys = {(self._entries_key(layout), dim) for _, _, layout, dim in uses}
            stray = stray_use(self.gm.graph, target, {(j, operand) for j, operand, _, _ in uses})
            if len(keys) > 1:
                problem = "it also follows channels that grow differently elsewhere"
            elif stray is not None:
                problem = (
                    f"it is also read at node '{stray.name}' ({self.op_name(stray)}), which would "
                    "see its new entries"
                )
            else:
                continue
            for join, _, layout, _ in uses:
                self.block(
                    join, layout, f"'{target}' would grow with these channels, but {problem}"
                )

    def _entries_key(self, layout: Layout) -> tuple[Any, ...] | None:
        if layout.factor is None:
            return None
        return tuple(
            (
                None if s.group is None else self.find(s.group),
                s.start,
                s.stop,
                s.multiplicity * layout.factor,
            )
            for s in layout.segments
        )

    # -- joins ----------------------------------------------------------------------------------
    def join(self, node: fx.Node, operands: Sequence[Any], label: str) -> Layout | None:
        """Elementwise combination of ``operands``: tracked layouts unify segment by segment.

        Python scalars are ignored; free parameters (``get_attr``, maybe ``expand`` ed) that hold
        one entry per channel become followers (``fill`` is 1 for ``mul``/``div`` and 0 for
        ``add``/``sub``); tensors of size 1 on the channel dim broadcast. Anything else blocks.
        """
        tracked = [(a, lay) for a in operands if (lay := self.layout(a)) is not None]
        if not tracked:
            return None
        # the output has the largest rank (broadcasting a position embedding (T, C) over a batch)
        first = max(range(len(tracked)), key=lambda i: tracked[i][1].rank or 0)
        base = tracked[first][1]
        others = [lay for i, (_, lay) in enumerate(tracked) if i != first]
        for other in others:
            if not self._compatible(base, other):
                if self._broadcasts(other, base):
                    self.block(node, other, f"'{label}' broadcasts these channels (width 1)")
                    continue
                if self._broadcasts(base, other):
                    self.block(node, base, f"'{label}' broadcasts these channels (width 1)")
                    base = other
                    continue
                self.block(
                    node,
                    [base, other],
                    f"'{label}' joins tensors whose channels are laid out differently "
                    f"({self.describe(base)} vs {self.describe(other)}): one producer's channels "
                    "would have to grow inside another's",
                )
                continue
            for a, b in zip(base.segments, other.segments, strict=True):
                if a.group is not None and b.group is not None:
                    self.union(a.group, b.group)
        for arg in operands:
            if not isinstance(arg, fx.Node) or self.layouts.get(arg) is not None:
                continue
            self._join_untracked(node, arg, base, label)
        tags = join_tags(self, node, list(operands), label)  # a second join of one node narrows
        self.states[node] = tags & self.states.get(node, tags)
        return base.replace(segments=tuple(s.with_path(label) for s in base.segments))

    def _compatible(self, a: Layout, b: Layout) -> bool:
        if not _same_dim(a, b):
            return False
        if len(a.segments) != len(b.segments) or a.factor != b.factor or a.heads != b.heads:
            return False
        return all(
            x.channels == y.channels
            and x.multiplicity == y.multiplicity
            and (x.group is None) == (y.group is None)
            for x, y in zip(a.segments, b.segments, strict=True)
        )

    def _broadcasts(self, small: Layout, big: Layout) -> bool:
        return (
            len(small.segments) == 1
            and small.units() == 1
            and small.normalized_dim() == big.normalized_dim()
            and big.units() > 1
        )

    def _join_untracked(self, node: fx.Node, arg: fx.Node, base: Layout, label: str) -> None:
        """``arg`` carries no channels: a scalar-like broadcast, a free tensor that becomes a
        follower (a parameter or buffer, read through indexing/view/expand), or a block."""
        chain = free_tensor_chain(arg)
        if chain is not None:
            self._join_free_tensor(node, chain, base, label)
            return
        shape = self.shape_of(arg)
        channel, rank = base.normalized_dim(), base.rank
        if shape is None or channel is None or rank is None:
            self.block(
                node,
                base,
                f"'{label}' combines the channels with '{arg.name}', whose shape is unknown",
            )
            return
        dim = channel - (rank - len(shape))
        size = shape[dim] if 0 <= dim < len(shape) else 1
        if size == 1:
            return  # broadcast along the channels
        self.block(
            node,
            base,
            f"'{label}' combines the channels with '{arg.name}' of {size} entries, which "
            "netsurgeon does not track",
        )

    def _join_free_tensor(self, node: fx.Node, chain: list[fx.Node], base: Layout, label: str):
        """A parameter or buffer read in forward: per-channel along one of its dims, it follows
        the group (new entries 1 for ``mul``/``div``, else 0); otherwise the group is blocked."""
        source = chain[0]
        tensor = self.attr(source)
        channel, rank = base.normalized_dim(), base.rank
        if channel is None or rank is None:  # counted from the end, as broadcasting aligns
            channel, rank = base.dim, 0
        found = self._follower_dim(chain, tuple(tensor.shape), channel, rank)
        if found == "broadcast":
            return
        target = str(source.target)
        problem = None
        if isinstance(found, str):
            problem = found
        elif target.rpartition(".")[2].startswith("_tensor_constant"):
            problem = "it is a constant made while tracing, not a tensor of the model"
        elif base.flattened:
            problem = "the channels are flattened"
        elif base.heads is not None:
            problem = "the channels are cut into attention heads (a per-head table)"
        elif label in _DIVISION and node.args and node.args[0] is chain[-1]:
            problem = "it is divided by the channels (a new channel could be 0)"
        if problem is not None:
            self.block(
                node,
                base,
                f"'{label}' combines the channels with '{target}' (shape {tuple(tensor.shape)}) "
                f"and {problem}, so netsurgeon cannot grow it with them",
            )
            return
        fill = 1.0 if label in _MULTIPLICATIVE else 0.0
        size = tensor.shape[found]
        self.follow(node, target, base, size, kind="parameter", dim=found, fill=fill)
        self.free_uses.setdefault(target, []).append((node, chain[-1], base, found))

    def _follower_dim(self, chain: list[fx.Node], shape: tuple[int, ...], channel: int, rank: int):
        """:func:`follower_dim`, replayed once per distinct chain, shape and position."""
        ops = replay_key(chain)
        if ops is None:
            return follower_dim(chain, shape, channel, rank)
        key = (ops, shape, channel, rank)
        if key not in self._follower_dims:
            self._follower_dims[key] = follower_dim(chain, shape, channel, rank)
        return self._follower_dims[key]

    # -- failures -------------------------------------------------------------------------------
    def describe(self, layout: Layout) -> str:
        parts = []
        for s in layout.segments:
            who = "untracked" if s.group is None else self.names[self.find(s.group)]
            span = "" if s.group is None else f"[{s.start}:{s.stop}]"
            parts.append(f"{who}{span}" + (f" x{s.multiplicity}" if s.multiplicity != 1 else ""))
        dim = layout.normalized_dim()
        where = f"dim {dim}" if dim is not None else f"dim {layout.dim} from the end, rank unknown"
        return f"channels on {where}: " + " + ".join(parts)

    def unknown(self, node: fx.Node, what: str) -> NoReturn:
        """Shapes are needed to follow the channels here: block what ``node`` touches."""
        raise Refusal(
            f"{what} at {node.format_node()}; pass example_inputs to trace/widen so shapes "
            "are known"
        )

    def refuse(self, node: fx.Node, what: str, *, fix: str) -> NoReturn:
        """Strict: raise :class:`UnsupportedModelError`; else block what ``node`` touches."""
        where = f"module '{node.target}'" if node.op == "call_module" else f"node '{node.name}'"
        if self.strict:
            raise UnsupportedModelError(
                f"cannot analyse the channels at {where}: {what}.\n  fx node: "
                f"{node.format_node()}\n  fix: {fix}; or trace(model, strict=False) to analyse "
                "the rest of the model"
            )
        raise Refusal(f"cannot analyse the channels at {where}: {what} (fix: {fix})")


def _same_dim(a: Layout, b: Layout) -> bool:
    """Channels on one dim; of two known ranks, counted from the end, as broadcasting aligns."""
    if a.rank is not None and b.rank is not None and a.rank != b.rank:
        ends = (a.rank - a.normalized_dim(), b.rank - b.normalized_dim())
        return a.heads is None and b.heads is None and ends[0] == ends[1]
    return a.normalized_dim() == b.normalized_dim() and (a.dim == b.dim or a.rank is not None)


_DIVISION = frozenset({"truediv", "div", "itruediv", ".div()"})
# new entries of a free tensor joined by these are 1 (``pow``: ``1 ** x``, ``x ** 1`` are finite)
_MULTIPLICATIVE = _DIVISION | {"mul", "imul", ".mul()", "pow"}


def _layouts(value: Any) -> list[Layout]:
    """The layouts inside a node's value: a layout, a tuple of them, or ``Pieces``."""
    if isinstance(value, Layout):
        return [value]
    if isinstance(value, tuple):
        return [v for v in value if isinstance(v, Layout)]
    if value is not None and hasattr(value, "layouts"):
        return [v for v in (*value.layouts, value.same) if isinstance(v, Layout)]
    return []
