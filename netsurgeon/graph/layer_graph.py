"""``LayerGraph``: the layers of a traced model and the channel groups that connect them."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from torch import fx, nn

from netsurgeon.errors import UnknownLayerError
from netsurgeon.graph.analysis import Analysis
from netsurgeon.graph.groups import ChannelGroup, Edge
from netsurgeon.graph.opaque import OpaqueModule, find_opaque, summarise_opaque
from netsurgeon.graph.registry import Registry

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["LayerGraph"]

_SHAPES_HINT = "pass example_inputs"


class LayerGraph:
    """Width-owning layers and channel groups of a model, as traced (a snapshot).

    Built by :func:`netsurgeon.trace`. Layer names are qualified module names exactly as
    ``model.named_modules()`` gives them (``"conv3"``, ``"layer1.0.conv2"``). A graph knows the
    widths it was traced with (:meth:`widths`); after a widening, trace again.

    Example:
        >>> import torch.nn as nn, netsurgeon
        >>> g = netsurgeon.trace(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)))
        >>> g.layers, g.consumers_of("0"), sorted(g.output_layers)
        (['0', '2'], ['2'], ['2'])
        >>> [(grp.name, grp.width, grp.widenable) for grp in g.groups]
        [('0', 8, True), ('2', 4, False)]
    """

    def __init__(
        self, model: nn.Module, gm: fx.GraphModule, analysis: Analysis, registry: Registry
    ) -> None:
        self.model = model
        self.gm = gm
        self.registry = registry
        self._groups = {g.name: g for g in analysis.groups}
        self._group_of = dict(analysis.group_of)
        self._widths = dict(analysis.widths)
        self._opaque = find_opaque(gm, registry)

    # -- groups ---------------------------------------------------------------------------------
    @property
    def groups(self) -> list[ChannelGroup]:
        """Every channel group, in depth order of its first producer."""
        return list(self._groups.values())

    def group_of(self, layer: str) -> ChannelGroup:
        """The group ``layer`` produces into."""
        self.check_layer(layer)
        return self._groups[self._group_of[layer]]

    def resolve(self, key: str) -> ChannelGroup:
        """The group named ``key``, or produced into by layer ``key`` (a plan key).

        Raises:
            UnknownLayerError: ``key`` is no layer or group; a follower (a BatchNorm, a layer scale)
                names the group it follows and the key to use instead.
        """
        if key in self._groups:
            return self._groups[key]
        if key not in self._widths:
            followed = [g for g in self._groups.values() if any(f.name == key for f in g.followers)]
            if followed:
                names = " and ".join(f"'{g.name}'" for g in followed)
                keys = " or ".join(repr(g.name) for g in followed)
                blocked = "".join(
                    f" (group '{g.name}' cannot be widened: {g.reason.splitlines()[0]})"
                    for g in followed
                    if g.reason is not None
                )
                raise UnknownLayerError(
                    f"'{key}' is not a layer: it follows group {names} (producers "
                    f"{', '.join(p for g in followed for p in g.producers)}) and grows when that "
                    f"group grows{blocked}. Use the plan key {keys}."
                )
        return self.group_of(key)

    # -- layers ---------------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Every width-owning layer (producer), in depth (topological) order."""
        return list(self._widths)

    def module(self, name: str) -> nn.Module:
        """The module object of layer (or follower) ``name``."""
        return self.model.get_submodule(name)

    def handler(self, name: str):  # -> LayerHandler | FollowerHandler
        """The registry handler that knows ``name``'s module type."""
        return self.registry.for_module(self.module(name))

    def widths(self) -> dict[str, int]:
        """``{layer: output width}`` as traced, in depth order."""
        return dict(self._widths)

    @property
    def output_layers(self) -> frozenset[str]:
        """Layers whose output reaches the model output: never widened."""
        return frozenset(n for n in self._widths if self.group_of(n).reaches_output)

    @property
    def widenable_layers(self) -> list[str]:
        """Layers whose group ``widen`` accepts, in depth order."""
        return [n for n in self._widths if self.group_of(n).widenable]

    def unwidenable_reason(self, name: str) -> str | None:
        """Why ``name``'s group cannot be widened, or ``None`` if it can."""
        return self.resolve(name).reason

    def opaque_modules(self) -> dict[str, str]:
        """``{module: explanation}`` for modules read as one op that hold layers of their own.

        Their inner layers are not in :attr:`layers` and cannot be widened; the explanation
        names the module type, why it is opaque (``nn.TransformerEncoder``: torch.fx cannot
        trace its fast-path checks) and the fix.
        """
        return {name: opaque.explain() for name, opaque in self._opaque.items()}

    def _opaque_owner(self, name: str) -> OpaqueModule | None:
        return next((o for path, o in self._opaque.items() if name.startswith(path + ".")), None)

    def check_layer(self, name: str) -> None:
        """Raise :class:`~netsurgeon.errors.UnknownLayerError` for a name that is no layer or group."""
        owner = self._opaque_owner(name) if name not in self._widths else None
        if owner is not None and name not in self._groups:
            raise UnknownLayerError(
                f"'{name}' is inside '{owner.name}' ({owner.kind}), which netsurgeon reads as one "
                f"opaque op because {owner.reason}. Fix: {owner.fix}."
            )
        if name not in self._widths and name not in self._groups:
            known = list(self._widths)
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise UnknownLayerError(
                f"'{name}' is not a layer of {type(self.model).__name__}.{hint} "
                f"Layers: {', '.join(known)}"
            )

    # -- edges ----------------------------------------------------------------------------------
    def edges_from(self, name: str) -> tuple[Edge, ...]:
        """Edges from producer ``name`` to each consumer of its group."""
        return tuple(e for e in self.group_of(name).edges if e.producer == name)

    def edges_into(self, name: str) -> tuple[Edge, ...]:
        """Edges from every producer of every group that layer ``name`` reads."""
        self.check_layer(name)
        return tuple(e for g in self._groups.values() for e in g.edges if e.consumer == name)

    def consumers_of(self, name: str) -> list[str]:
        return list(dict.fromkeys(c.layer for c in self.group_of(name).consumers))

    def producers_of(self, name: str) -> list[str]:
        return list(dict.fromkeys(e.producer for e in self.edges_into(name)))

    def followers_of(self, name: str) -> list[str]:
        """Per-channel modules and parameters that grow with ``name``'s group."""
        return [f.name for f in self.group_of(name).followers]

    def to_networkx(self) -> nx.DiGraph:
        """Layers as nodes (type, width, group, output, widenable), edges with path data."""
        import networkx as nx  # imported on use: it costs more than the rest of the graph package

        graph = nx.DiGraph()
        for name, width in self._widths.items():
            group = self.group_of(name)
            graph.add_node(
                name,
                type=type(self.module(name)).__name__,
                width=width,
                group=group.name,
                output=group.reaches_output,
                widenable=group.widenable,
                followers=[f.name for f in group.followers],
                blocked=group.blocked,
            )
        for group in self._groups.values():
            for e in group.edges:
                graph.add_edge(
                    e.producer,
                    e.consumer,
                    kind="flatten" if e.flattened else "identity",
                    multiplicity=e.multiplicity,
                    offset=e.offset,
                    group=e.group,
                    path=list(e.path),
                )
        return graph

    # -- display --------------------------------------------------------------------------------
    def summary(self) -> str:
        """A table of the groups: producers, width, granularity, construction (how new channels
        stay exact: ``append``, ``mean_pad``, ``zero_pad``, ``tile``), consumers, followers,
        status."""
        rows = [("group", "producers", "width", "gran", "build", "consumers", "followers", "widen")]
        for group in self._groups.values():
            consumers = []
            for c in group.consumers:
                pieces = [p for p in c.index_map.pieces if p.group == group.name]
                mult = pieces[0].multiplicity if pieces else 1
                tag = (f" x{mult}" if mult != 1 else "") + (
                    f" @{c.index_map.size}" if len(c.index_map.pieces) > 1 else ""
                )
                consumers.append(c.layer + tag)
            if group.reaches_output:
                status = "output"
            elif group.blocked:
                status = "no: " + group.blocked.split("\n")[0]
            else:
                status = "yes"
            rows.append(
                (
                    group.name,
                    ", ".join(group.producers) or "-",
                    str(group.width),
                    str(group.granularity),
                    group.construction if group.constructions else "-",
                    ", ".join(consumers) or "-",
                    ", ".join(f.name or "(the model)" for f in group.followers) or "-",
                    status,
                )
            )
        sizes = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(s) for c, s in zip(r, sizes, strict=True)).rstrip() for r in rows
        ]
        lines.insert(1, "  ".join("-" * s for s in sizes))
        lines += _construction_notes(self._groups.values())
        unknown = [g for g in self._groups.values() if g.blocked and _SHAPES_HINT in g.blocked]
        if unknown and not self._has_shapes():
            lines.append(
                f"traced without example_inputs: {len(unknown)} groups are blocked where a rank "
                "or size is unknown; pass example_inputs to trace/widen so they can be followed"
            )
        if self._opaque:
            lines.append("opaque modules (read as one op; the layers inside are not widened):")
            lines += [f"  {line}" for line in summarise_opaque(self._opaque)]
        return "\n".join(lines)

    def _has_shapes(self) -> bool:
        return any("tensor_meta" in node.meta for node in self.gm.graph.nodes)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return (
            f"LayerGraph({type(self.model).__name__}, layers={len(self._widths)}, "
            f"groups={len(self._groups)})"
        )


def _construction_notes(groups) -> list[str]:
    """One line per widenable group built other than by ``append``: why not a preferred one."""
    lines = []
    for group in groups:
        if group.construction != "append" and not group.blocked and not group.reaches_output:
            why = "; ".join(e.split(" (at %")[0] for e in group.excluded)
            lines.append(
                f"{group.name} builds by {group.construction}" + (f": {why}" if why else "")
            )
    return lines
