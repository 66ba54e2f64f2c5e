"""The driver with ``--arch vit`` end to end on the ``smoke`` preset (seconds).

A 2-block ViT on synthetic 16x16 images, a trigger forced at epoch 2. The driver passes one
example batch to the Grower, so the analysis follows the sizes the attention reads and the
stream, the heads and the MLPs can all grow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from driver_helpers import run_preset, run_records

import netsurgeon
from benchmarks.grow_cifar.arch import ARCHS

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    vit = ("--arch", "vit", "--configs", "[[16,16,32]]", "--blocks", "2")
    return run_preset("smoke", tmp_path_factory.mktemp("vit-smoke"), *vit)


def test_vit_smoke_grows_and_builds_matching_baselines(smoke_out: Path) -> None:
    runs = run_records(smoke_out)
    grown = [r for r in runs.values() if r["where"]]
    assert {r["where"] for r in grown} == {"nagn", "uniform"}
    for run in grown:
        assert run["config"]["arch"] == "vit"
        assert run["widths_initial"] == [[16, 16, 32], [16, 16, 32]]
        assert run["events"], f"{run['run_id']}: the preset forces a trigger at epoch 2"
        final = run["widths_final"]
        assert final != run["widths_initial"]
        assert len({row[0] for row in final}) == 1  # one stream through every block
        assert all(row[1] % 16 == 0 for row in final)  # attention grows by whole heads
        baseline = runs[run["baseline_run_id"]]
        assert baseline["widths_initial"] == final == baseline["widths_final"]
        assert baseline["params_final"] == run["params_final"]


def test_every_vit_group_but_the_output_is_widenable_with_example_inputs() -> None:
    model = ARCHS["vit"].build(((16, 16, 32),) * 2, 10, 3, 16)
    graph = netsurgeon.trace(model, example_inputs=(torch.zeros(2, 3, 16, 16),))
    reasons = {g.name: g.reason for g in graph.groups if not g.widenable}
    assert reasons.keys() == {"head"}, reasons
    assert graph.resolve("embed.proj").construction == "mean_pad"
    assert graph.resolve("blocks.0.attn.qkv").granularity == 3 * 16  # a head in q, k and v


def test_where_growth_went_tells_heads_from_channel_interiors() -> None:
    from benchmarks.grow_cifar.analysis.tables import growth_targets

    def group(name, producers, granularity, nagn):
        return {"name": name, "producers": producers, "granularity": granularity, "nagn": nagn}

    groups = [
        group("embed", ["embed", "b0.proj", "b0.fc2"], 1, 0.04),
        group("b0.qkv", ["b0.qkv"], 48, 0.01),
        group("b0.fc1", ["b0.fc1"], 1, 0.02),
        group("head", ["head"], 1, 0.3),
    ]
    rows = [
        {"name": g["name"], "is_output": g["name"] == "head", "contrast": c}
        for g, c in zip(groups, (0.8, -0.5, -0.2, 9.0), strict=True)
    ]
    event = {"epoch": 7, "plan": {"rows": rows, "groups": groups}}
    event["increments"] = {"embed": 5, "b0.qkv": 48, "b0.fc1": 3}
    run = {"run_id": "g", "kind": "grown", "events": [event]}
    table = growth_targets([run])
    assert table[2].split(" | ")[2:5] == [
        "mean NAGN, streams",
        "mean NAGN, interiors",
        "mean NAGN, whole-unit interiors",
    ]
    cells = table[4].strip("| ").split(" | ")
    assert cells == [
        "g",
        "7",
        "0.0400",
        "0.0200",
        "0.0100",
        "embed (stream, r = 0.80)",
        "5",
        "3",
        "48",
    ]
