"""Shared test configuration: hypothesis profiles and a seeded torch."""

from __future__ import annotations

import os

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
