#!/usr/bin/env bash
# The paper's whole Fig. 2b sweep on one GPU, in slices: each call stops cleanly before LIMIT_S
# seconds and the next call resumes where it stopped.
#
#   benchmarks/gpu_check.sh OUT_DIR LIMIT_S          # on a GPU machine (e.g. LIMIT_S=540)
#   benchmarks/gpu_check.sh OUT_DIR LIMIT_S --dry    # CPU dry run: smoke preset, --device cpu
#
# 1. `pytest -m gpu` (the library's device tests), log in OUT_DIR/pytest-gpu.log.
# 2. `--preset paper` (12 configs x 5 seeds x 200 epochs, grown + static: 120 runs) with every
#    run resident on the device: --jobs is sized from free device memory (RUN_GIB per run) and
#    CPU cores. Each run checkpoints every CHECKPOINT_EVERY epochs and at the time limit.
# Records, checkpoints, summary.md and figures/ all land in OUT_DIR (fetch it, commit it, or
# pass it to the next call). Exit 0 when the slice ended cleanly, finished or not: the last line
# says how many runs are left.
#
# Data: CIFAR-10 from $NETSURGEON_DATA (holds cifar-10-batches-py/, or train/ and test/ image
# folders), else synthetic CIFAR-sized images (only the mechanics are then meaningful).
set -euo pipefail

OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR LIMIT_S [--dry]}
LIMIT=${2:?usage: benchmarks/gpu_check.sh OUT_DIR LIMIT_S [--dry]}
MODE=${3:-gpu}
START=$(date +%s)
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
MARGIN=${MARGIN_S:-30}           # seconds kept for the report and figures (10-20 s) after the runs stop
RUN_GIB=${RUN_GIB:-2}            # device memory per resident run (data, model, CUDA context)
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-5}

DATA_DIR=${NETSURGEON_DATA:-data}
if [ -d "$DATA_DIR/cifar-10-batches-py" ]; then
    DATA=(--dataset cifar10 --data-dir "$DATA_DIR")
elif [ -d "$DATA_DIR/train" ]; then
    DATA=(--dataset imagefolder --data-dir "$DATA_DIR")
else
    DATA=(--dataset synthetic)
fi

if [ "$MODE" = "--dry" ]; then
    SWEEP=(--preset smoke --where nagn --device cpu --jobs 1 --checkpoint-every 1)
    TESTS=(tests/api/test_gpu.py)
else
    JOBS=$("$PY" - "$RUN_GIB" <<'EOF'
import os, sys, torch
free, _ = torch.cuda.mem_get_info()
print(max(1, min(int(free / 2**30 // float(sys.argv[1])), os.cpu_count() or 1)))
EOF
)
    SWEEP=(--preset paper "${DATA[@]}" --device cuda --jobs "$JOBS" --threads 1
           --checkpoint-every "$CHECKPOINT_EVERY")
    TESTS=(tests)
fi

left() { echo $(( LIMIT - ($(date +%s) - START) )); }
echo "# gpu_check: ${SWEEP[*]} -> $OUT, limit ${LIMIT}s"
timeout "$(( $(left) > 1 ? $(left) / 3 : 1 ))" "$PY" -m pytest -m gpu -q -p no:cacheprovider \
    "${TESTS[@]}" > "$OUT/pytest-gpu.log" 2>&1 || echo "# pytest -m gpu: exit $? (see pytest-gpu.log)"
tail -n 1 "$OUT/pytest-gpu.log"

BUDGET=$(( $(left) - MARGIN ))
if [ "$BUDGET" -le 0 ]; then
    echo "# no time left for the sweep; call again with a larger LIMIT_S"
    exit 0
fi
# --time-limit stops each run at an epoch boundary, checkpointed, leaving MARGIN for the report;
# timeout is only a safety net (a kill loses at most the epochs since the last checkpoint).
timeout "$(( $(left) > 3 ? $(left) - 2 : 1 ))" "$PY" -m benchmarks.grow_cifar "${SWEEP[@]}" \
    --time-limit "$BUDGET" --out "$OUT" > "$OUT/sweep.log" 2>&1 \
    || echo "# sweep exit $? (see sweep.log)"
grep -E "^# (time limit|report)" "$OUT/sweep.log" || true
echo "# runs finished: $(ls "$OUT/runs" 2>/dev/null | wc -l), checkpointed: $(ls "$OUT/checkpoints" 2>/dev/null | wc -l)"
