"""``netsurgeon.preview`` and budgets: the cost of a widening, known before it happens.

Invariants tested:

* the preview equals the real widening: its widths equal ``trace(widened).widths()``, its
  parameter counts (per layer and in total) those of the widened model, and its FLOPs what
  ``FlopCounterMode`` counts on the widened model with the real inputs;
* the preview changes nothing: model tensors, sizes, hooks, the global RNG, a monitor's counts;
* it refuses exactly what ``widen`` refuses, with the same error;
* ``fit_to_budget`` returns the largest scaled plan that fits, deterministically, and records
  the caps that bound it; the grower applies it and its events say so.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from training_helpers import train_epoch

import netsurgeon
from netsurgeon.cost import Budget, fit_to_budget, preview
from netsurgeon.cost.budget import _scaled
from netsurgeon.models import vgg
from netsurgeon.nagn import Grower, GrowthConfig, GrowthEvent, NAGNMonitor, plan_growth


def _vgg() -> nn.Module:
    torch.manual_seed(0)
    return vgg([[4, 6], [8]], num_classes=5, image_size=8)


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )


def _real_cost(model: nn.Module, plan: dict, x: torch.Tensor, init: str = "paper"):
    """Widen a copy for real and measure it the way a user would."""
    grown = copy.deepcopy(model)
    netsurgeon.widen(grown, plan, generator=torch.Generator().manual_seed(0), init=init)
    grown.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        grown(x)
    widths = netsurgeon.trace(grown, strict=False).widths()
    per_layer = {
        name: sum(p.numel() for p in grown.get_submodule(name).parameters()) for name in widths
    }
    return widths, per_layer, sum(p.numel() for p in grown.parameters()), counter.get_total_flops()


def _assert_matches_real(model, plan, x, init="paper"):
    cost = preview(model, plan, x, init=init)
    widths, per_layer, params, flops = _real_cost(model, plan, x, init)
    assert cost.widths_after == widths
    assert {r.name: r.params_after for r in cost.layers} == per_layer
    assert cost.params_after == params
    assert cost.flops_after == flops
    assert cost.params_before == sum(p.numel() for p in model.parameters())
    other = cost.other
    assert sum(r.flops_after for r in cost.layers) + other.flops_after == cost.flops_after
    assert sum(r.params_after for r in cost.layers) + other.params_after == cost.params_after
    return cost


# ---- the preview equals the real widening -------------------------------------------------------
@pytest.mark.parametrize("init", ["paper", "net2net"])
@pytest.mark.parametrize(
    ("make", "plan", "shape"),
    [
        (_vgg, {"blocks.0.0.conv": 3, "blocks.1.0.conv": 5}, (2, 3, 8, 8)),
        (_convnet, {"0": 4, "5": 8}, (3, 3, 9, 9)),
        (_convnet, {"5": 1}, (1, 3, 6, 6)),
    ],
)
def test_preview_matches_the_real_widening(make, plan, shape, init):
    model = make()
    cost = _assert_matches_real(model, plan, torch.randn(shape), init)
    assert cost.flops_after > cost.flops_before and cost.params_after > cost.params_before
    assert cost.plan == plan and cost.inputs == str(shape)


@settings(max_examples=20)
@given(
    st.dictionaries(
        st.sampled_from(["blocks.0.0.conv", "blocks.0.1.conv", "blocks.1.0.conv"]),
        st.integers(1, 9),
        min_size=1,
    ),
    st.integers(1, 3),
)
def test_preview_matches_the_real_widening_for_any_plan(plan, batch):
    _assert_matches_real(_vgg(), plan, torch.randn(batch, 3, 8, 8))


def test_preview_without_inputs_counts_parameters_only():
    model = _convnet()
    cost = preview(model, {"0": 2})
    assert cost.flops_before is None and cost.flops_after is None and cost.inputs is None
    assert cost.params_after == _real_cost(model, {"0": 2}, torch.randn(1, 3, 6, 6))[2]
    assert "-" in str(cost)


def test_preview_table_lists_every_layer_and_the_totals():
    text = str(preview(_convnet(), {"0": 4}, torch.randn(1, 3, 6, 6)))
    for needle in ("layer", "params", "FLOPs", "0 ", "5 ", "8 ", "(other)", "total", "-> 12"):
        assert needle in text


def test_preview_round_trips_through_json():
    cost = preview(_vgg(), {"blocks.0.0.conv": 2}, torch.randn(1, 3, 8, 8))
    back = type(cost).from_dict(json.loads(json.dumps(cost.to_dict())))
    assert back == cost


# ---- the preview changes nothing ----------------------------------------------------------------
def test_preview_changes_nothing_and_draws_no_random_numbers():
    model = _vgg()
    monitor = NAGNMonitor(model, every=1)
    F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.zeros(4).long()).backward()
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    sizes, samples, steps = repr(model), monitor.samples, monitor.steps
    x = torch.randn(2, 3, 8, 8)
    rng = torch.get_rng_state()
    for init in ("paper", "net2net"):
        preview(model, {"blocks.0.0.conv": 3}, x, init=init)
    assert torch.equal(torch.get_rng_state(), rng)
    assert repr(model) == sizes
    for k, v in model.state_dict().items():
        assert torch.equal(v, tensors[k]), k
    assert monitor.samples == samples and monitor.steps == steps and monitor.attached
    assert all(p.device.type == "cpu" for p in model.parameters())


# ---- it refuses what widen refuses --------------------------------------------------------------
@pytest.mark.parametrize(
    ("plan", "kwargs"),
    [
        ({"nope": 1}, {}),
        ({"8": 1}, {}),  # the output layer
        ({"0": 0}, {}),
        ({"0": 1.5}, {}),
        (["0"], {}),
        ({0: 1}, {}),
        ({"0": 1}, {"init": "kaiming"}),
        ({"0": 1}, {"optimizer": "sgd"}),
    ],
)
def test_preview_refuses_exactly_what_widen_refuses(plan, kwargs):
    model = _convnet()
    with pytest.raises(Exception) as by_widen:
        netsurgeon.widen(copy.deepcopy(model), plan, **kwargs)
    with pytest.raises(type(by_widen.value)) as by_preview:
        preview(model, plan, torch.randn(1, 3, 6, 6), **kwargs)
    assert str(by_preview.value) == str(by_widen.value)


def test_preview_refuses_factored_optimizer_state_like_widen():
    model = _convnet()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()
    opt.state[model[5].weight]["exp_avg"] = torch.zeros(16)  # a factored moment
    with pytest.raises(netsurgeon.WidenError) as by_widen:
        netsurgeon.widen(model, {"0": 2}, optimizer=opt)  # atomic: nothing changes
    with pytest.raises(netsurgeon.WidenError) as by_preview:
        preview(model, {"0": 2}, optimizer=opt)
    assert str(by_preview.value) == str(by_widen.value)
    assert opt.state[model[5].weight]["exp_avg"].device.type == "cpu"


def test_preview_refuses_wrappers_by_name():
    with pytest.raises(netsurgeon.WidenError, match="preview"):
        preview(nn.DataParallel(_convnet()), {"0": 1})


# ---- GrowthPlan shows the same columns ----------------------------------------------------------
def test_growth_plan_shows_widths_params_and_flops_before_and_after():
    model = _vgg()
    graph = netsurgeon.trace(model)
    profile = {name: 1.0 + (name == "blocks.0.1.conv") for name in graph.layers}
    plan = plan_growth(profile, graph.widths(), output_layers=graph.output_layers)
    x = torch.randn(1, 3, 8, 8)
    with_cost = plan.with_cost(preview(model, plan.increments, x))
    text = str(with_cost)
    assert "params'" in text and "FLOPs'" in text and "total" in text
    row = with_cost.cost.row("blocks.0.1.conv")
    assert f"{row.flops_after:,}" in text and row.width_after > row.width_before
    assert "params'" not in str(plan)
    back = type(plan).from_dict(json.loads(with_cost.to_json()))
    assert back == with_cost


# ---- budgets ------------------------------------------------------------------------------------
PLAN = {"blocks.0.0.conv": 4, "blocks.0.1.conv": 6, "blocks.1.0.conv": 8}


@pytest.mark.parametrize("cap_fraction", [0.0, 0.3, 0.7, 0.99])
def test_fit_to_budget_finds_the_largest_scaled_plan_that_fits(cap_fraction):
    model = _vgg()
    full = preview(model, PLAN)
    cap = full.params_before + int(cap_fraction * (full.params_after - full.params_before))
    fitted = fit_to_budget(model, PLAN, Budget(max_params=cap))
    assert fitted.cost.params_after <= cap
    assert fitted.limited_by == ("max_params",) and fitted.requested == PLAN
    t = round(fitted.scale * 8)
    assert fitted.increments == _scaled(PLAN, t, 8)
    bigger = _scaled(PLAN, t + 1, 8)
    assert preview(model, bigger).params_after > cap  # one step more would not fit
    assert fit_to_budget(model, PLAN, Budget(max_params=cap)) == fitted  # deterministic


def test_fit_to_budget_caps_widths_per_layer_and_counts_flops():
    model = _vgg()
    x = torch.randn(2, 3, 8, 8)
    fitted = fit_to_budget(model, PLAN, Budget(max_width={"blocks.0.1.conv": 9}), x)
    assert fitted.increments == {**PLAN, "blocks.0.1.conv": 3}
    assert fitted.limited_by == ("max_width",) and fitted.scale == 1.0
    full = preview(model, PLAN, x)
    cap = (full.flops_before + full.flops_after) // 2
    fitted = fit_to_budget(model, PLAN, Budget(max_flops=cap, max_width=10), x)
    assert fitted.cost.flops_after <= cap < full.flops_after
    assert fitted.limited_by == ("max_width", "max_flops")
    assert all(fitted.cost.widths_after[n] <= 10 for n in fitted.increments)


def test_fit_to_budget_of_a_model_already_over_budget_is_empty():
    fitted = fit_to_budget(_vgg(), PLAN, Budget(max_params=10))
    assert fitted.increments == {} and fitted.cost.params_after == fitted.cost.params_before


def test_fit_to_budget_needs_inputs_for_flops():
    with pytest.raises(ValueError, match="example_inputs"):
        fit_to_budget(_vgg(), PLAN, Budget(max_flops=10**9))


def test_grower_scales_plans_to_its_caps_and_records_it():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 5, (64,), generator=g)
    model = _vgg()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    start = sum(p.numel() for p in model.parameters())
    cfg = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1, max_params=start + 300)
    grower = Grower(model, opt, cfg, example_inputs=x[:1])
    for _ in range(6):
        train_epoch(model, opt, x, y, batch=32)
        grower.step(0.5)
    assert grower.history, "nothing grew"
    first = grower.history[0]
    assert first.limited_by == ("max_params",) and first.requested != first.increments
    for event in grower.history:
        assert event.params_after <= start + 300
        assert event.cost.params_after == event.params_after
        assert event.cost.widths_after == event.widths_after
        assert event.cost.flops_after is not None
        assert GrowthEvent.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    assert sum(p.numel() for p in model.parameters()) <= start + 300
    assert grower.stopped and grower.stop_cause == "budget"


@pytest.mark.parametrize("plan", [{"blocks.0.0.conv": 1.5}, {"blocks.0.0.conv": 0}, {"nope": 2}])
def test_fit_to_budget_refuses_what_widen_refuses(plan):
    model = _vgg()
    with pytest.raises(netsurgeon.WidenError) as by_widen:
        netsurgeon.widen(copy.deepcopy(model), plan)
    with pytest.raises(netsurgeon.WidenError) as by_fit:
        fit_to_budget(model, plan, Budget(max_params=10**6))
    assert str(by_fit.value) == str(by_widen.value)


class _Residual(nn.Module):
    """A stem and a residual block: the stem and the block's second conv share their channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.b1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("plan", [{"stem": 3}, {"c1": 2}, {"stem": 2, "c1": 4}])
def test_preview_of_a_residual_net_agrees_with_widen_whatever_widen_decides(plan):
    """Whether the graph grows coupled channels together or refuses them, the preview agrees."""
    model, x = _Residual(), torch.randn(2, 3, 8, 8)
    try:
        _, _, params, flops = _real_cost(model, plan, x)
    except Exception as by_widen:
        with pytest.raises(type(by_widen)) as by_preview:
            preview(model, plan, x)
        assert str(by_preview.value) == str(by_widen)
    else:
        cost = _assert_matches_real(model, plan, x)
        assert (cost.params_after, cost.flops_after) == (params, flops)


def test_a_preview_with_example_inputs_accepts_what_widen_with_them_accepts() -> None:
    """A ViT's stream is widenable only with shapes: the preview traces with the inputs' shapes
    (read on the meta copy, whatever device they come on), as ``widen`` reads them."""
    from netsurgeon.models import vit

    model = vit([(32, 32, 64)] * 2, image_size=16)
    x = torch.randn(2, 3, 16, 16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for inputs in (x, x.to("meta")):
        rng = torch.get_rng_state()
        cost = netsurgeon.preview(model, {"embed.proj": 2}, example_inputs=inputs)
        assert torch.equal(torch.get_rng_state(), rng)
        twin = copy.deepcopy(model)
        netsurgeon.widen(twin, {"embed.proj": 2}, example_inputs=x)
        assert cost.params_after == sum(p.numel() for p in twin.parameters())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
