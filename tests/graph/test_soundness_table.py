"""Each row of the soundness table: code that ``widen`` once accepted and then broke.

For each construct the general property of :mod:`widen_or_refuse` holds for every plan over the
groups ``trace`` reports widenable: ``widen`` raises a netsurgeon error with model and optimizer
bit-identical, or it succeeds, the forward runs on an input of another batch size, and the output
is preserved to ``1e-9 * (1 + max |y|)`` in float64, eval mode. On top of it, what the maths
allows:

* ``weight_norm`` (both spellings) and ``FrozenBatchNorm2d`` are exact: the groups they sit in are
  widenable, and every plan over them succeeds and keeps the output. Adding zero input columns to
  ``v`` leaves each row's norm unchanged, and new rows of ``v`` get ``g = ||v_row||``; a frozen
  norm is an affine map per channel, a follower like BatchNorm in eval mode.
* ``StdConv2d``, ``ScaledStdConv2d`` (with its per-channel ``gain``) and ``spectral_norm`` change
  their weight with statistics over the input dim (mean, variance, fan-in, largest singular
  value), so new zero columns change the old outputs: exact (with a layout that compensates), or
  blocked with a reason that names the module.
* A per-channel buffer or free parameter read in the forward grows as a follower, or blocks its
  group with a reason naming it.
* A size read on a channel dim (``B, T, D = x.shape`` then ``view(B, T, h, D // h)``; the
  attention scale ``x.shape[-1] ** -0.5``) blocks its group with a reason that names the fx node,
  or is understood and exact.
"""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import timm
import torch
import torchvision
from torch import fx, nn
from torch.nn.utils import parametrizations
from widen_or_refuse import check_every_plan, groups_touching

import netsurgeon
from netsurgeon import UnsupportedModelError

DTYPE = torch.float64


def _images(batch: int, size: int = 8, seed: int = 1) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, size, size, generator=g, dtype=DTYPE),)


def _tokens(batch: int, seed: int = 1) -> tuple[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 5, 6, generator=g, dtype=DTYPE),)


def _ready(model: nn.Module) -> nn.Module:
    """Float64, eval mode, non-trivial running statistics."""
    model = model.to(DTYPE).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=g))
            elif name.endswith("running_var"):
                buffer.copy_(0.8 + 0.45 * torch.rand(buffer.shape, generator=g))
    return model


def _reason_names(reason: str | None, names: set[str]) -> bool:
    """``reason`` mentions one of ``names`` as a whole word (``conv1`` is not ``conv10``)."""
    return reason is not None and any(
        re.search(rf"(?<![\w.]){re.escape(n)}(?![\w])", reason) for n in names
    )


def _exact_or_blocked_naming(
    build, trace_inputs, check_inputs, modules: set[str], around: set[str] = frozenset()
) -> None:
    """The property, and every group that ``modules`` touch (or that holds a layer of ``around``)
    is widenable or blocked with a reason that names one of ``modules``; a strict trace succeeds
    or names one of them too."""
    try:
        netsurgeon.trace(build(), trace_inputs, strict=True)
    except UnsupportedModelError as error:
        assert _reason_names(str(error), modules), (str(error), modules)
    outcomes = check_every_plan(build, trace_inputs, check_inputs)
    graph = netsurgeon.trace(build(), trace_inputs, strict=False)
    touched = {g.name: g for m in modules for g in groups_touching(graph, m)}
    touched.update((graph.group_of(layer).name, graph.group_of(layer)) for layer in around)
    assert touched, "no group holds the modules: the test is not testing anything"
    for group in touched.values():
        if not group.widenable and not group.reaches_output:
            assert _reason_names(group.reason, modules), (group.name, group.reason, modules)
    for outcome in outcomes:
        if outcome.refused and touched.keys() & outcome.plan.keys():
            assert _reason_names(str(outcome.error), modules), (outcome.plan, outcome.error)


def _exact(build, trace_inputs, check_inputs, groups: set[str]) -> None:
    """The property, with ``groups`` widenable and no plan refused."""
    graph = netsurgeon.trace(build(), trace_inputs, strict=True)
    widenable = {g.name for g in graph.groups if g.widenable}
    assert groups <= widenable, {g: graph.group_of(g).reason for g in groups - widenable}
    outcomes = check_every_plan(build, trace_inputs, check_inputs)
    refused = [(o.plan, str(o.error)) for o in outcomes if o.refused]
    assert not refused, refused


# -- weight-transforming convolutions -----------------------------------------------------------
class ConvChain(nn.Module):
    """conv1 (3->8) -> relu -> conv2 (8->6) -> relu -> pool -> fc (6->3); both convs of ``conv``."""

    def __init__(self, conv=nn.Conv2d) -> None:
        super().__init__()
        self.conv1 = conv(3, 8, 3, padding=1)
        self.conv2 = conv(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def test_a_plain_conv_chain_widens_exactly_under_every_plan() -> None:
    # the control: the same checks on the layers the rows below replace hold today
    torch.manual_seed(0)
    pristine = _ready(ConvChain())
    _exact(lambda: copy.deepcopy(pristine), _images(2), _images(3, seed=3), {"conv1", "conv2"})


class StdConsumer(nn.Module):
    """A plain conv whose channels a timm ``StdConv2d`` reads: the BiT/ResNetV2 pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.std = timm.layers.StdConv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.std(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def test_a_std_conv_consumer_is_exact_or_blocks_with_a_reason_naming_it() -> None:
    torch.manual_seed(0)
    pristine = _ready(StdConsumer())
    _exact_or_blocked_naming(
        lambda: copy.deepcopy(pristine), _images(2), _images(3, seed=3), {"std"}, {"conv1"}
    )


def test_scaled_std_convs_with_a_gain_are_exact_or_block_with_a_reason_naming_them() -> None:
    torch.manual_seed(0)
    model = ConvChain(timm.layers.ScaledStdConv2d)
    with torch.no_grad():
        for conv in (model.conv1, model.conv2):
            conv.gain.uniform_(0.5, 1.5)
    pristine = _ready(model)
    _exact_or_blocked_naming(
        lambda: copy.deepcopy(pristine),
        _images(2),
        _images(3, seed=3),
        {"conv1", "conv2"},
        {"conv1", "conv2"},
    )


@pytest.mark.slow
def test_nf_resnet26_with_scaled_std_convs_is_exact_or_blocks_naming_them() -> None:
    torch.manual_seed(0)
    pristine = _ready(timm.create_model("nf_resnet26", pretrained=False, num_classes=5))
    convs = {n for n, m in pristine.named_modules() if isinstance(m, timm.layers.ScaledStdConv2d)}
    assert len(convs) > 20
    _exact_or_blocked_naming(
        lambda: copy.deepcopy(pristine), _images(2, 16), _images(3, 16, seed=3), convs
    )


def _legacy_weight_norm(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of parametrizations
        return nn.utils.weight_norm(module)


def _weight_norm_chain(wrap) -> nn.Module:
    """Built afresh each time: a legacy ``weight_norm`` module cannot be deep-copied."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _ready(ConvChain(lambda *a, **k: wrap(nn.Conv2d(*a, **k))))


@pytest.mark.parametrize(
    "wrap",
    [parametrizations.weight_norm, _legacy_weight_norm],
    ids=["parametrizations.weight_norm", "legacy-weight_norm"],
)
def test_weight_norm_convs_widen_exactly(wrap) -> None:
    _exact(lambda: _weight_norm_chain(wrap), _images(2), _images(3, seed=3), {"conv1", "conv2"})


def test_spectral_norm_convs_are_exact_or_block_with_a_reason_naming_them() -> None:
    torch.manual_seed(0)
    model = ConvChain(lambda *a, **k: parametrizations.spectral_norm(nn.Conv2d(*a, **k)))
    model.train()
    with torch.no_grad():  # a few power iterations: u and v are not their random start
        for _ in range(3):
            model(_images(2)[0].float())
    pristine = _ready(model)
    _exact_or_blocked_naming(
        lambda: copy.deepcopy(pristine),
        _images(2),
        _images(3, seed=3),
        {"conv1", "conv2"},
        {"conv1", "conv2"},
    )


# -- frozen norms -------------------------------------------------------------------------------
class FrozenChain(nn.Module):
    """conv -> FrozenBatchNorm2d -> relu, twice, then pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        frozen = torchvision.ops.FrozenBatchNorm2d
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), frozen(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 6, 3, padding=1, bias=False), frozen(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.bn2(self.conv2(x))).mean((2, 3)))


def _owned_by(followers: set[str]) -> set[str]:
    """The modules of a set of followers: a module path, or a module's tensor (``bn1.weight``)."""
    return {f.rsplit(".", 1)[0] if f.endswith(FROZEN_TENSORS) else f for f in followers}


FROZEN_TENSORS = (".weight", ".bias", ".running_mean", ".running_var")


def _randomise_frozen(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torchvision.ops.FrozenBatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=g)
                module.bias.normal_(0.0, 0.1, generator=g)
                module.running_mean.normal_(0.0, 0.1, generator=g)
                module.running_var.uniform_(0.8, 1.25, generator=g)
    return _ready(model)


def test_frozen_batch_norms_are_followers_and_widen_exactly() -> None:
    torch.manual_seed(0)
    pristine = _randomise_frozen(FrozenChain())
    graph = netsurgeon.trace(pristine, _images(2), strict=True)
    for layer, norm in (("conv1", "bn1"), ("conv2", "bn2")):
        followers = {f.name for f in graph.group_of(layer).followers}
        assert _owned_by(followers) == {norm}, followers
    _exact(lambda: copy.deepcopy(pristine), _images(2), _images(3, seed=3), {"conv1", "conv2"})


def _frozen_resnet18() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_frozen(
        torchvision.models.resnet18(
            weights=None, norm_layer=torchvision.ops.FrozenBatchNorm2d, num_classes=5
        )
    )


@pytest.mark.slow
def test_a_frozen_batch_norm_resnet18_widens_every_group_exactly() -> None:
    pristine = _frozen_resnet18()
    frozen = {
        n for n, m in pristine.named_modules() if isinstance(m, torchvision.ops.FrozenBatchNorm2d)
    }
    graph = netsurgeon.trace(pristine, _images(2, 16), strict=True)
    followed = _owned_by({f.name for g in graph.groups if g.widenable for f in g.followers})
    assert frozen <= followed, sorted(frozen - followed)
    groups = {g.name for g in graph.groups if not g.reaches_output}
    _exact(lambda: copy.deepcopy(pristine), _images(2, 16), _images(3, 16, seed=3), groups)


# -- per-channel tensors read in the forward ----------------------------------------------------
class ChannelScale(nn.Module):
    """``h * self.scale[None, :, None, None]`` between two convs; ``scale`` a buffer or not."""

    def __init__(self, parameter: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)
        scale = torch.linspace(0.5, 1.5, 8)
        if parameter:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x) * self.scale[None, :, None, None]
        return self.fc(torch.relu(self.conv2(torch.relu(h))).mean((2, 3)))


@pytest.mark.parametrize("parameter", [False, True], ids=["buffer", "parameter"])
def test_a_per_channel_tensor_read_in_forward_grows_or_blocks_with_a_reason_naming_it(
    parameter: bool,
) -> None:
    torch.manual_seed(0)
    pristine = _ready(ChannelScale(parameter))
    graph = netsurgeon.trace(pristine, _images(2), strict=False)
    read = {n.name for n in graph.gm.graph.nodes if n.op == "get_attr" and n.target == "scale"}
    names = (
        {"scale"} | read | {u.name for n in graph.gm.graph.nodes if n.name in read for u in n.users}
    )
    _exact_or_blocked_naming(
        lambda: copy.deepcopy(pristine), _images(2), _images(3, seed=3), names, {"conv1"}
    )


# -- size reads on a channel dim ----------------------------------------------------------------
class HeadSplit(nn.Module):
    """``B, T, D = x.shape; q.view(B, T, h, D // h)``: the head split reads the width of ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.q = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(tokens))
        B, T, D = x.shape
        q = self.q(x).view(B, T, 2, D // 2).softmax(-1).reshape(B, T, D)
        return self.out(q)


class ScaledAttention(nn.Module):
    """``att * x.shape[-1] ** -0.5``: the attention scale reads the width of ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.q = nn.Linear(8, 4)
        self.k = nn.Linear(8, 4)
        self.v = nn.Linear(8, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(tokens))
        att = self.q(x) @ self.k(x).transpose(-2, -1) * x.shape[-1] ** -0.5
        return self.out(att.softmax(-1) @ self.v(x))


def _size_read_chain(gm: fx.GraphModule) -> set[str]:
    """Names of the size-read nodes, the scalar arithmetic on them, and its first tensor users."""
    reads = [
        n
        for n in gm.graph.nodes
        if (n.op == "call_function" and n.target is getattr and n.args[1:] == ("shape",))
        or (n.op == "call_method" and n.target in ("size", "dim"))
    ]
    chain, todo = set(), list(reads)
    while todo:
        node = todo.pop()
        if node.name in chain:
            continue
        chain.add(node.name)
        if "tensor_meta" not in node.meta or not hasattr(node.meta["tensor_meta"], "shape"):
            todo.extend(node.users)
    return chain


@pytest.mark.parametrize("model", [HeadSplit, ScaledAttention], ids=["head-split", "scale"])
def test_a_size_read_on_a_channel_dim_blocks_with_a_reason_naming_the_node_or_is_exact(
    model,
) -> None:
    torch.manual_seed(0)
    pristine = _ready(model())
    trace_inputs, check_inputs = _tokens(2), _tokens(3, seed=3)
    graph = netsurgeon.trace(pristine, trace_inputs, strict=False)
    nodes = _size_read_chain(graph.gm)
    assert nodes, "the model reads no size: the test is not testing anything"
    read = graph.group_of("inp")
    if not read.widenable:
        assert _reason_names(read.reason, nodes), (read.reason, sorted(nodes))
    try:
        netsurgeon.trace(pristine, trace_inputs, strict=True)
    except UnsupportedModelError as error:
        assert _reason_names(str(error), nodes), (str(error), sorted(nodes))
    outcomes = check_every_plan(lambda: copy.deepcopy(pristine), trace_inputs, check_inputs)
    for outcome in outcomes:
        if outcome.refused and read.name in outcome.plan:
            assert _reason_names(str(outcome.error), nodes), (outcome.plan, str(outcome.error))
