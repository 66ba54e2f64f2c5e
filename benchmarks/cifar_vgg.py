#!/usr/bin/env python
"""Entry point kept for the docs and published results: runs ``python -m benchmarks.grow_cifar``.

    python benchmarks/cifar_vgg.py --preset smoke --out runs/smoke

Run as a script, Python puts ``benchmarks/`` (not the repository) on the import path, so the
package is started in a fresh interpreter whose PYTHONPATH holds the repository; its worker
processes (local, Ray, submitit) inherit it. Arguments and the working directory pass unchanged.
"""

import os
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "benchmarks.grow_cifar", *sys.argv[1:]]
    sys.exit(subprocess.call(command, env={**os.environ, "PYTHONPATH": path}))
