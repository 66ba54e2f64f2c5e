"""Weight-normalised layers widen exactly: both ``g`` and ``v`` grow.

Weight norm over the rows (``dim=0`` for ``Conv``/``Linear``) computes each output unit's weight
as ``w_r = g_r * v_r / ||v_r||``. Widening adds:

* zero columns to ``v`` (paper): ``||v_r||`` is unchanged, so every old ``w_r`` is unchanged and
  the new inputs are read with weight 0;
* new rows: ``v`` gets the init's row and ``g`` its norm (paper: ``w_new = v_new``), or copies of
  the source's ``v`` and ``g`` (net2net: ``w_new = w_source``);
* net2net's column split scales some entries of ``v_r``; ``g_r`` is rescaled by
  ``||v_r'|| / ||v_r||`` so ``w_r'`` is exactly the split weight.

Both spellings (``nn.utils.parametrizations.weight_norm`` and the legacy ``nn.utils.weight_norm``)
are handled, so the output is preserved, the optimizer state of ``g`` and ``v`` grows with them,
and gradients reach the new entries:

    max |y_after - y_before| <= tol * (1 + max |y_before|),  tol = 1e-5 (float32), 1e-10 (float64)
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrizations
from torch.nn.utils import weight_norm as legacy_weight_norm

import netsurgeon
from netsurgeon.graph.axes import module_tensor

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
EXAMPLES = max(8, settings().max_examples // 4)
SPELLINGS = {"parametrization": parametrizations.weight_norm, "legacy": legacy_weight_norm}


def _norm(spelling: str, module: nn.Module, dim: int | None = 0) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the legacy spelling is deprecated
        return SPELLINGS[spelling](module, dim=dim)


def _g_and_v(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(module, "parametrizations"):
        return module.parametrizations.weight.original0, module.parametrizations.weight.original1
    return module.weight_g, module.weight_v


def _net(spelling: str, c1: int, c2: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        _norm(spelling, nn.Conv2d(3, c1, 3)),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        _norm(spelling, nn.Conv2d(c1, c2, 3)),
        nn.ReLU(),
        nn.Flatten(),
        _norm(spelling, nn.Linear(c2 * 4 * 4, hidden)),
        nn.ReLU(),
        nn.Linear(hidden, 2),
    )


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    spelling=st.sampled_from(sorted(SPELLINGS)),
    widths=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    growth=st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 4)),
    init=st.sampled_from(("paper", "net2net")),
    dtype=st.sampled_from((torch.float32, torch.float64)),
    train=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_widening_weight_normalised_layers_preserves_the_output(
    spelling, widths, growth, init, dtype, train, seed
) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = _net(spelling, *widths).to(dtype).train(train)
    model[1].running_mean.normal_(generator=generator)
    model[1].running_var.uniform_(0.5, 2.0, generator=generator)
    x = torch.randn(3, 3, 8, 8, dtype=dtype, generator=generator)
    with torch.no_grad():
        before = model(x)
    plan = {k: n for k, n in zip(("0", "3", "6"), growth, strict=True) if n}
    netsurgeon.widen(model, plan, init=init, generator=generator, example_inputs=x)
    with torch.no_grad():
        after = model(x)
    tol = TOLERANCE[dtype] * (1 + before.abs().max().item())
    torch.testing.assert_close(after, before, atol=tol, rtol=0.0)
    g, v = _g_and_v(model[3])
    assert g.shape == (widths[1] + growth[1], 1, 1, 1)
    assert v.shape == (widths[1] + growth[1], widths[0] + growth[0], 3, 3)


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_paper_new_rows_are_their_own_weight_and_old_g_is_untouched(spelling: str) -> None:
    torch.manual_seed(0)
    model = _net(spelling, 4, 5, 6).double()
    g, v = _g_and_v(model[3])
    old_g = g.detach().clone()
    netsurgeon.widen(model, {"0": 2, "3": 3}, example_inputs=torch.randn(1, 3, 8, 8).double())
    assert torch.equal(g.detach()[:5], old_g), "zero columns keep every row's norm"
    torch.testing.assert_close(g.detach()[5:].flatten(), v.detach()[5:].flatten(1).norm(dim=1))
    weight = model[3].weight  # the legacy spelling's cached weight is refreshed too
    assert weight.shape == v.shape
    torch.testing.assert_close(weight[5:].detach(), v.detach()[5:], atol=1e-12, rtol=0.0)


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_net2net_rescales_g_of_the_rows_whose_columns_it_split(spelling: str) -> None:
    """A split scales entries of ``v_r``; without ``g``'s rescale the weight would change."""
    torch.manual_seed(0)
    model = _net(spelling, 4, 5, 6).double()
    g, _ = _g_and_v(model[3])
    old_g = g.detach().clone()
    x = torch.randn(2, 3, 8, 8).double()
    before = model(x).detach()
    netsurgeon.widen(model, {"0": 3}, init="net2net", example_inputs=x)
    assert not torch.equal(g.detach(), old_g)
    torch.testing.assert_close(model(x).detach(), before, atol=1e-12, rtol=0.0)


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_widening_weight_norm_grows_adam_state_of_g_and_v_and_gradients_flow(spelling) -> None:
    torch.manual_seed(0)
    model = _net(spelling, 4, 5, 6)
    x = torch.randn(2, 3, 8, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(x).square().mean().backward()
    opt.step()
    g, v = _g_and_v(model[3])
    old = {id(t): opt.state[t]["exp_avg"].clone() for t in (g, v)}
    netsurgeon.widen(model, {"0": 2, "3": 3}, optimizer=opt, example_inputs=x)
    assert _g_and_v(model[3]) == (g, v), "the same Parameter objects"
    assert opt.state[g]["exp_avg"].shape == g.shape == (8, 1, 1, 1)
    assert opt.state[v]["exp_avg"].shape == v.shape == (8, 6, 3, 3)
    assert torch.equal(opt.state[g]["exp_avg"][:5], old[id(g)])
    assert torch.equal(opt.state[v]["exp_avg"][:5, :4], old[id(v)])
    assert torch.count_nonzero(opt.state[v]["exp_avg"][:, 4:]) == 0
    opt.zero_grad()
    model(x).square().mean().backward()
    assert v.grad.shape == v.shape and g.grad.shape == g.shape
    assert v.grad[:5, 4:].abs().sum() > 0, "the new (zero) input columns of v learn"
    opt.step()


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
@pytest.mark.parametrize(
    ("layer", "dim", "exact"),
    [
        (lambda: nn.Conv2d(4, 6, 3), 0, True),
        (lambda: nn.Linear(4, 6), 0, True),
        (lambda: nn.Conv2d(4, 6, 3), 1, False),
        (lambda: nn.Linear(4, 6), None, False),
        (lambda: nn.ConvTranspose2d(4, 6, 3), 1, True),
        (lambda: nn.ConvTranspose2d(4, 6, 3), 0, False),
    ],
    ids=["conv-rows", "linear-rows", "conv-columns", "linear-whole", "convT-rows", "convT-cols"],
)
def test_a_handler_models_weight_norm_only_over_its_rows(spelling, layer, dim, exact) -> None:
    module = _norm(spelling, layer(), dim)
    handler = netsurgeon.graph.REGISTRY.for_module(module)
    if spelling == "parametrization":
        plist = module.parametrizations.weight
        assert handler.models_parametrization(module, "weight", plist) is exact
        names = {"parametrizations.weight.original0", "parametrizations.weight.original1"}
    else:
        hook = next(iter(module._forward_pre_hooks.values()))
        assert handler.models_hook(module, hook) is exact
        names = {"weight_g", "weight_v"}
    if exact:
        assert handler.tensor_names(module) == frozenset(names | {"bias"})
        assert all(module_tensor(module, n) is not None for n in names)


def test_a_weight_normalised_transposed_convolution_widens_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        _norm("parametrization", nn.ConvTranspose2d(4, 5, 2, stride=2), dim=1),
        nn.ReLU(),
        nn.Conv2d(5, 2, 1),
    ).double()
    x = torch.randn(2, 3, 8, 8).double()
    before = model(x).detach()
    for init in ("paper", "net2net"):
        netsurgeon.widen(model, {"0": 2, "2": 3}, init=init)
        torch.testing.assert_close(model(x).detach(), before, atol=1e-12, rtol=0.0)
    g = model[2].parametrizations.weight.original0
    assert g.shape == (1, 11, 1, 1)


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_a_failed_widening_of_weight_normalised_layers_changes_nothing(spelling: str) -> None:
    """Staging fails on the last parameter (a factored optimizer state): nothing was applied."""
    torch.manual_seed(0)
    model = _net(spelling, 4, 5, 6)
    x = torch.randn(2, 3, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(x).sum().backward()
    opt.step()
    model(x)  # the legacy spelling caches the weight of the current g and v
    opt.state[model[8].weight]["momentum_buffer"] = torch.zeros(3)  # not the parameter's shape
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cached = model[3].weight.detach().clone()
    with pytest.raises(netsurgeon.WidenError, match="optimizer state"):
        netsurgeon.widen(model, {"0": 2, "3": 3, "6": 2}, optimizer=opt, example_inputs=x)
    after = model.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert torch.equal(model[3].weight.detach(), cached)
    assert (model[3].out_channels, model[6].in_features) == (5, 80)
