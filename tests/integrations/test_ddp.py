"""Growth under ``DistributedDataParallel``: 2 CPU processes on the gloo backend.

Each rank trains on its own shard, so the ranks' local NAGN profiles differ, and each passes a
different validation accuracy. Invariants tested:

* every rank sees the same accuracy (the mean) and the same NAGN profile, which is the NAGN of
  all samples of all ranks: ``sqrt(sum_r p_r^2 n_r / sum_r n_r)`` from each rank's local profile
  ``p_r`` over ``n_r`` samples; so every rank makes the same plan;
* the new weights are bit-identical on every rank right after each growth, before re-wrapping;
* after two growths and ``netsurgeon.distributed.rewrap``, every replica has bit-identical
  parameters and optimizer state, and training continues.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="needs torch.distributed gloo",
    ),
]

WORLD = 2


def _worker(rank: int, store: str, out: str) -> None:
    import netsurgeon
    from netsurgeon.distributed import rewrap, wrap
    from netsurgeon.models import vgg
    from netsurgeon.nagn import Grower, GrowthConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)  # the same initial model on every rank
        model = vgg([[4], [4]], num_classes=3, image_size=8)
        ddp = wrap(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        cfg = GrowthConfig(w_acc=1, delta_acc=1.0, delta_stop=-1.0, every=1, max_growths=2)
        grower = Grower(model, opt, cfg, distributed=True)
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
        x = torch.randn(32, 3, 8, 8, generator=g) * (1 + rank)
        y = torch.randint(0, 3, (32,), generator=g)
        record: dict = {"local": [], "grown": [], "losses": []}
        for _epoch in range(5):
            for i in range(0, 32, 8):
                opt.zero_grad()
                loss = F.cross_entropy(ddp(x[i : i + 8]), y[i : i + 8])
                loss.backward()
                opt.step()
                record["losses"].append(loss.item())
            if not grower.stopped:
                record["local"].append((grower.monitor.profile(), grower.monitor.samples))
            event = grower.step(0.4 + 0.1 * rank)
            if event is not None:
                record["grown"].append([p.detach().clone() for p in model.parameters()])
                ddp = rewrap(ddp)
        record["params"] = [p.detach().clone() for p in model.parameters()]
        record["state"] = [
            {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()
        ]
        record["history"] = [(e.increments, e.profile) for e in grower.history]
        record["accuracies"] = grower.accuracies
        record["widths"] = netsurgeon.trace(model).widths()
        torch.save(record, f"{out}/rank{rank}.pt")
        dist.barrier()  # no rank closes its gloo connections while another still uses them
    finally:
        dist.destroy_process_group()


def test_two_growths_under_ddp_keep_every_replica_bit_identical(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD))

    # the same accuracy and the same global profile on both ranks, so the same plans
    assert r0["accuracies"] == r1["accuracies"] == [pytest.approx(0.45)] * 5
    assert len(r0["history"]) == 2 and r0["history"] == r1["history"]
    for k, (_increments, profile) in enumerate(r0["history"]):
        trigger = 2 * k + 1  # growths at epochs 2 and 4 (0-based 1 and 3)
        (p0, n0), (p1, n1) = r0["local"][trigger], r1["local"][trigger]
        assert p0 != p1  # the ranks saw different data: the all-reduce matters
        for name, nagn in profile.items():
            expected = math.sqrt(
                (p0[name] ** 2 * n0[name] + p1[name] ** 2 * n1[name]) / (n0[name] + n1[name])
            )
            assert nagn == pytest.approx(expected, rel=1e-12), name
    assert (
        r0["widths"]
        == r1["widths"]
        != {"blocks.0.0.conv": 4, "blocks.1.0.conv": 4, "classifier.0": 3}
    )

    # the new weights were drawn identically on both ranks, before any re-wrap broadcast
    for a, b in zip(r0["grown"], r1["grown"], strict=True):
        for u, v in zip(a, b, strict=True):
            assert torch.equal(u, v)
    # after two growths and more training: replicas and optimizer states bit-identical
    for u, v in zip(r0["params"], r1["params"], strict=True):
        assert torch.equal(u, v)
    for s0, s1 in zip(r0["state"], r1["state"], strict=True):
        assert s0.keys() == s1.keys()
        for key in s0:
            assert torch.equal(s0[key], s1[key]), key
    # training continued after the second growth (epoch 5 ran on the re-wrapped model)
    assert len(r0["losses"]) == 5 * 4 and all(math.isfinite(v) for v in r0["losses"])
    assert any(not torch.equal(u, v) for u, v in zip(r0["grown"][-1], r0["params"], strict=True))
