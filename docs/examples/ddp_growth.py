"""Grow a small VGG while DistributedDataParallel trains it.

Run on CPU (gloo) or on GPUs (nccl, one process per GPU):

    torchrun --nproc-per-node 2 docs/examples/ddp_growth.py
    torchrun --nproc-per-node 2 docs/examples/ddp_growth.py --epochs 12 --device cuda

Each rank trains on its own shard of a synthetic 10-class set; NAGN and the validation accuracy
are reduced over the ranks inside ``grower.step``, so every rank makes the same growth, and
``netsurgeon.distributed.rewrap`` rebuilds the DDP wrapper around the widened module. Rank 0
prints each growth and, at the end, checks that every replica holds bit-identical parameters.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

import netsurgeon
from netsurgeon.distributed import rewrap, wrap
from netsurgeon.models import vgg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--samples", type=int, default=2048, help="training samples per rank")
    args = parser.parse_args()

    # ---- processes ----------------------------------------------------------------------------
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    )
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    # ---- data: a shard per rank, and a shared validation set ----------------------------------
    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn(10, 3, 16, 16, generator=g)
    val_y = torch.randint(0, 10, (512,), generator=g)
    val_x = torch.randn(512, 3, 16, 16, generator=g) + prototypes[val_y]
    shard = torch.Generator().manual_seed(1 + rank)
    y = torch.randint(0, 10, (args.samples,), generator=shard)
    x = torch.randn(args.samples, 3, 16, 16, generator=shard) + prototypes[y]
    x, y, val_x, val_y = x.to(device), y.to(device), val_x.to(device), val_y.to(device)

    # ---- model, optimizer, grower: built identically on every rank ----------------------------
    torch.manual_seed(0)
    model = vgg([[4], [4], [4]], num_classes=10, image_size=16).to(device)
    ddp = wrap(model, device_ids=[device.index] if cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    config = netsurgeon.GrowthConfig(w_acc=1, delta_acc=0.02, delta_stop=-1.0, max_growths=3)
    grower = netsurgeon.Grower(model, opt, config, example_inputs=x[:1], distributed=True)

    # ---- training -------------------------------------------------------------------------------
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(args.samples, generator=torch.Generator().manual_seed(epoch))
        for i in range(0, args.samples, 128):
            batch = order[i : i + 128].to(device)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(x[batch]), y[batch]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(val_x).argmax(1) == val_y).float().mean().item()
        event = grower.step(accuracy)  # a collective: every rank calls it
        if event is not None:
            ddp = rewrap(ddp)
        if rank == 0:
            grown = f"  grew {event.increments}, params -> {event.params_after:,}" if event else ""
            print(f"epoch {epoch:2d}  val acc {accuracy:.3f}{grown}", flush=True)

    # ---- every replica the same? ----------------------------------------------------------------
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    copies = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(copies, flat)
    if rank == 0:
        same = all(torch.equal(copies[0], c) for c in copies)
        print(f"widths {netsurgeon.trace(model).widths()}; replicas bit-identical: {same}")
    grower.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
