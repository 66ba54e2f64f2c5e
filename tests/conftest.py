"""Shared test configuration: hypothesis profiles, a seeded torch, and the ``bench`` marker.

Layout: one folder per package under test (``graph/``, ``surgery/``, ``nagn/``, ``cost/``,
``integrations/``, ``models/``, ``zoo/``, ``api/``, ``bench/``), no ``__init__.py`` anywhere, so
test module basenames are unique across folders. The shared helper modules (``coupled_models``,
``ops_helpers``, ``training_helpers``, ...) live at this folder's root and are imported by
basename from any folder: pyproject's ``pythonpath = ["tests"]`` puts this folder on
``sys.path``. Fixtures shared by several folders live here; see tests/README.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=100,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") == "true" else "dev")
)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    """Every test starts from the same global torch seed, on one thread.

    The suite's tensors are tiny: one thread avoids OpenMP start-up and contention on small,
    shared machines (measured: a small BatchNorm call 30 ms with 2 threads under load, 75 us
    with 1), and resetting it per test undoes any test that sizes the pool itself.
    """
    torch.manual_seed(0)
    torch.set_num_threads(1)


BENCH = Path(__file__).resolve().parent / "bench"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under ``tests/bench/`` (the benchmark drivers' tests) carries ``bench``.

    The default run selects them (CI runs everything); ``-m "not bench"`` leaves them out.
    """
    for item in items:
        if BENCH in item.path.resolve().parents:
            item.add_marker(pytest.mark.bench)
