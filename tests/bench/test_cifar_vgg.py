"""The benchmark (benchmarks/grow_cifar) end to end on ``--preset smoke``: outputs, ratios, options, resume."""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from driver_helpers import load_benchmark, load_driver, run_preset, run_records

from benchmarks.grow_cifar import config as config_module
from benchmarks.grow_cifar import sweep as sweep_module
from benchmarks.grow_cifar import train as train_module
from benchmarks.grow_cifar.data import ImageTensors
from netsurgeon.models import vgg

pytestmark = pytest.mark.bench

driver = load_driver()
parse_run_id = load_benchmark("_records").parse_run_id


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_preset("smoke", tmp_path_factory.mktemp("smoke"))


def test_smoke_writes_one_json_per_run_with_per_epoch_metrics(smoke_out: Path) -> None:
    runs = run_records(smoke_out)
    grown = [r for r in runs.values() if r["kind"] == "grown"]
    assert {r["where"] for r in grown} == {"nagn", "uniform"}
    assert len(runs) == len(grown) + len({r["baseline_run_id"] for r in grown})
    for run in runs.values():
        assert run["config"]["preset"] == "smoke"
        assert [e["epoch"] for e in run["epochs"]] == [1, 2, 3, 4]
        for epoch in run["epochs"]:
            assert {"train_loss", "val_acc", "test_acc", "train_time_s", "widths"} <= set(epoch)
            assert 0.0 <= epoch["test_acc"] <= 1.0
        times = [e["train_time_s"] for e in run["epochs"]]
        assert times == sorted(times)
        assert run["environment"]["torch"] == torch.__version__


def test_smoke_grown_runs_record_growth_events_and_grow(smoke_out: Path) -> None:
    for run in run_records(smoke_out).values():
        if run["kind"] != "grown":
            continue
        assert run["events"], f"{run['run_id']}: the smoke preset forces a trigger at epoch 2"
        event = run["events"][0]
        assert event["epoch"] == 2
        assert set(event["profile"]) >= {"blocks.0.0.conv", "blocks.2.0.conv"}
        assert sum(event["increments"].values()) > 0
        assert "rows" in event["plan"]
        assert run["widths_final"] != run["widths_initial"]


def test_static_baseline_has_the_grown_final_widths_and_seed(smoke_out: Path) -> None:
    runs = run_records(smoke_out)
    for run in runs.values():
        if run["kind"] == "grown":
            static = runs[run["baseline_run_id"]]
            assert static["kind"] == "static"
            assert static["widths_initial"] == run["widths_final"] == static["widths_final"]
            assert static["seed"] == run["seed"]
            assert static["events"] == []


def test_summary_ratios_are_computed_from_the_run_jsons(smoke_out: Path) -> None:
    runs = run_records(smoke_out)
    with open(smoke_out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert {row["where"] for row in rows} == {"nagn", "uniform"}
    for row in rows:
        (grown,) = [r for r in runs.values() if r["kind"] == "grown" and r["where"] == row["where"]]
        static = runs[grown["baseline_run_id"]]
        acc = grown["final"]["test_acc"] / static["final"]["test_acc"]
        time = grown["final"]["train_time_s"] / static["final"]["train_time_s"]
        assert float(row["acc_ratio_mean"]) == pytest.approx(acc, rel=1e-12)
        assert float(row["time_ratio_mean"]) == pytest.approx(time, rel=1e-12)
        assert float(row["flop_ratio_mean"]) == pytest.approx(_flop_ratio(grown, static))
        assert float(row["grown_acc_mean"]) == pytest.approx(grown["final"]["test_acc"])
    text = (smoke_out / "summary.md").read_text()
    assert "git" in text and "torch" in text and "training wall time" in text


def _flop_ratio(grown: dict, static: dict) -> float:
    """Training FLOPs by hand: a real forward and backward per width spec the run trained with."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(widths: list[list[int]]) -> int:
        model = vgg(driver._as_widths(widths), 10, 3, 16)  # the smoke preset's 16x16 images
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(2, 3, 16, 16)).sum().backward()
        return counter.get_total_flops() // 2  # per image

    def total(run: dict) -> int:
        trained = [run["widths_initial"], *(e["widths"] for e in run["epochs"][:-1])]
        return sum(flops(w) for w in trained)

    assert grown["events"], "the smoke preset grows at epoch 2"
    return total(grown) / total(static)


def test_flops_refuse_a_record_of_another_model_family(smoke_out: Path) -> None:
    flops = load_benchmark("_flops")
    grown = json.loads(next((smoke_out / "runs").glob("grown-nagn_*.json")).read_text())
    assert flops.training_flops(grown) > 0
    grown["epochs"][-1]["params"] += 1
    with pytest.raises(ValueError, match=r"parameters, the record says \d+ \(epoch 4\)"):
        flops.training_flops(grown)


def test_smoke_writes_png_figures(smoke_out: Path) -> None:
    names = {p.name for p in (smoke_out / "figures").glob("*.png")}
    assert {
        "fig2b_ratios.png",
        "fig1a_nagn_profile_2-2-4.png",
        "fig2a_accuracy_2-2-4.png",
        "fig2a_widths_2-2-4_nagn.png",
        "fig2a_widths_2-2-4_uniform.png",
    } <= names
    for name in names:
        assert (smoke_out / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_with_the_same_out_reuses_finished_runs(
    smoke_out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in (smoke_out / "runs").glob("*.json")}

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train_module, "train_run", no_training)
    monkeypatch.setattr(train_module, "prepare", lambda cfg: None)
    assert driver.main(["--preset", "smoke", "--out", str(smoke_out)]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in (smoke_out / "runs").glob("*.json")}
    assert after == before


def test_resume_into_an_out_made_with_other_settings_is_refused(
    smoke_out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(train_module, "prepare", lambda cfg: None)
    assert driver.main(["--preset", "smoke", "--epochs", "5", "--out", str(smoke_out)]) == 2
    assert "fresh --out" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--where", "nagn,best"], "--where"),
        (["--epochs", "2"], "two windows"),
        (["--time-limit", "0"], "--time-limit must be > 0"),
        (["--gpus-per-run", "-1"], "--gpus-per-run"),
        (["--dataset", "digits", "--data-dir", "/x"], "unused"),
        (["--amp", "--device", "cpu"], "--amp needs a CUDA device"),
        (["--seeds", "1,1"], "distinct seeds"),
        (["--seeds", "one"], "--seeds"),
        (["--configs", "4/0/4"], "--configs"),
        (["--jobs", "0"], "--jobs"),
        (["--device", "tpu:9"], "--device"),
        (["--growth", "end_rule=median"], "GrowthConfig.end_rule='median'"),
        (["--growth", "w_acc=0"], "GrowthConfig.w_acc=0"),
        (["--growth", "endrule=adjacent"], "unknown setting 'endrule'"),
        (["--growth", "where=random"], "unknown setting 'where'"),  # per run: --where
        (["--growth", "score"], "write NAME=VALUE"),
        (["--growth", "tau=0.1", "tau=0.2"], "given twice"),
    ],
)
def test_inconsistent_options_are_rejected_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert driver.main(["--preset", "smoke", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv", [["--bogus"], ["--epoch", "3"], ["--preset", "huge"]])
def test_unknown_options_and_abbreviations_are_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        driver.resolve_config(argv)
    assert exit_info.value.code == 2


def test_growth_overrides_replace_only_the_named_fields_of_the_presets_rules() -> None:
    argv = ["--preset", "smoke", "--growth", "end_rule=adjacent", "max_growths=2"]
    cfg, _ = driver.resolve_config([*argv, "--growth", "restart_windows=false", "max_step=None"])
    preset = driver.PRESETS["smoke"]["growth"]
    expected = replace(
        preset, end_rule="adjacent", max_growths=2, restart_windows=False, max_step=None
    )
    assert cfg.growth == expected
    assert cfg.growth.delta_acc == preset.delta_acc == 1e6  # the preset's forced trigger stays


def test_a_sweep_made_under_one_growth_reading_refuses_to_resume_under_another(
    smoke_out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(train_module, "prepare", lambda cfg: None)
    argv = ["--preset", "smoke", "--growth", "score=damped", "--out", str(smoke_out)]
    assert driver.main(argv) == 2
    assert "growth.score" in capsys.readouterr().err


@pytest.mark.parametrize(
    "spec",
    [
        driver.RunSpec(((2, 2, 2), (4,), (8, 9, 9)), 3, "nagn"),
        driver.RunSpec(((16,), (32,), (64,)), 0, "random"),
        driver.RunSpec(((4,), (4,), (8,)), 12),
    ],
)
def test_run_ids_parse_back_to_their_specs(spec) -> None:
    where, widths, seed = parse_run_id(spec.run_id)
    assert driver.RunSpec(widths, seed, where) == spec
    with pytest.raises(ValueError, match="not a run id"):
        parse_run_id(spec.run_id.replace("_s", "_seed"))


def test_width_specs_parse_in_both_spellings() -> None:
    assert driver.parse_widths("[[8,3,8],[16]]") == ((8, 3, 8), (16,))
    assert driver.parse_widths("8,3,8/16") == ((8, 3, 8), (16,))
    assert driver.parse_ints("0-2", "--seeds") == (0, 1, 2)
    assert driver.parse_ints("3,5", "--seeds") == (3, 5)


def test_the_data_folder_is_the_option_then_the_environment_then_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(config_module.DATA_ENV, raising=False)
    cfg, _ = driver.resolve_config(["--preset", "quick"])
    assert config_module.default_data_dir(cfg) == "data"
    monkeypatch.setenv(config_module.DATA_ENV, "/elsewhere/cifar")
    assert config_module.default_data_dir(cfg) == "/elsewhere/cifar"
    cfg, _ = driver.resolve_config(["--preset", "quick", "--data-dir", "/mine"])
    assert config_module.default_data_dir(cfg) == "/mine"
    cfg, _ = driver.resolve_config(["--preset", "smoke"])
    assert config_module.default_data_dir(cfg) is None  # synthetic images need no folder


def test_no_preset_names_a_folder_of_some_machine() -> None:
    for name, values in driver.PRESETS.items():
        assert "data_dir" not in values, name


def test_overriding_the_dataset_drops_the_presets_data_dir() -> None:
    cfg, out = driver.resolve_config(["--preset", "quick", "--dataset", "synthetic"])
    assert cfg.data_dir is None
    assert out == Path("runs") / "quick"
    assert cfg.growth.w_acc == 3  # quick keeps the paper's growth rules


def test_missing_image_folder_stops_with_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    try:
        code = driver.main(
            [
                "--preset",
                "smoke",
                "--dataset",
                "imagefolder",
                "--data-dir",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 2
    assert "cifar10-jpeg.zip" in capsys.readouterr().err


# --------------------------------------------------------------------------- data identity


@pytest.fixture(scope="module")
def two_seed_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep with two seeds: a split or augmentation tied to the run's seed would show here."""
    out = tmp_path_factory.mktemp("two-seeds")
    threads = torch.get_num_threads()
    try:
        argv = ["--preset", "smoke", "--seeds", "0,1", "--epochs", "3", "--where", "nagn"]
        assert driver.main([*argv, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_every_run_of_a_sweep_records_the_same_data(two_seed_out: Path) -> None:
    runs = list(run_records(two_seed_out).values())
    assert {r["seed"] for r in runs} == {0, 1}
    assert {r["kind"] for r in runs} == {"grown", "static"}
    first = runs[0]["data"]
    assert set(first["digest"]) == {"train", "val", "test"}
    assert first["augment"] == {"crop_padding": 4, "flip": True, "flip_probability": 0.5}
    for run in runs:
        for key in driver._report.DATA_KEYS:
            assert run["data"][key] == first[key], f"{run['run_id']}: data[{key!r}] differs"
    assert driver._report.data_identity(runs)[0]
    assert "data identity: all 4 runs" in (two_seed_out / "summary.md").read_text()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("digest", {"train": "0" * 16, "val": "1" * 16, "test": "2" * 16}),
        ("augment", {"crop_padding": 4, "flip": True, "flip_probability": 1.0}),
        ("mean", [0.5, 0.5, 0.5]),
    ],
)
def test_the_report_flags_a_run_that_saw_other_data(
    two_seed_out: Path, key: str, value: object
) -> None:
    runs = list(run_records(two_seed_out).values())
    odd = {**runs[-1], "data": {**runs[-1]["data"], key: value}}
    identical, lines = driver._report.data_identity([*runs[:-1], odd])
    assert not identical
    assert any(f"**{key} differs**" in line and odd["run_id"] in line for line in lines)


def test_the_split_digest_changes_with_the_split_seed_and_subset() -> None:
    cfg, _ = driver.resolve_config(["--preset", "smoke"])
    digest = driver.data_record(driver.load_data(cfg))["digest"]
    other_seed = driver.data_record(driver.load_data(replace(cfg, split_seed=1)))["digest"]
    subset = driver.data_record(driver.load_data(replace(cfg, train_subset=100)))["digest"]
    assert digest["test"] == other_seed["test"]  # the test set is never split
    assert digest["train"] != other_seed["train"] and digest["val"] != other_seed["val"]
    assert subset["train"] != digest["train"] and subset["val"] == digest["val"]


def _halves(n: int, size: int, channels: int) -> ImageTensors:
    """Left half dark, right half bright, one bright row in the middle: flips and crops show."""
    images = torch.zeros(n, channels, size, size, dtype=torch.uint8)
    images[:, 0, :, size // 2 :] = 255
    images[:, -1, size // 2, :] = 255 if channels > 1 else images[:, -1, size // 2, :]
    return ImageTensors(images, torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize(("dataset", "padding", "flip"), [("synthetic", 4, 0.5), ("digits", 2, 0)])
def test_training_batches_flip_and_crop_as_the_dataset_says(
    dataset: str, padding: int, flip: float
) -> None:
    """The driver's loader, measured: flip share within 6 sigma, crop shifts exactly 0..2p."""
    pytest.importorskip("sklearn")
    cfg, _ = driver.resolve_config(["--preset", "smoke", "--dataset", dataset])
    data = driver.load_data(cfg)
    size, channels, n = 32, 3, 3000  # wide enough that a 4-pixel crop keeps both halves
    probe = dataclasses.replace(
        data, train=_halves(n, size, channels), mean=(0.5,) * channels, std=(0.25,) * channels
    )
    x = torch.cat([x for x, _ in driver.train_loader(probe, replace(cfg, batch_size=500), 0)])
    quarter = size // 4
    flipped = x[:, 0, :, :quarter].mean((1, 2)) > x[:, 0, :, -quarter:].mean((1, 2))
    share = flipped.double().mean().item()
    sigma = max((flip * (1 - flip) / n) ** 0.5, 1e-12)
    assert abs(share - flip) <= 6 * sigma, f"{dataset}: flipped {share:.3f}, expected {flip}"
    row = x[:, -1].mean(2).argmax(1) - size // 2  # where the bright row landed: -dy + padding
    assert set(row.tolist()) == set(range(-padding, padding + 1))


# --------------------------------------------------------------------------- record compatibility


def _strip(config: dict, *keys: str) -> dict:
    """A config as an older driver wrote it: ``keys`` (``"a"`` or ``"growth.b"``) missing."""
    out = json.loads(json.dumps(config))
    for key in keys:
        *parents, leaf = key.split(".")
        node = out
        for parent in parents:
            node = node[parent]
        del node[leaf]
    return out


def test_a_record_that_predates_a_setting_resumes_when_the_setting_is_at_its_default(
    smoke_out: Path, tmp_path: Path
) -> None:
    from benchmarks.grow_cifar.records import load_record

    cfg, _ = driver.resolve_config(["--preset", "smoke"])
    record = json.loads(next((smoke_out / "runs").glob("static_*.json")).read_text())
    record["config"] = _strip(record["config"], "hidden", "growth.neighbourhood")
    path = tmp_path / "old.json"
    path.write_text(json.dumps(record))
    assert load_record(path, cfg)["run_id"] == record["run_id"]
    changed = replace(cfg, growth=replace(cfg.growth, neighbourhood="geometric"))
    with pytest.raises(driver.SweepError, match=r"growth\.neighbourhood: saved 'arithmetic'"):
        load_record(path, changed)
    with pytest.raises(driver.SweepError, match="hidden"):
        load_record(path, replace(cfg, hidden=(8,)))  # a missing key reads as its default


def test_config_defaults_expand_nested_configs_and_skip_required_fields() -> None:
    from benchmarks.grow_cifar.records import config_defaults

    defaults = config_defaults(driver.BenchConfig)
    assert "epochs" not in defaults and "preset" not in defaults
    assert defaults["batch_size"] == 500
    assert defaults["growth"]["delta_stop"] == 0.05
    assert defaults["growth"] == dataclasses.asdict(driver.GrowthConfig())


# --------------------------------------------------------------------------- runs in progress


def test_a_run_leaves_a_snapshot_every_epoch_and_removes_it_when_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = driver.resolve_config(["--preset", "smoke", "--epochs", "3"])
    written: list[tuple[str, int]] = []
    real = driver.write_json

    def spy(path: Path, record: dict) -> None:
        written.append((path.parent.name, len(record["epochs"])))
        real(path, record)

    monkeypatch.setattr(train_module, "write_json", spy)
    spec = driver.RunSpec(cfg.configs[0], 0, "nagn")
    driver.train_run(spec, cfg, tmp_path)
    assert written == [("progress", 1), ("progress", 2), ("runs", 3)]
    assert not list((tmp_path / "progress").glob("*.json"))


def test_the_report_lists_runs_still_training(smoke_out: Path, tmp_path: Path) -> None:
    grown = json.loads(next((smoke_out / "runs").glob("grown-nagn_*.json")).read_text())
    (tmp_path / "progress").mkdir()
    (tmp_path / "runs").mkdir()
    snapshot = {**grown, "epochs": grown["epochs"][:3], "partial": True}
    (tmp_path / "progress" / f"{grown['run_id']}.json").write_text(json.dumps(snapshot))
    text = driver._report.write_report(tmp_path)
    assert f"{grown['run_id']} (running, epoch 3/4)" in text


def test_the_cpu_preset_keeps_the_papers_steps_per_epoch_and_growth_rules() -> None:
    cfg, out = driver.resolve_config(["--preset", "cpu"])
    steps_per_epoch = cfg.train_subset // cfg.batch_size
    paper_steps = round(50_000 * (1 - cfg.val_fraction)) // 500
    assert steps_per_epoch == paper_steps == 80
    assert cfg.val_subset is None  # the full validation split: the trigger sees the paper's noise
    assert cfg.growth == driver.GrowthConfig()
    assert cfg.configs == (((2, 2, 2), (4, 4, 4), (8, 8, 8)),)  # the paper's Fig. 2a config
    assert set(cfg.where) == {"nagn", "uniform", "random"}
    assert (cfg.lr, cfg.weight_decay) == (1e-3, 1e-2)
    assert out == Path("runs") / "cpu"


# --------------------------------------------------------------------------- epoch checkpoints


class _Killed(Exception):
    """Stands for the end of a session: the process dies right after a checkpoint."""


def _train_interrupted(
    spec: object, cfg: object, out: Path, after_epoch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Train ``spec`` until its checkpoint of ``after_epoch`` is on disk, then stop."""
    real = driver.save_checkpoint

    def save_then_die(path: Path, state: dict) -> None:
        real(path, state)
        if len(state["epochs"]) == after_epoch:
            raise _Killed

    with monkeypatch.context() as m:
        m.setattr(train_module, "save_checkpoint", save_then_die)
        with pytest.raises(_Killed):
            driver.train_run(spec, cfg, out)


@pytest.mark.parametrize(
    ("where", "after_epoch"),
    [("nagn", 1), ("nagn", 3), ("random", 2)],
    ids=["before-growth", "after-growth", "random-at-growth-epoch"],
)
def test_a_run_resumed_from_a_checkpoint_equals_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, after_epoch: int
) -> None:
    """Smoke preset, growth forced at epoch 2, 5 epochs: stop after ``after_epoch``, resume."""
    cfg, _ = driver.resolve_config(["--preset", "smoke", "--epochs", "5"])
    spec = driver.RunSpec(cfg.configs[0], 0, where)
    whole = driver.train_run(spec, cfg, tmp_path / "whole")

    out = tmp_path / "resumed"
    _train_interrupted(spec, cfg, out, after_epoch, monkeypatch)
    checkpoint = out / "checkpoints" / f"{spec.run_id}.pt"
    assert checkpoint.is_file() and not (out / "runs").exists()
    torch.manual_seed(12345)  # a new process: another global RNG state (restored from the file)
    resumed = driver.train_run(spec, cfg, out)

    keys = ("epoch", "train_loss", "val_acc", "test_acc", "lr", "widths", "params")
    assert [{k: e[k] for k in keys} for e in resumed["epochs"]] == [
        {k: e[k] for k in keys} for e in whole["epochs"]
    ]
    assert resumed["events"] == whole["events"] and whole["events"]  # the growth happened
    assert resumed["events"][0]["epoch"] == 2
    assert resumed["widths_final"] == whole["widths_final"] != resumed["widths_initial"]
    assert resumed["stop_reason"] == whole["stop_reason"]
    assert (whole["segments"], whole["segment_starts"]) == (1, [1])
    assert (resumed["segments"], resumed["segment_starts"]) == (2, [1, after_epoch + 1])
    times = [e["train_time_s"] for e in resumed["epochs"]]
    assert times == sorted(times) and times[0] > 0  # one clock, summed over the segments
    assert not checkpoint.exists()  # removed once the run's JSON is written


def test_a_checkpoint_made_with_other_settings_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = driver.resolve_config(["--preset", "smoke", "--epochs", "5"])
    spec = driver.RunSpec(cfg.configs[0], 0, "nagn")
    _train_interrupted(spec, cfg, tmp_path, 2, monkeypatch)
    other, _ = driver.resolve_config(["--preset", "smoke", "--epochs", "6"])
    with pytest.raises(driver.SweepError, match=r"epochs: saved 5, now 6.*fresh --out"):
        driver.train_run(spec, other, tmp_path)
    scheduling, _ = driver.resolve_config(["--preset", "smoke", "--epochs", "5", "--jobs", "3"])
    record = driver.train_run(spec, scheduling, tmp_path)  # jobs shape nothing
    assert record["segments"] == 2


def test_a_sweep_known_only_by_checkpoints_gets_a_progress_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh machine: the committed checkpoints of a grown run and its baseline, no progress/.
    cfg, _ = driver.resolve_config(["--preset", "smoke", "--epochs", "5"])
    grown = driver.RunSpec(cfg.configs[0], 0, "nagn")
    _train_interrupted(grown, cfg, tmp_path, 3, monkeypatch)  # grew at epoch 2
    grown_state = torch.load(tmp_path / "checkpoints" / f"{grown.run_id}.pt", weights_only=True)
    widths = driver._as_widths(grown_state["epochs"][-1]["widths"])
    assert widths != grown.widths
    static = driver.RunSpec(widths, 0)
    _train_interrupted(static, cfg, tmp_path, 4, monkeypatch)
    static_state = torch.load(tmp_path / "checkpoints" / f"{static.run_id}.pt", weights_only=True)
    for snapshot in (tmp_path / "progress").glob("*.json"):
        snapshot.unlink()

    text = driver._report.write_report(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert f"{grown.run_id} (running, epoch 3/5)" in text
    assert "in progress" in summary and static.run_id in summary
    (row,) = [line for line in text.splitlines() if line.startswith(f"| {grown.run_id} |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == [static.run_id, "1-3 of 5"]  # the epochs both have trained
    for cell, state in ((3, grown_state), (4, static_state)):
        mean = sum(e["test_acc"] for e in state["epochs"][:3]) / 3
        assert float(cells[cell]) == pytest.approx(mean, abs=5e-5)
    tag = grown.run_id.split("_")[1]
    figures = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert {f"fig2a_accuracy_{tag}.png", f"fig2a_widths_{tag}_nagn.png"} <= figures
    assert all(f"![{name}](figures/{name})" in summary for name in figures)


def test_the_report_says_which_runs_were_trained_in_several_segments(
    smoke_out: Path, tmp_path: Path
) -> None:
    (tmp_path / "runs").mkdir()
    paths = sorted((smoke_out / "runs").glob("*.json"))
    for path in paths:
        (tmp_path / "runs" / path.name).write_text(path.read_text())
    text = driver._report.write_report(tmp_path)
    assert f"all {len(paths)} runs trained in one process each" in text
    static = next((tmp_path / "runs").glob("static_*.json"))
    record = json.loads(static.read_text())
    static.write_text(json.dumps({**record, "segments": 2, "segment_starts": [1, 3]}))
    text = driver._report.write_report(tmp_path)
    assert (
        f"1 of {len(paths)} runs were resumed from checkpoints and trained in several "
        f"processes: {record['run_id']} (2, from epochs 1, 3)"
    ) in text
    assert "read their time ratios with care" in (tmp_path / "summary.md").read_text()


# ------------------------------------------------------------------ baselines of stopped runs


def _fake_train(calls: list[str], final: dict[str, list[list[int]]]):
    """A stand-in for ``train_run`` that records its calls and returns minimal records."""

    def train(spec, cfg, out, *, deadline=None):
        calls.append(spec.run_id)
        widths = final.get(spec.run_id, [list(block) for block in spec.widths])
        kind = "grown" if spec.where else "static"
        return {
            "run_id": spec.run_id,
            "kind": kind,
            "seed": spec.seed,
            "widths_final": widths,
            "final": {"test_acc": 0.5},
        }

    return train


def test_stopped_widths_reads_progress_snapshots_then_checkpoints(tmp_path: Path) -> None:
    spec = driver.RunSpec(((2,), (2,), (4,)), 0, "nagn")
    assert driver.stopped_widths(spec, tmp_path) is None  # nothing there yet
    checkpoint = tmp_path / "checkpoints" / f"{spec.run_id}.pt"
    checkpoint.parent.mkdir()

    def save_checkpoint(widths: list[list[int]], stop_reason: str | None) -> None:
        times = {"train_time_s": 1.0, "train_cpu_s": 1.0}
        epoch = {"widths": widths, "params": 1, "test_acc": 0.1, "val_acc": 0.1, **times}
        state = {"run_id": spec.run_id, "epochs": [epoch], "events": [], "segment_starts": [1]}
        grower = {"stopped": stop_reason is not None, "stop_reason": stop_reason}
        torch.save({**state, "config": {}, "data": {"train": 8}, "grower": grower}, checkpoint)

    save_checkpoint([[2], [2], [4]], None)
    assert driver.stopped_widths(spec, tmp_path) is None  # still growing
    save_checkpoint([[3], [2], [4]], "epoch 7")
    assert driver.stopped_widths(spec, tmp_path) == ((3,), (2,), (4,))
    progress = tmp_path / "progress" / f"{spec.run_id}.json"
    progress.parent.mkdir()
    progress.write_text(json.dumps({"widths_final": [[3], [3], [4]], "stop_reason": None}))
    assert driver.stopped_widths(spec, tmp_path) is None  # the snapshot is newer: growing
    progress.write_text(json.dumps({"widths_final": [[3], [3], [4]], "stop_reason": "epoch 9"}))
    assert driver.stopped_widths(spec, tmp_path) == ((3,), (3,), (4,))


@pytest.mark.parametrize(
    ("ends_at", "expected"),
    [
        ([[3], [2], [4]], ["static_3-2-4_s0", "grown-nagn_2-2-4_s0"]),  # the baseline once
        # A stale snapshot cannot leave a grown run without its true baseline.
        ([[4], [2], [4]], ["static_3-2-4_s0", "grown-nagn_2-2-4_s0", "static_4-2-4_s0"]),
    ],
)
def test_a_resumed_sweep_starts_the_baseline_of_a_stopped_run_first(
    ends_at: list[list[int]], expected: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, _ = driver.resolve_config(["--preset", "smoke", "--where", "nagn", "--jobs", "1"])
    grown = driver.RunSpec(cfg.configs[0], 0, "nagn")
    progress = tmp_path / "progress" / f"{grown.run_id}.json"
    progress.parent.mkdir(parents=True)
    progress.write_text(json.dumps({"widths_final": [[3], [2], [4]], "stop_reason": "stopped"}))
    calls: list[str] = []
    monkeypatch.setattr(train_module, "train_run", _fake_train(calls, {grown.run_id: ends_at}))
    monkeypatch.setattr(train_module, "prepare", lambda cfg: None)
    monkeypatch.setattr(sweep_module, "environment", lambda device: {})
    driver.run_sweep(cfg, tmp_path)
    assert calls == expected
