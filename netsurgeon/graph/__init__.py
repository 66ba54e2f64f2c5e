"""Tracing a model into a :class:`LayerGraph` of producer/consumer layers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from netsurgeon.errors import TraceError
from netsurgeon.graph import ops as _ops  # noqa: F401  (registers the handlers)
from netsurgeon.graph.analysis import analyse
from netsurgeon.graph.export import export_program, exported_graph_module
from netsurgeon.graph.groups import (
    ChannelGroup,
    ConsumerRef,
    Edge,
    FollowerRef,
    IndexMap,
    Insertion,
    Piece,
)
from netsurgeon.graph.layer_graph import LayerGraph
from netsurgeon.graph.registry import REGISTRY, Registry
from netsurgeon.graph.tracer import SurgeonTracer, as_tensors, left_as_it_was, symbolic_trace
from netsurgeon.guards import check_plain_module

#: The front ends of :func:`trace` (``docs/frontends.md``).
FRONTENDS = ("symbolic", "export", "auto")

__all__ = [
    "FRONTENDS",
    "ChannelGroup",
    "ConsumerRef",
    "Edge",
    "FollowerRef",
    "IndexMap",
    "Insertion",
    "LayerGraph",
    "Piece",
    "SurgeonTracer",
    "trace",
    "trace_with_shapes_of",
]


def trace(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    strict: bool = True,
    leaf_modules: Iterable[type[nn.Module]] = (),
    autowrap_functions: Iterable[Callable[..., Any]] = (),
    concrete_args: dict[str, Any] | None = None,
    registry: Registry = REGISTRY,
    frontend: str = "symbolic",
) -> LayerGraph:
    """Trace ``model`` with torch.fx and find every producer/consumer pair of layers.

    Args:
        model: the user's module (not modified: no parameter, buffer or mode changes).
        example_inputs: a tensor or tuple of forward arguments. When given, shapes are
            propagated (in eval mode, without gradients) so flatten multiplicities come from real
            shapes; otherwise they are inferred from the consumer's ``in_features``.
        strict: raise :class:`~netsurgeon.errors.UnsupportedModelError` on anything the analysis
            does not support (default); with ``False`` the affected layers are marked unwidenable
            and the rest of the model is analysed.
        leaf_modules: module types whose ``forward`` should not be traced into.
        autowrap_functions: free functions recorded as single nodes.
        concrete_args: forwarded to ``torch.fx.Tracer.trace``.
        registry: the handler registry.
        frontend: how the model is captured (``docs/frontends.md``). ``"symbolic"``:
            ``torch.fx`` symbolic tracing. ``"export"``: ``torch.export`` (needs
            ``example_inputs``; reads models with control flow on shapes, Hugging Face
            transformers) rewritten into the same graph (:mod:`netsurgeon.graph.export`;
            ``autowrap_functions`` and ``concrete_args`` do not apply). ``"auto"``: symbolic, and
            export when symbolic tracing fails and ``example_inputs`` are given.

    Returns:
        The :class:`LayerGraph`.

    Raises:
        TraceError: torch.fx (or torch.export) could not capture the model.
        UnsupportedModelError: (strict) coupled widths, weight sharing, grouped convolutions or
            unknown ops; the message names the fx node and module path.

    Example:
        >>> import torch.nn as nn, netsurgeon
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        ...                       nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))
        >>> graph = netsurgeon.trace(model)
        >>> graph.widths(), graph.edges_from("0")[0].multiplicity, graph.followers_of("0")
        ({'0': 8, '5': 10}, 4, ['1'])
    """
    check_plain_module(model, "trace")
    with registry.one_trace():  # each class's registered type looked up once
        tracer = SurgeonTracer(leaf_modules, autowrap_functions, registry)
        gm = capture(model, example_inputs, tracer, frontend, concrete_args)
        return LayerGraph(model, gm, analyse(gm, registry, strict=strict, root=model), registry)


def capture(
    model: nn.Module,
    example_inputs: Any,
    tracer: SurgeonTracer,
    frontend: str,
    concrete_args: dict[str, Any] | None = None,
) -> fx.GraphModule:
    """The ``GraphModule`` the analysis reads, from the chosen front end (see :func:`trace`)."""
    if frontend not in FRONTENDS:
        raise ValueError(f"frontend must be one of {FRONTENDS}, got {frontend!r}")
    if frontend == "export":
        return _export(model, example_inputs, tracer)
    try:
        gm = symbolic_trace(model, tracer=tracer, concrete_args=concrete_args)
    except TraceError as failed:
        if frontend == "symbolic" or example_inputs is None:
            raise
        try:
            return _export(model, example_inputs, tracer)
        except TraceError as e:
            raise TraceError(f"{failed}\nThen {e}") from e
    if example_inputs is not None:
        _propagate_shapes(model, gm, as_tensors(example_inputs))
    return gm


def _export(model: nn.Module, example_inputs: Any, tracer: SurgeonTracer) -> fx.GraphModule:
    if example_inputs is None:
        raise TraceError(
            f"the export front end needs example_inputs to capture {type(model).__qualname__}"
            "\nFix: pass example_inputs (a tensor or a tuple of forward arguments)."
        )
    program = export_program(model, as_tensors(example_inputs))
    return exported_graph_module(model, program, tracer)


def trace_with_shapes_of(
    model: nn.Module, twin: nn.Module, twin_inputs: Any, *, strict: bool = False
) -> LayerGraph:
    """:func:`trace` of ``model``, with shapes propagated on ``twin`` instead of ``model``.

    ``twin`` is a copy with the model's module paths (the cost preview's meta copy) and
    ``twin_inputs`` arguments it accepts (meta tensors): nothing runs on ``model``, none of its
    hooks fire, and the inputs may come from any device. The structure and the soundness checks
    are the model's own; only the shapes are read on the copy.
    """
    check_plain_module(model, "trace")
    with REGISTRY.one_trace():
        gm = capture(model, None, SurgeonTracer((), (), REGISTRY), "symbolic")
        copied, remap = fx.Graph(), {}
        copied.output(copied.graph_copy(gm.graph, remap))
        _propagate_shapes(twin, fx.GraphModule(twin, copied), as_tensors(twin_inputs))
        for node, twin_node in remap.items():
            if "tensor_meta" in twin_node.meta:
                node.meta["tensor_meta"] = twin_node.meta["tensor_meta"]
        return LayerGraph(model, gm, analyse(gm, REGISTRY, strict=strict, root=model), REGISTRY)


def _propagate_shapes(model: nn.Module, gm: Any, inputs: tuple[Any, ...]) -> None:
    """Record ``tensor_meta`` on each node without touching BatchNorm statistics or RNG state."""
    try:
        with left_as_it_was(model), torch.no_grad():
            model.eval()
            ShapeProp(gm).propagate(*inputs)
    except Exception as e:  # a shape mismatch, a wrong number of inputs, a wrong device ...
        cause = e.__cause__ or e  # ShapeProp wraps the op's own error
        context = "" if cause is e else f"\n{e}"
        raise TraceError(
            f"shape propagation of {type(model).__qualname__} on example_inputs failed: "
            f"{type(cause).__name__}: {cause}{context}\nFix: pass example_inputs that the model accepts "
            "(the same shapes, dtype and device as a real batch), or omit them."
        ) from e
