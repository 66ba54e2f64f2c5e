"""``nn.TransformerEncoderLayer``, ``nn.TransformerEncoder``, ``nn.TransformerDecoderLayer``:
traced through the maths of their slow path, or leaves that block.

``TransformerEncoderLayer.forward`` first inspects its input (``src.dim()``, ``src.is_nested``,
``torch.is_grad_enabled()``, the weights' ``requires_grad``) to choose PyTorch's fused kernel,
which symbolic tracing cannot follow (a traced value cannot decide an ``if``). The fused kernel
computes the function of the slow path below it, the one training always runs::

    x = x + _sa_block(norm1(x), ...); x = x + _ff_block(norm2(x))    # norm_first=True
    x = norm1(x + _sa_block(x, ...)); x = norm2(x + _ff_block(x))    # norm_first=False

so the tracer traces that slow path instead (:meth:`TransformerHandler.traced_forward`), with
the module's own ``_sa_block`` (``self_attn(x, x, x, ...)``, ``nn.MultiheadAttention``: a layer
growing by whole heads with its stream) and ``_ff_block`` (``linear2(dropout(activation(
linear1(x))))``). The masks go to ``self_attn`` uncanonicalised: ``MultiheadAttention`` converts
them exactly as the layer's ``forward`` would (``F._canonical_mask`` with the query's dtype), and
its handler refuses a per-head (3-d) ``attn_mask``. ``TransformerEncoder`` is its loop over the
layers and its final ``norm`` (``is_causal=None`` with a mask: ``False``, the same function,
since with a mask the flag is only a hint); its fast path packs the padded positions into a
nested tensor and gives them 0 at the end, which a widening keeps as well (new channels 0 too).
``TransformerDecoderLayer`` has no fast path: its own ``forward`` is traced.

After a widening the module's own ``forward`` computes the same function, the fused kernel
included: it reads ``self_attn.embed_dim``/``num_heads`` and the grown tensors, and both norms'
``eps`` stay equal (they read one stream, scaled by the same ``s``). The stream's construction
is the analysis' (``docs/widen.md``): pre-LN mean-pads, post-LN tiles (the norm's output, with
zeros on padded channels, is added back into the stream).

Only the exact classes are traced through: a subclass overriding ``forward`` or a block method,
an instance attribute replacing one, or a hook keeps the module a leaf, and then its groups block
with the reason (:func:`leaf_reason`, also shown by ``LayerGraph.opaque_modules()``).
``nn.Transformer`` stays a leaf (its ``forward`` compares batch sizes of traced inputs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor, fx, nn

from netsurgeon.graph.opaque import TRANSFORMER_TYPES
from netsurgeon.graph.registry import OpHandler, register_module
from netsurgeon.graph.soundness import module_reason

if TYPE_CHECKING:
    from netsurgeon.graph.context import FlowContext

__all__ = ["TransformerHandler", "leaf_reason"]


def encoder_layer_forward(
    layer: nn.TransformerEncoderLayer,
    src: Tensor,
    src_mask: Tensor | None = None,
    src_key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """``TransformerEncoderLayer.forward``'s slow path: the function its fused kernel computes."""
    x = src
    if layer.norm_first:
        x = x + layer._sa_block(layer.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
        return x + layer._ff_block(layer.norm2(x))
    x = layer.norm1(x + layer._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
    return layer.norm2(x + layer._ff_block(x))


def encoder_forward(
    encoder: nn.TransformerEncoder,
    src: Tensor,
    mask: Tensor | None = None,
    src_key_padding_mask: Tensor | None = None,
    is_causal: bool | None = None,
) -> Tensor:
    """``TransformerEncoder.forward``'s slow path: each layer, then the final norm."""
    output = src
    for layer in encoder.layers:
        output = layer(
            output,
            src_mask=mask,
            is_causal=bool(is_causal),
            src_key_padding_mask=src_key_padding_mask,
        )
    return output if encoder.norm is None else encoder.norm(output)


class _Traced(OpHandler):
    """What tracing through a class assumes: its methods ``relies_on`` (and no hook)."""

    def __init__(self, relies_on: tuple[str, ...], forward: Callable[..., Any] | None) -> None:
        self.relies_on = relies_on
        self.forward = forward


_TRACED = {
    nn.TransformerEncoderLayer: _Traced(
        ("forward", "_sa_block", "_ff_block"), encoder_layer_forward
    ),
    nn.TransformerEncoder: _Traced(("forward",), encoder_forward),
    nn.TransformerDecoderLayer: _Traced(("forward", "_sa_block", "_mha_block", "_ff_block"), None),
}


def leaf_reason(module: nn.Module, registered_type: type[nn.Module]) -> str | None:
    """Why ``module`` (an ``nn.Transformer*``) is not traced through, or ``None``."""
    traced = _TRACED.get(registered_type)
    if traced is None:
        return (
            f"torch.fx cannot trace {registered_type.__name__}.forward (it branches on the "
            "sizes of its inputs)"
        )
    reason = module_reason(module, traced, registered_type)
    return None if reason is None else reason.split(" (fix: ")[0]  # the fix is the caller's


@register_module(*TRANSFORMER_TYPES)
class TransformerHandler(OpHandler):
    """``nn.Transformer*``: traced through when :func:`leaf_reason` is ``None``; else a leaf whose
    groups block (its input features are ``d_model``, normalised and mixed inside it)."""

    #: as a leaf it blocks whatever the module computes, so a subclass needs no check
    relies_on = ()

    def traced_forward(self, module: nn.Module, registered_type: type) -> Callable[..., Any] | None:
        """The function fx traces instead of ``module.forward`` (``module`` is its first
        argument), ``module.forward`` itself, or ``None``: the module stays a leaf."""
        if leaf_reason(module, registered_type) is not None:
            return None
        forward = _TRACED[registered_type].forward
        return forward if forward is not None else type(module).forward

    def why_leaf(self, module: nn.Module, registered_type: type) -> str:
        """Why ``module`` is a leaf (for the blocked groups and ``LayerGraph.opaque_modules``)."""
        return leaf_reason(module, registered_type) or "it is in leaf_modules"

    def flow(self, node: fx.Node, ctx: FlowContext) -> None:
        module = ctx.module_of(node)
        why = self.why_leaf(module, ctx.registry.registered_type(module))
        ctx.block(
            node,
            ctx.tracked_inputs(node),
            f"{type(module).__name__} '{node.target}' reads these channels as its d_model "
            f"features, which LayerNorm and attention inside it fix, and netsurgeon reads it as "
            f"one op: {why}",
        )
        return None
