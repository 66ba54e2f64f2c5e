"""The soundness fuzzer: a model that ``widen`` accepts is never broken.

Property. Build a random small model from a vocabulary that includes the constructs that once
made a widening break a model silently: buffers and parameters read in ``forward`` (through
indexing, ``view``, ``reshape``, ``unsqueeze``), subclasses overriding ``forward`` or
``_conv_forward``, subclasses with extra parameters or buffers, forward hooks and pre-hooks (some
changing the output, some only observing), parametrizations (``weight_norm``, ``spectral_norm``,
a custom one), legacy ``weight_norm``, ``torch.nn.utils.prune`` masks, size reads used in reshapes
and in scales; plus ordinary conv / bn / relu / residual add / cat / SE / linear. Trace it with
``strict=False`` (with or without example inputs), take any plan over the groups the graph calls
widenable (a random subset, counts a multiple of the granularity), and widen. Then exactly one of:

* ``widen`` raises a :class:`~netsurgeon.errors.NetsurgeonError`, and every parameter, buffer and
  optimizer state tensor is bit-identical to before;
* ``widen`` succeeds, the forward runs, and in float64 eval mode the output is unchanged to
  ``1e-9`` relative (``atol = 1e-9 * max|y|``: paper-init widenings are exact up to rounding).

Anything else (a crash in the forward, a silent change) is a soundness bug of the analysis.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from hypothesis import event, given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrizations, parametrize, prune

import netsurgeon
from netsurgeon.errors import NetsurgeonError
from netsurgeon.graph.soundness import mark_observer

# ---------------------------------------------------------------------------- the vocabulary


class StdConv(nn.Conv2d):
    """Weight standardisation in ``forward`` (timm's StdConv2d)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class ConvForwardConv(nn.Conv2d):
    """Overrides only ``_conv_forward``: the weight is scaled by its own mean magnitude."""

    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, weight / weight.abs().mean(), bias)


class SameConv(nn.Conv2d):
    """Overrides ``forward`` with the same computation: refused (cannot be known), never wrong."""

    def forward(self, x):
        return super().forward(x)


class GainConv(nn.Conv2d):
    """timm's ScaledStdConv2d-like: a per-output-channel ``gain`` parameter."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.gain, self.bias, self.stride, self.padding)


class BufferConv(nn.Conv2d):
    """A per-channel buffer the parent class knows nothing of (forward not overridden)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("scale", torch.rand(self.out_channels))


class Centred(nn.Module):
    """A custom parametrization: the weight minus its mean over the input dims."""

    def forward(self, w):
        return w - w.mean((1, 2, 3), keepdim=True)


class ScaledBN(nn.BatchNorm2d):
    """A BatchNorm subclass whose forward depends on the width."""

    def forward(self, x):
        return super().forward(x) * x.shape[1] ** -0.5


def _changing_hook(module, args, output):
    return output + output.mean(1, keepdim=True)


def _changing_pre_hook(module, args):
    return (args[0] * args[0].shape[1] ** -0.5,)


def _doubling_hook(module, args, output):
    return output * 2


@mark_observer
def _observer_hook(module, args, output):
    return None


def make_conv(cin: int, cout: int, variant: str) -> nn.Module:
    classes = {
        "std": StdConv,
        "convfwd": ConvForwardConv,
        "same": SameConv,
        "gain": GainConv,
        "buffer": BufferConv,
    }
    conv = classes.get(variant, nn.Conv2d)(cin, cout, 3, padding=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy weight_norm's deprecation
        if variant == "weight_norm":
            parametrizations.weight_norm(conv)
        elif variant == "spectral_norm":
            parametrizations.spectral_norm(conv)
        elif variant == "custom_param":
            parametrize.register_parametrization(conv, "weight", Centred())
        elif variant == "legacy_weight_norm":
            torch.nn.utils.weight_norm(conv)
        elif variant == "prune":
            prune.random_unstructured(conv, "weight", amount=0.3)
    hooks = {
        "hook_fwd": _changing_hook,
        "hook_double": _doubling_hook,
        "hook_observer": _observer_hook,
    }
    if variant in hooks:
        conv.register_forward_hook(hooks[variant])
    if variant == "hook_pre":
        conv.register_forward_pre_hook(_changing_pre_hook)
    return conv


CONV_VARIANTS = (
    "plain", "plain", "std", "convfwd", "same", "gain", "buffer", "weight_norm", "spectral_norm",
    "custom_param", "legacy_weight_norm", "prune", "hook_fwd", "hook_pre", "hook_double",
    "hook_observer",
)  # fmt: skip


class ConvStep(nn.Module):
    def __init__(self, cin: int, cout: int, variant: str) -> None:
        super().__init__()
        self.conv = make_conv(cin, cout, variant)
        self.out_channels = cout

    def forward(self, x):
        return self.conv(x)


class NormStep(nn.Module):
    def __init__(self, c: int, variant: str) -> None:
        super().__init__()
        self.bn = (ScaledBN if variant == "scaled" else nn.BatchNorm2d)(c)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 1.5)
        self.out_channels = c

    def forward(self, x):
        return F.relu(self.bn(x))


#: How a per-channel tensor reaches the channels: the spelling, and whether it widens exactly.
CHAIN_SPELLINGS = ("index", "view", "reshape", "unsqueeze", "literal_view", "full", "read_twice")


class TensorStep(nn.Module):
    """``x <op> t`` with a per-channel buffer or parameter ``t`` read in forward."""

    def __init__(self, c: int, as_parameter: bool, spelling: str, op: str) -> None:
        super().__init__()
        shape = (c, 1, 1) if spelling == "full" else (c,)
        value = torch.rand(shape) + 0.5
        if as_parameter:
            self.t = nn.Parameter(value)
        else:
            self.register_buffer("t", value)
        self.c, self.spelling, self.op = c, spelling, op
        self.out_channels = c

    def forward(self, x):
        t = self.t
        if self.spelling == "index":
            t = t[None, :, None, None]
        elif self.spelling == "read_twice":  # also summed: growing it would change the sum
            t = t[None, :, None, None] / t.sum()
        elif self.spelling == "view":
            t = t.view(1, -1, 1, 1)
        elif self.spelling == "reshape":
            t = t.reshape(1, -1, 1, 1)
        elif self.spelling == "unsqueeze":
            t = t.unsqueeze(-1).unsqueeze(-1)
        elif self.spelling == "literal_view":
            t = t.view(1, self.c, 1, 1)  # the width written into the code: must not widen
        if self.op == "mul":
            return x * t
        if self.op == "div":
            return x / t
        return x + t


class SizeStep(nn.Module):
    """Size reads used in a scale or in reshapes."""

    def __init__(self, c: int, variant: str) -> None:
        super().__init__()
        self.variant = "reshape_roundtrip" if variant == "split_heads" and c % 2 else variant
        self.out_channels = c

    def forward(self, x):
        if self.variant == "channel_scale":
            return x * x.shape[1] ** -0.5
        if self.variant == "spatial_scale":
            return x * x.shape[-1] ** -0.5
        if self.variant == "numel_scale":
            return x / x.numel()
        b, c, h, w = x.shape
        if self.variant == "reshape_roundtrip":
            return x.reshape(b, c, h * w).view(b, c, h, w)
        if self.variant == "split_heads":
            return x.view(b, 2, c // 2, h, w).view(b, c, h, w)
        return x.view(b, -1, h, w)  # "minus_one"


SIZE_VARIANTS = (
    "channel_scale", "spatial_scale", "numel_scale", "reshape_roundtrip", "split_heads",
    "minus_one",
)  # fmt: skip


class SEStep(nn.Module):
    """Squeeze-and-excitation with the classic ``b, c, _, _ = x.size()`` spelling."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, 2)
        self.fc2 = nn.Linear(2, c)
        self.out_channels = c

    def forward(self, x):
        b, c, _, _ = x.size()
        y = F.adaptive_avg_pool2d(x, 1).view(b, c)
        y = torch.sigmoid(self.fc2(F.relu(self.fc1(y)))).view(b, c, 1, 1)
        return x * y  # (y.expand_as(x): its own handler, its own tests)


class ResidualStep(nn.Module):
    def __init__(self, c: int, variant: str) -> None:
        super().__init__()
        self.conv = make_conv(c, c, variant)
        self.out_channels = c

    def forward(self, x):
        return x + self.conv(F.relu(x))


class CatStep(nn.Module):
    def __init__(self, c: int, a: int, b: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, a, 1)
        self.b = nn.Conv2d(c, b, 1)
        self.out_channels = a + b

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


class HookedBlock(nn.Module):
    """A traced-through container with a hook on it: fx does not see the hook."""

    def __init__(self, c: int, cout: int, changing: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, cout, 3, padding=1)
        self.out_channels = cout
        self.register_forward_hook(_changing_hook if changing else _observer_hook)

    def forward(self, x):
        return F.relu(self.conv(x))


class NewOpStep(nn.Module):
    """The layer types and ops the analysis learned with the soundness rule, each of which must
    widen exactly or block: a transposed conv, padding modules, channel-dim ``F.pad``, a frozen
    BatchNorm, an SE gate spelled with ``expand_as``, ``flip``, ``zeros_like``, ``addcmul``."""

    def __init__(self, c: int, cout: int, variant: str) -> None:
        super().__init__()
        from torchvision.ops import FrozenBatchNorm2d

        self.variant = variant
        self.out_channels = c
        if variant == "transpose":
            self.layer = nn.ConvTranspose2d(c, cout, 3, padding=1)
            self.out_channels = cout
        elif variant == "reflect_pad":
            self.layer = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, cout, 3))
            self.out_channels = cout
        elif variant == "frozen_bn":
            self.layer = FrozenBatchNorm2d(c)
            self.layer.running_mean.uniform_(-0.5, 0.5)
            self.layer.weight.uniform_(0.5, 1.5)
        elif variant == "channel_pad":
            self.out_channels = c + 2
        elif variant == "se_expand":
            self.layer = nn.Conv2d(c, c, 1)

    def forward(self, x):
        if self.variant in ("transpose", "reflect_pad", "frozen_bn"):
            return self.layer(x)
        if self.variant == "channel_pad":
            return F.pad(x, (0, 0, 0, 0, 1, 1))
        if self.variant == "se_expand":
            return x * torch.sigmoid(self.layer(F.adaptive_avg_pool2d(x, 1))).expand_as(x)
        if self.variant == "flip":
            return x + x.flip(-1)
        if self.variant == "zeros_like":
            return x + torch.zeros_like(x)
        return torch.addcmul(x, x, x, value=0.5)  # "addcmul"


NEW_OP_VARIANTS = (
    "transpose", "reflect_pad", "frozen_bn", "channel_pad", "se_expand", "flip", "zeros_like",
    "addcmul",
)  # fmt: skip


class Fuzzed(nn.Module):
    def __init__(self, steps: list[nn.Module], stem: int, head: str) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, stem, 3, padding=1)
        self.steps = nn.ModuleList(steps)
        width = steps[-1].out_channels if steps else stem
        self.head_kind = head
        self.fc = nn.Linear(width * (4 if head == "view" else 1), 3)

    def forward(self, x):
        x = self.stem(x)
        for step in self.steps:
            x = step(x)
        if self.head_kind == "view":
            x = F.adaptive_avg_pool2d(x, 2)
            return self.fc(x.view(x.size(0), -1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@st.composite
def models(draw) -> Fuzzed:
    torch.manual_seed(draw(st.integers(0, 2**16)))  # the weights, reproducibly per example
    width = st.integers(2, 4)
    c = draw(width)
    stem = c
    steps: list[nn.Module] = []
    for _ in range(draw(st.integers(1, 4))):
        kinds = ("conv", "norm", "tensor", "size", "se", "res", "cat", "hook", "new")
        kind = draw(st.sampled_from(kinds))
        if kind == "conv":
            step = ConvStep(c, draw(width), draw(st.sampled_from(CONV_VARIANTS)))
        elif kind == "norm":
            step = NormStep(c, draw(st.sampled_from(("plain", "plain", "scaled"))))
        elif kind == "tensor":
            step = TensorStep(
                c,
                draw(st.booleans()),
                draw(st.sampled_from(CHAIN_SPELLINGS)),
                draw(st.sampled_from(("mul", "div", "add"))),
            )
        elif kind == "size":
            step = SizeStep(c, draw(st.sampled_from(SIZE_VARIANTS)))
        elif kind == "se":
            step = SEStep(c)
        elif kind == "res":
            step = ResidualStep(c, draw(st.sampled_from(CONV_VARIANTS)))
        elif kind == "cat":
            step = CatStep(c, draw(width), draw(width))
        elif kind == "new":
            step = NewOpStep(c, draw(width), draw(st.sampled_from(NEW_OP_VARIANTS)))
        else:
            step = HookedBlock(c, draw(width), draw(st.booleans()))
        steps.append(step)
        c = step.out_channels
    return Fuzzed(steps, stem, draw(st.sampled_from(("pool", "view"))))


# ---------------------------------------------------------------------------- the property


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = {f"p:{n}": p.detach().clone() for n, p in model.named_parameters()}
    state |= {f"b:{n}": b.detach().clone() for n, b in model.named_buffers()}
    for i, p in enumerate(optimizer.param_groups[0]["params"]):
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor):
                state[f"o:{i}:{key}"] = value.detach().clone()
    return state


def _assert_identical(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert value.shape == after[key].shape, key
        assert torch.equal(value, after[key]), key


def check_widen_is_sound(model: nn.Module, data, with_shapes: bool, init: str) -> None:
    """The property (module docstring), for one model and the plans ``data`` draws."""
    model = model.double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(x).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    example = x if with_shapes else None
    graph = netsurgeon.trace(model, example, strict=False)
    widenable = [g for g in graph.groups if g.blocked is None and not g.reaches_output]
    if not widenable:
        event("nothing widenable")
        return
    chosen = data.draw(st.lists(st.sampled_from(widenable), min_size=1, unique_by=lambda g: g.name))
    plan = {g.name: g.granularity * data.draw(st.integers(1, 2)) for g in chosen}
    before = _state(model, optimizer)
    generator = torch.Generator().manual_seed(0)
    try:
        netsurgeon.widen(
            model, plan, optimizer=optimizer, example_inputs=example, init=init, generator=generator
        )
    except NetsurgeonError:
        event("widen refused")
        _assert_identical(before, _state(model, optimizer))
        return
    event("widened")
    with torch.no_grad():
        got = model(x)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * max(scale, 1.0))


@given(model=models(), data=st.data(), with_shapes=st.booleans())
def test_a_widening_that_the_graph_allows_never_breaks_the_model(model, data, with_shapes):
    torch.manual_seed(0)
    check_widen_is_sound(model, data, with_shapes, "paper")


@given(model=models(), data=st.data())
def test_a_net2net_widening_that_the_graph_allows_never_breaks_the_model(model, data):
    check_widen_is_sound(model, data, True, "net2net")
