"""``LayerGraph``: the layers of a traced model and the channel groups that connect them."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

import networkx as nx
from torch import fx, nn

from netsurgeon.graph.analysis import ChannelGroup, Edge
from netsurgeon.graph.registry import Registry

__all__ = ["LayerGraph"]


class LayerGraph:
    """The width-owning layers of a model, in depth order, with their producer/consumer edges.

    Built by :func:`netsurgeon.trace`. Layer names are qualified module names exactly as
    ``model.named_modules()`` gives them (``"conv3"``, ``"features.3"``).

    Example:
        >>> import torch.nn as nn, netsurgeon
        >>> g = netsurgeon.trace(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)))
        >>> g.layers, g.consumers_of("0"), sorted(g.output_layers)
        (['0', '2'], ['2'], ['2'])
    """

    def __init__(
        self,
        model: nn.Module,
        gm: fx.GraphModule,
        groups: Mapping[str, ChannelGroup],
        registry: Registry,
    ) -> None:
        self.model = model
        self.gm = gm
        self.registry = registry
        self._groups = dict(groups)

    # -- layers ---------------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Every width-owning layer, in depth (topological) order."""
        return list(self._groups)

    def module(self, name: str) -> nn.Module:
        """The module object of layer (or follower) ``name``."""
        return self.model.get_submodule(name)

    def handler(self, name: str):  # -> LayerHandler | FollowerHandler
        """The registry handler that knows ``name``'s module type."""
        return self.registry.for_module(self.module(name))

    def widths(self) -> dict[str, int]:
        """``{layer: output width}`` (``out_channels`` / ``out_features``) in depth order."""
        return {name: self.handler(name).out_width(self.module(name)) for name in self._groups}

    @property
    def output_layers(self) -> frozenset[str]:
        """Layers whose output reaches the model output: never widened."""
        return frozenset(n for n, g in self._groups.items() if g.reaches_output)

    @property
    def widenable_layers(self) -> list[str]:
        """Layers that ``widen`` accepts, in depth order."""
        return [n for n, g in self._groups.items() if g.widenable]

    def unwidenable_reason(self, name: str) -> str | None:
        """Why ``name`` cannot be widened, or ``None`` if it can."""
        group = self.group(name)
        if group.blocked is not None:
            return group.blocked
        if group.reaches_output:
            return (
                "its output reaches the model output, so widening it would change the output shape"
            )
        return None

    def group(self, name: str) -> ChannelGroup:
        """The channel group that ``name`` produces into."""
        self.check_layer(name)
        return self._groups[name]

    def check_layer(self, name: str) -> None:
        """Raise ``KeyError``-like :class:`~netsurgeon.errors.WidenError` for an unknown name."""
        if name not in self._groups:
            from netsurgeon.errors import WidenError

            close = difflib.get_close_matches(name, self._groups, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise WidenError(
                f"'{name}' is not a layer of {type(self.model).__name__}.{hint} "
                f"Layers: {', '.join(self._groups)}"
            )

    # -- edges ----------------------------------------------------------------------------------
    def edges_from(self, name: str) -> tuple[Edge, ...]:
        """Edges from producer ``name`` to each of its consumers."""
        return self.group(name).edges

    def edges_into(self, name: str) -> tuple[Edge, ...]:
        """Edges from every producer of ``name`` into it."""
        self.check_layer(name)
        return tuple(e for g in self._groups.values() for e in g.edges if e.consumer == name)

    def consumers_of(self, name: str) -> list[str]:
        return [e.consumer for e in self.edges_from(name)]

    def producers_of(self, name: str) -> list[str]:
        return [e.producer for e in self.edges_into(name)]

    def followers_of(self, name: str) -> list[str]:
        """Channel-wise modules (BatchNorm, per-channel PReLU) that grow with ``name``."""
        return [f.name for f in self.group(name).followers]

    def to_networkx(self) -> nx.DiGraph:
        """Layers as nodes (type, width, output, widenable) and edges with path data."""
        graph = nx.DiGraph()
        widths = self.widths()
        for name, group in self._groups.items():
            graph.add_node(
                name,
                type=type(self.module(name)).__name__,
                width=widths[name],
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
                    path=list(e.path),
                )
        return graph

    # -- display --------------------------------------------------------------------------------
    def summary(self) -> str:
        """A table: layer, type, width, consumers (x multiplicity), followers, ops on the way."""
        rows = [("layer", "type", "width", "consumers", "followers", "path", "widen")]
        widths = self.widths()
        for name, group in self._groups.items():
            consumers = ", ".join(
                e.consumer + (f" x{e.multiplicity}" if e.multiplicity != 1 else "")
                for e in group.edges
            )
            path = " | ".join(" > ".join(e.path) for e in group.edges)
            status = "output" if group.reaches_output else ("no" if group.blocked else "yes")
            rows.append(
                (
                    name,
                    type(self.module(name)).__name__,
                    str(widths[name]),
                    consumers or "-",
                    ", ".join(f.name for f in group.followers) or "-",
                    path or "-",
                    status,
                )
            )
        sizes = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(s) for c, s in zip(r, sizes, strict=True)).rstrip() for r in rows
        ]
        lines.insert(1, "  ".join("-" * s for s in sizes))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"LayerGraph({type(self.model).__name__}, layers={len(self._groups)})"
