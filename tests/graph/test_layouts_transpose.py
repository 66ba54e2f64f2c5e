"""Transposed convolutions widen exactly: their handler says the weight is ``(in, out, *k)``.

A ``ConvTransposeNd`` computes ``y[o] = sum_i x[i] (*) W[i, o]`` (a transposed correlation over
the spatial dims), so its output units are the weight's dim 1 and its input units dim 0. Growing
a group it produces adds entries on dim 1 (paper: Kaiming draws; net2net: copies of the source's
slice), growing a group it reads adds zero (paper) or split (net2net) entries on dim 0. The spatial
arguments (``stride``, ``padding``, ``output_padding``, ``dilation``) act on other dims and do not
change. So in a U-Net-like encoder/decoder whose decoder concatenates the upsampled map with the
skip, every group widens with the output unchanged:

    max |y_after - y_before| <= tol * (1 + max |y_before|),  tol = 1e-5 (float32), 1e-10 (float64)

in eval mode (random running statistics) and train mode (batch statistics are per channel).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import netsurgeon
from netsurgeon.errors import UnsupportedModelError

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
EXAMPLES = max(8, settings().max_examples // 4)
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class UNet(nn.Module):
    """Encoder (two convs, one strided), a transposed-conv upsampler, a decoder reading a cat."""

    def __init__(self, dims: int, w1: int, w2: int, wu: int, kernel: int, bias: bool) -> None:
        super().__init__()
        conv, conv_t, norm = CONV[dims], CONV_T[dims], NORM[dims]
        self.enc1, self.bn1 = conv(3, w1, 3, padding=1), norm(w1)
        self.enc2 = conv(w1, w2, 3, stride=2, padding=1)
        # kernel 2: the classic U-Net upsampler; kernel 3 needs output_padding=1 to double
        self.up = conv_t(
            w2, wu, kernel, stride=2, padding=kernel - 2, output_padding=kernel - 2, bias=bias
        )
        self.bn_up = norm(wu)
        self.dec = conv(wu + w1, w1, 3, padding=1)
        self.head = conv(w1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = torch.relu(self.bn1(self.enc1(x)))
        low = torch.relu(self.enc2(skip))
        up = torch.relu(self.bn_up(self.up(low)))
        return self.head(torch.relu(self.dec(torch.cat([up, skip], 1))))


def _randomise_statistics(model: nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)


def _assert_preserved(after: torch.Tensor, before: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype] * (1 + before.abs().max().item())
    torch.testing.assert_close(after, before, atol=tol, rtol=0.0)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    dims=st.sampled_from((1, 2, 3)),
    widths=st.tuples(*[st.integers(1, 6)] * 3),
    growth=st.tuples(*[st.integers(0, 4)] * 4),
    kernel=st.sampled_from((2, 3)),
    bias=st.booleans(),
    init=st.sampled_from(("paper", "net2net")),
    dtype=st.sampled_from((torch.float32, torch.float64)),
    train=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_widening_a_unet_with_transposed_convolutions_preserves_its_output(
    dims, widths, growth, kernel, bias, init, dtype, train, seed
) -> None:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = UNet(dims, *widths, kernel, bias).to(dtype)
    _randomise_statistics(model, generator)
    model.train(train)
    x = torch.randn(3, 3, *[4] * dims, dtype=dtype, generator=generator)
    with torch.no_grad():
        before = model(x)
    plan = {k: n for k, n in zip(("enc1", "enc2", "up", "dec"), growth, strict=True) if n}
    netsurgeon.widen(model, plan, init=init, generator=generator)
    with torch.no_grad():
        after = model(x)
    _assert_preserved(after, before, dtype)
    assert model.up.weight.shape[:2] == (
        widths[1] + growth[1],
        widths[2] + growth[2],
    ), "the transposed conv's weight is (in, out, *k): dim 0 grew with enc2, dim 1 with itself"
    assert (model.up.in_channels, model.up.out_channels) == model.up.weight.shape[:2]


def test_transposed_convolution_layout_is_rows_on_dim_1_and_columns_on_dim_0() -> None:
    up = nn.ConvTranspose2d(4, 6, 3)
    graph = netsurgeon.trace(nn.Sequential(nn.Conv2d(2, 4, 1), up, nn.Conv2d(6, 1, 1)))
    handler = graph.handler("1")
    assert [(a.tensor, a.dim) for a in handler.rows(up)] == [("weight", 1), ("bias", 0)]
    assert [(a.tensor, a.dim, a.fill) for a in handler.columns(up)] == [("weight", 0, 0.0)]


def test_paper_rows_of_a_transposed_convolution_have_the_kaiming_scale_of_its_taps() -> None:
    """``k = 4, s = 2``: each output entry reads 2 taps per spatial dim of each of 64 inputs, so
    the new dim-1 slices are N(0, 2 / (64 * 2 * 2)); new dim-0 entries (columns) are zero."""
    model = nn.Sequential(
        nn.Conv2d(1, 64, 1), nn.ConvTranspose2d(64, 8, 4, stride=2, padding=1), nn.Conv2d(8, 1, 1)
    )
    generator = torch.Generator().manual_seed(0)
    netsurgeon.widen(model, {"0": 2, "1": 300}, generator=generator)
    new_rows = model[1].weight[:64, 8:]
    torch.testing.assert_close(new_rows.var().item(), 2.0 / (64 * 4), rtol=0.03, atol=0.0)
    assert torch.count_nonzero(model[1].weight[64:]) == 0


def test_widening_a_transposed_convolution_grows_adam_state_and_gradients_flow() -> None:
    torch.manual_seed(0)
    model = UNet(2, 4, 6, 5, 2, True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 8, 8)
    model(x).square().mean().backward()
    opt.step()
    weight, state = model.up.weight, opt.state[model.up.weight]
    old_weight, old_avg = weight.detach().clone(), state["exp_avg"].clone()
    netsurgeon.widen(model, {"enc2": 2, "up": 3}, optimizer=opt)
    assert model.up.weight is weight
    assert state["exp_avg"].shape == weight.shape == (8, 8, 2, 2)
    assert torch.equal(state["exp_avg"][:6, :5], old_avg)
    assert torch.equal(weight.detach()[:6, :5], old_weight)
    assert torch.count_nonzero(state["exp_avg"][6:]) == 0
    assert torch.count_nonzero(state["exp_avg"][:, 5:]) == 0
    opt.zero_grad()
    model(x).square().mean().backward()
    assert weight.grad.shape == weight.shape
    assert weight.grad[6:].abs().sum() > 0, "the new input columns of the upsampler learn"
    opt.step()


def test_grouped_transposed_convolution_blocks_its_groups_with_the_reason() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ConvTranspose2d(8, 8, 2, groups=2), nn.Conv2d(8, 1, 1)
    )
    graph = netsurgeon.trace(model, strict=False)
    for name in ("0", "1"):
        assert "grouped transposed convolution (groups=2)" in graph.unwidenable_reason(name)
    with pytest.raises(UnsupportedModelError, match="grouped transposed convolution"):
        netsurgeon.trace(model)


def test_a_channels_last_transposed_convolution_stays_channels_last() -> None:
    torch.manual_seed(0)
    model = UNet(2, 4, 6, 5, 3, True).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    before = model(x).detach()
    netsurgeon.widen(model, {"enc2": 2, "up": 3}, init="net2net")
    weight = model.up.weight
    assert weight.shape == (8, 8, 3, 3)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    torch.testing.assert_close(model(x).detach(), before, atol=1e-5, rtol=0.0)
