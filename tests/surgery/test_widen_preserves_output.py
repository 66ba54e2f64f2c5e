"""``widen`` preserves the function the model computes, for any model, plan and input.

The invariant: new units either feed their consumers through zero columns (``"paper"``) or are
copies whose consumer columns split the original column (``"net2net"``), and followers grow
with neutral (paper) or copied (net2net) entries. Either way every consumer's pre-activation is
unchanged, so ``y_after == y_before`` up to rounding. How far rounding may move the output is
derived from the computation itself for the ``Sequential`` models (``rounding_bound``, whose
docstring has the derivation). Relative to ``1 + max |y_before|`` it has a median of ~5e-5 in
float32 and ~1e-13 in float64, and is far larger where train-mode BatchNorm divides by the tiny
spread of a small batch (float32: above 1e-2 for about one model in seven), so exactness is
pinned by the float64 runs and the float32 runs show that float32 moves the output no more than
its rounding can. The hand-written class uses ``1e-5 * (1 + max |y_before|)`` (float32) and
``1e-10`` (float64). The check runs
in eval mode (BatchNorm running statistics, randomised so that they matter) and in train mode
(BatchNorm batch statistics, which are per channel, so old channels keep theirs). The models are
random ``Sequential`` stacks of 1-3d convolutions, BatchNorm, activations, pooling, flatten and
linear layers; plans are random over ``trace(model).widenable_layers``; the flatten
multiplicities come from the graph, traced with and without ``example_inputs``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

import netsurgeon

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Identity)
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVGPOOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
ADAPTIVE = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
SIZES = {0: (1, 1), 1: (3, 10), 2: (2, 6), 3: (2, 4)}  # spatial extent per conv dimensionality
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}

widths = st.integers(1, 16)


@dataclass(frozen=True)
class ModelSpec:
    """A random sequential model: ``layers`` are ``(kind, *args)`` tuples built by ``build``."""

    dims: int  # 0: an MLP on (batch, features); 1-3: ConvNd on (batch, C, *spatial)
    in_channels: int
    size: int
    layers: tuple[tuple, ...]

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.in_channels, *([self.size] * self.dims))

    def build(self, seed: int, dtype: torch.dtype) -> nn.Sequential:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            modules: list[nn.Module] = []
            channels, size, flat = self.in_channels, self.size, self.dims == 0
            for kind, *args in self.layers:
                if kind == "conv":
                    width, kernel, bias = args
                    conv = CONV[self.dims](channels, width, kernel, padding=kernel // 2, bias=bias)
                    modules.append(conv)
                    channels = width
                elif kind == "bn":
                    affine, track = args
                    norm = nn.BatchNorm1d if flat else BATCHNORM[self.dims]
                    bn = norm(channels, affine=affine, track_running_stats=track)
                    _randomise_batchnorm(bn)
                    modules.append(bn)
                elif kind == "act":
                    modules.append(ACTIVATIONS[args[0]]())
                elif kind == "pool":
                    pool, out = args
                    if pool == "adaptive":
                        modules.append(ADAPTIVE[self.dims](out))
                    else:
                        modules.append((MAXPOOL if pool == "max" else AVGPOOL)[self.dims](2))
                    size = out
                elif kind == "flatten":
                    modules.append(nn.Flatten())
                    channels, flat = channels * size**self.dims, True
                elif kind == "linear":
                    width, bias = args
                    modules.append(nn.Linear(channels, width, bias=bias))
                    channels = width
            return nn.Sequential(*modules).to(dtype)


def _randomise_batchnorm(bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Non-trivial running statistics and affine parameters, so eval mode is a real test."""
    with torch.no_grad():
        if bn.track_running_stats:
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.2)


def _batchnorm(draw: st.DrawFn) -> tuple:
    """Mostly the default BatchNorm; sometimes without affine or without running stats."""
    variant = draw(st.sampled_from(("default", "default", "no-affine", "no-running-stats")))
    return ("bn", variant != "no-affine", variant != "no-running-stats")


@st.composite
def model_specs(draw: st.DrawFn) -> ModelSpec:
    dims = draw(st.sampled_from((0, 1, 2, 3)))
    in_channels = draw(st.integers(1, 3)) if dims else draw(widths)
    size = draw(st.integers(*SIZES[dims]))
    layers: list[tuple] = []
    current = size
    for _ in range(draw(st.integers(1, 3)) if dims else 0):
        layers.append(("conv", draw(widths), draw(st.sampled_from((1, 3))), draw(st.booleans())))
        if draw(st.booleans()):
            layers.append(_batchnorm(draw))
        layers.append(("act", draw(st.integers(0, len(ACTIVATIONS) - 1))))
        pool = draw(st.sampled_from(("none", "max", "avg", "adaptive")))
        if pool == "adaptive":
            current = draw(st.integers(1, current))
            layers.append(("pool", pool, current))
        elif pool != "none" and current >= 2:
            current //= 2
            layers.append(("pool", pool, current))
    if dims or draw(st.booleans()):
        layers.append(("flatten",))
    if dims and draw(st.booleans()):
        layers.append(_batchnorm(draw))  # BatchNorm1d over C x spatial features
    for _ in range(draw(st.integers(0 if dims else 1, 2))):
        layers.append(("linear", draw(widths), draw(st.booleans())))
        if draw(st.booleans()):
            layers.append(_batchnorm(draw))
        layers.append(("act", draw(st.integers(0, len(ACTIVATIONS) - 1))))
    layers.append(("linear", draw(st.integers(1, 4)), draw(st.booleans())))
    return ModelSpec(dims, in_channels, size, tuple(layers))


def _max_error(after: torch.Tensor, before: torch.Tensor) -> float:
    return (after - before).abs().max().item()


def _bound(before: torch.Tensor, dtype: torch.dtype) -> float:
    if dtype == torch.float64:
        return TOLERANCE[dtype]
    return TOLERANCE[dtype] * (1.0 + before.abs().max().item())


#: Largest slope of each activation (GELU: 1.1290 at x = 1.4; SiLU: 1.0998 at x = 2.4).
LIPSCHITZ = {nn.ReLU: 1.0, nn.Tanh: 1.0, nn.LeakyReLU: 1.0, nn.Identity: 1.0}
LIPSCHITZ |= {nn.GELU: 1.13, nn.SiLU: 1.1}


def rounding_bound(before: nn.Sequential, after: nn.Sequential, x: torch.Tensor) -> float:
    """An upper bound on ``max |after(x) - before(x)|`` that rounding alone can cause.

    Both models compute the same exact function (the widening adds zero or split columns), but
    in floating point with unit roundoff ``u = eps / 2`` and in another order (the wider layers
    sum over more terms, and kernels block differently for other channel counts). Let ``E`` bound,
    entry by entry, the difference of the two models' activations entering a layer (``E = 0`` at
    the input) and ``h`` be the exact activation. Layer by layer (``g_n = n u / (1 - n u)``, the
    classical bound on the rounding of an ``n``-term sum, Higham, *Accuracy and Stability*, 3.1):

    * conv / linear with fan-in ``n`` after widening (+1 for the bias): each model's output is
      off the exact one by at most ``g_n (|W| |h| + |b|)``, so
      ``E <- |W| E + 2 g_n (|W| |h| + |b|)`` (the same layer applied to absolute values; split or
      zero new columns leave both terms as they were);
    * activation of slope at most ``L``: ``E <- L E + 4 u |f(h)|`` (each evaluation within one
      ulp of ``f`` of its own input); ReLU passes nothing where ``h + E <= 0``;
    * max / average pooling: ``E`` max- / average-pooled, plus ``2 g_m |h|`` for an average of
      ``m`` entries; flatten: ``E`` flattened;
    * BatchNorm with running statistics (eval): ``E <- |gamma_c| / s_c E + 4 u |y|``,
      ``s_c = sqrt(running_var_c + bn_eps)``;
    * BatchNorm with batch statistics (train mode, or no running statistics) over the ``N``
      values of channel ``c``, with ``e_c = max E`` over them, mean ``mu_c``, variance
      ``sigma_c^2``, ``s_c = sqrt(sigma_c^2 + bn_eps)`` and ``m_c = max |h - mu_c|``: the mean
      moves by ``e_c``, each ``h - mu`` by ``2 e_c``, the variance by ``4 e_c sigma_c`` and
      ``1 / s_c`` by ``2 e_c sigma_c / s_c^3`` (to first order), so the normalised value moves by
      ``2 e_c (1 + m_c sigma_c / s_c^2) / s_c``; the two evaluations of the mean and variance
      differ by ``2 g_N`` relative, adding ``2 g_N (max |h|_c + m_c) / s_c``. Then times
      ``|gamma_c|``, plus ``4 u |y|``. This is where train mode amplifies: with a batch of 2,
      ``s_c`` can be as small as ``sqrt(bn_eps)``.

    ``max E`` at the output is the bound, doubled to cover the second-order terms dropped above
    (relative to the first-order ones they are of the order of ``e_c / s_c``, far below 1 here).
    The exact activations are taken from ``before`` in float64; ``u`` is that of ``x.dtype``.
    """
    u = torch.finfo(x.dtype).eps / 2
    reference = copy.deepcopy(before).double().train(before.training)
    h = x.double()
    error = torch.zeros_like(h)
    with torch.no_grad():
        for layer, grown in zip(reference, after, strict=True):
            y = layer(h)
            error = _layer_bound(layer, grown, h, y, error, u)
            h = y
    return 2.0 * error.max().item()


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def _layer_bound(
    layer: nn.Module, grown: nn.Module, h: torch.Tensor, y: torch.Tensor, e: torch.Tensor, u: float
) -> torch.Tensor:
    """One step of :func:`rounding_bound`: the bound after ``layer`` from the bound before it."""
    if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        weight = layer.weight.abs()
        bias = None if layer.bias is None else layer.bias.abs()
        if isinstance(layer, nn.Linear):
            apply = lambda t, b: F.linear(t, weight, b)  # noqa: E731
        else:
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]
            apply = lambda t, b: conv(t, weight, b, padding=layer.padding)  # noqa: E731
        fan_in = grown.weight[0].numel() + 1
        return apply(e, None) + 2 * _gamma(fan_in, u) * apply(h.abs(), bias)
    if isinstance(layer, nn.ReLU):
        return e * (h + e > 0) + 4 * u * y.abs()
    if type(layer) in LIPSCHITZ:
        return LIPSCHITZ[type(layer)] * e + 4 * u * y.abs()
    if isinstance(layer, nn.Flatten):
        return layer(e)
    if isinstance(layer, nn.modules.pooling._MaxPoolNd):
        return layer(e)  # the max moves by at most the largest error in its window
    if isinstance(layer, nn.modules.pooling._AvgPoolNd | nn.modules.pooling._AdaptiveAvgPoolNd):
        window = max(1, h[0, 0].numel() // max(1, y[0, 0].numel()))
        return layer(e) + 2 * _gamma(window, u) * layer(h.abs())
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return _batchnorm_bound(layer, h, y, e, u)
    raise NotImplementedError(f"no rounding bound for {type(layer).__name__}")


def _per_channel(t: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (one per channel) broadcast to ``t``'s shape, channels on dim 1."""
    return values.reshape(1, -1, *([1] * (t.dim() - 2)))


def _batchnorm_bound(
    bn: nn.modules.batchnorm._BatchNorm, h: torch.Tensor, y: torch.Tensor, e: torch.Tensor, u: float
) -> torch.Tensor:
    channels = h.transpose(0, 1).flatten(1)  # (C, N)
    gamma = bn.weight.abs() if bn.affine else torch.ones(len(channels), dtype=h.dtype)
    if bn.training or not bn.track_running_stats:
        e_c = e.transpose(0, 1).flatten(1).amax(1)
        mu = channels.mean(1, keepdim=True)
        sigma = channels.var(1, unbiased=False).sqrt()
        s = (sigma**2 + bn.eps).sqrt()
        m = (channels - mu).abs().amax(1)
        moved = 2 * e_c * (1 + m * sigma / s**2) / s
        moved = moved + 2 * _gamma(channels.shape[1], u) * (channels.abs().amax(1) + m) / s
        moved = _per_channel(h, gamma * moved).expand_as(h)
    else:
        moved = e * _per_channel(h, gamma / (bn.running_var + bn.eps).sqrt())
    return moved + 4 * u * y.abs()


def _check_preserved(
    model: nn.Module,
    x: torch.Tensor,
    plan: dict[str, int],
    *,
    init: str,
    seed: int,
    example_inputs: torch.Tensor | None,
) -> None:
    """Widen ``model`` and compare eval- and train-mode outputs with an untouched copy."""
    dtype = x.dtype
    before = copy.deepcopy(model)
    derive = isinstance(model, nn.Sequential)
    widths_before = netsurgeon.trace(model, strict=False).widths()
    netsurgeon.widen(
        model,
        plan,
        generator=torch.Generator().manual_seed(seed),
        init=init,
        example_inputs=example_inputs,
    )
    widths_after = netsurgeon.trace(model, strict=False).widths()
    assert widths_after == {n: w + plan.get(n, 0) for n, w in widths_before.items()}
    for train in (False, True):  # eval first: train-mode forwards update the running stats
        model.train(train)
        before.train(train)
        with torch.no_grad():
            y_before, y_after = before(x), model(x)
        assert y_after.shape == y_before.shape
        bound = rounding_bound(before, model, x) if derive else _bound(y_before, dtype)
        error = _max_error(y_after, y_before)
        assert error <= bound, f"train={train}: max error {error:.3g} > {bound:.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("init", ["paper", "net2net"])
@given(spec=model_specs(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_widen_preserves_output_of_random_sequential_models(
    init: str, dtype: torch.dtype, spec: ModelSpec, seed: int, data: st.DataObject
) -> None:
    model = spec.build(seed, dtype)
    batch = data.draw(st.integers(2, 5), label="batch")
    x = torch.randn(spec.input_shape(batch), generator=torch.Generator().manual_seed(seed))
    x = x.to(dtype)
    with_inputs = data.draw(st.booleans(), label="example_inputs given")
    example_inputs = x if with_inputs else None
    widenable = netsurgeon.trace(model, example_inputs, strict=False).widenable_layers
    assume(widenable)
    plan = data.draw(
        st.dictionaries(st.sampled_from(widenable), st.integers(1, 8), min_size=1), label="plan"
    )
    _check_preserved(model, x, plan, init=init, seed=seed, example_inputs=example_inputs)


class CustomNet(nn.Module):
    """A user's class with a hand-written forward: functional ops, ``view``, two consumers."""

    def __init__(self, c1: int, c2: int, hidden: int, size: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(c2)
        self.fc1 = nn.Linear(c2 * (size // 4) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.avg_pool2d(torch.tanh(self.bn2(self.conv2(x))), 2)
        x = x.view(x.size(0), -1)
        return self.fc2(F.gelu(self.fc1(x)))


@pytest.mark.parametrize("init", ["paper", "net2net"])
@given(
    c1=widths,
    c2=widths,
    hidden=widths,
    ks=st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(0, 8)),
    seed=st.integers(0, 2**31 - 1),
    with_inputs=st.booleans(),
)
def test_widen_preserves_output_of_a_custom_forward_class(
    init: str,
    c1: int,
    c2: int,
    hidden: int,
    ks: tuple[int, int, int],
    seed: int,
    with_inputs: bool,
) -> None:
    assume(any(ks))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CustomNet(c1, c2, hidden)
        _randomise_batchnorm(model.bn1)
        _randomise_batchnorm(model.bn2)
        x = torch.randn(4, 3, 8, 8)
    plan = {name: k for name, k in zip(("conv1", "conv2", "fc1"), ks, strict=True) if k}
    example_inputs = x if with_inputs else None
    _check_preserved(model, x, plan, init=init, seed=seed, example_inputs=example_inputs)


@pytest.mark.parametrize("init", ["paper", "net2net"])
def test_widen_preserves_output_when_every_layer_and_its_consumer_grow_together(
    init: str,
) -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Conv2d(5, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 7),
        nn.ReLU(),
        nn.Linear(7, 2),
    ).double()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            _randomise_batchnorm(module)
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    plan = dict.fromkeys(netsurgeon.trace(model).widenable_layers, 3)
    assert list(plan) == ["0", "3", "8", "11"]
    _check_preserved(model, x, plan, init=init, seed=1, example_inputs=None)
    # Paper eq. 1: the block (new outputs x new inputs) of a consumer that grows too is zero.
    if init == "paper":
        assert torch.equal(model[3].weight[4:, 5:], torch.zeros_like(model[3].weight[4:, 5:]))
        assert model[3].weight[4:, :5].abs().sum() > 0


def test_paper_init_draws_new_rows_with_kaiming_variance() -> None:
    fan_in = 64 * 3 * 3
    model = nn.Sequential(nn.Conv2d(64, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 1))
    netsurgeon.widen(model, {"0": 512}, generator=torch.Generator().manual_seed(0))
    rows = model[0].weight[8:]
    torch.testing.assert_close(rows.var().item(), 2.0 / fan_in, rtol=0.02, atol=0.0)
    assert torch.equal(model[0].bias[8:], torch.zeros(512))
    assert torch.equal(model[2].weight[:, 8:], torch.zeros(2, 512, 1, 1))


def test_paper_init_gives_new_batchnorm_channels_neutral_values() -> None:
    model = nn.Sequential(
        nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(),
        nn.BatchNorm1d(5 * 4 * 4), nn.Linear(5 * 4 * 4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2),
    )  # fmt: skip
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            _randomise_batchnorm(module)
    old = {name: t.clone() for name, t in model.state_dict().items()}
    netsurgeon.widen(model, {"0": 2, "5": 3}, example_inputs=torch.randn(2, 2, 6, 6))
    fills = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
    for bn, n in (("1", 5), ("4", 80), ("6", 6)):
        for attr, fill in fills.items():
            value = model.state_dict()[f"{bn}.{attr}"]
            assert torch.equal(value[:n], old[f"{bn}.{attr}"]), (bn, attr)
            assert torch.equal(value[n:], torch.full_like(value[n:], fill)), (bn, attr)
    assert model[4].num_features == 7 * 16
