"""benchmarks/replay_planner.py: replaying recorded growth decisions under other readings.

Two properties make a replay trustworthy: under the record's own reading it reproduces the
record exactly (growth epochs, increments, final widths), and under another reading it is exact
until its first decision that the record cannot answer, where it says so.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from driver_helpers import load_benchmark

from benchmarks.grow_cifar import train as train_module
from netsurgeon import GrowthConfig

pytestmark = pytest.mark.bench

replay = load_benchmark("replay_planner")
driver = load_benchmark("cifar_vgg")


def _record(accuracies: list[float], growths: dict[int, list[list[int]]], start) -> dict:
    """A grown-run record with the default growth rules, given accuracies and growth epochs."""
    widths, epochs = start, []
    for epoch, accuracy in enumerate(accuracies, start=1):
        widths = growths.get(epoch, widths)
        epochs.append({"epoch": epoch, "val_acc": accuracy, "widths": widths})
    return {
        "run_id": "grown-nagn_test_s0",
        "kind": "grown",
        "where": "nagn",
        "config": {"growth": dataclasses.asdict(GrowthConfig())},
        "epochs": epochs,
        "events": [{"epoch": e} for e in sorted(growths)],
        "widths_final": widths,
    }


# Plateau at 0.50 (trigger at 6, grows), flat for two more epochs, 0.54 at 9, plateau at 0.58
# over epochs 10-15 (trigger at 15, improvement 0.08 >= 0.05: grows), then 0.62 over 16-22
# (trigger at 21, improvement 0.04).
ACCURACIES = [0.5] * 8 + [0.54] + [0.58] * 6 + [0.62] * 7
GROWTHS = {6: [[4], [4], [4]], 15: [[8], [8], [8]]}


def test_the_records_own_reading_reproduces_it() -> None:
    run = _record(ACCURACIES, GROWTHS, [[2], [2], [4]])
    result = replay.replay_stops(run, "restart, absolute (default)")
    assert result.growth_epochs == (6, 15)
    assert result.stop_epoch == 21  # 0.62 - 0.58 = 0.04 < delta_stop 0.05
    assert result.diverges_at is None
    assert result.final_widths == "8-8-8"


def test_a_relative_delta_stop_grows_where_the_record_has_no_profile() -> None:
    run = _record(ACCURACIES, GROWTHS, [[2], [2], [4]])
    result = replay.replay_stops(run, "restart, relative")
    assert result.growth_epochs == (6, 15)
    assert result.diverges_at == 21  # 0.04 / 0.58 = 0.069 >= 0.05: would grow, plan unknown
    assert result.final_widths is None


@pytest.mark.parametrize("reading", ["no restart, absolute", "no restart, relative"])
def test_without_a_window_restart_a_plateau_retriggers_at_once_and_stops_growth(
    reading: str,
) -> None:
    # Epoch 7: windows (0.5, 0.5, 0.5) vs (0.5, 0.5, 0.5) span the growth: gain 0 < delta_acc,
    # and the improvement since the trigger at 6 is 0 < delta_stop: growth ends after one step.
    run = _record(ACCURACIES, GROWTHS, [[2], [2], [4]])
    result = replay.replay_stops(run, reading)
    assert (result.growth_epochs, result.stop_epoch) == ((6,), 7)
    assert result.final_widths == "4-4-4"  # the widths after the one growth, exact


def test_a_reading_that_misses_a_recorded_growth_diverges_there() -> None:
    # The record grew at 5 (a rule of its own); the default reading cannot trigger before 6.
    run = _record(ACCURACIES, {5: [[4], [4], [4]]}, [[2], [2], [4]])
    result = replay.replay_stops(run, "restart, absolute (default)")
    assert result.diverges_at == 5 and result.growth_epochs == ()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("replay")
    threads = torch.get_num_threads()
    try:
        argv = ["--preset", "smoke", "--epochs", "8", "--where", "nagn", "--out", str(out)]
        assert driver.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_the_paper_reading_replans_every_recorded_trigger_exactly(sweep: Path) -> None:
    text, data = replay.replay_report([sweep])
    assert data["planner"], "the smoke preset forces a trigger at epoch 2"
    for row in data["planner"]:
        assert row["paper"] == row["recorded"], f"{row['run_id']} epoch {row['epoch']}"
    assert text.splitlines()[2].split(" | ")[2] == "paper"


def test_the_stop_replay_of_a_real_run_matches_its_record(sweep: Path) -> None:
    (path,) = (sweep / "runs").glob("grown-nagn_*.json")
    run = json.loads(path.read_text())
    result = replay.replay_stops(run, "restart, absolute (default)")
    assert result.diverges_at is None
    assert result.growth_epochs == tuple(e["epoch"] for e in run["events"])
    assert result.final_widths == "-".join(".".join(map(str, b)) for b in run["widths_final"])


def test_the_command_line_writes_markdown_and_json(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "replay.md"
    assert replay.main([str(sweep), "--out", str(out)]) == 0
    assert out.read_text().startswith("## Planner readings")
    assert json.loads(out.with_suffix(".json").read_text())["stops"]
    assert replay.main([str(tmp_path / "nowhere")]) == 2


def test_comparing_a_sweep_with_itself_agrees_on_every_run(sweep: Path) -> None:
    compare = load_benchmark("compare_sweeps")
    text = compare.compare(sweep, sweep)
    grown = list((sweep / "runs").glob("grown-*.json"))
    assert f"final widths equal in {len(grown)} of {len(grown)} runs" in text
    run = json.loads(grown[0].read_text())
    summary = compare.run_summary(
        run, {r["run_id"]: r for r in map(_read, (sweep / "runs").glob("*.json"))}
    )
    assert summary["first_epoch"] == run["events"][0]["epoch"]
    assert summary["first_step"] == summary["first_epoch"] * 4  # 400 images * 0.8 at batch 100
    assert summary["acc_ratio"] is not None and summary["acc_ratio"] > 0
    assert compare.main([str(sweep), str(sweep / "nowhere")]) == 2


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_record_from_before_group_planning_replays_per_layer(sweep: Path) -> None:
    # Older records planned VGG layers one by one (no group statistic). On a VGG's chain the
    # per-layer rule and the group rule agree, so the per-layer replay reproduces the record.
    (path,) = (sweep / "runs").glob("grown-nagn_*.json")
    run = json.loads(path.read_text())
    for event in run["events"]:
        event["plan"]["combine"] = None
    assert not replay.is_group_plan(run["events"][0])
    for event in run["events"]:
        assert replay.replan(run, event, {}) == event["increments"]


def test_a_sweep_with_only_progress_snapshots_is_replayed(sweep: Path, tmp_path: Path) -> None:
    (path,) = (sweep / "runs").glob("grown-nagn_*.json")
    run = json.loads(path.read_text())
    (tmp_path / "progress").mkdir()
    (tmp_path / "progress" / path.name).write_text(json.dumps({**run, "partial": True}))
    out = tmp_path / "replay.md"
    assert replay.main([str(tmp_path), "--out", str(out)]) == 0
    assert f"{run['run_id']} (running, epoch {len(run['epochs'])})" in out.read_text()


class _Killed(Exception):
    pass


def test_a_run_known_only_by_its_checkpoint_is_replayed_as_its_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh machine resuming a committed sweep has checkpoints/ but no progress/ (not
    # committed): the replay then reads the run still training from its checkpoint.
    cfg, _ = driver.resolve_config(["--preset", "smoke", "--epochs", "8", "--where", "nagn"])
    spec = driver.RunSpec(cfg.configs[0], 0, "nagn")
    real = driver.save_checkpoint

    def save_then_die(file: Path, state: dict) -> None:
        real(file, state)
        if len(state["epochs"]) == 3:  # after the growth forced at epoch 2
            raise _Killed

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(_Killed):
            driver.train_run(spec, cfg, tmp_path)
    finally:
        torch.set_num_threads(threads)
    (snapshot,) = (tmp_path / "progress").glob("*.json")
    (from_snapshot,) = replay._grown_runs([tmp_path])
    _, snapshot_replay = replay.replay_report([tmp_path])
    snapshot.unlink()

    (run,) = replay._grown_runs([tmp_path])
    assert run["run_id"] == f"{spec.run_id} (running, epoch 3)" == from_snapshot["run_id"]
    assert run["events"] and run["events"][0]["epoch"] == 2
    for key in ("kind", "where", "seed", "widths_initial", "widths_final", "epochs", "events"):
        assert run[key] == from_snapshot[key], key
    _, checkpoint_replay = replay.replay_report([tmp_path])
    assert checkpoint_replay["planner"] and checkpoint_replay == snapshot_replay


def test_compare_lists_runs_still_training_without_ratios(sweep: Path, tmp_path: Path) -> None:
    compare = load_benchmark("compare_sweeps")
    (path,) = (sweep / "runs").glob("grown-nagn_*.json")
    run = json.loads(path.read_text())
    (tmp_path / "progress").mkdir()
    snapshot = {**run, "epochs": run["epochs"][:3], "stop_reason": None, "partial": True}
    (tmp_path / "progress" / path.name).write_text(json.dumps(snapshot))
    text = compare.compare(tmp_path, sweep)
    (row,) = [line for line in text.splitlines() if line.startswith("| ") and "nagn" in line]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert (
        cells[7]
        == f"{'-'.join('.'.join(map(str, b)) for b in run['widths_final'])} (epoch 3, may grow)"
    )
    assert cells[9] == "-" and cells[10] != "-"  # no ratio for the pair still training
    assert "final widths equal in 1 of 1 runs" in text
