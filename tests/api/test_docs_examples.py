"""The documentation's examples run as written, and print what the text around them says.

Every ``python`` code block of ``docs/nagn.md`` and ``docs/widen.md`` that follows the marker line
``<!-- runs as written: tests/api/test_docs_examples.py -->`` is executed as a fresh script (on one
thread, as the whole suite runs). Beyond running, each example is checked against its text: the
manual epoch applies its plan; the training loop grows at the epochs the text names, within its
cap, and prints a plan whose header is the one shown; the widening example widens to the widths
in its comments; the ResNet example prints the summary of the widened model, not the stale
graph's.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

MARKER = "<!-- runs as written: tests/api/test_docs_examples.py -->"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _marked_blocks(path: Path) -> list[str]:
    text = path.read_text()
    pattern = re.escape(MARKER) + r"\s*```python\n(.*?)```"
    return re.findall(pattern, text, flags=re.DOTALL)


def _shown_group_plan(path: Path) -> str:
    """The printed group plan shown in ``path`` (the block that starts with its header)."""
    match = re.search(r"^```\n(GrowthPlan\([^\n]*groups: .*?)^```", path.read_text(), re.S | re.M)
    assert match, f"no printed group plan in {path.name}"
    return match.group(1)


BLOCKS = _marked_blocks(DOCS / "nagn.md")
WIDEN_BLOCKS = _marked_blocks(DOCS / "widen.md")


def _run(source: str, name: str) -> dict:
    namespace: dict = {"__name__": "__docs_example__"}
    exec(compile(source, name, "exec"), namespace)
    return namespace


def test_the_marked_blocks_are_found():
    assert len(BLOCKS) == 3
    assert len(WIDEN_BLOCKS) == 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_nagn_doc_example_runs_as_written(index, capsys):
    namespace = _run(BLOCKS[index], f"docs/nagn.md[{index}]")
    if "grower" in namespace:  # the training loop: it grew, within its cap, and said so
        _check_training_loop(namespace, capsys.readouterr().out)
    else:  # the manual epoch: the plan was applied
        model, plan = namespace["model"], namespace["plan"]
        assert plan.increments
        assert all(
            model.get_submodule(name).out_channels == plan.widths_after[name]
            for name in plan.increments
        )
    torch.set_num_threads(1)


def _check_training_loop(namespace: dict, out: str) -> None:
    """The text after the loop: growth at epoch 5 by 2 units, then at 10 (9 on more threads)
    cut to one unit each by ``max_params``; the printed plan's header as shown."""
    grower = namespace["grower"]
    assert not grower.monitor.attached
    cap = namespace["config"].max_params
    assert sum(p.numel() for p in namespace["model"].parameters()) <= cap
    epochs = [event.epoch for event in grower.history]
    assert epochs[0] == 5 and grower.history[0].increments == {"blocks.2.0.conv": 2}
    assert epochs[1] in (9, 10), epochs
    assert grower.history[1].increments == {"blocks.1.0.conv": 1, "blocks.2.0.conv": 1}
    assert grower.history[1].params_after == 323
    header, columns = _shown_group_plan(DOCS / "nagn.md").splitlines()[:2]
    header_pattern = re.escape(header).replace(r"m=0\.07439", r"m=[-+0-9.e]+")
    assert re.search(header_pattern, out), header
    assert columns in out.splitlines()
    assert f"epoch {epochs[0]}: val acc" in out and "GrowthPlan(" in out


def test_the_widen_doc_example_widens_to_the_widths_in_its_comments(capsys):
    namespace = _run(WIDEN_BLOCKS[0], "docs/widen.md[0]")
    model = namespace["model"]
    assert "['0', '5']" in capsys.readouterr().out
    assert (model[0].out_channels, model[1].num_features) == (12, 12)
    assert (model[5].in_features, model[5].out_features, model[7].in_features) == (48, 24, 24)


def test_the_resnet_doc_example_prints_the_widened_models_summary(capsys):
    namespace = _run(WIDEN_BLOCKS[1], "docs/widen.md[1]")
    assert (namespace["stream"].name, namespace["stream"].producers) == (
        "conv1",
        ("conv1", "layer1.0.conv2", "layer1.1.conv2"),
    )
    assert namespace["model"].layer1[0].conv2.out_channels == 80
    before, after = re.split(r"^group ", capsys.readouterr().out, flags=re.MULTILINE)[1:3]
    row = re.compile(r"^conv1\s+conv1, layer1\.0\.conv2, layer1\.1\.conv2\s+(\d+)\s", re.MULTILINE)
    assert row.search(before).group(1) == "64"
    assert row.search(after).group(1) == "80"  # the re-traced graph, not the stale one
