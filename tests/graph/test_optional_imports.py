"""Optional dependencies stay unimported: handlers for their ops are registered by qualified name.

``import netsurgeon`` must not import torchvision (its models and ops pull in ``torch._dynamo``),
timm, lightning, networkx or the FLOP counter: each is imported where it is used. A function
registered by its ``"package.module.function"`` name is matched on the fx node's target through
its ``__module__`` and ``__qualname__``, so the package that defines it is imported only by the
user's model.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch
import torchvision
from torch import fx, nn

from netsurgeon.graph.registry import OpHandler, Registry, register_function

HEAVY = ("torchvision", "timm", "lightning", "pytorch_lightning", "networkx", "torch._dynamo")


def test_importing_netsurgeon_imports_no_optional_dependency() -> None:
    code = f"import json, sys, netsurgeon; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def scale(x: torch.Tensor) -> torch.Tensor:
    return x * 2


fx.wrap("scale")


class _Scaled(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scale(x)


def test_a_function_registered_by_qualified_name_matches_its_fx_node() -> None:
    registry = Registry()

    @register_function(f"{__name__}.scale", registry=registry)
    class ScaleHandler(OpHandler):
        pass

    gm = fx.symbolic_trace(_Scaled())
    (node,) = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert node.target is scale
    assert isinstance(registry.for_node(node, dict(gm.named_modules())), ScaleHandler)
    other = Registry()
    register_function(f"{__name__}.not_scale", registry=other)(type("H", (OpHandler,), {}))
    assert other.for_node(node, dict(gm.named_modules())) is None


def test_torchvisions_wrapped_functions_find_their_handlers_once_torchvision_is_used() -> None:
    import netsurgeon  # noqa: F401  (registers the handlers)
    from netsurgeon.graph.registry import REGISTRY
    from netsurgeon.graph.tracer import SurgeonTracer, symbolic_trace

    def handled(model):
        gm = symbolic_trace(model, tracer=SurgeonTracer((), (), REGISTRY))
        modules = dict(gm.named_modules())
        return {
            (n.target if n.op == "call_module" else n.target.__name__).split(".")[-1]: type(
                REGISTRY.for_node(n, modules)
            ).__name__
            for n in gm.graph.nodes
            if (n.op == "call_module" or n.op == "call_function")
            and (n.op == "call_module" or n.target.__module__.startswith("torchvision"))
            and type(REGISTRY.for_node(n, modules)).__module__.endswith("ops.torchvision")
        }

    # swin_t's window attention is a leaf layer: the function it calls is inside it
    assert handled(torchvision.models.swin_t(num_classes=3)) == {
        "stochastic_depth": "StochasticDepthHandler",
        "attn": "ShiftedWindowAttentionHandler",
        "_patch_merging_pad": "PatchMergingHandler",
    }
    # V2's attention has its own forward: traced through, the function is a node
    assert handled(torchvision.models.swin_v2_t(num_classes=3))["shifted_window_attention"] == (
        "WindowAttentionHandler"
    )
