"""``netsurgeon.distributed`` and the optional extras, without starting any process group.

Invariants tested: every entry point that needs ``torch.distributed`` says so (and how to fix it)
when no process group is initialised; ``rewrap`` names what it expects; ``import netsurgeon``
imports neither Lightning nor the integrations package.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netsurgeon import MonitorError, NetsurgeonError, NetsurgeonTypeError
from netsurgeon.distributed import (
    agree_on_accuracy,
    check_same_on_all_ranks,
    is_distributed,
    rewrap,
)
from netsurgeon.nagn import Grower, GrowthConfig, NAGNMonitor


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_without_a_process_group_the_distributed_entry_points_say_what_to_do():
    assert not is_distributed()
    with pytest.raises(NetsurgeonError, match="init_process_group"):
        agree_on_accuracy(0.5)
    with pytest.raises(NetsurgeonError, match="init_process_group"):
        check_same_on_all_ranks(1, "a value")
    model = _net()
    monitor = NAGNMonitor(model, every=1)
    F.cross_entropy(model(torch.randn(4, 4)), torch.zeros(4).long()).backward()
    assert monitor.profile()  # the local profile works
    with pytest.raises(MonitorError, match="init_process_group"):
        monitor.profile(all_reduce=True)
    with pytest.raises(NetsurgeonError, match="init_process_group"):
        Grower(model, torch.optim.SGD(model.parameters(), 0.1), GrowthConfig(), distributed=True)


def test_rewrap_expects_the_ddp_wrapper():
    with pytest.raises(NetsurgeonTypeError, match="DistributedDataParallel"):
        rewrap(_net())


def test_import_netsurgeon_imports_no_optional_extra():
    code = (
        "import sys, netsurgeon\n"
        "extras = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')"
        " or m.startswith('netsurgeon.integrations')]\n"
        "print(extras)\n"
        "raise SystemExit(1 if extras else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
