"""How large are the new units' first Adam updates after ``widen(..., optimizer=adam)``?

Claim under test (``netsurgeon/surgery/optim.py`` policy): new coordinates start with
``exp_avg = exp_avg_sq = 0`` but share the optimizer's ``step`` t, so their bias corrections are
those of step ``t + 1``, not of step 1. Their first update is then

    |delta| = lr * (1 - b1) / (1 - b1^(t+1)) * sqrt((1 - b2^(t+1)) / (1 - b2))    (eps ignored)

against ``lr`` for a freshly initialised parameter's first update (step 1: m_hat = g,
v_hat = g^2, |delta| = lr). The ratio is ~0.98 at t = 100, ~2.5 at t = 1000 and tends to
(1 - b1) / sqrt(1 - b2) = 3.16 for the default betas. After the first update it keeps growing for
~10 steps while exp_avg fills faster than exp_avg_sq (up to ~6.5x lr under a constant gradient at
large t), because the b2 correction stays that of a large step.

Measurement: an MLP (16 -> 32 -> 32 -> 4, tanh) regressing a fixed random teacher, trained for t
steps with Adam or AdamW (default betas and eps, lr 1e-3, batch 64), then layer "0" widened by 8
units with the paper's init and the optimizer carried along. For the next batch we take the
actual update of the new units' outgoing weights (layer "2"'s new columns: the only new
coordinates with a nonzero gradient at step t+1) and of their incoming rows at step t+2 (their
first nonzero gradient), and compare each with the update a fresh optimizer of the same kind
(step 1) makes from the same gradient. Reported: the mean over coordinates of
|delta_carried| / |delta_fresh|, mean +- std over seeds, next to the formula. Also: the mean
|delta| / lr of the new and of the old coordinates over the first 20 steps after widening.
CPU, float32, one thread.

Run: ``python benchmarks/adam_new_units.py [--steps 100 1000 10000] [--seeds 3] [--out r.json]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import netsurgeon
from netsurgeon._version import __version__

# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Config:
    steps: tuple[int, ...] = (100, 1000, 10000)  # Adam steps t before the widening
    seeds: int = 3  # independent runs per setting
    optimizers: tuple[str, ...] = ("Adam", "AdamW")  # default betas (0.9, 0.999), eps 1e-8
    lr: float = 1e-3
    batch: int = 64
    sizes: tuple[int, ...] = (16, 32, 32, 4)  # MLP widths, input to output
    layer: str = "0"  # the layer widened (its consumer is "2")
    units: int = 8  # units added
    after: int = 20  # steps after the widening for the trajectory columns
    extra: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- model and data


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    return getattr(torch.optim, name)(params, lr=lr)


def batches(cfg: Config, g: torch.Generator):
    teacher = mlp((cfg.sizes[0], 64, cfg.sizes[-1]))
    for p in teacher.parameters():
        p.requires_grad_(False)
    while True:
        x = torch.randn(cfg.batch, cfg.sizes[0], generator=g)
        yield x, teacher(x)


def step(model: nn.Module, optimizer: torch.optim.Optimizer, batch) -> None:
    optimizer.zero_grad()
    x, y = batch
    F.mse_loss(model(x), y).backward()
    optimizer.step()


def fresh_update(name: str, param: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """The update a freshly created optimizer (step 1) makes from ``grad`` on ``param``."""
    clone = nn.Parameter(param.detach().clone())
    clone.grad = grad.clone()
    make_optimizer(name, [clone], lr).step()
    return (clone.detach() - param.detach()).abs()


def predicted_ratio(t: int, betas: tuple[float, float] = (0.9, 0.999)) -> float:
    """First update of a zero-state coordinate at shared step t+1, relative to lr."""
    b1, b2 = betas
    return (1 - b1) / (1 - b1 ** (t + 1)) * ((1 - b2 ** (t + 1)) / (1 - b2)) ** 0.5


# ----------------------------------------------------------------------------- measurement


def run(cfg: Config, name: str, t: int, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = batches(cfg, g)
    model = mlp(cfg.sizes)
    optimizer = make_optimizer(name, model.parameters(), cfg.lr)
    for _ in range(t):
        step(model, optimizer, next(data))
    old_out = model[0].out_features
    netsurgeon.widen(model, {cfg.layer: cfg.units}, optimizer=optimizer, generator=g)
    producer, consumer = model[0], model[2]

    # Step t+1: only the consumer's new columns have a gradient.
    batch = next(data)
    optimizer.zero_grad()
    x, y = batch
    F.mse_loss(model(x), y).backward()
    cols = (slice(None), slice(old_out, None))
    before = consumer.weight.detach().clone()
    fresh_cols = fresh_update(name, consumer.weight, consumer.weight.grad, cfg.lr)[cols]
    row_grad_zero = bool((producer.weight.grad[old_out:] == 0).all())
    optimizer.step()
    carried_cols = (consumer.weight.detach() - before).abs()[cols]
    new_abs, old_abs = (
        [carried_cols.mean().item()],
        [(consumer.weight.detach() - before)[:, :old_out].abs().mean().item()],
    )

    # Step t+2: the new rows get their first nonzero gradient.
    optimizer.zero_grad()
    x, y = next(data)
    F.mse_loss(model(x), y).backward()
    rows = slice(old_out, None)
    before_rows = producer.weight.detach().clone()
    before_cons = consumer.weight.detach().clone()
    fresh_rows = fresh_update(name, producer.weight, producer.weight.grad, cfg.lr)[rows]
    optimizer.step()
    carried_rows = (producer.weight.detach() - before_rows).abs()[rows]
    delta = (consumer.weight.detach() - before_cons).abs()
    new_abs.append(delta[cols].mean().item())
    old_abs.append(delta[:, :old_out].mean().item())

    # Steps t+3 ... t+after: the new columns' update size against the old columns'.
    for _ in range(cfg.after - 2):
        before_cons = consumer.weight.detach().clone()
        step(model, optimizer, next(data))
        delta = (consumer.weight.detach() - before_cons).abs()
        new_abs.append(delta[cols].mean().item())
        old_abs.append(delta[:, :old_out].mean().item())

    mask = fresh_cols > 0
    return {
        "first_update_ratio_columns": (carried_cols[mask] / fresh_cols[mask]).mean().item(),
        "first_update_ratio_rows": (carried_rows / fresh_rows).mean().item(),
        "predicted_columns": predicted_ratio(t),
        "predicted_rows": predicted_ratio(t + 1),
        "rows_gradient_zero_at_first_step": float(row_grad_zero),
        "fresh_first_update_over_lr": fresh_cols.mean().item() / cfg.lr,
        "new_update_over_lr_max_first_steps": max(new_abs) / cfg.lr,
        "new_update_over_lr_mean_first_steps": statistics.mean(new_abs) / cfg.lr,
        "old_update_over_lr_mean_first_steps": statistics.mean(old_abs) / cfg.lr,
    }


def summarize(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=list(Config.steps))
    parser.add_argument("--seeds", type=int, default=Config.seeds)
    parser.add_argument("--out", default=None, help="write config, environment and results here")
    args = parser.parse_args()
    cfg = Config(steps=tuple(args.steps), seeds=args.seeds)
    torch.set_num_threads(1)

    results = []
    header = (
        f"{'optimizer':9} {'t':>6} | {'cols ratio':>13} {'pred':>5} | {'rows ratio':>13} "
        f"{'pred':>5} | {'new/lr max':>10} {'new/lr':>7} {'old/lr':>7}  (first {cfg.after} steps)"
    )
    print(header)
    print("-" * len(header))
    for name in cfg.optimizers:
        for t in cfg.steps:
            runs = [run(cfg, name, t, seed) for seed in range(cfg.seeds)]
            row = {k: summarize([r[k] for r in runs]) for k in runs[0]}
            results.append({"optimizer": name, "t": t, **{k: list(v) for k, v in row.items()}})
            c, r = row["first_update_ratio_columns"], row["first_update_ratio_rows"]
            print(
                f"{name:9} {t:>6} | {c[0]:6.3f} +- {c[1]:4.3f} {row['predicted_columns'][0]:5.2f} | "
                f"{r[0]:6.3f} +- {r[1]:4.3f} {row['predicted_rows'][0]:5.2f} | "
                f"{row['new_update_over_lr_max_first_steps'][0]:10.2f} "
                f"{row['new_update_over_lr_mean_first_steps'][0]:7.2f} "
                f"{row['old_update_over_lr_mean_first_steps'][0]:7.2f}"
            )
    record = {
        "config": asdict(cfg),
        "environment": {
            "netsurgeon": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
        },
        "results": results,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
