"""What ``import netsurgeon`` costs on top of ``import torch``.

Claim: importing netsurgeon adds at most 0.3 s to importing torch (optional dependencies such as
torchvision, timm and lightning are not imported, heavy helpers such as networkx and the FLOP
counter are imported on use).

Method: each measurement is a fresh interpreter (``python -c``) that times its own imports with
``time.perf_counter``, so interpreter start-up is left out and the OS file cache is warm after the
first repetition. ``torch`` alone and ``torch`` then ``netsurgeon`` run alternately, ``--reps``
times each; the medians are printed side by side with their difference and ratio, and the
modules of optional dependencies that the import pulled in are listed.

Usage::

    python benchmarks/bench_import.py --reps 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

# ----------------------------------------------------------------------------------------- config
OPTIONAL = ("torchvision", "timm", "lightning", "pytorch_lightning", "networkx", "triton")

_PROBE = """
import json, sys, time
start = time.perf_counter()
import torch
after_torch = time.perf_counter()
{extra}
end = time.perf_counter()
optional = sorted(m for m in {optional!r} if m in sys.modules)
print(json.dumps({{"torch": after_torch - start, "total": end - start, "optional": optional}}))
"""


# ---------------------------------------------------------------------------------------- measure
def _run(extra: str) -> dict:
    """One fresh interpreter importing torch, then ``extra``; its own timings."""
    code = _PROBE.format(extra=extra, optional=OPTIONAL)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(reps: int) -> dict[str, object]:
    """Median seconds of ``import torch`` alone and of ``import torch; import netsurgeon``."""
    torch_only, with_ns, optional = [], [], set()
    for _ in range(reps):
        torch_only.append(_run("")["total"])
        run = _run("import netsurgeon")
        with_ns.append(run["total"])
        optional.update(run["optional"])
    return {
        "torch": statistics.median(torch_only),
        "torch+netsurgeon": statistics.median(with_ns),
        "optional": sorted(optional),
    }


# ---------------------------------------------------------------------------------------- report
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="fresh interpreters per variant")
    args = parser.parse_args(argv)
    _run("import netsurgeon")  # warm the file cache
    result = measure(args.reps)
    base, total = result["torch"], result["torch+netsurgeon"]
    print(f"python {sys.version.split()[0]}, {args.reps} fresh interpreters per variant, medians")
    print(f"{'import torch':<34}{base:8.3f} s")
    print(f"{'import torch; import netsurgeon':<34}{total:8.3f} s")
    print(f"{'netsurgeon over torch':<34}{total - base:8.3f} s   ratio {total / base:.2f}x")
    print(f"optional modules imported: {', '.join(result['optional']) or 'none'}")


if __name__ == "__main__":
    main()
