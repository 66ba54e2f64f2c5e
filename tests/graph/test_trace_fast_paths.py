"""The tracer's and the index maps' fast paths compute what the plain definitions compute.

* ``SurgeonTracer.getattr`` finds a parameter or buffer read in a traced-through ``forward`` by
  identity in a table built once per trace, where ``torch.fx.Tracer.getattr`` searches
  ``named_parameters()`` then ``named_buffers()`` at every read. Invariant: both record the same
  graph (the same ``get_attr`` targets, shared and tied tensors under their first name).
* Free tensors are judged once per distinct replay (ops, arguments, shape, position): two scales
  that differ only in a literal size are judged apart.
* ``IndexMap.insertions`` visits only the splits that end inside each piece. Invariant: the same
  insertions as checking every split of every piece.
"""

from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import fx, nn
from torch.fx.proxy import Scope

import netsurgeon
from netsurgeon.graph import IndexMap, Insertion, Piece
from netsurgeon.graph.axes import WeightNames, legacy_weight_norm, weight_names, weight_norm_dim
from netsurgeon.graph.module_attrs import module_attr, parametrizations_of
from netsurgeon.graph.registry import OpHandler, Registry
from netsurgeon.graph.tracer import SurgeonTracer


class _PlainLookup(SurgeonTracer):
    """The same tracer with fx's own search for attribute reads."""

    getattr = fx.Tracer.getattr


class _Reads(nn.Module):
    """Parameters and buffers read in ``forward``: tied, nested, a plain tensor attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.alias = self.scale  # the same parameter under a second name
        self.register_buffer("shift", torch.zeros(1, 4, 1, 1))
        self.register_buffer("shift_again", self.shift)  # one buffer, two names
        self.inner = nn.Module()
        self.inner.gain = nn.Parameter(torch.ones(4, 1, 1))
        self.constant = torch.full((1, 4, 1, 1), 2.0)  # neither a parameter nor a buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) * self.scale + self.shift
        y = y * self.alias - self.shift_again
        return y * self.inner.gain * self.constant + self.conv.weight.sum()


def _record(tracer: fx.Tracer, model: nn.Module) -> list[tuple[str, str]]:
    graph = tracer.trace(model)
    return [(node.op, str(node.target)) for node in graph.nodes]


def test_attribute_reads_are_recorded_as_fx_records_them() -> None:
    model = _Reads()
    found, expected = _record(SurgeonTracer(), model), _record(_PlainLookup(), model)
    assert found == expected
    targets = {target for op, target in found if op == "get_attr"}
    assert {"scale", "shift", "inner.gain", "conv.weight"} <= targets
    assert not {"alias", "shift_again"} & targets  # a shared tensor keeps its first name


def test_a_tracer_traced_again_sees_tensors_added_in_between() -> None:
    model, tracer = _Reads(), SurgeonTracer()
    _record(tracer, model)
    model.scale = nn.Parameter(torch.ones(1, 4, 1, 1))  # a new object under the same name
    model.alias = model.scale
    assert _record(tracer, model) == _record(_PlainLookup(), model)


def _every_split(index_map: IndexMap, growth: dict[str, tuple[int, int, int]]) -> list[Insertion]:
    """The definition: every split of every piece's group, kept when it ends inside the piece."""
    found = []
    for offset, p in index_map.offsets():
        if p.group is None or p.group not in growth:
            continue
        width, k, splits = growth[p.group]
        size, per_split = width // splits, k // splits
        for j in range(splits):
            end = (j + 1) * size
            if p.start < end <= p.stop:
                found.append(
                    Insertion(
                        offset + (end - p.start) * p.multiplicity,
                        per_split * p.multiplicity,
                        p.group,
                        range(j * per_split, (j + 1) * per_split),
                        p.multiplicity,
                    )
                )
    return sorted(found, key=lambda i: i.position)


@st.composite
def _maps(draw: st.DrawFn) -> tuple[IndexMap, dict[str, tuple[int, int, int]]]:
    growth = {}
    for name in ("a", "b", "c"):
        splits = draw(st.integers(1, 6), label=f"{name} splits")
        width = splits * draw(st.integers(1, 4), label=f"{name} split size")
        growth[name] = (width, splits * draw(st.integers(1, 3)), splits)
    pieces = []
    for _ in range(draw(st.integers(0, 5), label="pieces")):
        group = draw(st.sampled_from(["a", "b", "c", "fixed", None]))
        width = growth[group][0] if group in growth else draw(st.integers(1, 5))
        start = draw(st.integers(0, width - 1))
        stop = draw(st.integers(start + 1, width))
        pieces.append(Piece(group, start, stop, draw(st.integers(1, 3))))
    grown = draw(st.sets(st.sampled_from(sorted(growth))), label="grown groups")
    return IndexMap(tuple(pieces)), {g: growth[g] for g in grown}


@given(case=_maps())
def test_insertions_are_those_of_every_split_that_ends_inside_a_piece(case) -> None:
    index_map, growth = case
    assert index_map.insertions(growth) == _every_split(index_map, growth)


def _is_regular(size: int, found: list[Insertion], pattern: tuple[int, int, int]) -> bool:
    b, s, c = pattern
    return size == b * s and [(i.position, i.count) for i in found] == [
        ((j + 1) * s, c) for j in range(b)
    ]


@given(case=_maps())
def test_insertions_know_their_total_and_whether_they_are_regular(case) -> None:
    index_map, growth = case
    found, size = index_map.insertions(growth), index_map.size
    assert found.added == sum(i.count for i in found)
    if found.pattern is not None:
        assert _is_regular(size, found, found.pattern)
    elif found:  # no (b, s, c) fits: b is the number of insertions, c the first count
        b = len(found)
        assert size % b or not _is_regular(size, found, (b, size // b, found[0].count))


class _TwoScales(nn.Module):
    """Two free scales of one shape on one group: the same replay, then one with a literal size."""

    def __init__(self, literal: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.a = nn.Parameter(torch.ones(4))
        self.b = nn.Parameter(torch.ones(4))
        self.literal = literal
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) * self.a.view(1, -1, 1, 1)
        y = y * (self.b.view(1, 4, 1, 1) if self.literal else self.b.view(1, -1, 1, 1))
        return self.head(y)


@pytest.mark.parametrize("literal", [False, True], ids=["same replay", "literal size"])
def test_free_tensors_with_equal_shapes_are_judged_by_their_own_replay(literal: bool) -> None:
    graph = netsurgeon.trace(_TwoScales(literal), strict=False)
    group = graph.group_of("conv")
    if literal:
        assert not group.widenable and "'b'" in group.reason
    else:
        assert group.widenable
        assert {f.name for f in group.followers} == {"a", "b"}


class _PlainArguments(SurgeonTracer):
    """The same tracer with fx's own ``create_arg`` for every argument."""

    create_arg = fx.Tracer.create_arg


class _Arguments(nn.Module):
    """Arguments of every kind the fast path takes or leaves to fx: nested containers holding
    proxies, parameters, buffers and tensor constants, slices, dtypes, devices, ``None``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.register_buffer("shift", torch.zeros(1, 4, 1, 1))
        self.constant = torch.full((1, 4, 1, 1), 2.0)  # neither a parameter nor a buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = torch.cat([y, self.constant.expand_as(y), self.shift.expand_as(y)], dim=1)
        z = torch.stack((z[:, :4], self.scale.expand_as(y)), 0).sum(0)
        z = z.to(dtype=torch.float32, device=torch.device("cpu")) + torch.ones(1)
        z = torch.nn.functional.pad(z, [1, 1, 0, 0], mode="constant", value=None)
        return torch.where(z > 0, z, self.constant)[..., 1:-1, None].flatten(2) * 1.5


def test_arguments_are_recorded_as_fx_records_them() -> None:
    def record(tracer: fx.Tracer) -> list[tuple[str, str, str, str]]:
        graph = tracer.trace(_Arguments())  # a fresh model: fx stores constants on the root
        return [(n.op, str(n.target), repr(n.args), repr(n.kwargs)) for n in graph.nodes]

    assert record(SurgeonTracer()) == record(_PlainArguments())


class _PlainStacks(SurgeonTracer):
    """The same tracer with fx's own module stack and scope objects (copied by reduction)."""

    def __init__(self) -> None:
        super().__init__()
        self.scope, self.module_stack = Scope("", None), collections.OrderedDict()


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(_Reads(), nn.ReLU())
        self.again = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 1))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x).transpose(2, 3)
        return self.again[0](y) + self.again[0][0].weight.sum()


def test_module_stacks_and_scopes_are_recorded_as_fx_records_them() -> None:
    def record(tracer: fx.Tracer) -> tuple[list, dict]:
        graph = tracer.trace(_Nested())
        stacks = [
            (type(n.meta.get("nn_module_stack")), n.meta.get("nn_module_stack"))
            for n in graph.nodes
        ]
        return stacks, tracer.node_name_to_scope

    found, expected = record(SurgeonTracer()), record(_PlainStacks())
    assert found == expected
    assert any(len(stack or ()) == 3 for _, stack in found[0])  # nested three deep


class _ClassBias(nn.Conv2d):
    bias = None  # a class attribute shadows the parameter table's entry


class _OwnGetattr(nn.Linear):
    def __getattr__(self, name: str) -> object:  # answers a name nothing else holds
        return "made up" if name == "missing" else super().__getattr__(name)


class _OwnGetattribute(nn.Linear):
    def __getattribute__(self, name: str) -> object:  # hides the bias once built, invents a name
        if name == "bias" and "hide_bias" in object.__getattribute__(self, "__dict__"):
            return None
        return "made up" if name == "missing" else super().__getattribute__(name)


def _hiding_its_bias() -> nn.Module:
    module = _OwnGetattribute(2, 3)
    module.hide_bias = True
    return module


def _attribute_owners() -> list[nn.Module]:
    parametrized = nn.utils.parametrizations.weight_norm(nn.Linear(3, 4))
    legacy = nn.utils.weight_norm(nn.Conv2d(3, 4, 1))
    odd = nn.Conv2d(3, 4, 1, bias=False)
    odd.parametrizations = "a plain attribute"  # in the instance's __dict__, not a ModuleDict
    plain_class = _ClassBias.__new__(_ClassBias)
    nn.Module.__init__(plain_class)
    return [nn.Conv2d(3, 4, 1), odd, nn.BatchNorm2d(4), parametrized, legacy, _OwnGetattr(2, 3),
            _hiding_its_bias(), plain_class, nn.Sequential(nn.ReLU())]  # fmt: skip


@pytest.mark.parametrize("name", ["bias", "weight", "parametrizations", "running_mean",
                                  "training", "forward", "0", "weight_g", "missing"])  # fmt: skip
def test_module_attr_reads_what_getattr_reads(name: str) -> None:
    for module in _attribute_owners():
        expected, found = getattr(module, name, "default"), module_attr(module, name, "default")
        if isinstance(expected, torch.Tensor) and not isinstance(expected, nn.Parameter):
            assert torch.equal(found, expected)  # a parametrization computes a new tensor
        elif isinstance(expected, torch.Tensor):
            assert found is expected, (type(module), name)
        else:
            assert found == expected, (type(module), name)  # a bound method is new each time
        parametrizations = getattr(module, "parametrizations", None)
        assert parametrizations_of(module) is (
            parametrizations if isinstance(parametrizations, nn.ModuleDict) else None
        )


class _Double(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


def _weight_normed() -> list[nn.Module]:
    """Layers whose weight lives plainly, under either weight norm, or under another
    parametrization (then with a legacy hook too)."""
    wn, legacy = nn.utils.parametrizations.weight_norm, nn.utils.weight_norm
    other = nn.utils.parametrize.register_parametrization(nn.Linear(3, 4), "weight", _Double())
    both = legacy(nn.Linear(3, 4))
    nn.utils.parametrize.register_parametrization(both, "weight_v", _Double())
    chained = wn(nn.Conv2d(3, 4, 1))
    nn.utils.parametrize.register_parametrization(chained, "weight", _Double())
    return [nn.Conv2d(3, 4, 1), wn(nn.Linear(3, 4)), wn(nn.Linear(3, 4), dim=1),
            wn(nn.Conv2d(3, 4, 1), dim=None), legacy(nn.Conv2d(3, 4, 1)), other, both,
            chained]  # fmt: skip


def _weight_names_by_definition(module: nn.Module) -> WeightNames:
    """weight_names as first written: the norm's dim, then where the weight lives."""
    dim = weight_norm_dim(module)
    if dim is not None and nn.utils.parametrize.is_parametrized(module, "weight"):
        return WeightNames(
            "parametrizations.weight.original1", "parametrizations.weight.original0", dim
        )
    hook = legacy_weight_norm(module)
    if hook is not None:
        return WeightNames("weight_v", "weight_g", hook.dim)
    return WeightNames("weight")


def test_weight_names_are_those_of_their_definition() -> None:
    found = [weight_names(m) for m in _weight_normed()]
    assert found == [_weight_names_by_definition(m) for m in _weight_normed()]
    assert len(set(found)) >= 5  # plain, legacy, three parametrized dims


class _MyConv(nn.Conv2d):
    pass


def test_registered_types_within_one_trace_follow_registrations_and_end_with_it() -> None:
    registry, conv = Registry(), _MyConv(3, 4, 1)
    base, own = OpHandler(), OpHandler()
    registry.add_module(nn.Conv2d, base)
    with registry.one_trace():
        assert registry.registered_type(conv) is nn.Conv2d
        with registry.one_trace():  # nested: the outer trace's answers stay
            registry.add_module(_MyConv, own)  # a registration while tracing is seen
            assert registry.for_module(conv) is own
        assert registry.registered_type(conv) is _MyConv
    del registry._modules[_MyConv]  # behind the registry's back, after the trace
    assert registry.for_module(conv) is base
