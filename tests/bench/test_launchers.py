"""A sweep's records do not depend on who ran it: local processes, Ray, submitit, or cut sweeps.

Each run is one task that reads and writes only ``out/``, and a run resumed from its checkpoint
equals the uninterrupted run (test_cifar_vgg.py). So the ``smoke`` sweep must leave the same
records whichever launcher ran it, in one go or cut into slices by ``--time-limit``, up to the
fields that say when, where and in how many processes it ran.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from driver_helpers import run_preset, run_records

from benchmarks.grow_cifar import train as train_module
from benchmarks.grow_cifar.config import resolve_config

pytestmark = pytest.mark.bench

SMOKE = ("--where", "nagn", "--device", "cpu")  # one grown run and its baseline: seconds
# Fields that record time, machine or how a run was split into processes, not what it learned.
_NOT_RESULTS = {"environment", "images_per_s", "segments", "segment_starts"}
_TIMES = {"train_time_s", "train_cpu_s"}


def _results(record: dict) -> dict:
    """A run record without its timing, machine and segment fields (scheduling-free config)."""
    out = {k: v for k, v in record.items() if k not in _NOT_RESULTS}
    out["final"] = {k: v for k, v in record["final"].items() if k not in _TIMES}
    out["epochs"] = [{k: v for k, v in e.items() if k not in _TIMES} for e in record["epochs"]]
    config = dict(record["config"])
    for key in ("launcher", "time_limit_s", "jobs", "threads"):
        config.pop(key, None)
    out["config"] = config
    return out


def _assert_same_records(found: Path, expected: Path) -> None:
    got, want = run_records(found), run_records(expected)
    assert sorted(got) == sorted(want)
    for run_id in want:
        assert _results(got[run_id]) == _results(want[run_id]), run_id


@pytest.fixture(scope="module")
def local_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke sweep run in one go by the default launcher."""
    return run_preset("smoke", tmp_path_factory.mktemp("local"), *SMOKE)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster (2 CPUs) shared by the tests; its workers import this checkout."""
    ray = pytest.importorskip("ray")
    from benchmarks.grow_cifar.launchers import ROOT

    ray.init(
        num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}
    )
    yield ray
    ray.shutdown()


class _SteppedClock:
    """``time.time`` advancing 100 s per reading: a run stops after a fixed number of epochs.

    A sweep with ``--time-limit 250`` sets its deadline at the first reading; a run's start
    check and each epoch's check read once more, so every call trains at most two epochs,
    whatever the machine's speed (real epochs here take well under 50 s).
    """

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        self.now += 100.0
        return self.now


def _run_in_slices(out: Path, monkeypatch: pytest.MonkeyPatch, calls: int) -> int:
    """Run the smoke sweep with a 250 s limit under the stepped clock, ``calls`` times at most.

    Returns how many calls ran before every run had its record.
    """
    for call in range(1, calls + 1):
        with monkeypatch.context() as m:
            m.setattr(time, "time", _SteppedClock())
            run_preset("smoke", out, *SMOKE, "--time-limit", "250")
        if len(run_records(out)) == 2 and not list((out / "checkpoints").glob("*.pt")):
            return call
    return calls


def test_a_sweep_cut_three_times_ends_with_the_records_of_an_uncut_one(
    local_out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _run_in_slices(tmp_path, monkeypatch, calls=10)
    assert calls >= 4  # three cuts at least: 8 epochs, at most 2 per call
    _assert_same_records(tmp_path, local_out)
    segments = [r["segments"] for r in run_records(tmp_path).values()]
    assert max(segments) >= 2  # a run really was resumed from its checkpoint


def test_a_stopped_run_leaves_its_checkpoint_and_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.setattr(time, "time", _SteppedClock())
        run_preset("smoke", tmp_path, *SMOKE, "--time-limit", "250")
    assert run_records(tmp_path) == {}
    (checkpoint,) = (tmp_path / "checkpoints").glob("grown-nagn_*.pt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert len(state["epochs"]) == 2


def test_ray_on_a_local_cluster_leaves_the_records_of_the_local_launcher(
    ray_cluster, local_out: Path, tmp_path: Path
) -> None:
    run_preset("smoke", tmp_path, *SMOKE, "--launcher", "ray")
    _assert_same_records(tmp_path, local_out)
    assert json.loads((tmp_path / "sweep.json").read_text())["launcher"] == "ray"


def test_submitit_without_slurm_runs_local_jobs_with_the_records_of_the_local_launcher(
    local_out: Path, tmp_path: Path
) -> None:
    pytest.importorskip("submitit")
    run_preset("smoke", tmp_path, *SMOKE, "--launcher", "submitit")
    _assert_same_records(tmp_path, local_out)
    assert list((tmp_path / "submitit").glob("*_log.out"))  # the jobs ran through submitit


def test_a_sweep_started_locally_and_cut_is_finished_by_ray(
    ray_cluster, local_out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run_in_slices(tmp_path, monkeypatch, calls=1)
    assert list((tmp_path / "checkpoints").glob("*.pt"))  # the grown run is mid-way
    run_preset("smoke", tmp_path, *SMOKE, "--launcher", "ray")
    _assert_same_records(tmp_path, local_out)
    grown = next(r for r in run_records(tmp_path).values() if r["kind"] == "grown")
    assert grown["segments"] == 2  # resumed by the Ray task from the local call's checkpoint


def test_the_task_of_a_run_past_its_deadline_returns_nothing_and_trains_nothing(
    tmp_path: Path,
) -> None:
    cfg, _ = resolve_config(["--preset", "smoke", *SMOKE])
    spec = train_module.RunSpec(cfg.configs[0], 0, "nagn")
    assert train_module.run_task(spec, cfg, tmp_path, deadline=time.time() - 1) is None
    assert not (tmp_path / "checkpoints").exists()
