"""MLP-Mixer widens exactly: the stream through the token MLP, and the token MLP's hidden dim.

Invariant (``docs/widen.md``, "Channels on a batch dim"): the token MLP ``f`` maps each channel's
token vector with one function, ``y[:, :, c] = f(x[:, :, c])``. So

* a new channel of an appended stream (no norm) reaches only that new channel, read through zero
  columns: every old output is unchanged;
* a tiled stream (LayerNorm or RMSNorm; ``k`` a multiple of the width) feeds ``f`` copies of old
  channels, and ``f`` returns copies: the statistics of every norm and the head's input are
  unchanged;
* the token MLP's hidden dim (``fc1`` rows, ``fc2`` columns) is an ordinary group;
* padding is refused (``f(0) != 0``), with every tensor and the optimizer bit-identical.

So widening any set of widenable groups by any allowed ``k`` keeps the output: float64 in eval
mode to 1e-9 relative, float32 in train mode to 1e-5 (no dropout).
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mixer_models import Mixer, inputs
from torch import nn
from widen_or_refuse import (
    adam_with_state,
    assert_bit_identical,
    check_widen_or_refuse,
    max_relative_error,
    snapshot,
)

import netsurgeon
from netsurgeon.errors import WidenError

NORMS = {"LN": nn.LayerNorm, "RMS": nn.RMSNorm, "none": None}


def _plan(graph: netsurgeon.LayerGraph, draws: list[int]) -> dict[str, int]:
    """Each widenable group by ``draw`` granules (0: left out), the draws cycled."""
    groups = [g for g in graph.groups if g.widenable]
    plan = {g.name: g.granularity * draws[i % len(draws)] for i, g in enumerate(groups)}
    return {name: k for name, k in plan.items() if k}


@settings(max_examples=30)
@given(
    norm=st.sampled_from(sorted(NORMS)),
    tokens=st.integers(2, 6),
    width=st.integers(2, 7),
    token_hidden=st.integers(1, 6),
    channel_hidden=st.integers(1, 6),
    depth=st.integers(1, 3),
    layer_scale=st.booleans(),
    draws=st.lists(st.integers(0, 3), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_widening_any_plan_keeps_the_output_float64(
    norm, tokens, width, token_hidden, channel_hidden, depth, layer_scale, draws, seed
) -> None:
    torch.manual_seed(seed)
    model = Mixer(tokens, width, token_hidden, channel_hidden, depth, NORMS[norm], layer_scale)
    model = model.double().eval()
    x = inputs(tokens, dtype=torch.float64, seed=seed)
    graph = netsurgeon.trace(model, x)
    assert graph.group_of("embed").widenable
    assert graph.group_of("embed").construction == ("append" if norm == "none" else "tile")
    plan = _plan(graph, draws)
    check = (inputs(tokens, dtype=torch.float64, seed=seed + 1),)
    outcome = check_widen_or_refuse(model, plan, check, graph=graph)
    assert not outcome.refused, outcome.error
    k = plan.get(graph.group_of("embed").name, 0)
    assert model.embed.out_features == width + k
    assert model.blocks[0].token.fc1.out_features == token_hidden + plan.get(
        "blocks.0.token.fc1", 0
    )


@settings(max_examples=15)
@given(
    norm=st.sampled_from(sorted(NORMS)),
    draws=st.lists(st.integers(0, 2), min_size=1, max_size=4),
    seed=st.integers(0, 999),
)
def test_widening_keeps_the_output_in_train_mode_float32(norm, draws, seed) -> None:
    torch.manual_seed(seed)
    model = Mixer(5, 6, 4, 8, 2, NORMS[norm]).train()
    x = inputs(5, seed=seed)
    graph = netsurgeon.trace(model, x)
    before = model(x)
    netsurgeon.widen(model, _plan(graph, draws), graph=graph)
    assert max_relative_error(model(x), before) <= 1e-5


@pytest.mark.parametrize(
    ("norm", "init", "k", "fragment"),
    [
        ("LN", "mean_pad", 2, "applies one map to each of these channels"),
        ("RMS", "zero_pad", 2, "applies one map to each of these channels"),
        ("LN", "paper", 2, "multiples of 6"),
        ("none", "mean_pad", 2, "applies one map to each of these channels"),
    ],
)
def test_padding_through_a_token_mlp_is_refused_with_nothing_changed(norm, init, k, fragment):
    model = Mixer(norm=NORMS[norm]).double()
    x = inputs(dtype=torch.float64)
    optimizer = adam_with_state(model, (x,))
    state = snapshot(model, optimizer)
    with pytest.raises(WidenError, match=fragment):
        netsurgeon.widen(model, {"embed": k}, init=init, optimizer=optimizer, example_inputs=x)
    assert_bit_identical(state, model, optimizer)


def test_tiling_with_adam_state_keeps_the_output_and_the_old_moments() -> None:
    model = Mixer(norm=nn.LayerNorm).double()
    x = inputs(dtype=torch.float64)
    optimizer = adam_with_state(model, (x,))
    moments = {n: optimizer.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
    before = model.eval()(x)
    netsurgeon.widen(model, {"embed": 12, "blocks.1.token.fc1": 3}, optimizer=optimizer,
                     example_inputs=x)  # fmt: skip
    assert max_relative_error(model(x), before) <= 1e-9
    for name, p in model.named_parameters():
        old = moments[name]
        kept = optimizer.state[p]["exp_avg"][tuple(slice(0, n) for n in old.shape)]
        torch.testing.assert_close(kept, old, rtol=0, atol=0)


# -- timm's MLP-Mixer, ResMLP and PoolFormer ---------------------------------------------------
timm = pytest.importorskip("timm")


def _small_mixer():
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(num_classes=5, img_size=32, patch_size=8, num_blocks=2, embed_dim=16)


def _small_resmlp():
    from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock

    return MlpMixer(num_classes=5, img_size=32, patch_size=8, num_blocks=2, embed_dim=16,
                    mlp_ratio=4, block_layer=ResBlock, norm_layer=Affine)  # fmt: skip


def _small_poolformer():
    from timm.layers import GroupNorm1
    from timm.models.metaformer import MetaFormer

    return MetaFormer(
        depths=(1, 1, 1, 1),
        dims=(8, 16, 24, 32),
        num_classes=5,
        downsample_norm=None,
        mlp_act=nn.GELU,
        mlp_bias=True,
        norm_layers=GroupNorm1,
        layer_scale_init_values=1e-5,
        res_scale_init_values=None,
        use_mlp_head=False,
    )  # poolformer_s12's


def _randomised(model: nn.Module) -> nn.Module:
    """timm zero-initialises the head; a zero output would hide any error."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.5)
    return model


def _layers(graph: netsurgeon.LayerGraph) -> list[str]:
    return [
        name
        for name in graph.layers
        if isinstance(graph.module(name), (nn.Linear, nn.Conv2d))
        and not graph.group_of(name).reaches_output
    ]


@pytest.mark.parametrize(
    ("build", "blocked"),
    [(_small_mixer, "mlp_tokens.fc2"), (_small_resmlp, "linear_tokens"), (_small_poolformer, "")],
    ids=["mixer", "resmlp", "poolformer"],
)
@pytest.mark.parametrize("mode", ["eval-float64", "train-float32"])
def test_timm_models_widen_every_widenable_group_at_once_exactly(build, blocked, mode) -> None:
    torch.manual_seed(0)
    float64 = mode == "eval-float64"
    model = _randomised(build())
    model = model.double().eval() if float64 else model.train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64 if float64 else torch.float32)
    graph = netsurgeon.trace(model, x)
    layers = _layers(graph)
    unwidenable = [n for n in layers if not graph.group_of(n).widenable]
    # only the token Linears whose units are the tokens (a size fixed by the input) stay
    assert all(n.endswith(blocked) and blocked for n in unwidenable), unwidenable
    for name in unwidenable:
        assert "fixed by that tensor" in graph.unwidenable_reason(name)
    plan = {g.name: g.granularity * (1 + i % 2) for i, g in enumerate(graph.groups) if g.widenable}
    before = model(x)
    netsurgeon.widen(model, copy.deepcopy(plan), graph=graph)
    assert max_relative_error(model(x), before) <= (1e-9 if float64 else 1e-5)


@pytest.mark.slow
def test_timm_mixer_b16_widens_every_widenable_group_at_once_exactly_float64() -> None:
    torch.manual_seed(0)
    model = _randomised(timm.create_model("mixer_b16_224")).double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    graph = netsurgeon.trace(model, x)
    layers = _layers(graph)
    widenable = [n for n in layers if graph.group_of(n).widenable]
    assert (len(widenable), len(layers)) == (37, 49)  # the 12 mlp_tokens.fc2 make the tokens
    assert graph.group_of("stem.proj").construction == "tile"
    plan = {g.name: g.granularity for g in graph.groups if g.widenable}
    with torch.no_grad():
        before = model(x)
        netsurgeon.widen(model, plan, graph=graph)
        assert max_relative_error(model(x), before) <= 1e-9


@pytest.mark.parametrize("family", ["mixer", "vit"])
def test_timm_drop_path_in_train_mode_keeps_the_stream_widenable_and_exact(family) -> None:
    """timm's ``DropPath`` draws a ``(B, 1, 1)`` mask sized by ``x.shape[0]`` and ``x.ndim``:
    numbers no width changes, so the stream stays widenable; with the same random draws the
    widened model computes what the old one did."""
    from timm.models.mlp_mixer import MlpMixer
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    common = dict(img_size=32, patch_size=8, embed_dim=16, num_classes=5, drop_path_rate=0.5)
    if family == "mixer":
        model, stream = MlpMixer(num_blocks=2, **common), "stem.proj"
    else:
        model, stream = VisionTransformer(depth=2, num_heads=2, **common), "patch_embed.proj"
    model = _randomised(model).double().train()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    graph = netsurgeon.trace(model, x)
    assert graph.group_of(stream).widenable, graph.unwidenable_reason(stream)
    plan = {g.name: g.granularity for g in graph.groups if g.widenable}
    torch.manual_seed(1)
    before = model(x)
    netsurgeon.widen(model, plan, graph=graph)
    torch.manual_seed(1)
    assert max_relative_error(model(x), before) <= 1e-9
