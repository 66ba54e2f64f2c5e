"""The documentation's examples run as written.

Every ``python`` code block of ``docs/nagn.md`` that follows the marker line
``<!-- runs as written: tests/test_docs_examples.py -->`` is executed as a fresh script; the
training-loop example must also grow the model, as the text around it says.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

MARKER = "<!-- runs as written: tests/test_docs_examples.py -->"
DOCS = Path(__file__).resolve().parent.parent / "docs"


def _marked_blocks(path: Path) -> list[str]:
    text = path.read_text()
    pattern = re.escape(MARKER) + r"\s*```python\n(.*?)```"
    return re.findall(pattern, text, flags=re.DOTALL)


BLOCKS = _marked_blocks(DOCS / "nagn.md")


def test_the_marked_blocks_are_found():
    assert len(BLOCKS) == 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_nagn_doc_example_runs_as_written(index, capsys):
    namespace: dict = {"__name__": "__docs_example__"}
    exec(compile(BLOCKS[index], f"docs/nagn.md[{index}]", "exec"), namespace)
    if "grower" in namespace:  # the training loop: it grew, within its cap, and said so
        grower = namespace["grower"]
        assert len(grower.history) >= 1
        cap = namespace["config"].max_params
        assert sum(p.numel() for p in namespace["model"].parameters()) <= cap
        assert "GrowthPlan(" in capsys.readouterr().out
        assert not grower.monitor.attached
    else:  # the manual epoch: the plan was applied
        model, plan = namespace["model"], namespace["plan"]
        assert plan.increments
        assert all(
            model.get_submodule(name).out_channels == plan.widths_after[name]
            for name in plan.increments
        )
    torch.set_num_threads(1)
