"""``PlannerSettings``: one checked record of the planner's settings, in configs and plans.

Properties: every bad value fails where the record is made, with a ``ConfigError`` naming the
owner, field, value and what is allowed; a ``GrowthConfig`` built from flat keywords holds the
same record; a ``GrowthPlan`` records it, and every plan record committed under
``benchmarks/results`` still loads and round-trips; the two planners share the decision rule
without importing each other.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path

import pytest

import netsurgeon
from netsurgeon.errors import ConfigError
from netsurgeon.models import resnet
from netsurgeon.nagn import (
    GrowthConfig,
    GrowthPlan,
    GrowthPlanner,
    PlannerSettings,
    plan_group_growth,
    plan_growth,
)
from netsurgeon.nagn.settings import PLANNER_FIELDS

ROOT = Path(__file__).resolve().parents[2]
PROFILE = {"a": 1.0, "b": 3.0, "c": 1.0, "out": 1.0}
WIDTHS = {"a": 8, "b": 8, "c": 8, "out": 10}

BAD = [
    ("tau", -0.5, "a finite number >= 0"),
    ("tau", math.inf, "a finite number >= 0"),
    ("tau", "0.05", "a finite number >= 0"),
    ("max_step", 0, "an int >= 1 or None"),
    ("max_step", 2.0, "an int >= 1 or None"),
    ("monotone", 1, "True or False"),
    ("fallback", "half", "one of ['fraction', 'unit', 'none']"),
    ("fallback_fraction", 1.5, "a number in (0, 1]"),
    ("fallback_fraction", True, "a number in (0, 1]"),
    ("neighbourhood", "harmonic", "one of ['arithmetic', 'geometric']"),
    ("end_rule", "mirror", "one of ['extrapolate', 'adjacent', 'none']"),
    ("score", "max", "one of ['normalised', 'damped', 'excess']"),
    ("drag_limit", 3, "one of ['step', 'double', 'none']"),
    ("combine", "median", "one of ['rms', 'max', 'mean']"),
    ("neighbourhood_order", "bfs", "one of ['graph', 'depth']"),
]


@pytest.mark.parametrize(("name", "value", "allowed"), BAD)
@pytest.mark.parametrize("owner", [PlannerSettings, GrowthPlanner, GrowthConfig])
def test_every_bad_setting_raises_config_error_naming_owner_field_value_and_choices(
    owner: type, name: str, value: object, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        owner(**{name: value})
    assert str(info.value).startswith(f"{owner.__name__}.{name}={value!r}: expected {allowed}")


def test_the_defaults_are_the_papers_and_every_field_is_a_setting() -> None:
    settings = PlannerSettings()
    assert PLANNER_FIELDS == (
        "tau",
        "max_step",
        "monotone",
        "fallback",
        "fallback_fraction",
        "neighbourhood",
        "end_rule",
        "score",
        "drag_limit",
        "combine",
        "neighbourhood_order",
    )
    assert (settings.tau, settings.end_rule, settings.score) == (0.05, "extrapolate", "normalised")
    assert PlannerSettings.from_dict(settings.to_dict()) == settings


def test_a_config_from_flat_keywords_holds_the_same_record() -> None:
    config = GrowthConfig(tau=0.1, score="damped", fallback_fraction=0.25, w_acc=2)
    assert config.planner == PlannerSettings(tau=0.1, score="damped", fallback_fraction=0.25)
    changed = dataclasses.replace(config, end_rule="adjacent")
    assert changed.planner == dataclasses.replace(config.planner, end_rule="adjacent")
    flat = dataclasses.asdict(config)  # records and checkpoints stay flat
    assert flat["tau"] == 0.1 and "planner" not in flat
    assert GrowthConfig(**flat) == config and GrowthConfig(**flat).planner == config.planner


def test_unknown_setting_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown settings \['tua'\].*'tau'"):
        plan_growth(PROFILE, WIDTHS, tua=0.1)


def test_settings_and_keywords_plan_alike_and_the_plan_records_them() -> None:
    settings = PlannerSettings(tau=0.5, max_step=2, score="excess")
    by_record = plan_growth(PROFILE, WIDTHS, settings=settings)
    by_keywords = plan_growth(PROFILE, WIDTHS, tau=0.5, max_step=2, score="excess")
    assert by_record == by_keywords
    assert by_record.settings == dataclasses.replace(settings, neighbourhood_order="depth")
    assert by_record.combine is None and by_record.neighbourhood_order == "depth"
    # b: r = 3 / 1 - 1 = 2, p = 1.5, s = min(p, 1) = 1, dn = min(max_step, 8) = 2; c follows b
    assert by_record.increments == {"b": 2, "c": 2}
    assert GrowthPlanner(tau=0.5, max_step=2, score="excess").plan(PROFILE, WIDTHS) == by_record


def test_a_graph_routes_to_the_group_planner_and_a_mapping_to_the_chain() -> None:
    model = resnet((4, 8, 8), blocks=1)
    graph = netsurgeon.trace(model)
    profile = {name: 1.0 for name in graph.layers}
    profile["stages.1.0.conv1"] = 3.0
    on_graph = plan_growth(profile, graph, combine="max")
    assert on_graph == plan_group_growth(profile, graph, settings=PlannerSettings(combine="max"))
    assert on_graph.on_groups and on_graph.combine == "max"
    on_chain = plan_growth(profile, graph.widths())
    assert not on_chain.on_groups and on_chain.layers == list(profile)


def test_the_planners_share_the_decision_rule_without_importing_each_other() -> None:
    def imports(module: str) -> set[str]:
        tree = ast.parse((ROOT / "netsurgeon" / "nagn" / f"{module}.py").read_text())
        found = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        return {name for name in found if name}

    planner, group_planner = imports("planner"), imports("group_planner")
    assert "netsurgeon.nagn.decision" in planner & group_planner
    assert "netsurgeon.nagn.planner" not in group_planner


def _committed_plans() -> list[tuple[str, dict]]:
    plans = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("*/runs/*.json")):
        run = json.loads(path.read_text())
        for event in run.get("events", []):
            plans.append((f"{path.parent.parent.name}/{path.name}@{event['epoch']}", event["plan"]))
    return plans


COMMITTED = _committed_plans()


def test_there_are_committed_plan_records_of_both_kinds() -> None:
    kinds = {plan.get("combine") is not None for _, plan in COMMITTED}
    assert len(COMMITTED) >= 20 and kinds == {True, False}


@pytest.mark.parametrize(("where", "data"), COMMITTED, ids=[w for w, _ in COMMITTED])
def test_every_committed_plan_record_loads_and_round_trips(where: str, data: dict) -> None:
    plan = GrowthPlan.from_dict(data)
    assert plan.increments == data["increments"]
    for name in PLANNER_FIELDS:
        if name in data:
            assert getattr(plan, name) == data[name], name
    again = json.loads(plan.to_json())
    assert GrowthPlan.from_dict(again) == plan
    for name in ("tau", "max_step", "monotone", "fallback", "combine", "neighbourhood_order"):
        assert again[name] == data.get(name, again[name]), name
