"""Parametrized and reparametrised weights: exact, or refused with the reason.

Invariant: with a parametrization the layer's weight is a function of other tensors. Growing the
originals as if they were the weight is exact only when the function acts row by row in a way a
handler models (``weight_norm``, when its handler declares it). ``spectral_norm`` divides the
whole weight by its largest singular value, which a new row or column changes, so it is refused;
so are unknown (custom) parametrizations and the legacy hook-based ``spectral_norm``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import netsurgeon
from netsurgeon.errors import NetsurgeonError, UnsupportedModelError


class Centred(nn.Module):
    def forward(self, w):
        return w - w.mean()


def _net(wrap) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Conv2d(5, 2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrap(model[2])
    return model.double().eval()


@pytest.mark.parametrize(
    "wrap, named",
    [
        (parametrizations.spectral_norm, "_SpectralNorm"),
        (lambda m: parametrize.register_parametrization(m, "weight", Centred()), "Centred"),
        (torch.nn.utils.spectral_norm, "SpectralNorm"),
    ],
    ids=["spectral_norm", "custom", "legacy_spectral_norm"],
)
def test_a_parametrization_netsurgeon_cannot_widen_exactly_is_refused_by_name(wrap, named) -> None:
    model = _net(wrap)
    with pytest.raises(UnsupportedModelError) as info:
        netsurgeon.trace(model)
    assert "module '2'" in str(info.value) and named in str(info.value)
    blocked = {g.name: g.blocked for g in netsurgeon.trace(model, strict=False).groups}
    assert blocked["0"] is not None and blocked["2"] is not None


@pytest.mark.parametrize(
    "wrap", [parametrizations.weight_norm, torch.nn.utils.weight_norm], ids=["new", "legacy"]
)
def test_weight_norm_widens_exactly_or_is_refused_naming_it(wrap) -> None:
    model = _net(wrap)
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        netsurgeon.widen(model, {"0": 2, "2": 3}, example_inputs=x)
    except NetsurgeonError as e:
        assert "weight" in str(e) and ("WeightNorm" in str(e) or "parametrized" in str(e))
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
        return
    torch.testing.assert_close(model(x), before, rtol=1e-9, atol=1e-12)


def test_a_handler_that_models_a_parametrization_accepts_it_and_its_originals() -> None:
    from netsurgeon.graph.ops.linear import ConvHandler
    from netsurgeon.graph.soundness import module_reason

    class WeightNormConv(ConvHandler):
        def models_parametrization(self, module, tensor, plist) -> bool:
            return type(plist[0]).__name__ == "_WeightNorm"

    normed, spectral = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
    parametrizations.weight_norm(normed)
    parametrizations.spectral_norm(spectral)
    handler = WeightNormConv()
    assert handler.tensor_names(normed) == {
        "bias",
        "parametrizations.weight.original0",
        "parametrizations.weight.original1",
    }
    assert module_reason(normed, handler, nn.Conv2d) is None
    assert "_SpectralNorm" in module_reason(spectral, handler, nn.Conv2d)
