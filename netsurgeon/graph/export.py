"""The export front end: a ``torch.export`` program rewritten into the graph the analysis reads.

``torch.export`` captures models that symbolic tracing cannot (control flow on shapes,
``*x.size()[2:]``, Hugging Face transformers), as ATen ops. This module rewrites its graph into
the ``GraphModule`` that :class:`~netsurgeon.graph.tracer.SurgeonTracer` would have produced, so
the same walker, handlers and soundness checks read it:

- every call of a module the tracer keeps whole (a registered layer or follower, a ``torch.nn``
  module; found through ``node.meta["nn_module_stack"]``, the outermost such module) becomes one
  ``call_module`` node with the module's path, reading the call's tensor inputs; its own
  parameters are the module's, as when it is called;
- parameters and buffers read elsewhere (placeholders lifted by export, named by its graph
  signature) become ``get_attr`` nodes;
- every other ATen op becomes its torch spelling through :mod:`netsurgeon.graph.aten`; one
  without an entry stays as it is and is an unknown op for the analysis;
- shapes come from export's fake tensors (``node.meta["val"]``) as ``tensor_meta``, as
  ``ShapeProp`` records them.

A module call that cannot be made one node (several outputs, a layer reading several tensors
whose order is lost, inputs computed from its own outputs) becomes an opaque node naming the
module and why: the analysis refuses it, and the groups it touches block.

Sizes are literals in an exported graph (export specialises every shape): a ``view`` that puts
the channel count back as a number reads as a literal, and the reshape handler blocks it where
the symbolic front end sees ``x.size(1)``.

Example, ``nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))``::

    export:   linear(x, p_0_weight, p_0_bias) -> relu -> linear(relu, p_2_weight, p_2_bias)
    rewritten: call_module '0' (x) -> call_module '1' -> call_module '2'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from netsurgeon.errors import TraceError
from netsurgeon.graph.aten import DROPPED, spelling_of
from netsurgeon.graph.tracer import SurgeonTracer, left_as_it_was

__all__ = [
    "EXPORT_META",
    "OpRecord",
    "OpaqueCall",
    "export_program",
    "exported_graph_module",
    "first_difference",
    "program_ops",
]

#: ``gm.meta`` key of a rewritten graph: ``(example inputs, program_ops of the export)``, what
#: :mod:`netsurgeon.surgery.replay` compares a widened copy's export with.
EXPORT_META = "netsurgeon.export"


@dataclass(frozen=True)
class OpRecord:
    """One op of an exported program, literal arguments aside: what a width must not change."""

    op: str
    target: str
    inputs: tuple[int, ...]  # positions of the nodes it reads
    name: str = field(compare=False)
    module: str = field(compare=False)  # the innermost module on its stack


def program_ops(graph: fx.Graph) -> tuple[OpRecord, ...]:
    """The ops of an exported graph in order, each with the positions of the nodes it reads."""
    position = {n: i for i, n in enumerate(graph.nodes)}
    records = []
    for node in graph.nodes:
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        records.append(
            OpRecord(
                node.op,
                str(node.target),
                tuple(position[n] for n in node.all_input_nodes),
                node.name,
                stack[-1][0] if stack else "",
            )
        )
    return tuple(records)


def first_difference(
    before: tuple[OpRecord, ...], after: tuple[OpRecord, ...]
) -> tuple[OpRecord | None, OpRecord | None] | None:
    """The first ops where two programs differ (``None`` past an end), or ``None``: the same."""
    for i in range(max(len(before), len(after))):
        a = before[i] if i < len(before) else None
        b = after[i] if i < len(after) else None
        if a != b:
            return a, b
    return None


class OpaqueCall:
    """The target of a node the analysis must refuse: its ``__name__`` says what and why.

    Called, it raises: it stands for ATen ops that were not kept (a module call that could not
    become one node).
    """

    def __init__(self, what: str) -> None:
        self.__name__ = what

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{self.__name__} cannot be run from the rewritten graph")

    def __repr__(self) -> str:
        return f"OpaqueCall({self.__name__!r})"


@dataclass
class _Call:
    """One call of a module kept whole: its ATen nodes in graph order."""

    key: str  # the nn_module_stack key: one per call ("layer1.0.relu@1" for the second)
    path: str
    module: nn.Module
    nodes: list[fx.Node] = field(default_factory=list)
    inputs: list[fx.Node] = field(default_factory=list)  # tensors from outside, first use first
    outputs: list[fx.Node] = field(default_factory=list)  # nodes used outside the call
    own: list[fx.Node] = field(default_factory=list)  # its own parameters' placeholders


def export_program(model: nn.Module, inputs: tuple[Any, ...]) -> torch.export.ExportedProgram:
    """``torch.export.export(model, inputs, strict=False)``, leaving the model as it was.

    It runs without gradients (so a training-step observer such as ``NAGNMonitor`` does not
    count it), in the model's own mode (the ops of the mode the model trains in).

    Raises:
        TraceError: export failed; the message carries export's reason.
    """
    try:  # without gradients, as shape propagation: hooks observing training steps skip it
        with left_as_it_was(model), torch.no_grad():
            return torch.export.export(model, inputs, strict=False)
    except Exception as e:  # export raises many types (UserError, RuntimeError, ...)
        raise TraceError(
            f"torch.export could not capture {type(model).__qualname__}: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}\n"
            "Fix: pass example_inputs the model's forward accepts (a tuple of its positional "
            "arguments), turn caches off (use_cache=False for Hugging Face models), or trace "
            "with frontend='symbolic'."
        ) from e


def exported_graph_module(
    model: nn.Module, program: torch.export.ExportedProgram, tracer: SurgeonTracer
) -> fx.GraphModule:
    """The ``GraphModule`` symbolic tracing with ``tracer`` would give, from ``program``.

    Its ``meta[EXPORT_META]`` holds the program's example inputs and ops, for the replay of a
    widening (:mod:`netsurgeon.surgery.replay`).
    """
    gm = _Rewrite(model, program, tracer).run()
    inputs = program.example_inputs[0] if program.example_inputs else ()
    gm.meta[EXPORT_META] = (inputs, program_ops(program.graph_module.graph))
    return gm


class _Rewrite:
    """One pass over the exported graph, building the rewritten one (module docstring)."""

    def __init__(
        self, model: nn.Module, program: torch.export.ExportedProgram, tracer: SurgeonTracer
    ) -> None:
        self.model, self.program = model, program
        self.graph = fx.Graph()
        self.attrs: dict[str, Any] = {}  # targets of call_module/get_attr nodes -> objects
        self.env: dict[fx.Node, Any] = {}
        self.lifted = _lifted_targets(program)
        self.calls = _module_calls(program.graph_module.graph, model, tracer)
        self.order = {n: i for i, n in enumerate(program.graph_module.graph.nodes)}
        self.call_of = {n: call for call in self.calls.values() for n in call.nodes}
        for call in self.calls.values():
            _find_boundary(call, self.call_of, self.lifted, model)

    def run(self) -> fx.GraphModule:
        for node in self.program.graph_module.graph.nodes:
            if node.op == "placeholder":
                if node.name not in self.lifted:
                    self.env[node] = self._meta(self.graph.placeholder(node.name), node)
            elif node.op == "output":
                self._output(node)
            elif node in self.call_of:
                self._call_node(node, self.call_of[node])
            elif node.op == "get_attr":  # a higher-order op's subgraph
                self.attrs[str(node.target)] = getattr(self.program.graph_module, node.target)
                self.env[node] = self.graph.get_attr(str(node.target))
            elif str(node.target) not in DROPPED or node.users:
                self.env[node] = self._op(node)
        name = type(self.model).__qualname__
        return fx.GraphModule(self.attrs, self.graph, name)

    # -- values --------------------------------------------------------------------------------
    def value(self, arg: Any) -> Any:
        """The rewritten graph's value for an exported argument (``get_attr`` made on first use)."""
        if isinstance(arg, fx.Node):
            if arg not in self.env and arg.name in self.lifted:
                target = self.lifted[arg.name]
                self.attrs[target] = self._lifted_value(target)
                self.env[arg] = self._meta(self.graph.get_attr(target), arg)
            return self.env[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.value(v) for k, v in arg.items()}
        return arg

    def _lifted_value(self, target: str) -> Any:
        if target in self.program.constants:
            return self.program.constants[target]
        try:
            return self.model.get_parameter(target)
        except AttributeError:
            return self.model.get_buffer(target)

    def _meta(self, new: fx.Node, old: fx.Node) -> fx.Node:
        """``tensor_meta`` from export's fake value, as ``ShapeProp`` records it."""
        val = old.meta.get("val")
        found = []

        def extract(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                found.append(v)
                return _extract_tensor_metadata(v)
            return v

        if "nn_module_stack" in old.meta:  # where the op was called: the head owners read it
            new.meta["nn_module_stack"] = old.meta["nn_module_stack"]
        meta = fx.node.map_aggregate(val, extract)
        if found:
            new.meta["tensor_meta"] = meta
        return new

    # -- nodes ---------------------------------------------------------------------------------
    def _op(self, node: fx.Node) -> fx.Node:
        spelling = spelling_of(node.target)
        args, kwargs = self.value(node.args), self.value(node.kwargs)
        if spelling is None:
            new = self.graph.create_node(node.op, node.target, args, kwargs)
        else:
            args, kwargs = spelling.call(tuple(args), dict(kwargs))
            new = self.graph.create_node(spelling.op, spelling.target, args, kwargs)
        return self._meta(new, node)

    def _call_node(self, node: fx.Node, call: _Call) -> None:
        """Emit ``call``'s node where its output is made (an opaque node when not one node)."""
        reason = _not_one_node(call, self.order)
        if reason is None:
            if node is call.outputs[0] or (not call.outputs and node is call.nodes[-1]):
                self.attrs[call.path] = call.module
                args = tuple(self.value(i) for i in call.inputs)
                self.env[node] = self._meta(self.graph.call_module(call.path, args), node)
            return
        if node in call.outputs or node is call.nodes[-1]:
            # its own tensors are read too: the module is not left narrow unseen, it is read
            known = [i for i in (*call.inputs, *call.own) if i in self.env or i.name in self.lifted]
            reads = [self.value(i) for i in known]
            what = (
                f"module '{call.path}' ({type(call.module).__qualname__}) as exported ATen ops: "
                f"{reason}"
            )
            opaque = self.graph.call_function(OpaqueCall(what), tuple(reads))
            self.env[node] = opaque

    def _output(self, node: fx.Node) -> None:
        specs = self.program.graph_signature.output_specs
        results = node.args[0]
        kept = [r for r, s in zip(results, specs, strict=True) if s.kind.name == "USER_OUTPUT"]
        self.graph.output(tuple(self.value(r) for r in kept))


def _lifted_targets(program: torch.export.ExportedProgram) -> dict[str, str]:
    """Placeholder name -> parameter, buffer or constant path, from the graph signature."""
    found = {}
    for spec in program.graph_signature.input_specs:
        if spec.kind.name in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR") and spec.target:
            found[spec.arg.name] = spec.target
    return found


def _module_calls(graph: fx.Graph, model: nn.Module, tracer: SurgeonTracer) -> dict[str, _Call]:
    """The calls of modules the tracer keeps whole (the outermost on each node's stack)."""
    modules = dict(model.named_modules())
    calls: dict[str, _Call] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
            module = modules.get(path) if path else None
            if module is not None and tracer.is_leaf_module(module, path):
                calls.setdefault(key, _Call(key, path, module)).nodes.append(node)
                break
    return calls


def _find_boundary(
    call: _Call, call_of: dict[fx.Node, _Call], lifted: dict[str, str], model: nn.Module
) -> None:
    """The call's tensor inputs (its module's own tensors aside) and its outputs."""
    own = {id(t) for t in (*call.module.parameters(), *call.module.buffers())}
    for node in call.nodes:
        for arg in node.all_input_nodes:
            if call_of.get(arg) is call or arg in call.inputs:
                continue
            if arg.name in lifted and _is_own(model, lifted[arg.name], own):
                call.own.append(arg)
                continue
            if isinstance(arg.meta.get("val"), torch.Tensor) or arg.name in lifted:
                call.inputs.append(arg)
        if any(call_of.get(user) is not call for user in node.users):
            call.outputs.append(node)


def _is_own(model: nn.Module, target: str, own: set[int]) -> bool:
    for getter in (model.get_parameter, model.get_buffer):
        try:
            return id(getter(target)) in own
        except AttributeError:
            continue
    return True  # a constant lifted from inside the module's forward


def _not_one_node(call: _Call, order: dict[fx.Node, int]) -> str | None:
    """Why ``call`` cannot be one ``call_module`` node placed at its output, or ``None``."""
    if len(call.outputs) > 1:
        names = ", ".join(n.name for n in call.outputs)
        return f"it gives {len(call.outputs)} tensors ({names}) where one node gives one"
    if len(call.inputs) > 1 and _owns_tensors(call.module):
        return (
            f"it reads {len(call.inputs)} tensors, whose order as forward arguments export "
            "does not record"
        )
    anchor = call.outputs[0] if call.outputs else call.nodes[-1]
    if any(order[i] > order[anchor] for i in call.inputs):
        return "it reads tensors computed from its own output"
    return None


def _owns_tensors(module: nn.Module) -> bool:
    return any(t.dim() > 0 for t in (*module.parameters(), *module.buffers()))
