"""The dependency walker: one pass over the fx graph turns layers and joins into channel groups.

Nodes are visited in topological order. Each width-owning layer starts a group; every other node's
handler (looked up in the registry) says what its output's channel layout is
(:class:`~netsurgeon.graph.layout.Layout`) and records consumers, followers, joins and blocks
through the :class:`~netsurgeon.graph.context.FlowContext`. The walker knows no op types. A node
none of whose inputs carry channels is skipped without a handler, so an op on the raw input or on
sizes never matters.

Worked example, a residual block ``y = relu(bn2(conv2(relu(bn1(conv1(x))))) + x)`` after a stem
``x = relu(bn0(conv0(img)))``::

    conv0        new group g0            Layout(dim=1, [g0 0:8])
    bn0, relu    follower of g0 / pass
    conv1        consumes g0, new g1
    bn1, relu, conv2   ... new g2
    add          join: union(g2, g0)      -> one group {conv0, conv2}: the stream
    relu         pass

Union-find merges the raw groups at the end; each group's name is its first producer. In
non-strict mode an unsupported node blocks only the groups it touches (its message becomes their
``blocked`` reason); strict mode raises :class:`~netsurgeon.errors.UnsupportedModelError`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from torch import fx, nn

from netsurgeon.errors import UnsupportedModelError
from netsurgeon.graph import sizes
from netsurgeon.graph.batch_channels import check_batch
from netsurgeon.graph.constructions import choose, excluded, record_tags
from netsurgeon.graph.context import FlowContext, Refusal
from netsurgeon.graph.groups import ChannelGroup, ConsumerRef, FollowerRef, IndexMap, Piece
from netsurgeon.graph.layout import Layout
from netsurgeon.graph.ratios import resolve_ratios
from netsurgeon.graph.registry import Registry
from netsurgeon.graph.soundness import module_reason
from netsurgeon.graph.width_attrs import check_width_literals

__all__ = ["Analysis", "analyse"]


class Analysis:
    """The result: groups and layers in depth order, each layer's group and traced width."""

    def __init__(
        self, groups: list[ChannelGroup], group_of: dict[str, str], widths: dict[str, int]
    ) -> None:
        self.groups = groups
        self.group_of = group_of
        self.widths = widths


def analyse(
    gm: fx.GraphModule,
    registry: Registry,
    *,
    strict: bool = True,
    root: nn.Module | None = None,
) -> Analysis:
    """Find every channel group of ``gm`` (see the module docstring).

    Args:
        gm: a traced model (with ``tensor_meta`` on its nodes when shapes were propagated).
        registry: handler lookup.
        strict: raise on anything unsupported instead of blocking the groups it touches.
        root: the model ``gm`` was traced from. Its layers that the traced forward never calls
            (an auxiliary head called only in train mode) block every group: which channels
            they read cannot be known, and they would be left narrow.

    Raises:
        UnsupportedModelError: with ``strict``, on unknown ops that touch channels, weight
            sharing, and layouts that cannot be followed; the message names the fx node.
    """
    ctx = FlowContext(gm, registry, strict)
    ctx.root = root
    shared = _shared_modules(gm, ctx)
    for node in gm.graph.nodes:
        ctx.node = node
        if node.op in ("placeholder", "get_attr"):
            ctx.layouts[node] = None
            continue
        size_args = sizes.size_arguments(node, ctx)
        if node.op == "output":
            for layout in ctx.tracked_inputs(node):
                ctx.mark_output(layout)
            sizes.block_unclaimed(node, ctx, size_args)
            continue
        handler = registry.for_node(node, ctx.modules)
        is_layer = handler is not None and _role(handler, node, ctx) == "layer"
        inputs = ctx.tracked_inputs(node)
        if not inputs and not is_layer:
            ctx.layouts[node] = sizes.propagate(node, ctx, size_args) if size_args else None
            continue
        ctx.size_claims = set()
        try:
            _check_module(node, handler, shared, ctx)
            _check_heads(node, handler, inputs, ctx)
            check_batch(node, handler, inputs, ctx)
            layout = handler.flow(node, ctx)
            record_tags(node, handler, is_layer, ctx)
            if isinstance(layout, Layout) and layout.batch is not None:  # no tags: two dims
                ctx.states[node] = frozenset()
        except Refusal as refusal:
            ctx.block(node, inputs, str(refusal))
            layout = _blocked_output(node, handler, ctx, str(refusal)) if is_layer else None
        sizes.block_unclaimed(node, ctx, size_args)
        ctx.layouts[node] = layout
    _check_after_walk(ctx)
    if root is not None:
        _block_for_unreached(gm, root, ctx)
    return _collect(ctx)


def _check_after_walk(ctx: FlowContext) -> None:
    """What only the whole walk decides: equal widths, free tensors, width literals' uses."""
    ctx.check_same_widths()
    ctx.check_free_tensors()
    check_width_literals(ctx)


def _block_for_unreached(gm: fx.GraphModule, root: nn.Module, ctx: FlowContext) -> None:
    """Every group is blocked while a layer or follower holding tensors is never called."""
    unreached = unreached_layers(gm, root, ctx.registry)
    if not unreached:
        return
    mode = "train" if root.training else "eval"
    names = ", ".join(f"'{name}' ({kind})" for name, kind in unreached[:5])
    more = f" and {len(unreached) - 5} more" if len(unreached) > 5 else ""
    reason = (
        f"the traced forward ({mode} mode) never calls {names}{more}, which hold tensors: "
        "netsurgeon cannot tell which channels they read, and a widening would leave them "
        "narrow for the forward that does call them"
    )
    fix = (
        "trace and widen in the mode whose forward calls every layer (model.train() for "
        "auxiliary heads), or delete the unused modules"
    )
    if ctx.strict:
        raise UnsupportedModelError(
            f"cannot analyse {type(root).__qualname__}: {reason}.\n  fix: {fix}"
        )
    for gid in range(len(ctx.parent)):
        ctx.blocked[gid].append(f"{reason} (fix: {fix})")


def _ancestors(name: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b"]``: the paths of the modules that contain it."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def unreached_layers(
    gm: fx.GraphModule, root: nn.Module, registry: Registry
) -> list[tuple[str, str]]:
    """``(path, class name)`` of the layers and followers of ``root`` holding tensors that no
    ``call_module`` or ``get_attr`` node of ``gm`` reaches (modules inside a called module are
    reached: that module's handler speaks for them)."""
    called = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    read = {str(n.target).rpartition(".")[0] for n in gm.graph.nodes if n.op == "get_attr"}
    found = []
    for name, module in root.named_modules():
        if not name or name in called or name in read:
            continue
        if any(prefix in called for prefix in _ancestors(name)):
            continue
        handler = registry.for_module(module)
        if handler is None or handler.role_of(module) not in ("layer", "follower"):
            continue
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if any(t.dim() > 0 for t in own):
            found.append((name, type(module).__name__))
    return found


def _check_module(node: fx.Node, handler: Any, shared: dict[str, str], ctx: FlowContext) -> None:
    """Refuse what the handler does not describe: unknown ops, shared modules, and modules the
    soundness rule rejects (:mod:`netsurgeon.graph.soundness`)."""
    name = str(node.target)
    if node.op == "call_module" and name in shared:
        ctx.refuse(node, shared[name], fix="give each call its own module")
    if handler is None:
        ctx.refuse(
            node,
            f"'{ctx.op_name(node)}' is not an op netsurgeon knows",
            fix="register a handler for it (netsurgeon.graph.registry), or make the "
            "enclosing module a leaf (trace(..., leaf_modules=[...]))",
        )
    if node.op != "call_module":
        return
    module = ctx.module_of(node)
    reason = module_reason(module, handler, ctx.registry.registered_type(module))
    if reason is not None:
        what, fix = _split_fix(reason)
        ctx.refuse(node, f"module '{name}' ({type(module).__qualname__}): {what}", fix=fix)


def _check_heads(node: fx.Node, handler: Any, inputs: list[Layout], ctx: FlowContext) -> None:
    """Channels cut into attention heads (``Layout.heads``) reach only handlers that follow
    heads (``knows_heads``): any other op could move or mix the head dims unnoticed."""
    if getattr(handler, "knows_heads", False) or all(lay.heads is None for lay in inputs):
        return
    ctx.refuse(
        node,
        f"'{ctx.op_name(node)}' takes channels cut into attention heads, and netsurgeon does "
        "not follow heads through it",
        fix="merge the heads back (reshape(B, N, -1)) before it, or register a handler that "
        "follows heads (knows_heads = True)",
    )


def _split_fix(reason: str) -> tuple[str, str]:
    """``"what (fix: how)"`` as ``(what, how)``."""
    at = reason.rfind(" (fix: ")
    if at < 0:
        return reason, "register a handler that describes it"
    return reason[:at], reason[at + len(" (fix: ") : -1]


def _role(handler: Any, node: fx.Node, ctx: FlowContext) -> str:
    if node.op != "call_module":
        return "op"
    return handler.role_of(ctx.module_of(node))


def _blocked_output(node: fx.Node, handler: Any, ctx: FlowContext, reason: str) -> Layout:
    """A refused layer still produces a (blocked) group, so what follows stays analysable."""
    module, name = ctx.module_of(node), str(node.target)
    earlier = [gid for gid, made in enumerate(ctx.producers) if name in made]
    gid = earlier[0] if earlier else ctx.new_group(name, handler.out_width(module))
    ctx.blocked[gid].append(f"{reason} (at {node.format_node()})")
    return handler.output_layout(node, module, gid, ctx)


def _collect(ctx: FlowContext) -> Analysis:
    ties = resolve_ratios(ctx)  # grouped-query attention: a query class joins its key/value one
    roots = {gid: ctx.find(gid) for gid in range(len(ctx.parent))}
    tied = {gid: ties[root][1] for gid, root in roots.items() if root in ties}
    roots = {gid: ties[root][0] if root in ties else root for gid, root in roots.items()}
    members: dict[int, list[int]] = defaultdict(list)
    for gid, root in roots.items():
        members[root].append(gid)
    # every raw group's name: its class's root, the first-created member
    name = {gid: ctx.names[root] for gid, root in roots.items()}
    consumers, followers = _refs(ctx, name, tied)
    groups = [
        _group(ctx, root, sorted(members[root]), consumers[name[root]], followers[name[root]], tied)
        for root in sorted(members)
    ]
    group_of = {producer: group.name for group in groups for producer in group.producers}
    widths = {
        ctx.names[gid]: ctx.widths[gid] for gid in range(len(ctx.parent)) if ctx.producers[gid]
    }
    return Analysis(groups, group_of, widths)


def _refs(
    ctx: FlowContext, name: dict[int, str], tied: dict[int, int]
) -> tuple[dict[str, list[ConsumerRef]], dict[str, list[FollowerRef]]]:
    """Each group's consumers and followers, their layouts turned into index maps over names
    (a tied query group's channels as ``g`` entries per key/value channel)."""

    def piece_map(layout: Layout, factor: int) -> tuple[IndexMap, tuple[tuple[str, ...], ...]]:
        pieces = tuple(
            Piece(
                None if s.group is None else name[s.group],
                s.start // tied.get(s.group, 1),
                s.stop // tied.get(s.group, 1),
                s.multiplicity * factor * tied.get(s.group, 1),
            )
            for s in layout.segments
        )
        return IndexMap(pieces), tuple(s.path for s in layout.segments)

    consumers: dict[str, list[ConsumerRef]] = defaultdict(list)
    for c in ctx.consumers:
        index_map, paths = piece_map(c.layout, c.factor)
        zero = ctx.zero_inputs.get(c.layer, frozenset())
        ref = ConsumerRef(c.layer, index_map, paths, c.layout.flattened, c.groups, zero)
        for group in index_map.groups:
            consumers[group].append(ref)
    followers: dict[str, list[FollowerRef]] = defaultdict(list)
    for f in ctx.followers:
        index_map, _ = piece_map(f.layout, f.factor)
        ref = FollowerRef(f.name, f.kind, index_map, f.dim, f.fill)
        for group in index_map.groups:
            if ref not in followers[group]:
                followers[group].append(ref)
    return consumers, followers


def _group(
    ctx: FlowContext,
    root: int,
    ids: list[int],
    consumers: list[ConsumerRef],
    followers: list[FollowerRef],
    tied: dict[int, int],
) -> ChannelGroup:
    """The :class:`ChannelGroup` of one union-find class (``ids``, its root first-created)."""
    reasons = list(dict.fromkeys(r for gid in ids for r in ctx.blocked[gid]))
    splits = math.lcm(*(ctx.splits[gid] for gid in ids))
    unit = math.lcm(*(ctx.units[gid] for gid in ids))
    width = ctx.widths[root]
    needs = [r for gid in ids for r in ctx.requirements[gid]]
    construction, allowed, none = choose(needs, width, splits, unit)
    if none is not None:
        reasons.append(none)
    if width % splits:
        reasons.append(f"its width {width} does not cut into {splits} equal splits")
    elif (width // splits) % unit:
        reasons.append(
            f"its splits of {width // splits} channels do not cut into normalisation "
            f"groups of {unit}"
        )
    return ChannelGroup(
        name=ctx.names[root],
        producers=tuple(p for gid in ids for p in ctx.producers[gid]),
        consumers=tuple(consumers),
        followers=tuple(followers),
        width=width,
        splits=splits,
        granularity=width if construction == "tile" else splits * unit,
        reaches_output=any(gid in ctx.outputs for gid in ids),
        blocked="; ".join(reasons) if reasons else None,
        multiplicity=tuple(
            (p, tied[gid]) for gid in ids if gid in tied for p in ctx.producers[gid]
        ),
        head_size=max((ctx.head_sizes.get(gid, 0) for gid in ids), default=0),
        construction=construction or "append",
        constructions=allowed,
        requirements=tuple(dict.fromkeys(m for _, m in needs)),
        excluded=excluded(needs, construction),
        row_scales=tuple(
            pair for gid in ids for pair in ctx.row_scales if pair[0] in ctx.producers[gid]
        ),
    )


def _role_of_name(name: str, ctx: FlowContext) -> str | None:
    module = ctx.modules.get(name)
    handler = None if module is None else ctx.registry.for_module(module)
    return None if handler is None else handler.role_of(module)


def _shared_modules(gm: fx.GraphModule, ctx: FlowContext) -> dict[str, str]:
    """Layers/followers called more than once, or whose parameters are read directly."""
    calls: dict[str, int] = {}
    reasons: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and _role_of_name(str(node.target), ctx) in (
            "layer",
            "follower",
        ):
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


def _tied_parameters(gm: fx.GraphModule, ctx: FlowContext) -> dict[str, str]:
    """``{module: other users}`` for parameters reached by two call sites or attribute reads."""
    owners: dict[int, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            params = _parameters(ctx.modules[str(node.target)])
        elif node.op == "get_attr":
            value = ctx.attr(node)
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


def _parameters(module: nn.Module) -> list[nn.Parameter]:
    """``list(module.parameters())``; for a module without children that keeps torch's
    ``parameters``/``named_parameters``, its own table, without their walk (a parameter held
    twice is listed twice: ``_tied_parameters`` records each name once either way)."""
    cls = type(module)
    if (
        module._modules
        or cls.parameters is not nn.Module.parameters
        or cls.named_parameters is not nn.Module.named_parameters
    ):
        return list(module.parameters())
    return [p for p in module._parameters.values() if p is not None]
