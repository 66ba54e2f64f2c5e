"""Reproduce "Where to grow" (section 4): NAGN-grown VGGs vs static baselines on CIFAR-10.

Example:
    python -m benchmarks.grow_cifar --preset smoke --out runs/smoke
"""

# Submodules are imported by name (``from benchmarks.grow_cifar import sweep``), so that
# ``python -m benchmarks.grow_cifar.analysis.report`` runs without importing the trainer.
