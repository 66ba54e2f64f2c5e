"""Hugging Face transformers' layers, registered by qualified name (transformers is never imported).

``transformers.pytorch_utils.Conv1D`` (GPT-2's projections) is a ``Linear`` whose weight is
stored transposed: ``(nx, nf)`` = ``(in, out)``, ``y = x @ W + b``. Its rows (output units) are
dim 1 of the weight and its columns (input units) dim 0; ``nf`` is the width the forward reads
(``size_out = x.size()[:-1] + (self.nf,)``), so it grows with the weight.

Example: ``Conv1D(nf=8, nx=4)`` widened by 2 outputs has a ``(4, 10)`` weight, a ``(10,)`` bias
and ``nf == 10``.
"""

from __future__ import annotations

from torch import nn

from netsurgeon.graph.ops.linear import LinearHandler
from netsurgeon.graph.registry import register_module

__all__ = ["Conv1DHandler"]


@register_module("transformers.pytorch_utils.Conv1D")
class Conv1DHandler(LinearHandler):
    """GPT-2's ``Conv1D``: a ``Linear`` with an ``(in, out)`` weight (module docstring)."""

    out_attr = "nf"
    in_attr = "nx"
    row_dim, col_dim = 1, 0

    def fan_in(self, module: nn.Module) -> float:
        return module.nx
