"""DDP behaviours pinned with hand-computed expectations: 2 CPU processes on gloo.

* With unequal shards the NAGN profile every rank plans from is the global one: the per-rank
  sums of ``||dL/dz||^2`` and of samples are summed, then divided. The model is
  ``Linear(1, 2) -> Linear(2, 1)`` with all weights 1 and no bias, trained with ``lr=0`` and the
  loss ``c_r * sum(out)``, so every sample of rank ``r`` has ``dL/dz = c_r`` per entry at the
  output and ``c_r * (1, 1)`` at the hidden layer; with ``reduction="sum"`` each sample adds
  ``c_r^2`` to either layer's sum (the hidden layer's ``2 c_r^2`` over its 2 entries). Rank 0 has
  1 sample and ``c_0 = 1``, rank 1 has 3 samples and ``c_1 = 3``, so every rank must see

      sqrt((1 * 1 + 3 * 9) / (1 + 3)) = sqrt(7) = 2.6458

  and neither rank's own value (1 or 3), nor the mean of the two (2), nor their root mean
  square (sqrt(5)), nor half the sum over the summed samples (sqrt(3.5)).
* ``netsurgeon.distributed.rewrap`` registers the old wrapper's communication hooks again: a
  counting hook keeps counting on the new wrapper.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="needs torch.distributed gloo",
    ),
]

WORLD = 2
SAMPLES = (1, 3)  # rank r's shard
SCALE = (1.0, 3.0)  # c_r: dL/dz per output entry on rank r


def _init(rank: int, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)


def _finish_collectives() -> None:
    """On the success path, every rank is done with its collectives (a barrier) before any rank
    destroys the process group: a rank that finishes first could otherwise close its gloo
    connections while the other still reads from them, and the other aborts ("terminate called
    without an active exception")."""
    dist.barrier()


def _ones_model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(1, 2, bias=False), nn.Linear(2, 1, bias=False)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    return model


def _profile_worker(rank: int, store: str, out: str) -> None:
    from netsurgeon.distributed import wrap
    from netsurgeon.nagn import Grower, GrowthConfig

    _init(rank, store)
    try:
        model = _ones_model()
        ddp = wrap(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        config = GrowthConfig(
            w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1, max_growths=1, reduction="sum"
        )
        grower = Grower(model, optimizer, config, distributed=True)
        x = torch.ones(SAMPLES[rank], 1, dtype=torch.float64)
        own = grower.monitor.profile
        read = _record_profiles(grower)
        for _epoch in range(2):  # the second step triggers (w_acc=1, delta_acc=1)
            optimizer.zero_grad()
            (SCALE[rank] * ddp(x)).sum().backward()
            optimizer.step()
            local = own()  # this rank's own samples
            grower.step(0.5)
        torch.save({"local": local, "read": read}, out)
        _finish_collectives()
    finally:
        dist.destroy_process_group()


def _record_profiles(grower) -> list[dict[str, float]]:
    """Every profile the grower reads from its monitor, in order."""
    read: list[dict[str, float]] = []
    original = grower.monitor.profile

    def recording(**kwargs):
        profile = original(**kwargs)
        read.append(profile)
        return profile

    grower.monitor.profile = recording
    return read


def test_with_unequal_shards_every_rank_plans_from_the_global_nagn_sums(tmp_path):
    """Mutations killed: the profile not all-reduced, the accumulators averaged over ranks."""
    store, out = str(tmp_path / "store"), str(tmp_path / "rank{}.pt")
    mp.spawn(_worker_entry, args=("profile", store, out), nprocs=WORLD, join=True)
    records = [torch.load(out.format(r), weights_only=False) for r in range(WORLD)]
    assert records[0]["local"] == pytest.approx({"0": 1.0, "1": 1.0}, rel=1e-12)
    assert records[1]["local"] == pytest.approx({"0": 3.0, "1": 3.0}, rel=1e-12)
    for record in records:
        (profile,) = record["read"]  # the one the trigger planned from
        assert profile == pytest.approx({"0": math.sqrt(7.0), "1": math.sqrt(7.0)}, rel=1e-12)


class _Calls:
    """The state of :func:`_counting_hook`."""

    def __init__(self) -> None:
        self.calls = 0


def _counting_hook(state, bucket):  # DDP refuses other return annotations than Future[Tensor]
    """A DDP communication hook that all-reduces and averages the bucket, counting its calls."""
    state.calls += 1
    tensor = bucket.buffer().div_(WORLD)
    future = dist.all_reduce(tensor, async_op=True).get_future()
    return future.then(lambda f: f.value()[0])


def _rewrap_worker(rank: int, store: str, out: str) -> None:
    import netsurgeon
    from netsurgeon.distributed import rewrap, wrap

    _init(rank, store)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        ddp = wrap(model)
        hook = _Calls()
        ddp.register_comm_hook(hook, _counting_hook)
        x = torch.randn(2, 3) * (rank + 1)
        ddp(x).sum().backward()
        before = hook.calls
        netsurgeon.widen(model, {"0": 2}, generator=torch.Generator().manual_seed(0))
        new = rewrap(ddp)
        model.zero_grad()
        new(x).sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        torch.save({"before": before, "after": hook.calls, "grads": grads}, out)
        _finish_collectives()
    finally:
        dist.destroy_process_group()


def test_rewrap_registers_the_communication_hooks_again(tmp_path):
    """Mutation killed: the loop re-registering ``ddp._comm_hooks`` removed from ``rewrap``."""
    store, out = str(tmp_path / "store"), str(tmp_path / "rank{}.pt")
    mp.spawn(_worker_entry, args=("rewrap", store, out), nprocs=WORLD, join=True)
    records = [torch.load(out.format(r), weights_only=False) for r in range(WORLD)]
    for record in records:
        assert record["before"] >= 1
        assert record["after"] > record["before"]  # the hook ran on the new wrapper
    for g0, g1 in zip(records[0]["grads"], records[1]["grads"], strict=True):
        assert torch.equal(g0, g1)  # the hook averaged the gradients across the ranks


def _worker_entry(rank: int, which: str, store: str, out: str) -> None:
    worker = _profile_worker if which == "profile" else _rewrap_worker
    worker(rank, store, out.format(rank))
