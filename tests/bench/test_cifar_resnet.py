"""benchmarks/cifar_vgg.py ``--arch resnet`` end to end on ``--preset resnet-smoke`` (seconds).

The driver, its run records, report and figures are shared with the VGG reproduction; what
differs is the model family (``benchmarks/_arch.py``): width specs are ``(stream, interiors...)``
per stage, and a static baseline is rebuilt from a grown run's final spec.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

import pytest
from driver_helpers import load_benchmark, load_driver, run_preset, run_records

import netsurgeon

pytestmark = pytest.mark.bench

driver = load_driver()
replay = load_benchmark("replay_planner")
# resnet-smoke is a ResNet-8 (one block per stage): the stem's stream and each stage's stream
# (projection + conv2) are written by several producers, each block's conv1 is an interior.
STREAMS = {"conv", "stages.1.0.conv2", "stages.2.0.conv2"}
INTERIORS = {"stages.0.0.conv1", "stages.1.0.conv1", "stages.2.0.conv1"}


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_preset("resnet-smoke", tmp_path_factory.mktemp("resnet-smoke"))


def test_resnet_smoke_grows_streams_or_interiors_and_builds_matching_baselines(
    smoke_out: Path,
) -> None:
    runs = run_records(smoke_out)
    grown = [r for r in runs.values() if r["where"]]
    assert {r["where"] for r in grown} == {"nagn", "uniform"}
    for run in grown:
        assert run["config"]["arch"] == "resnet"
        assert run["widths_initial"] == [[2, 2], [2, 2], [4, 4]]  # (stream, interior) per stage
        assert run["events"], f"{run['run_id']}: the preset forces a trigger at epoch 2"
        final = run["widths_final"]
        assert final != run["widths_initial"]
        baseline = runs[run["baseline_run_id"]]
        assert baseline["widths_initial"] == final == baseline["widths_final"]
        assert baseline["params_final"] == run["params_final"]  # the same network, from scratch
    assert (smoke_out / "summary.md").read_text().count("2.2-2.2-4.4") >= 2


def _table_row(text: str, run_id: str, epoch: int) -> list[str]:
    """The cells of the first markdown row for ``run_id`` at trigger ``epoch``."""
    prefix = f"| {run_id} | {epoch} (exact) |"
    line = next(ln for ln in text.splitlines() if ln.startswith(prefix))
    return line.strip("| ").split(" | ")


def test_replaying_a_resnet_trigger_replans_it_on_groups_exactly(smoke_out: Path) -> None:
    (run,) = [r for r in run_records(smoke_out).values() if r["where"] == "nagn"]
    event = run["events"][0]
    assert replay.is_group_plan(event) and event["plan"]["combine"] == "rms"
    text, data = replay.replay_report([smoke_out])
    (row,) = [r for r in data["planner"] if r["run_id"] == run["run_id"]]
    assert row["paper"] == event["increments"]  # the recorded plan, from the rebuilt graph
    head = next(ln for ln in text.splitlines() if "combine=max" in ln).strip("| ").split(" | ")
    cells = dict(zip(head, _table_row(text, run["run_id"], event["epoch"]), strict=True))
    after = replay.width_tag(run["epochs"][event["epoch"] - 1]["widths"])
    assert cells["paper"] == f"+{sum(event['increments'].values())} → {after}"
    graph = netsurgeon.trace(replay.model_at(run, event))
    groups = {g.name: g for g in graph.groups}
    for reading in ("combine=max", "combine=mean", "order=depth"):
        for name, k in row[reading].items():  # a valid plan on the rebuilt graph
            assert groups[name].widenable and k % groups[name].granularity == 0, (reading, name)


def test_the_report_says_whether_growth_went_to_streams_or_interiors(smoke_out: Path) -> None:
    summary = (smoke_out / "summary.md").read_text()
    assert "Where growth went" in summary
    for run in (r for r in run_records(smoke_out).values() if r["where"]):
        (event,) = run["events"]
        nagn = {g["name"]: g["nagn"] for g in event["plan"]["groups"]}
        assert set(nagn) == STREAMS | INTERIORS | {"fc"}
        streams = sum(k for n, k in event["increments"].items() if n in STREAMS)
        interiors = sum(k for n, k in event["increments"].items() if n in INTERIORS)
        (line,) = [ln for ln in summary.splitlines() if ln.startswith(f"| {run['run_id']} | 2 |")]
        cells = line.strip("| ").split(" | ")
        assert cells[2:4] == [
            f"{statistics.fmean(nagn[n] for n in STREAMS):.4f}",
            f"{statistics.fmean(nagn[n] for n in INTERIORS):.4f}",
        ]
        assert cells[4] == "-"  # no group grows by whole units in a plain ResNet
        assert cells[-3:] == [str(streams), str(interiors), "-"]


def test_replay_refuses_a_record_its_model_family_cannot_rebuild(smoke_out: Path) -> None:
    (run,) = [r for r in run_records(smoke_out).values() if r["where"] == "nagn"]
    event = copy.deepcopy(run["events"][0])
    event["widths_before"]["stages.0.0.conv1"] += 1  # not what the spec before it builds
    with pytest.raises(ValueError, match=r"stages.0.0.conv1: recorded 3, rebuilt 2"):
        replay.model_at(run, event)


def test_resnet_presets_are_the_issue_protocols() -> None:
    cpu = driver.resolve_config(["--preset", "resnet-cpu"])[0]
    assert cpu.arch == "resnet" and cpu.where == ("nagn", "uniform", "random")
    assert cpu.configs == (((4, 4, 4, 4), (8, 8, 8, 8), (16, 16, 16, 16)),)
    assert cpu.epochs == 60 and cpu.batch_size == 125 and cpu.train_subset == 10_000
    wider = driver.resolve_config(["--preset", "resnet-cpu", "--configs", "8/16/32"])[0]
    assert wider.configs == (((8, 8, 8, 8), (16, 16, 16, 16), (32, 32, 32, 32)),)
    gpu = driver.resolve_config(["--preset", "resnet-gpu", "--device", "cpu"])[0]
    assert gpu.epochs == 200 and len(gpu.configs) == 3 and gpu.configs[2][2][0] == 64


def test_arch_and_blocks_options_expand_short_specs() -> None:
    cfg = driver.resolve_config(
        ["--preset", "smoke", "--arch", "resnet", "--blocks", "2", "--configs", "4/8"]
    )[0]
    assert cfg.configs == (((4, 4, 4), (8, 8, 8)),)
    with pytest.raises(ValueError, match="--blocks must be >= 1"):
        driver.resolve_config(["--preset", "resnet-smoke", "--blocks", "0"])


def test_the_trajectory_table_gives_the_width_spec_after_each_growth(smoke_out: Path) -> None:
    summary = (smoke_out / "summary.md").read_text()
    for run in (r for r in run_records(smoke_out).values() if r["where"]):
        (event,) = run["events"]
        after = replay.width_tag(run["epochs"][event["epoch"] - 1]["widths"])
        (row,) = [ln for ln in summary.splitlines() if ln.startswith(f"| {run['run_id']} | 2 (")]
        assert f"+{sum(event['increments'].values())} → {after} |" in row
