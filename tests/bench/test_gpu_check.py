"""benchmarks/gpu_check.sh, CPU dry run: each call ends cleanly in its limit, the next resumes.

The exactness of resuming is tested in process (test_launchers.py, a sweep cut three times);
here the script's own plumbing: limits, the one output folder, and a call that picks up after
another.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _call(out: Path, limit: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, "MARGIN_S": "5", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), str(limit), "--dry"],
        env=env,
        capture_output=True,
        text=True,
        timeout=limit + 60,
        check=False,
    )


def test_the_dry_run_finishes_over_calls_with_records_and_figures_in_one_folder(
    tmp_path: Path,
) -> None:
    for _ in range(6):  # until both runs (grown, then its static baseline) have their records
        done = _call(tmp_path, 60)
        assert done.returncode == 0, done.stdout + done.stderr
        finished = list((tmp_path / "runs").glob("*.json"))
        if len(finished) == 2 and not list((tmp_path / "checkpoints").glob("*.pt")):
            break
    runs = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")}
    assert sorted(runs) == [
        "grown-nagn_2-2-4_s0",
        f"{runs['grown-nagn_2-2-4_s0']['baseline_run_id']}",
    ]
    assert (tmp_path / "summary.md").is_file()
    assert list((tmp_path / "figures").glob("*.png"))
    assert (
        "passed" in (tmp_path / "pytest-gpu.log").read_text()
        or "skipped" in (tmp_path / "pytest-gpu.log").read_text()
    )
