"""RunRecord: the typed run record reads every committed record and writes it back unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.grow_cifar.records import RunRecord, SweepError

pytestmark = pytest.mark.bench

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
COMMITTED = sorted(RESULTS.glob("*/runs/*.json"))


def test_there_are_committed_records_to_check() -> None:
    assert len(COMMITTED) >= 40  # the published sweeps under benchmarks/results


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parents[1].name}/{p.stem}")
def test_every_committed_record_loads_and_writes_back_the_same_json(path: Path) -> None:
    text = path.read_text()
    record = RunRecord.from_dict(json.loads(text), path)
    assert record.run_id == path.stem
    assert record.kind == ("grown" if record.where else "static")
    assert json.dumps(record.to_dict(), indent=1) == json.dumps(json.loads(text), indent=1)


def test_unknown_keys_survive_a_round_trip() -> None:
    data = json.loads(COMMITTED[0].read_text())
    data["note"] = {"by": "hand"}
    record = RunRecord.from_dict(data)
    assert record.extra == {"note": {"by": "hand"}}
    assert record.to_dict() == data


def test_a_record_missing_a_field_is_refused_naming_the_field_and_file() -> None:
    data = json.loads(COMMITTED[0].read_text())
    del data["widths_final"]
    with pytest.raises(SweepError, match=r"lacks \['widths_final'\].*delete it and rerun"):
        RunRecord.from_dict(data, COMMITTED[0])
