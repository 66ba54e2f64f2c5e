"""``benchmarks/transformer_coverage.py`` reports what it claims: the decoders of the tests and
``nn.TransformerEncoderLayer`` (pre- and post-LN) are fully widenable and exact."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import transformer_coverage

pytestmark = pytest.mark.bench


def _parse(line: str) -> tuple[int, int, float]:
    found = re.search(r": (\d+)/(\d+) widenable, relative error (\S+),", line)
    assert found, line
    return int(found[1]), int(found[2]), float(found[3])


@pytest.mark.parametrize("name", ["GPT2", "Llama"])
def test_the_reference_decoders_are_fully_widenable_and_exact(name: str) -> None:
    widenable, layers, error = _parse(transformer_coverage.coverage(name))
    assert widenable == layers > 0
    assert error <= 1e-9


@pytest.mark.parametrize("name", ["encoder_prenorm", "encoder_postnorm"])
def test_an_encoder_layer_is_fully_widenable_and_exact(name: str) -> None:
    line = transformer_coverage.coverage(name)
    widenable, layers, error = _parse(line)
    assert widenable == layers == 4  # the input projection, out_proj (inside MHA), linear1, linear2
    assert error <= 1e-9
    assert ("mean_pad" if name == "encoder_prenorm" else "tile") in line
    assert "first block:" not in line
