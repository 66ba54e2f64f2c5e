"""Reproduce "Where to grow" (section 4): NAGN-grown VGGs vs static baselines on CIFAR-10.

Claim under test (paper, Fig. 2b): over twelve VGG configurations x 5 seeds, the grown network's
test accuracy over that of a static network with the grown run's final widths (trained from
scratch, same seed, same protocol) is 1.016 +- 0.020, and the training-time ratio 0.953 +- 0.075.

Layout: ``config`` (settings and command line), ``presets``, ``data`` (the tensor pipeline),
``arch`` (model families), ``train`` (one run: one task), ``records`` and ``checkpoints`` (what
a run leaves in ``out/``), ``sweep`` (the task graph), ``launchers`` (local processes, Ray,
SLURM via submitit), ``analysis/`` (reads records only). See docs/benchmark.md.

Example:
    python -m benchmarks.grow_cifar --preset smoke --out runs/smoke
"""

# Submodules are imported by name (``from benchmarks.grow_cifar import sweep``), so that
# ``python -m benchmarks.grow_cifar.analysis.report`` runs without importing the trainer.
