"""The dependency walker: from each producer layer, follow its channels to every consumer.

For every layer node of the fx graph the walker starts a depth-first walk over the node's users.
At each node it asks the handler registry what happens to the channels (a
:class:`~netsurgeon.graph.flow.Flow`): they pass on (activations, pooling, flatten), a follower
grows with them (BatchNorm), a layer consumes them (the edge producer -> consumer, with the flatten
multiplicity), or the path ends. The walker itself knows no op types.

Worked example, ``conv1 -> bn1 -> relu -> max_pool2d -> flatten -> fc``::

    conv1: ChannelState(dim=1, rank=4)
      bn1          FOLLOWER   (num_features checked against conv1.out_channels)
      relu         PASS
      max_pool2d   PASS       (spatial size changes, channels stay on dim 1)
      flatten      PASS       ChannelState(dim=1, rank=2, multiplicity=H*W, flattened=True)
      fc           CONSUMER   Edge(conv1 -> fc, multiplicity=H*W)

The result is one :class:`ChannelGroup` per producer. A group is the unit of surgery: its producers
gain output channels together, its consumers gain the matching input columns, its followers grow.
Today a group has one producer; residual ``add``/``cat`` will join producers into one group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from torch import fx, nn

from netsurgeon.errors import UnsupportedModelError
from netsurgeon.graph.flow import ChannelState, Flow, FlowKind
from netsurgeon.graph.registry import Registry

if TYPE_CHECKING:
    from netsurgeon.graph.handlers import LayerHandler

__all__ = ["ChannelGroup", "Edge", "FollowerRef", "WalkContext", "analyse"]

META_GROUP = "netsurgeon.group"
META_STATE = "netsurgeon.channel_state"


@dataclass(frozen=True)
class Edge:
    """Producer ``producer``'s channel ``c`` feeds consumer input columns ``[c*m, (c+1)*m)``.

    Attributes:
        producer: qualified name of the producing layer.
        consumer: qualified name of the consuming layer.
        multiplicity: ``m``, features per channel at the consumer (1 unless flattened).
        path: labels of the ops between the two, in order.
        flattened: whether a flatten/reshape lies on the path (else the mapping is identity).
    """

    producer: str
    consumer: str
    multiplicity: int
    path: tuple[str, ...]
    flattened: bool = False


@dataclass(frozen=True)
class FollowerRef:
    """A channel-wise module that grows with a producer: ``multiplicity`` entries per channel."""

    name: str
    multiplicity: int


@dataclass(frozen=True)
class ChannelGroup:
    """Producers whose output channels must grow together, with everything that grows along.

    Attributes:
        producers: qualified names of the producing layers (one today).
        edges: every producer -> consumer edge.
        followers: channel-wise modules on the producers' paths.
        reaches_output: whether the channels reach the model's output (then never widened).
        blocked: why the group cannot be widened (``None`` when it can, apart from the output).
    """

    producers: tuple[str, ...]
    edges: tuple[Edge, ...] = ()
    followers: tuple[FollowerRef, ...] = ()
    reaches_output: bool = False
    blocked: str | None = None

    @property
    def widenable(self) -> bool:
        return not self.reaches_output and self.blocked is None


class _Refusal(Exception):
    """Raised by :meth:`WalkContext.refuse` in non-strict mode: blocks the current producer."""


@dataclass
class WalkContext:
    """What handlers may ask about the graph while one producer's channels are being followed."""

    gm: fx.GraphModule
    registry: Registry
    strict: bool
    modules: dict[str, nn.Module] = field(init=False)
    producer: str = ""
    width: int = 0

    def __post_init__(self) -> None:
        self.modules = dict(self.gm.named_modules())

    # -- questions ------------------------------------------------------------------------------
    def module_of(self, node: fx.Node) -> nn.Module:
        return self.modules[str(node.target)]

    def rank_of(self, node: fx.Node) -> int | None:
        meta = node.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        return None if shape is None else len(shape)

    def shape_of(self, node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        shape = getattr(meta, "shape", None)
        return None if shape is None else tuple(shape)

    def op_name(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return type(self.module_of(node)).__name__
        if node.op == "call_method":
            return f".{node.target}()"
        return getattr(node.target, "__name__", str(node.target))

    def same_dim(self, dim: int, state: ChannelState) -> bool:
        channel = state.normalized_dim()
        if dim >= 0 or state.rank is None:
            return channel is None or dim == channel or (dim == -1 and state.is_last_dim())
        return dim + state.rank == channel

    def is_batch_size(self, arg: Any) -> bool:
        """``x.size(0)``, ``x.size(dim=0)``, ``x.shape[0]`` or ``x.size()[0]`` of any traced tensor."""
        if not isinstance(arg, fx.Node):
            return False
        if arg.op == "call_method" and arg.target == "size":
            dim = arg.args[1] if len(arg.args) > 1 else arg.kwargs.get("dim")
            return dim == 0
        if arg.op == "call_function" and getattr(arg.target, "__name__", "") == "getitem":
            source, index = arg.args[0], arg.args[1]
            return (
                index == 0
                and isinstance(source, fx.Node)
                and (
                    (
                        source.op == "call_method"
                        and source.target == "size"
                        and len(source.args) == 1
                    )
                    or (source.op == "call_function" and source.args[1:] == ("shape",))
                )
            )
        return False

    # -- shared flows ---------------------------------------------------------------------------
    def pool_flow(self, node: fx.Node, state: ChannelState, label: str) -> Flow:
        if state.flattened or state.normalized_dim() != 1:
            self.refuse(
                node,
                f"pooling reads channels on dim 1, found them on dim {state.normalized_dim()} "
                f"(flattened={state.flattened})",
                fix="pool before flattening",
            )
        return Flow(FlowKind.PASS, state, label=label)

    def flatten_flow(
        self, node: fx.Node, state: ChannelState, start: Any, end: Any, label: str
    ) -> Flow:
        rank = state.rank
        start_n = start + rank if isinstance(start, int) and start < 0 and rank else start
        end_n = end + rank if isinstance(end, int) and end < 0 and rank else end
        if start_n != 1 or (end != -1 and end_n != (rank or 0) - 1):
            self.refuse(
                node,
                f"flatten(start_dim={start}, end_dim={end}) of a rank-{rank} tensor; only "
                "flattening everything after the batch dim is supported",
                fix="use torch.flatten(x, 1)",
            )
        if state.normalized_dim() != 1:
            self.refuse(
                node,
                f"flattening with the channels on dim {state.normalized_dim()} interleaves them",
                fix="flatten channel-first tensors only",
            )
        shape = self.shape_of(node.all_input_nodes[0]) if node.all_input_nodes else None
        if shape is not None:
            spatial = 1
            for size in shape[2:]:
                spatial *= size
            multiplicity: int | None = (state.multiplicity or 1) * spatial
        elif rank == 2:
            multiplicity = state.multiplicity
        else:
            multiplicity = None
        return Flow(
            FlowKind.PASS,
            ChannelState(dim=1, rank=2, multiplicity=multiplicity, flattened=True),
            label=label,
        )

    def per_channel(self, node: fx.Node, state: ChannelState, found: int, *, what: str) -> int:
        """Entries per producer channel in a dim holding ``found`` entries (checked).

        After a flatten of unknown spatial size (``state.multiplicity is None``) the answer is
        inferred as ``found / width``, as a ``Linear`` consumer does; otherwise ``found`` must be
        ``width * multiplicity``.
        """
        if state.multiplicity is None:
            if found % self.width:
                self.refuse(
                    node,
                    f"{what}={found} is not a multiple of the producer's width {self.width}",
                    fix="check the flatten, or pass example_inputs so shapes are known",
                )
            return found // self.width
        self.expect_width(node, found, self.width * state.multiplicity, what=what)
        return state.multiplicity

    # -- failures -------------------------------------------------------------------------------
    def expect_width(self, node: fx.Node, found: int, expected: int, *, what: str) -> None:
        if found != expected:
            self.refuse(
                node,
                f"{what}={found} but the producer '{self.producer}' delivers {expected} "
                f"(width {self.width})",
                fix="check the model's layer sizes",
            )

    def refuse(self, node: fx.Node, what: str, *, fix: str) -> NoReturn:
        where = f"module '{node.target}'" if node.op == "call_module" else f"node '{node.name}'"
        message = (
            f"cannot analyse the channels of layer '{self.producer}' at {where}: {what}.\n"
            f"  fx node: {node.format_node()}\n  fix: {fix}"
        )
        if self.strict:
            raise UnsupportedModelError(message)
        raise _Refusal(message)


def analyse(
    gm: fx.GraphModule, registry: Registry, *, strict: bool = True
) -> dict[str, ChannelGroup]:
    """Build one :class:`ChannelGroup` per layer of ``gm``, in depth order.

    Args:
        gm: a traced model (with ``tensor_meta`` on its nodes when shapes were propagated).
        registry: handler lookup.
        strict: raise on anything unsupported (default) instead of marking the affected
            producers as blocked.

    Raises:
        UnsupportedModelError: with ``strict``, on coupled widths, weight sharing, grouped
            convolutions and unknown ops, naming the fx node and the module path.
    """
    ctx = WalkContext(gm, registry, strict)
    layer_nodes = [n for n in gm.graph.nodes if _role(n, ctx) == "layer"]
    shared = _shared_modules(gm, ctx)
    groups: dict[str, ChannelGroup] = {}
    for node in layer_nodes:
        name = str(node.target)
        handler: LayerHandler = registry.for_node(node, ctx.modules)  # type: ignore[assignment]
        module = ctx.modules[name]
        ctx.producer, ctx.width = name, handler.out_width(module)
        try:
            if name in shared:
                ctx.refuse(node, shared[name], fix="give each call its own module")
            reason = handler.unsupported_reason(module)
            if reason is not None:
                ctx.refuse(node, reason, fix="replace it with a supported layer")
            group = _walk(node, handler.producer_state(node, module, ctx), ctx, shared)
        except _Refusal as refusal:
            group = ChannelGroup(producers=(name,), blocked=str(refusal))
        node.meta[META_GROUP] = group
        groups[name] = group
    return groups


def _role(node: fx.Node, ctx: WalkContext) -> str | None:
    if node.op != "call_module":
        return None
    handler = ctx.registry.for_module(ctx.modules[str(node.target)])
    return None if handler is None else handler.role


def _shared_modules(gm: fx.GraphModule, ctx: WalkContext) -> dict[str, str]:
    """Layers/followers called more than once, or whose parameters are read directly."""
    calls: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for node in gm.graph.nodes:
        if _role(node, ctx) in ("layer", "follower"):
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
        elif node.op == "get_attr":
            owner = str(node.target).rpartition(".")[0]
            if _role_of_name(owner, ctx) in ("layer", "follower"):
                reasons[owner] = (
                    f"its parameter '{node.target}' is used directly by the forward "
                    "(weight sharing or a functional call)"
                )
    for name, count in calls.items():
        if count > 1:
            reasons[name] = f"module '{name}' is called {count} times (weight sharing)"
    for name, others in _tied_parameters(gm, ctx).items():
        reasons.setdefault(name, f"it shares a parameter with {others} (tied weights)")
    return reasons


def _tied_parameters(gm: fx.GraphModule, ctx: WalkContext) -> dict[str, str]:
    """``{module: other users}`` for parameters reached by two call sites or attribute reads."""
    owners: dict[int, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            params = list(ctx.modules[str(node.target)].parameters())
        elif node.op == "get_attr":
            value: Any = gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            params = [value] if isinstance(value, nn.Parameter) else []
        else:
            continue
        for param in params:
            names = owners.setdefault(id(param), [])
            if str(node.target) not in names:
                names.append(str(node.target))
    tied: dict[str, str] = {}
    for names in owners.values():
        for name in names if len(names) > 1 else ():
            tied.setdefault(name, ", ".join(repr(n) for n in names if n != name))
    return tied


def _role_of_name(name: str, ctx: WalkContext) -> str | None:
    module = ctx.modules.get(name)
    handler = None if module is None else ctx.registry.for_module(module)
    return None if handler is None else handler.role


def _walk(
    start: fx.Node, state: ChannelState, ctx: WalkContext, shared: dict[str, str]
) -> ChannelGroup:
    edges: list[Edge] = []
    followers: list[FollowerRef] = []
    reaches_output = False
    blocked: str | None = None
    start.meta[META_STATE] = state
    stack = [(user, state, ()) for user in reversed(list(start.users))]
    seen: set[fx.Node] = set()
    while stack:
        node, state, path = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.op == "output":
            reaches_output = True
            continue
        handler = ctx.registry.for_node(node, ctx.modules)
        if handler is None:
            ctx.refuse(
                node,
                f"'{ctx.op_name(node)}' is not a known width-preserving op",
                fix="register a handler for it (netsurgeon.graph.registry) or make the enclosing "
                "module a leaf",
            )
        flow = handler.flow(node, state, ctx)
        label = flow.label or ctx.op_name(node)
        if flow.kind is FlowKind.CONSUMER:
            assert flow.state is not None and flow.state.multiplicity is not None
            edges.append(
                Edge(
                    ctx.producer,
                    str(node.target),
                    flow.state.multiplicity,
                    path,
                    flattened=flow.state.flattened,
                )
            )
            continue
        if flow.kind is FlowKind.QUERY:
            continue
        if flow.kind is FlowKind.FOLLOWER:
            if str(node.target) in shared:  # a follower shared by two producers grows twice
                ctx.refuse(node, shared[str(node.target)], fix="give each call its own module")
            followers.append(FollowerRef(str(node.target), flow.state.multiplicity or 1))
        if flow.kind is FlowKind.BLOCK:
            blocked = blocked or f"{flow.reason} (at {node.format_node()})"
        if flow.state is None:
            continue
        node.meta[META_STATE] = flow.state
        stack.extend((user, flow.state, (*path, label)) for user in reversed(list(node.users)))
    return ChannelGroup(
        producers=(ctx.producer,),
        edges=tuple(edges),
        followers=tuple(followers),
        reaches_output=reaches_output,
        blocked=blocked,
    )
