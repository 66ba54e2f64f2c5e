"""Modules the analysis reads as one op although they hold layers: what they are and why.

torch.fx keeps every ``torch.nn`` module (and every type in ``leaf_modules``) as a single
``call_module`` node. When such a module holds ``Linear``/``Conv`` layers of its own, those
layers are not in the graph: ``trace`` cannot list them and ``widen`` cannot grow them. The
``nn.Transformer*`` modules are traced through the slow path of their ``forward``
(:mod:`netsurgeon.graph.ops.transformer`) unless a subclass overrides a method it reads, a hook
is registered, or the module is ``nn.Transformer`` itself (its ``forward`` branches on input
sizes): then they stay leaves, with that reason.

:func:`find_opaque` lists them with the reason and the fix, for ``LayerGraph.summary()``, the
"not a layer" error of ``widen`` and the Grower's warning when it has nothing to grow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from netsurgeon.graph.registry import Registry

__all__ = ["TRANSFORMER_TYPES", "OpaqueModule", "find_opaque", "summarise_opaque"]

TRANSFORMER_TYPES = (
    nn.Transformer,
    nn.TransformerEncoder,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoder,
    nn.TransformerDecoderLayer,
)


@dataclass(frozen=True)
class OpaqueModule:
    """One module read as a single op, with the layers it hides."""

    name: str
    kind: str
    layers: tuple[str, ...]
    reason: str
    fix: str

    def explain(self) -> str:
        """One sentence: what, why, and the fix."""
        return f"'{self.name}' ({self.kind}) is read as one opaque op because {self.reason}; fix: {self.fix}"


def find_opaque(gm: fx.GraphModule, registry: Registry) -> dict[str, OpaqueModule]:
    """``{module path: OpaqueModule}`` for each leaf call of ``gm`` that holds layers."""
    found: dict[str, OpaqueModule] = {}
    modules = dict(gm.named_modules(remove_duplicate=False))  # one walk, not one per call
    for node in gm.graph.nodes:
        if node.op != "call_module" or str(node.target) in found:
            continue
        name = str(node.target)
        module = modules[name] if name in modules else gm.get_submodule(name)
        handler = registry.for_module(module)
        if handler is not None and handler.role_of(module) in ("layer", "follower"):
            continue
        layers = tuple(
            f"{name}.{sub_name}"
            for sub_name, sub in module.named_modules()
            if sub_name and _is_layer(sub, registry)
        )
        if layers:
            found[name] = _describe(name, module, handler, registry, layers)
    return found


def summarise_opaque(opaque: dict[str, OpaqueModule], shown: int = 3) -> list[str]:
    """One line per kind of opaque module and reason, naming up to ``shown`` of them."""
    kinds: dict[tuple[str, str, str], list[str]] = {}
    for o in opaque.values():
        kinds.setdefault((o.kind, o.reason, o.fix), []).append(o.name)
    lines = []
    for (kind, reason, fix), names in kinds.items():
        listed = ", ".join(f"'{n}'" for n in names[:shown])
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        lines.append(f"{listed}{more} ({kind}): read as one opaque op because {reason}; fix: {fix}")
    return lines


def _is_layer(module: nn.Module, registry: Registry) -> bool:
    handler = registry.for_module(module)
    return handler is not None and handler.role_of(module) == "layer"


def _describe(
    name: str, module: nn.Module, handler: Any, registry: Registry, layers: tuple[str, ...]
) -> OpaqueModule:
    kind = type(module).__name__
    one = len(layers) == 1
    inner = f"the {len(layers)} layer{'' if one else 's'} inside it {'is' if one else 'are'}"
    handled = handler is not None
    if isinstance(module, TRANSFORMER_TYPES) and hasattr(handler, "why_leaf"):
        why = handler.why_leaf(module, registry.registered_type(module))
        reason = (
            "netsurgeon traces it through the slow path of its forward only as torch defines "
            f"it, and {why}, so it stays a leaf and {inner} not analysed"
        )
        fix = (
            "use the torch class as it is (no override, no hook), write the block as your own "
            "nn.Module from nn.Linear, nn.LayerNorm and nn.MultiheadAttention, or widen the "
            "layers outside it"
        )
    elif handled:
        reason = f"netsurgeon handles {kind} as a whole; {inner} not widened on its own"
        fix = "widen the layers around it"
    else:
        reason = (
            f"torch.fx keeps it a leaf (a torch.nn module, or a type in leaf_modules) and "
            f"netsurgeon has no handler for {kind}; {inner} not analysed"
        )
        fix = (
            "let it be traced (drop it from leaf_modules), register a handler for it "
            "(netsurgeon.graph.registry), or widen the layers outside it"
        )
    return OpaqueModule(name, kind, layers, reason, fix)
