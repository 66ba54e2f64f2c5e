#!/usr/bin/env bash
# One prepared GPU check of benchmarks/cifar_vgg.py, sized for < 8 minutes on one H200.
#
#   benchmarks/gpu_check.sh OUT_DIR          # on a GPU machine
#   benchmarks/gpu_check.sh OUT_DIR --dry    # tiny CPU dry run of the same steps (~2 min)
#
# 1. Sub-sweep of the paper preset: 6 of the 12 Fig. 2b configs x 2 seeds x 100 epochs (paper:
#    200), grown (NAGN) + static baselines, --jobs 8 runs sharing the GPU.
# 2. Throughput: the same 8 short runs with --jobs 1 and with --jobs 8; images/s per run and in
#    aggregate (does --jobs overlap runs on one device?).
# Each phase has a time limit; a phase cut short still reports the runs that finished (resume
# makes a rerun continue where it stopped). Summary, figures and throughput.md land in OUT_DIR.
#
# Data: CIFAR-10 from $CIFAR_DIR (holds cifar-10-batches-py/), else an ImageFolder copy at
# $IMAGEFOLDER_DIR (default /tmp/cifar10-jpeg), else synthetic CIFAR-sized images (throughput
# only is then meaningful; the summary says which data was used).
set -euo pipefail

OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--dry]}
MODE=${2:-gpu}
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK_DIR:-$OUT/work}

if [ -n "${CIFAR_DIR:-}" ] && [ -d "$CIFAR_DIR/cifar-10-batches-py" ]; then
    DATA=(--dataset cifar10 --data-dir "$CIFAR_DIR")
elif [ -d "${IMAGEFOLDER_DIR:-/tmp/cifar10-jpeg}/train" ]; then
    DATA=(--dataset imagefolder --data-dir "${IMAGEFOLDER_DIR:-/tmp/cifar10-jpeg}")
else
    DATA=(--dataset synthetic)
fi

if [ "$MODE" = "--dry" ]; then
    DEVICE=(--device cpu); JOBS=2; EPOCHS=7; THROUGHPUT_EPOCHS=7; SEEDS=0
    CONFIGS=(2/2/2 2/2/4); THROUGHPUT_SEEDS=0-1; LIMIT_SWEEP=300; LIMIT_TP=150
    DATA=(--dataset synthetic)
else
    DEVICE=(--device cuda); JOBS=8; EPOCHS=100; THROUGHPUT_EPOCHS=7; SEEDS=0,1
    CONFIGS=(4/4/4 4/4/8 8/8/8 4/8/16 4,4/4,4/4,4 2,2,2/4,4,4/8,8,8); THROUGHPUT_SEEDS=0-7
    LIMIT_SWEEP=270; LIMIT_TP=75
fi

echo "# gpu_check: data ${DATA[*]}, device ${DEVICE[*]}, out $OUT"
"$PY" -c "import torch; print('# torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

# 1. accuracy / time ratios on a sub-sweep of the paper preset
timeout "$LIMIT_SWEEP" "$PY" benchmarks/cifar_vgg.py --preset paper "${DATA[@]}" "${DEVICE[@]}" \
    --configs "${CONFIGS[@]}" --seeds "$SEEDS" --epochs "$EPOCHS" --jobs "$JOBS" \
    --out "$WORK/sweep" > "$OUT/sweep.log" || echo "# sweep stopped (exit $?): reporting the finished runs"

# 2. throughput with one job and with $JOBS jobs (same 8 runs each)
for jobs in 1 "$JOBS"; do
    timeout "$LIMIT_TP" "$PY" benchmarks/cifar_vgg.py --preset paper "${DATA[@]}" "${DEVICE[@]}" \
        --configs 8/8/16 --seeds "$THROUGHPUT_SEEDS" --epochs "$THROUGHPUT_EPOCHS" \
        --jobs "$jobs" --out "$WORK/throughput-jobs$jobs" >/dev/null \
        || echo "# throughput --jobs $jobs stopped (exit $?)"
done

# 3. summary into OUT
"$PY" benchmarks/_report.py "$WORK/sweep" > "$OUT/sweep-table.md" || true
for f in summary.md summary.csv; do
    [ -f "$WORK/sweep/$f" ] && cp "$WORK/sweep/$f" "$OUT/$f"
done
[ -d "$WORK/sweep/figures" ] && cp -r "$WORK/sweep/figures" "$OUT/"
{
    echo "# Throughput (training images/s; aggregate = all runs' training images / sweep wall time)"
    echo
    "$PY" benchmarks/_report.py --throughput "$WORK/throughput-jobs1" "$WORK/throughput-jobs$JOBS"
} > "$OUT/throughput.md"
cat "$OUT/sweep-table.md" "$OUT/throughput.md"
