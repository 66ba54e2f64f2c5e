"""The one table from ATen ops to the torch spellings whose handlers the analysis already has.

``torch.export`` records ATen ops (``aten.add.Tensor``, ``aten.view.default``, ...). The export
front end (:mod:`netsurgeon.graph.export`) rewrites each into the ``call_function`` or
``call_method`` node that symbolic tracing would have recorded for the same code
(``operator.add``, ``x.view(size)``), so the registry's handlers read it unchanged and the
rewritten graph still computes what the exported one does. The handlers are never copied: an
entry names a torch spelling and, where ATen orders the arguments differently, how to reorder
them. An ATen op without an entry stays as it is: it computes the same, but no handler knows it,
so the analysis blocks the groups it touches (an unknown op, as on the symbolic path).

Example: ``aten.select.int(x, 1, 0)`` becomes ``operator.getitem(x, (slice(None), 0))``, which
is what ``x[:, 0]`` traces to.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ATEN_SPELLINGS", "DROPPED", "Spelling", "spelling_of"]

Args = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class Spelling:
    """How one ATen overload is written in torch: ``op`` is ``"call_function"`` or
    ``"call_method"``, ``target`` the function or method name, ``adapt`` maps ATen's
    ``(args, kwargs)`` to the spelling's (``None``: the same)."""

    op: str
    target: Any
    adapt: Callable[[tuple[Any, ...], dict[str, Any]], Args] | None = None

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
        return (args, kwargs) if self.adapt is None else self.adapt(args, kwargs)


def _fn(target: Any, adapt: Any = None) -> Spelling:
    return Spelling("call_function", target, adapt)


def _method(name: str, adapt: Any = None) -> Spelling:
    return Spelling("call_method", name, adapt)


def _inplace(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
    return args, {**kwargs, "inplace": True}


def _select(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
    """``select(x, dim, i)`` as ``x[:, ..., i]`` (``dim`` counted from the front)."""
    x, dim, index = args
    return (x, (*(slice(None),) * dim, index)), {}


def _slice(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
    """``slice(x, dim, start, end, step)`` as ``x[:, ..., start:end:step]``."""
    x, dim, start, end, step = (*args, *(0, None, None, 1)[len(args) - 1 :])
    return (x, (*(slice(None),) * dim, slice(start, end, step))), {}


def _index(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
    """``index(x, [None, t])`` as ``x[:, t]``."""
    x, indices = args
    return (x, tuple(slice(None) if i is None else i for i in indices)), {}


def _first_two(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
    return args[:2], {}


def _to(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
    """``_to_copy(x, dtype=..., device=...)`` as ``x.to(dtype=..., device=...)``."""
    kept = {k: v for k, v in kwargs.items() if k in ("dtype", "device") and v is not None}
    return args[:1], kept | ({"dtype": args[1]} if len(args) > 1 else {})


def _softmax(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
    """``_softmax(x, dim, half_to_float)`` as ``torch.softmax(x, dim)``."""
    return args[:2], {}


def _transpose_2d(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
    return (args[0], 0, 1), {}


def _batch_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
    """``batch_norm(x, w, b, mean, var, training, momentum, eps, cudnn)`` as ``F.batch_norm``."""
    x, weight, bias, mean, var, training, momentum, eps = args[:8]
    return (x, mean, var, weight, bias, training, momentum, eps), {}


def _norm_first(n: int) -> Callable[[tuple[Any, ...], dict[str, Any]], Args]:
    """Keep the first ``n`` arguments (``layer_norm``/``group_norm`` drop ``cudnn_enable``)."""
    return lambda args, kwargs: (args[:n], {})


def _interpolate(mode: str, align: bool) -> Callable[[tuple[Any, ...], dict[str, Any]], Args]:
    """``upsample_*.vec(x, size, [align_corners,] scale_factors)`` as ``F.interpolate``."""

    def adapt(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Args:
        x, size, *rest = args
        corners = {"align_corners": rest.pop(0)} if align else {}
        scale = rest[0] if rest else None
        return (x,), {"size": size, "scale_factor": scale, "mode": mode} | corners

    return adapt


#: ATen overload name -> spelling. The names are ``str(op)`` (``"aten.add.Tensor"``).
ATEN_SPELLINGS: dict[str, Spelling] = {
    # element-wise: activations, dropout, casts
    "aten.relu.default": _fn(torch.relu),
    "aten.relu_.default": _fn(torch.relu_),
    "aten.gelu.default": _fn(F.gelu),
    "aten.silu.default": _fn(F.silu),
    "aten.silu_.default": _fn(F.silu, _inplace),
    "aten.mish.default": _fn(F.mish),
    "aten.hardswish.default": _fn(F.hardswish),
    "aten.hardswish_.default": _fn(F.hardswish, _inplace),
    "aten.hardsigmoid.default": _fn(F.hardsigmoid),
    "aten.hardsigmoid_.default": _fn(F.hardsigmoid, _inplace),
    "aten.hardtanh.default": _fn(F.hardtanh),
    "aten.hardtanh_.default": _fn(F.hardtanh, _inplace),
    "aten.leaky_relu.default": _fn(F.leaky_relu),
    "aten.leaky_relu_.default": _fn(F.leaky_relu, _inplace),
    "aten.elu.default": _fn(F.elu, _first_two),
    "aten.softplus.default": _fn(F.softplus),
    "aten.sigmoid.default": _fn(torch.sigmoid),
    "aten.tanh.default": _fn(torch.tanh),
    "aten.exp.default": _fn(torch.exp),
    "aten.abs.default": _fn(torch.abs),
    "aten.neg.default": _fn(torch.neg),
    "aten.sqrt.default": _fn(torch.sqrt),
    "aten.rsqrt.default": _fn(torch.rsqrt),
    "aten.log.default": _fn(torch.log),
    "aten.erf.default": _fn(torch.erf),
    "aten.sin.default": _fn(torch.sin),
    "aten.cos.default": _fn(torch.cos),
    "aten.clamp.default": _fn(torch.clamp),
    "aten.clamp_min.default": _fn(torch.clamp_min),
    "aten.clamp_max.default": _fn(torch.clamp_max),
    "aten.dropout.default": _fn(F.dropout),
    "aten.dropout_.default": _fn(F.dropout, _inplace),
    "aten.clone.default": _method("clone"),
    "aten.contiguous.default": _method("contiguous"),
    "aten.detach.default": _method("detach"),
    "aten.alias.default": _method("detach"),
    "aten.type_as.default": _method("type_as"),
    "aten._to_copy.default": _method("to", _to),
    "aten.to.dtype": _method("to", _to),
    "aten.to.dtype_layout": _method("to", _to),
    # joins
    "aten.add.Tensor": _fn(torch.add),
    "aten.add.Scalar": _fn(torch.add),
    "aten.add_.Tensor": _method("add_"),
    "aten.sub.Tensor": _fn(torch.sub),
    "aten.sub.Scalar": _fn(torch.sub),
    "aten.sub_.Tensor": _method("sub_"),
    "aten.mul.Tensor": _fn(torch.mul),
    "aten.mul.Scalar": _fn(torch.mul),
    "aten.mul_.Tensor": _method("mul_"),
    "aten.div.Tensor": _fn(torch.div),
    "aten.div.Scalar": _fn(torch.div),
    "aten.div.Tensor_mode": _fn(torch.div),
    "aten.div_.Tensor": _method("div_"),
    "aten.pow.Tensor_Scalar": _fn(torch.pow),
    "aten.pow.Tensor_Tensor": _fn(torch.pow),
    "aten.maximum.default": _fn(torch.maximum),
    "aten.minimum.default": _fn(torch.minimum),
    "aten.where.self": _fn(torch.where),
    "aten.addcmul.default": _fn(torch.addcmul),
    "aten.addcdiv.default": _fn(torch.addcdiv),
    # shapes
    "aten.view.default": _method("view"),
    "aten._unsafe_view.default": _method("view"),
    "aten.reshape.default": _method("reshape"),
    "aten.permute.default": _method("permute"),
    "aten.transpose.int": _method("transpose"),
    "aten.t.default": _method("transpose", _transpose_2d),
    "aten.movedim.int": _method("movedim"),
    "aten.flatten.using_ints": _fn(torch.flatten),
    "aten.unflatten.int": _method("unflatten"),
    "aten.unsqueeze.default": _method("unsqueeze"),
    "aten.squeeze.dim": _method("squeeze"),
    "aten.squeeze.dims": _method("squeeze"),
    "aten.squeeze.default": _method("squeeze"),
    "aten.expand.default": _method("expand", _first_two),
    "aten.repeat.default": _method("repeat"),
    "aten.select.int": _fn(operator.getitem, _select),
    "aten.slice.Tensor": _fn(operator.getitem, _slice),
    "aten.index.Tensor": _fn(operator.getitem, _index),
    "aten.cat.default": _fn(torch.cat),
    "aten.stack.default": _fn(torch.stack),
    "aten.split.Tensor": _fn(torch.split),
    "aten.split_with_sizes.default": _fn(torch.split),
    "aten.chunk.default": _fn(torch.chunk),
    "aten.unbind.int": _fn(torch.unbind),
    # reductions and ops along one dim
    "aten.mean.dim": _fn(torch.mean),
    "aten.mean.default": _fn(torch.mean),
    "aten.sum.dim_IntList": _fn(torch.sum),
    "aten.sum.default": _fn(torch.sum),
    "aten.amax.default": _fn(torch.amax),
    "aten.amin.default": _fn(torch.amin),
    "aten.var.correction": _fn(torch.var),
    "aten.std.correction": _fn(torch.std),
    "aten.logsumexp.default": _fn(torch.logsumexp),
    "aten.cumsum.default": _fn(torch.cumsum),
    "aten.softmax.int": _fn(torch.softmax),
    "aten._softmax.default": _fn(torch.softmax, _softmax),
    "aten.log_softmax.int": _fn(torch.log_softmax),
    "aten._log_softmax.default": _fn(torch.log_softmax, _softmax),
    "aten.index_select.default": _fn(torch.index_select),
    # pooling, interpolation, padding
    "aten.adaptive_avg_pool1d.default": _fn(F.adaptive_avg_pool1d),
    "aten.adaptive_avg_pool2d.default": _fn(F.adaptive_avg_pool2d),
    "aten.adaptive_avg_pool3d.default": _fn(F.adaptive_avg_pool3d),
    "aten.max_pool1d.default": _fn(F.max_pool1d),
    "aten.max_pool2d.default": _fn(F.max_pool2d),
    "aten.max_pool3d.default": _fn(F.max_pool3d),
    "aten.avg_pool1d.default": _fn(F.avg_pool1d),
    "aten.avg_pool2d.default": _fn(F.avg_pool2d),
    "aten.avg_pool3d.default": _fn(F.avg_pool3d),
    "aten.upsample_nearest2d.vec": _fn(F.interpolate, _interpolate("nearest", False)),
    "aten.upsample_bilinear2d.vec": _fn(F.interpolate, _interpolate("bilinear", True)),
    "aten.constant_pad_nd.default": _fn(torch.constant_pad_nd),
    "aten.pad.default": _fn(F.pad),
    # normalisations with their parameters passed in, mixing ops
    "aten.layer_norm.default": _fn(F.layer_norm, _norm_first(5)),
    "aten.group_norm.default": _fn(F.group_norm, _norm_first(5)),
    "aten.batch_norm.default": _fn(F.batch_norm, _batch_norm),
    "aten.linear.default": _fn(F.linear),
    "aten.matmul.default": _fn(torch.matmul),
    "aten.bmm.default": _fn(torch.bmm),
    "aten.mm.default": _fn(torch.mm),
    "aten.baddbmm.default": _fn(torch.baddbmm),
    "aten.einsum.default": _fn(torch.einsum),
    "aten.scaled_dot_product_attention.default": _fn(F.scaled_dot_product_attention),
    # tensors made from another's shape
    "aten.zeros_like.default": _fn(torch.zeros_like),
    "aten.ones_like.default": _fn(torch.ones_like),
    "aten.full_like.default": _fn(torch.full_like),
    "aten.empty_like.default": _fn(torch.empty_like),
}

#: Checks that export records and that compute nothing: left out of the rewritten graph.
DROPPED = frozenset(
    {
        "aten._assert_tensor_metadata.default",
        "aten._assert_async.msg",
        "aten._assert_scalar.default",
        "aten.sym_constrain_range_for_size.default",
    }
)


def spelling_of(op: Any) -> Spelling | None:
    """The torch spelling of ATen overload ``op`` (``None``: no entry, an unknown op)."""
    if op is operator.getitem:
        return _fn(operator.getitem)
    return ATEN_SPELLINGS.get(str(op))
