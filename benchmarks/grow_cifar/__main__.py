"""``python -m benchmarks.grow_cifar --preset smoke``: run a sweep (``sweep.main``)."""

import sys

from .sweep import main

if __name__ == "__main__":
    sys.exit(main())
