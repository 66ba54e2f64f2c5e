"""What a padded stream rescales: its norms, and the layer scales its producers' rows see.

A LayerNorm/RMSNorm reading a padded stream (``docs/widen.md``, mean-padding):

With ``s = C / (C + k)`` the padded stream's variance (mean square) is ``s`` times the old one,
so the norm's output keeps its old channels when ``weight`` and ``eps`` take ``sqrt(s)`` and
``s``: ``sqrt(s) w (x - m) / sqrt(s v + s eps) = w (x - m) / sqrt(v + eps)``.

A layer scale ``gamma`` multiplying one producer's output (``x + gamma * proj(h)``): the new
channel must carry ``mean_c(gamma_c proj_c(h))``, so the producer's new rows are
``mean_c(gamma_c row_c) / gamma_new`` with ``gamma_new`` the mean of ``gamma`` (1 where that is 0).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from netsurgeon.graph import FollowerRef, LayerGraph
from netsurgeon.graph.axes import module_tensor
from netsurgeon.surgery.constructions import layer_scale_fill, norm_scale
from netsurgeon.surgery.index import grow, kept_index, slots
from netsurgeon.surgery.staging import AttrChange, Surgery, TensorChange
from netsurgeon.surgery.tensors import like_format

__all__ = ["stage_layer_scale", "stage_norm_reader"]


def stage_norm_reader(
    graph: LayerGraph, follower: FollowerRef, spec: Mapping[str, tuple[int, int, int]]
) -> Surgery:
    """A LayerNorm/RMSNorm reading a padded group: ``weight`` old entries times ``sqrt(s)``
    (gradient and optimizer moments rescaled with them), new entries ``sqrt(s)`` times the old
    mean; new ``bias`` entries 0; ``eps`` times ``s`` (``RMSNorm(eps=None)`` uses the machine
    epsilon of its weight's dtype, which becomes an explicit ``eps``); ``normalized_shape`` grows.
    """
    module, handler = graph.module(follower.name), graph.handler(follower.name)
    ins = follower.index_map.insertions(spec)
    width, k, _ = spec[ins[0].group]
    root = norm_scale(width, k)
    surgery = Surgery()
    for axis in handler.entries(module):
        old = module_tensor(module, axis.tensor)
        new = grow(old.detach(), {0: ins})
        factor = 1.0
        if axis.tensor == "weight":
            kept = kept_index(old.shape[0], ins, new.device)
            new.index_copy_(0, kept, old.detach() * root)
            mean = old.detach().mean() * root
            for at, i in slots(ins):
                new.narrow(0, at, i.count).copy_(mean.expand(i.count))
            factor = 1.0 / root
        name = f"{follower.name}.{axis.tensor}"
        surgery.tensors.append(TensorChange(name, old, like_format(new, old), {0: ins}, factor))
    added = sum(i.count for i in ins)
    surgery.attrs.extend(
        AttrChange(module, a, v) for a, v in handler.follower_attrs(module, added).items()
    )
    name = getattr(handler, "eps_attr", "eps")  # LlamaRMSNorm: variance_epsilon
    eps = getattr(module, name)
    eps = eps if eps is not None else torch.finfo(module.weight.dtype).eps
    surgery.attrs.append(AttrChange(module, name, eps * root**2))
    return surgery


def stage_layer_scale(
    graph: LayerGraph, follower: FollowerRef, spec: Mapping[str, tuple[int, int, int]]
) -> Surgery:
    """A layer scale a mean-padded producer's rows were weighted by: new entries
    :func:`layer_scale_fill`."""
    owner, _, attr = follower.name.rpartition(".")
    module = graph.model.get_submodule(owner) if owner else graph.model
    old = module_tensor(module, attr)
    ins = follower.index_map.insertions(spec)
    new = grow(old.detach(), {follower.dim: ins})
    fill = layer_scale_fill(old).to(new.dtype)
    for at, i in slots(ins):
        part = new.narrow(follower.dim, at, i.count)
        part.copy_(fill.expand_as(part))
    surgery = Surgery()
    surgery.tensors.append(
        TensorChange(follower.name, old, like_format(new, old), {follower.dim: ins})
    )
    return surgery
