"""Swin transformers widen whole: streams tiled through patch merging, window attention by heads.

torchvision's ``ShiftedWindowAttention`` is one layer grown by whole heads with the stream it
reads (``netsurgeon/graph/ops/torchvision.py``); patch merging's LayerNorm reads four shifted
copies of the stream side by side, so the streams it reads tile (``k`` a multiple of the
width); the last stage mean-pads. Small configurations run fast, the full ``swin_t`` is slow.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import netsurgeon
from netsurgeon.errors import WidenError

swin = pytest.importorskip("torchvision.models.swin_transformer")


def small(window: int = 2, embed: int = 8, v2: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    extra = (
        {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2}
        if v2
        else {}
    )
    return swin.SwinTransformer(
        patch_size=[4, 4], embed_dim=embed, depths=[2, 2], num_heads=[1, 2],
        window_size=[window, window], stochastic_depth_prob=0.0, num_classes=5, **extra,
    )  # fmt: skip


def timm_small(window: int = 2, embed: int = 8, seed: int = 0):
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    torch.manual_seed(seed)
    return timm_swin.SwinTransformer(
        img_size=32, patch_size=4, window_size=window, embed_dim=embed, depths=(2, 2),
        num_heads=(1, 2), num_classes=5,
    )  # fmt: skip


def relative(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).abs().max().detach() / before.abs().max().detach())


def widen_all(model, x, multiple: int = 1, **kwargs):
    graph = netsurgeon.trace(model, example_inputs=(x,))
    plan = {g.name: g.granularity * multiple for g in graph.groups if g.widenable}
    netsurgeon.widen(model, plan, graph=graph, **kwargs)
    return graph, plan


def test_every_group_but_the_output_widens_with_its_construction():
    model = small().double()
    graph = netsurgeon.trace(model, example_inputs=(torch.randn(1, 3, 32, 32).double(),))
    stream1, stream2 = graph.group_of("features.1.0.attn"), graph.group_of("features.3.0.attn")
    assert [g.name for g in graph.groups if not g.widenable] == ["head"]
    # patch merging's norm reads 4 copies of the first stream: only tiling keeps its statistics
    assert stream1.construction == "tile" and stream1.constructions == ("tile",)
    assert any("features.2.norm" in r and "copies" in r for r in stream1.requirements)
    assert stream2.construction == "mean_pad" and stream2.granularity == 8  # one head of 8
    assert "features.1.0.attn" in stream1.producers and "features.1.0.attn" in {
        c.layer for c in stream1.consumers
    }


SWIN_SHAPES = {  # the small Swin models the properties draw
    "window": st.sampled_from([2, 4]),
    "embed": st.sampled_from([8, 12]),
    "multiple": st.integers(1, 2),
    "seed": st.integers(0, 2**16),
}


@settings(max_examples=8, deadline=None)
@given(**SWIN_SHAPES)
def test_widening_everything_at_once_keeps_the_output_float64_eval(window, embed, multiple, seed):
    model = small(window, embed, seed=seed).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    before = model(x)
    widen_all(model, x, multiple)
    assert relative(model(x), before) <= 1e-9
    attn = model.features[1][0].attn
    heads = (1 + multiple) * 1  # the first stream tiles: k = multiple * width, one head each
    assert attn.num_heads == heads and attn.relative_position_bias_table.shape[1] == heads
    assert attn.qkv.weight.shape == (3 * embed * heads, embed * heads)
    assert (attn.qkv.in_features, attn.proj.out_features) == (embed * heads, embed * heads)


def test_float32_train_mode_within_tolerance_and_new_heads_are_live():
    model = small().train()
    x = torch.randn(4, 3, 32, 32)
    before = model(x)
    widen_all(model, x)
    after = model(x)
    assert relative(after, before) <= 1e-5  # float32 rounding over 4 blocks and 2 stages
    attn = model.features[3][0].attn  # 2 heads of 8 -> 3
    assert attn.num_heads == 3
    new_cols = attn.proj.weight[:, 16:]
    assert torch.count_nonzero(new_cols) == 0
    assert torch.count_nonzero(attn.relative_position_bias_table[:, 2:]) == 0
    with torch.no_grad():  # the new head computes something: reading it changes the output
        new_cols.normal_()
    assert relative(model(x), before) > 1e-3


def test_training_continues_and_every_new_parameter_gets_gradient():
    model = small()
    x, target = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.nn.functional.cross_entropy(model(x), target).backward()
    opt.step()
    opt.zero_grad()
    widen_all(model, x, optimizer=opt)
    attn = model.features[3][0].attn
    seen = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in attn.named_parameters()}
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), target).backward()
        for n, p in attn.named_parameters():
            seen[n] |= p.grad != 0
        opt.step()
    # 2 heads of 8 -> 3: the new head's q, k, v rows are 16:24, 40:48, 64:72 of (72, 24)
    for rows in (slice(16, 24), slice(40, 48), slice(64, 72)):
        assert seen["qkv.weight"][rows].all() and seen["qkv.bias"][rows].all()
    assert seen["proj.weight"][:, 16:].all()  # the new head's output columns
    assert seen["proj.weight"][16:].all()  # the new stream channels' rows
    assert seen["relative_position_bias_table"][:, 2:].all()


def test_not_exact_inits_are_refused_bit_identical():
    model = small()
    x = torch.randn(2, 3, 32, 32)
    opt = torch.optim.AdamW(model.parameters())
    model(x).sum().backward()
    opt.step()
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    graph = netsurgeon.trace(model, example_inputs=(x,))
    with pytest.raises(WidenError, match=r"features\.2\.norm"):
        netsurgeon.widen(model, {"features.0.0": 8}, graph=graph, init="mean_pad", optimizer=opt)
    with pytest.raises(WidenError, match="grows in multiples of 8"):
        netsurgeon.widen(model, {"features.0.0": 4}, graph=graph, optimizer=opt)
    with pytest.raises(WidenError):  # not whole heads of 8
        netsurgeon.widen(model, {"features.2.reduction": 4}, graph=graph, optimizer=opt)
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state) and state.keys() == after.keys()
    assert repr(opt.state_dict()) == repr(opt_state)
    assert model.features[1][0].attn.num_heads == 1


def test_a_hook_on_the_window_attention_qkv_blocks_the_stream_naming_it():
    """``qkv`` runs inside the leaf: a hook on it could change what the attention computes."""
    model = small()
    model.features[1][0].attn.qkv.register_forward_hook(lambda m, i, o: o * 2)
    graph = netsurgeon.trace(model, example_inputs=(torch.randn(1, 3, 32, 32),), strict=False)
    reason = graph.unwidenable_reason("features.0.0")
    assert "features.1.0.attn" in reason and "'qkv'" in reason and "forward hook" in reason
    assert graph.group_of("features.2.reduction").widenable  # the next stage is untouched


def test_swin_v2_attention_is_traced_through_and_blocks_with_the_reason():
    """V2's cosine attention and bias MLP are its own forward: not the handler's, so the module is
    traced through (its bias MLP's hidden width stays widenable) and the function blocks."""
    model = small(v2=True)
    graph = netsurgeon.trace(model, example_inputs=(torch.randn(1, 3, 32, 32),), strict=False)
    stream = graph.group_of("features.1.0.mlp.3")
    assert not stream.widenable and "shifted_window_attention" in stream.reason
    assert graph.group_of("features.1.0.attn.cpb_mlp.0").widenable
    assert "features.1.0.attn" not in graph.layers


@pytest.mark.parametrize("make", [small, timm_small], ids=["torchvision", "timm"])
def test_a_grown_checkpoint_loads_into_a_fresh_model(make):
    model = make().eval()
    x = torch.randn(1, 3, 32, 32)
    widen_all(model, x)
    state, out = model.state_dict(), model(x)
    fresh = make(seed=1).eval()
    netsurgeon.load_state_dict(fresh, state, example_inputs=(x,))
    assert torch.equal(fresh(x), out) and repr(fresh) == repr(model)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tv.swin_t", "timm.swin_tiny_patch4_window7_224"])
def test_full_swin_widens_exactly(name):
    torch.manual_seed(0)
    if name.startswith("tv."):
        model = pytest.importorskip("torchvision").models.swin_t()
    else:
        model = pytest.importorskip("timm").create_model(name[5:], pretrained=False)
    model = model.double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    before = model(x)
    graph, _ = widen_all(model, x)
    assert [g.name for g in graph.groups if not g.widenable] == sorted(graph.output_layers)
    assert relative(model(x), before) <= 1e-9


# -- timm ------------------------------------------------------------------------------------------


def test_timm_streams_widen_through_window_padding_and_patch_merging():
    model = timm_small().double()
    graph = netsurgeon.trace(model, example_inputs=(torch.randn(1, 3, 32, 32).double(),))
    assert [g.name for g in graph.groups if not g.widenable] == ["head.fc"]
    stream1 = graph.group_of("patch_embed.proj")
    assert stream1.construction == "tile"
    assert any("layers.1.downsample.norm" in r and "copies" in r for r in stream1.requirements)
    # the window attention is one layer of its stream, grown by heads of 8
    attn = graph.group_of("layers.1.blocks.0.attn")
    assert attn.name == "layers.1.downsample.reduction" and attn.granularity == 8
    # window padding and the cyclic shift keep the mean: the last stage mean-pads
    assert attn.construction == "mean_pad"
    assert "layers.0.blocks.1.attn" in stream1.producers


def test_timm_window_attention_with_its_own_head_size_blocks_with_the_reason():
    model = timm_small()
    old = model.layers[0].blocks[0].attn
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    model.layers[0].blocks[0].attn = timm_swin.WindowAttention(8, 1, head_dim=4, window_size=2)
    graph = netsurgeon.trace(model, example_inputs=(torch.randn(1, 3, 32, 32),), strict=False)
    reason = graph.unwidenable_reason("patch_embed.proj")
    assert "layers.0.blocks.0.attn" in reason and "head size set apart" in reason
    assert old.num_heads == 1


@settings(max_examples=6, deadline=None)
@given(**SWIN_SHAPES)
@pytest.mark.parametrize("fused", [False, True])
def test_timm_widening_everything_keeps_the_output(fused, window, embed, multiple, seed):
    model = timm_small(window, embed, seed).double().eval()
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    before = model(x)
    _, plan = widen_all(model, x, multiple)
    assert plan["patch_embed.proj"] == embed * multiple
    assert relative(model(x), before) <= 1e-9
    assert model.layers[0].blocks[0].norm1.normalized_shape == (embed * (1 + multiple),)
    attn = model.layers[0].blocks[0].attn  # one head of embed: tiled, 1 + multiple heads
    assert attn.num_heads == 1 + multiple and attn.dim == embed * (1 + multiple)
    assert attn.relative_position_bias_table.shape[1] == 1 + multiple


def test_timm_float32_train_mode_within_tolerance():
    """Train mode: drop path's per-sample mask is sized from the batch and ``x.ndim``, no width."""
    model = timm_small().train()  # drop path 0.1 by default: off here
    for module in model.modules():
        if type(module).__name__ == "DropPath":
            module.drop_prob = 0.0
    x = torch.randn(4, 3, 32, 32)
    before = model(x)
    widen_all(model, x)
    assert relative(model(x), before) <= 1e-5


# -- a Swin stage written by hand ------------------------------------------------------------------


class HandStage(torch.nn.Module):
    """One Swin stage in plain PyTorch, channels last: the stream padded to whole windows by
    computed sizes, cyclically shifted, partitioned into windows (a token MLP stands in for the
    attention), merged back, cropped; then patch merging by ``reshape/permute/flatten(3)`` and a
    LayerNorm over the four neighbours."""

    def __init__(self, width: int, window: int, shift: int) -> None:
        super().__init__()
        nn = torch.nn
        self.embed, self.norm1 = nn.Linear(3, width), nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.merge_norm, self.reduce = nn.LayerNorm(4 * width), nn.Linear(4 * width, 2 * width)
        self.head = nn.Linear(2 * width, 3)
        self.window, self.shift = window, shift

    def forward(self, x):
        x = self.embed(x.permute(0, 2, 3, 1))  # (B, H, W, C)
        b, h, w, c = x.shape
        s = self.window
        y = torch.nn.functional.pad(self.norm1(x), (0, 0, 0, (s - w % s) % s, 0, (s - h % s) % s))
        y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        hp, wp = y.shape[1], y.shape[2]
        y = y.view(b, hp // s, s, wp // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, c)
        y = self.fc2(torch.relu(self.fc1(y)))
        y = y.view(b, hp // s, wp // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y[:, :h, :w, :].contiguous()
        x = torch.nn.functional.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        _, h, w, _ = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.head(self.reduce(self.merge_norm(x)).mean((1, 2)))


@settings(max_examples=12, deadline=None)
@given(
    width=st.sampled_from([4, 6]),
    window=st.integers(2, 3),
    shift=st.integers(0, 1),
    size=st.integers(4, 7),
    multiple=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_a_hand_written_swin_stage_widens_exactly(width, window, shift, size, multiple, seed):
    torch.manual_seed(seed)
    model = HandStage(width, window, shift).double().eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    before = model(x)
    graph, plan = widen_all(model, x, multiple)
    stream = graph.group_of("embed")
    assert stream.widenable and stream.constructions == ("tile",)  # read by the merge norm
    assert plan["embed"] == width * multiple and graph.group_of("reduce").widenable
    assert relative(model(x), before) <= 1e-9
    assert model.reduce.in_features == 4 * width * (1 + multiple)
