"""Widening coupled channel groups preserves the function, for random DAG models and plans.

A channel group is a set of producers whose output channels meet elementwise (a residual add, a
layer-scale product, a squeeze-excitation gate) or are read as one tensor. Widening it by ``k``
gives every producer ``k`` new output rows and every consumer ``k`` new input columns *at the
positions the group's channels occupy in its input*: after ``torch.cat``, a growing operand
inserts at the end of its own segment; after ``chunk(n)``, each chunk grows by ``k / n``; in a
convolution with ``g`` groups, each group's block by ``k / g``. The new columns are zero
(``"paper"``) or split the columns of the copied units (``"net2net"``), and followers (BatchNorm,
depthwise convs, layer scales, gates) grow per channel with neutral or copied entries, so every
old channel keeps its value and every consumer its pre-activation:

    max |y_after - y_before| <= 1e-10 and <= 1e-9 * (1 + max |y_before|)   (float64)
    max |y_after - y_before| <= 1e-5 * (1 + max |y_before|)                (float32)

in eval mode (random running statistics) and train mode (batch statistics are per channel).

Growth only inserts: every old tensor sits unchanged inside the grown one, at positions found by
matching (:func:`_old_positions`). With the paper init the new columns are exactly zero, and the
loss gradient vanishes exactly on everything that feeds only zero columns (new rows, new follower
entries) while it is nonzero on the new columns themselves. Parameters stay the same objects and
optimizer state is zero-padded at the same positions, so one step on the old coordinates is the
step of a never-widened twin.
"""

from __future__ import annotations

import copy

import pytest
import torch
from coupled_models import ACTIVATIONS, DagSpec, block_width
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import netsurgeon

TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
RELATIVE_FLOAT64 = 1e-9
# The DAG properties trace and widen a model of 10-40 modules per example (0.2-0.5 s): an
# eighth of the profile's examples per variant keeps the file under a minute in CI, and the
# "thorough" profile still scales them.
EXAMPLES = max(8, settings().max_examples // 8)

widths = st.integers(1, 12)
activations = st.sampled_from(sorted(ACTIVATIONS))
NEEDS_ONE_GROUP = ("residual", "se", "layerscale")  # their add/mul couples the input's channels


@st.composite
def blocks(draw: st.DrawFn, c: int, mixed: bool) -> tuple:
    """One block on a ``c``-wide input (``mixed``: a concatenation of several groups)."""
    kind = draw(
        st.sampled_from(
            sorted(("branches", "dense", "chunked", "dwsep", "grouped", *NEEDS_ONE_GROUP))
        )
    )
    act = draw(activations)
    if kind == "residual":
        return (kind, act, draw(widths), draw(st.one_of(st.just(0), widths)))
    if kind == "branches":
        return (kind, act, tuple(draw(st.lists(widths, min_size=2, max_size=3))))
    if kind == "dense":
        return (kind, act, draw(widths))
    if kind == "chunked":
        n = draw(st.sampled_from((2, 3)))
        whole = not mixed and c % n == 0 and draw(st.booleans())  # chunk the input itself
        part = 0 if whole else draw(st.integers(1, 12 // n))
        return (kind, act, n, part, tuple(draw(widths) for _ in range(n)))
    if kind == "dwsep":
        return (kind, act, draw(widths))
    if kind == "se":
        return (kind, act, draw(widths))
    if kind == "grouped":
        groups = draw(st.sampled_from((2, 4)))
        parts = st.integers(1, 12 // groups)
        return (kind, act, groups, draw(parts), draw(parts))
    return (kind, act)  # layerscale


@st.composite
def dag_specs(draw: st.DrawFn) -> DagSpec:
    """Stem, 1-4 random blocks (a 1x1 transition where a block needs one group), a head."""
    c = stem = draw(widths)
    mixed = False
    layers: list[tuple] = []
    for _ in range(draw(st.integers(1, 4))):
        block = draw(blocks(c, mixed))
        if mixed and (block[0] in NEEDS_ONE_GROUP and not (block[0] == "residual" and block[3])):
            layers.append(("transition", draw(activations), c := draw(widths)))
            mixed = False
        layers.append(block)
        c = block_width(block, c)
        if block[0] in ("branches", "dense", "chunked"):
            mixed = True
        elif block[0] not in ("se", "layerscale"):
            mixed = False
    if draw(st.booleans()):
        head = ("mlp", draw(activations), draw(widths), draw(st.integers(1, 4)))
    else:
        head = ("sequence", draw(activations), draw(widths), draw(widths), draw(st.integers(1, 4)))
    return DagSpec(draw(st.integers(1, 3)), stem, draw(activations), tuple(layers), head)


# -- helpers ------------------------------------------------------------------------------------


def _name(item) -> str:
    """The layer (or parameter) name of a group's producer, consumer or follower record."""
    return getattr(item, "layer", getattr(item, "name", item))


def _names(items) -> set[str]:
    return {_name(item) for item in items}


def _widenable(graph) -> list:
    return [g for g in graph.groups if g.widenable]


def _draw_plan(data: st.DataObject, graph, *, by_producer: bool = False) -> dict[str, int]:
    """``{g.name: g.granularity * m}``, ``m`` in 1..3, over a random non-empty set of groups.

    ``by_producer``: key each group by its name or by any of its producers, at random.
    """
    groups = _widenable(graph)
    assume(groups)
    chosen = data.draw(
        st.lists(st.sampled_from(groups), min_size=1, unique_by=lambda g: g.name), label="groups"
    )
    plan = {}
    for g in chosen:
        key = data.draw(st.sampled_from(sorted({g.name, *g.producers}))) if by_producer else g.name
        plan[key] = g.granularity * data.draw(st.integers(1, 3), label=f"k/{g.granularity} {key}")
    return plan


def _group_widths(model: nn.Module) -> dict[str, int]:
    return {g.name: g.width for g in netsurgeon.trace(model, strict=False).groups}


def _assert_close_outputs(after: torch.Tensor, before: torch.Tensor, what: str) -> None:
    assert after.shape == before.shape, what
    error, scale = (after - before).abs().max().item(), 1.0 + before.abs().max().item()
    if before.dtype == torch.float64:
        assert error <= TOLERANCE[torch.float64], f"{what}: max error {error:.3g} > 1e-10"
        assert error <= RELATIVE_FLOAT64 * scale, f"{what}: max error {error:.3g} relative"
    else:
        bound = TOLERANCE[torch.float32] * scale
        assert error <= bound, f"{what}: max error {error:.3g} > {bound:.3g}"


def _widen_and_compare(
    model: nn.Module,
    x: torch.Tensor,
    plan: dict[str, int],
    *,
    init: str,
    seed: int,
    example_inputs: torch.Tensor | None = None,
    graph=None,
) -> nn.Module:
    """Widen ``model``; assert group widths grew by the plan and eval/train outputs are kept."""
    before = copy.deepcopy(model)
    widths_before = _group_widths(model)
    netsurgeon.widen(
        model,
        plan,
        generator=torch.Generator().manual_seed(seed),
        init=init,
        example_inputs=example_inputs,
        graph=graph,
    )
    grown = {
        netsurgeon.trace(before, strict=False).group_of(key).name: k for key, k in plan.items()
    }
    assert _group_widths(model) == {n: w + grown.get(n, 0) for n, w in widths_before.items()}
    _compare_outputs(model, before, x, seed)
    return before


def _compare_outputs(model: nn.Module, before: nn.Module, x: torch.Tensor, seed: int) -> None:
    """Eval- and train-mode outputs (and the float32 loss) of ``model`` and ``before`` agree."""
    for train in (False, True):  # eval first: train-mode forwards update the running stats
        model.train(train)
        before.train(train)
        with torch.no_grad():
            y_before, y_after = before(x), model(x)
        _assert_close_outputs(y_after, y_before, f"train={train}")
        if x.dtype == torch.float32:  # the training loss on a fixed batch does not jump
            g = torch.Generator().manual_seed(seed)
            target = torch.randn(y_before.shape, generator=g, dtype=x.dtype)
            loss_before = (y_before - target).pow(2).mean().item()
            loss_after = (y_after - target).pow(2).mean().item()
            assert abs(loss_after - loss_before) <= 1e-5 * abs(loss_before), f"train={train}"


def _subsequence(old: list, new: list, same) -> list[int]:
    """Indices into ``new`` of the items of ``old``, in order (greedy; items are unique)."""
    positions, j = [], 0
    for i, item in enumerate(new):
        if j < len(old) and same(old[j], item):
            positions.append(i)
            j += 1
    assert j == len(old), f"only {j} of {len(old)} old entries found in order in the grown tensor"
    return positions


def _old_positions(old: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Where ``old`` sits inside ``new``, grown by insertions along dims 0 and 1 (paper init).

    Returns one index tensor per grown dimension (dim 0, and dim 1 for weights). Rows are
    matched by their sorted nonzero entries (inserted paper columns are exact zeros), then
    columns of the matched rows by equality. Raises if ``old`` is not found unchanged, in order.
    """
    assert old.dim() == new.dim() and old.shape[2:] == new.shape[2:], (old.shape, new.shape)
    if old.dim() == 1:
        return (torch.tensor(_subsequence(old.tolist(), new.tolist(), float.__eq__)),)

    def key(row: torch.Tensor) -> torch.Tensor:
        return row[row != 0].sort().values

    rows = _subsequence(
        [key(r) for r in old.flatten(1)], [key(r) for r in new.flatten(1)], torch.equal
    )
    kept = new[rows]
    cols = _subsequence(list(old.unbind(1)), list(kept.unbind(1)), lambda a, b: torch.equal(a, b))
    return torch.tensor(rows), torch.tensor(cols)


def _at(tensor: torch.Tensor, positions: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if len(positions) == 1:
        return tensor[positions[0]]
    return tensor[positions[0][:, None], positions[1]]


def _outside(tensor: torch.Tensor, positions: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The entries of ``tensor`` not at ``positions``, flat."""
    mask = torch.ones_like(tensor, dtype=torch.bool)
    if len(positions) == 1:
        mask[positions[0]] = False
    else:
        mask[positions[0][:, None], positions[1]] = False
    return tensor[mask]


def _set_at(tensor: torch.Tensor, positions: tuple[torch.Tensor, ...], value: torch.Tensor) -> None:
    if len(positions) == 1:
        tensor[positions[0]] = value
    else:
        tensor[positions[0][:, None], positions[1]] = value


def _complement(positions: torch.Tensor, size: int) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[positions] = False
    return mask.nonzero().flatten()


# -- outputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("init", ["paper", "net2net"])
@settings(max_examples=EXAMPLES)
@given(spec=dag_specs(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_widening_random_groups_of_random_dag_models_preserves_output(
    init: str, dtype: torch.dtype, spec: DagSpec, seed: int, data: st.DataObject
) -> None:
    model = spec.build(seed, dtype)
    batch = data.draw(st.integers(2, 3), label="batch")
    x = torch.randn(spec.input_shape(batch), generator=torch.Generator().manual_seed(seed))
    x = x.to(dtype)
    example_inputs = x if data.draw(st.booleans(), label="example_inputs given") else None
    graph = netsurgeon.trace(model, example_inputs)
    for group in graph.groups:  # every producer names its group
        assert {graph.group_of(p).name for p in group.producers} == {group.name}
    plan = _draw_plan(data, graph, by_producer=True)
    reuse = data.draw(st.booleans(), label="graph passed to widen")
    _widen_and_compare(
        model,
        x,
        plan,
        init=init,
        seed=seed,
        example_inputs=example_inputs,
        graph=graph if reuse else None,
    )


# -- gradients and parameters -------------------------------------------------------------------


@settings(max_examples=EXAMPLES)
@given(spec=dag_specs(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_new_consumer_columns_are_zero_and_alone_get_a_gradient_among_the_new_entries(
    spec: DagSpec, seed: int, data: st.DataObject
) -> None:
    model = spec.build(seed, torch.float64, smooth=True)
    graph = netsurgeon.trace(model)
    plan = _draw_plan(data, graph)
    old = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = {name: id(p) for name, p in model.named_parameters()}
    netsurgeon.widen(model, plan, generator=torch.Generator().manual_seed(seed))
    assert {name: id(p) for name, p in model.named_parameters()} == ids

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(spec.input_shape(4), generator=g, dtype=torch.float64)
    y = model(x)
    (y * torch.randn(y.shape, generator=g, dtype=torch.float64)).sum().backward()

    positions = {}
    for name, p in model.named_parameters():
        positions[name] = _old_positions(old[name], p.detach())
        # Entries that feed only zero columns (new rows, new follower entries) get exactly zero.
        new_rows = _complement(positions[name][0], p.shape[0])
        assert torch.equal(p.grad[new_rows], torch.zeros_like(p.grad[new_rows])), name

    for group in graph.groups:
        if group.name not in plan:
            continue
        column_grads = []
        for consumer in map(_name, group.consumers):
            weight = model.get_submodule(consumer).weight
            _, cols = positions[f"{consumer}.weight"]
            new = _complement(cols, weight.shape[1])
            assert new.numel() > 0, f"consumer {consumer} of {group.name} did not grow"
            assert torch.equal(weight[:, new], torch.zeros_like(weight[:, new])), consumer
            column_grads.append(weight.grad[:, new].abs().sum().item())
        assert max(column_grads, default=0.0) > 0, f"no new column of {group.name} gets a gradient"


# -- optimizer ----------------------------------------------------------------------------------

OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
}


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, target = batch
    return (model(x) - target).pow(2).mean()


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, batch) -> None:
    optimizer.zero_grad()
    _loss(model, batch).backward()
    optimizer.step()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@settings(max_examples=EXAMPLES)
@given(spec=dag_specs(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_old_coordinates_step_like_a_never_widened_twin_after_widening_with_the_optimizer(
    name: str, spec: DagSpec, seed: int, data: st.DataObject
) -> None:
    model = spec.build(seed, torch.float64)
    graph = netsurgeon.trace(model)
    plan = _draw_plan(data, graph)
    twin = copy.deepcopy(model)
    optimizer = OPTIMIZERS[name](list(model.parameters()))
    twin_optimizer = OPTIMIZERS[name](list(twin.parameters()))
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(3):
        x = torch.randn(spec.input_shape(2), generator=g, dtype=torch.float64)
        batches.append((x, torch.randn(model(x).shape, generator=g, dtype=torch.float64)))
    for batch in batches[:2]:
        _step(model, optimizer, batch)
        _step(twin, twin_optimizer, batch)

    model.eval()
    loss_before = _loss(model, batches[2]).item()
    params = dict(model.named_parameters())
    old = {n: p.detach().clone() for n, p in params.items()}
    old_state = copy.deepcopy({n: optimizer.state[p] for n, p in params.items()})
    netsurgeon.widen(model, plan, optimizer=optimizer, generator=torch.Generator().manual_seed(1))
    loss_after = _loss(model, batches[2]).item()
    assert abs(loss_after - loss_before) <= 1e-10 * (1 + abs(loss_before))
    model.train()

    positions = {n: _old_positions(old[n], p.detach()) for n, p in params.items()}
    for n, p in params.items():
        for key, value in optimizer.state[p].items():
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(old_state[n][key]))
                continue
            assert value.shape == p.shape, (n, key)
            assert torch.equal(_at(value, positions[n]), old_state[n][key]), (n, key)
            padding = _outside(value, positions[n])
            assert torch.equal(padding, torch.zeros_like(padding)), f"{n}.{key} padding"

    optimizer.zero_grad()
    twin_optimizer.zero_grad()
    _loss(model, batches[2]).backward()
    _loss(twin, batches[2]).backward()
    twins = dict(twin.named_parameters())
    for n, p in params.items():
        # Equal up to the summation order of the wider products; made identical for the step, so
        # that rounding noise on zero-gradient coordinates (a conv bias before BatchNorm) cannot
        # be amplified by Adam's normalisation.
        torch.testing.assert_close(_at(p.grad, positions[n]), twins[n].grad, rtol=1e-9, atol=1e-12)
        _set_at(p.grad, positions[n], twins[n].grad)
    optimizer.step()
    twin_optimizer.step()
    for n, p in params.items():
        torch.testing.assert_close(
            _at(p.detach(), positions[n]), twins[n].detach(), rtol=1e-12, atol=1e-15
        )
        for key, value in twin_optimizer.state[twins[n]].items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                torch.testing.assert_close(
                    _at(optimizer.state[p][key], positions[n]), value, rtol=1e-12, atol=1e-15
                )


# -- one construct at a time --------------------------------------------------------------------


def _spec(*blocks: tuple, head: tuple = ("mlp", "tanh", 5, 3), stem: int = 6) -> DagSpec:
    return DagSpec(2, stem, "relu", blocks, head)


def _widen_every_group(spec: DagSpec, init: str, multiple: int = 2):
    """Widen every widenable group by ``multiple`` granules; return the model and old graph."""
    model = spec.build(0, torch.float64)
    graph = netsurgeon.trace(model)
    plan = {g.name: g.granularity * multiple for g in _widenable(graph)}
    assert plan, graph
    x = torch.randn(spec.input_shape(3), dtype=torch.float64)
    _widen_and_compare(model, x, plan, init=init, seed=0)
    return model, graph, plan


INITS = pytest.mark.parametrize("init", ["paper", "net2net"])


@INITS
def test_widening_a_residual_stream_preserves_output(init: str) -> None:
    spec = _spec(("residual", "relu", 4, 0), ("residual", "relu", 3, 0))
    model, graph, plan = _widen_every_group(spec, init)
    stream = graph.group_of("stem")
    assert stream.name == "stem" and graph.group_of("blocks.1.conv2").name == "stem"
    assert set(stream.producers) == {"stem", "blocks.0.conv2", "blocks.1.conv2"}
    assert {"stem_bn", "blocks.0.bn2", "blocks.1.bn2"} <= _names(stream.followers)
    assert {"blocks.0.conv1", "blocks.1.conv1", "head.fc1"} <= _names(stream.consumers)
    width = 6 + plan["stem"]
    assert model.stem.out_channels == model.blocks[1].conv2.out_channels == width
    assert model.blocks[1].bn2.num_features == model.head.fc1.in_features == width


def test_a_plan_may_name_any_producer_of_a_group() -> None:
    spec = _spec(("residual", "relu", 4, 0), ("residual", "relu", 3, 0))
    model = spec.build(0, torch.float64)
    x = torch.randn(spec.input_shape(2), dtype=torch.float64)
    _widen_and_compare(model, x, {"blocks.1.conv2": 3}, init="paper", seed=0)
    assert model.stem.out_channels == model.blocks[0].conv2.out_channels == 9


@INITS
def test_widening_a_projection_shortcut_preserves_output(init: str) -> None:
    model, graph, plan = _widen_every_group(_spec(("residual", "relu", 4, 7)), init)
    joined = graph.group_of("blocks.0.conv2")
    assert set(joined.producers) == {"blocks.0.conv2", "blocks.0.shortcut.0"}
    assert graph.group_of("blocks.0.shortcut.0").name == joined.name
    assert {"blocks.0.conv1", "blocks.0.shortcut.0"} <= _names(graph.group_of("stem").consumers)
    assert model.blocks[0].shortcut[0].out_channels == 7 + plan[joined.name]
    assert model.blocks[0].shortcut[0].in_channels == 6 + plan["stem"]


@INITS
def test_widening_concatenated_branches_preserves_output(init: str) -> None:
    model, graph, plan = _widen_every_group(_spec(("branches", "relu", (3, 4, 2))), init)
    names = [graph.group_of(f"blocks.0.branches.{i}.0").name for i in range(3)]
    assert len(set(names)) == 3  # a concatenation does not couple its operands
    for name in names:
        assert "head.fc1" in _names(graph.group_of(name).consumers)
    assert model.head.fc1.in_features == 9 + sum(plan[n] for n in names)


def test_a_growing_concatenation_operand_inserts_at_the_end_of_its_own_segment() -> None:
    """``cat([a (3), b (4), c (2)])``: growing a by 1 and c by 2 shifts b and appends after c."""
    model = _spec(("branches", "relu", (3, 4, 2))).build(0, torch.float64)
    old = model.head.fc1.weight.detach().clone()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    plan = {"blocks.0.branches.0.0": 1, "blocks.0.branches.2.0": 2}
    _widen_and_compare(model, x, plan, init="paper", seed=0)
    zero = old.new_zeros(5, 1)
    expected = torch.cat([old[:, :3], zero, old[:, 3:7], old[:, 7:9], zero, zero], 1)
    assert torch.equal(model.head.fc1.weight.detach(), expected)


@INITS
def test_widening_densenet_running_features_preserves_output(init: str) -> None:
    model, graph, plan = _widen_every_group(_spec(("dense", "relu", 3), ("dense", "relu", 2)), init)
    stem = graph.group_of("stem")
    assert {"blocks.0.conv", "blocks.1.conv", "head.fc1"} <= _names(stem.consumers)
    assert {"stem_bn", "blocks.0.bn", "blocks.1.bn"} <= _names(stem.followers)
    grown = 6 + 3 + plan["stem"] + plan[graph.group_of("blocks.0.conv").name]
    assert model.blocks[1].bn.num_features == model.blocks[1].conv.in_channels == grown


def test_growing_the_first_dense_segment_shifts_the_later_ones_in_every_reader() -> None:
    model = _spec(("dense", "relu", 3), ("dense", "relu", 2)).build(0, torch.float64)
    old_mean = model.blocks[1].bn.running_mean.clone()
    old_fc = model.head.fc1.weight.detach().clone()
    before = copy.deepcopy(model)
    netsurgeon.widen(model, {"stem": 2})  # checked before any forward updates the statistics
    zeros = old_mean.new_zeros(2)
    expected_mean = torch.cat([old_mean[:6], zeros, old_mean[6:]])  # [stem | +2 | dense 0]
    assert torch.equal(model.blocks[1].bn.running_mean, expected_mean)
    expected_fc = torch.cat([old_fc[:, :6], old_fc.new_zeros(5, 2), old_fc[:, 6:]], 1)
    assert torch.equal(model.head.fc1.weight.detach(), expected_fc)
    _compare_outputs(model, before, torch.randn(2, 2, 6, 6, dtype=torch.float64), seed=0)


@INITS
def test_widening_chunked_branches_preserves_output(init: str) -> None:
    model, graph, plan = _widen_every_group(_spec(("chunked", "relu", 2, 3, (4, 5))), init)
    pre = graph.group_of("blocks.0.pre")
    assert pre.granularity == 2
    assert [conv.in_channels for conv in model.blocks[0].convs] == [3 + plan[pre.name] // 2] * 2


def test_each_chunk_grows_at_its_own_end() -> None:
    model = _spec(("chunked", "relu", 3, 2, (4, 5, 1))).build(0, torch.float64)
    old = model.blocks[0].pre.weight.detach().clone()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    _widen_and_compare(model, x, {"blocks.0.pre": 3}, init="paper", seed=0)
    rows, _ = _old_positions(old, model.blocks[0].pre.weight.detach())
    assert rows.tolist() == [0, 1, 3, 4, 6, 7]  # chunks [0, 1 | 2, 3 | 4, 5] -> one new each


@INITS
def test_widening_a_chunked_residual_stream_makes_its_granularity_the_chunk_count(
    init: str,
) -> None:
    spec = _spec(("residual", "relu", 3, 0), ("chunked", "relu", 3, 0, (2, 2, 2)))
    model, graph, plan = _widen_every_group(spec, init)
    assert graph.group_of("stem").granularity == 3
    assert graph.group_of("blocks.0.conv2").name == "stem"
    assert [conv.in_channels for conv in model.blocks[1].convs] == [2 + plan["stem"] // 3] * 3


@INITS
def test_widening_through_a_depthwise_separable_block_preserves_output(init: str) -> None:
    model, graph, plan = _widen_every_group(_spec(("dwsep", "relu", 5)), init)
    assert {"blocks.0.dw", "blocks.0.bn"} <= _names(graph.group_of("stem").followers)
    dw, width = model.blocks[0].dw, 6 + plan["stem"]
    assert (dw.in_channels, dw.out_channels, dw.groups) == (width, width, width)
    assert dw.weight.shape == (width, 1, 3, 3)
    assert model.blocks[0].pw.in_channels == width


@INITS
def test_widening_a_squeeze_excitation_gate_preserves_output(init: str) -> None:
    model, graph, plan = _widen_every_group(_spec(("se", "relu", 3)), init)
    se, width = model.blocks[0], 6 + plan["stem"]
    assert se.conv1.in_channels == se.conv2.out_channels == width
    assert se.conv2.in_channels == 3 + plan[graph.group_of("blocks.0.conv1").name]
    assert graph.group_of("blocks.0.conv1").widenable


@INITS
def test_widening_around_a_grouped_convolution_preserves_output(init: str) -> None:
    model, graph, plan = _widen_every_group(_spec(("grouped", "relu", 4, 2, 3)), init)
    pre, conv = graph.group_of("blocks.0.pre"), graph.group_of("blocks.0.conv")
    assert pre.granularity % 4 == 0 and conv.granularity % 4 == 0
    grouped = model.blocks[0].conv
    assert grouped.groups == 4
    assert grouped.in_channels == 8 + plan[pre.name]
    assert grouped.out_channels == 12 + plan[conv.name]
    assert grouped.weight.shape == (grouped.out_channels, grouped.in_channels // 4, 3, 3)


@INITS
def test_widening_a_layer_scaled_residual_preserves_output(init: str) -> None:
    spec = _spec(("layerscale", "gelu"))
    model = spec.build(0, torch.float64)
    gamma = model.blocks[0].gamma
    graph = netsurgeon.trace(model)
    assert graph.group_of("blocks.0.conv").name == "stem"
    x = torch.randn(spec.input_shape(3), dtype=torch.float64)
    _widen_and_compare(model, x, {"stem": 3}, init=init, seed=0)
    assert model.blocks[0].gamma is gamma and gamma.shape == (9, 1, 1)


@INITS
def test_widening_a_sequence_tail_preserves_output(init: str) -> None:
    spec = _spec(("transition", "relu", 4), head=("sequence", "gelu", 5, 4, 3))
    model, graph, plan = _widen_every_group(spec, init)
    assert "head.fc1" in _names(graph.group_of("blocks.0.0").consumers)
    assert graph.group_of("head.fc1").widenable and graph.group_of("head.fc2").widenable
    out = graph.group_of("head.out")
    assert not out.widenable and out.reason
    assert model.head.fc1.in_features == 4 + plan[graph.group_of("blocks.0.0").name]
    assert model.head.out.out_features == 3


@INITS
def test_widening_an_mlp_head_on_pooled_features_preserves_output(init: str) -> None:
    spec = _spec(("transition", "relu", 4), head=("mlp", "silu", 5, 3))
    model, graph, plan = _widen_every_group(spec, init)
    assert [g.name for g in _widenable(graph)] == ["stem", "blocks.0.0", "head.fc1"]
    assert model.head.fc2.in_features == 5 + plan["head.fc1"]


@INITS
def test_widening_every_group_of_a_model_with_every_block_preserves_output(init: str) -> None:
    spec = _spec(
        ("residual", "relu", 4, 0),
        ("se", "silu", 2),
        ("layerscale", "gelu"),
        ("chunked", "relu", 2, 0, (3, 2)),
        ("dense", "relu", 3),
        ("dwsep", "relu", 8),
        ("grouped", "relu", 2, 3, 2),
        ("residual", "tanh", 3, 5),
        ("branches", "relu", (2, 3)),
        head=("sequence", "gelu", 4, 3, 2),
    )
    _, graph, _ = _widen_every_group(spec, init, multiple=1)
    unwidenable = {g.name for g in graph.groups if not g.widenable}
    assert unwidenable == {"head.out"}  # only the output


class FollowedConv(nn.Module):
    """``conv1 -> follower -> act -> conv2 -> mean -> fc`` for a per-channel follower module."""

    def __init__(self, follower: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.follower = follower
        self.conv2 = nn.Conv2d(8, 5, 3, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.tanh(self.follower(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


FOLLOWERS = {
    "BatchNorm2d": lambda: nn.BatchNorm2d(8),
    "InstanceNorm2d": lambda: nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
    "GroupNorm one channel per group": lambda: nn.GroupNorm(8, 8),
    "PReLU per channel": lambda: nn.PReLU(8),
}


@INITS
@pytest.mark.parametrize("follower", list(FOLLOWERS))
def test_per_channel_followers_grow_with_their_group(follower: str, init: str) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = FollowedConv(FOLLOWERS[follower]()).double()
        with torch.no_grad():
            for name, tensor in model.follower.state_dict().items():
                if "var" in name:  # random statistics, affine entries and slopes
                    tensor.uniform_(0.5, 1.5)
                elif tensor.is_floating_point():
                    tensor.normal_(0.0, 0.5)
    assert "follower" in _names(netsurgeon.trace(model).group_of("conv1").followers)
    x = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    _widen_and_compare(model, x, {"conv1": 3}, init=init, seed=0)
    for tensor in model.follower.state_dict().values():
        assert tensor.dim() == 0 or tensor.shape == (11,)


class ChannelsLastMlp(nn.Module):
    """ConvNeXt's pattern: ``permute`` to ``(B, H, W, C)``, a Linear MLP, ``permute`` back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc1 = nn.Linear(6, 10)
        self.fc2 = nn.Linear(10, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        y = self.fc2(torch.nn.functional.gelu(self.fc1(x.permute(0, 2, 3, 1))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


@INITS
def test_widening_a_channels_last_mlp_between_permutes_preserves_output(init: str) -> None:
    model = ChannelsLastMlp().double()
    graph = netsurgeon.trace(model)
    assert set(graph.group_of("conv").producers) == {"conv", "fc2"}
    assert "fc1" in _names(graph.group_of("conv").consumers)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    _widen_and_compare(model, x, {"conv": 2, "fc1": 4}, init=init, seed=0)
    assert (model.fc1.in_features, model.fc1.out_features, model.fc2.out_features) == (8, 14, 8)
