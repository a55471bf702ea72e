#!/usr/bin/env bash
# AutoDrop on a GPU machine, in under 3 minutes: the Trainer with AutoDropCallback under DDP and FSDP2
# (angles and AutoDrop's overhead per interval), then the cost of the reduction and of offload_to_cpu
# (snapshots in pinned CPU memory) against snapshots on the GPU, for a 270 M-parameter model.
#
#   bash bench/gpu_distributed.sh [output folder]   # one process per visible GPU (NCCL)
#   NPROC=1 bash bench/gpu_distributed.sh      # one GPU: DDP degenerates to one process (no wrapper);
#                                              # FSDP2 still shards over a 1-process mesh (DTensor path)
#   DEVICE=cpu NPROC=2 bash bench/gpu_distributed.sh   # smoke test of this script on CPU (gloo, small sizes;
#                                              # accelerate runs no FSDP on CPU, so "fsdp2" trains as DDP there)
#
# Five runs (four on CPU), each under `timeout` (RUN_TIMEOUT_S, default 60) and all within PART_BUDGET_S (default
# 170): a run is cut to what is left of the part's budget, so an overrun cannot eat the next parts of
# bench/gpu_all.sh. A failed run does not stop the others; the script exits non-zero if any failed.
# Logs and each run's numbers (JSON) go to the output folder (default $OUT or /tmp/gpu_distributed);
# the markdown tables are printed at the end and written to <output folder>/table.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-/tmp/gpu_distributed}}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-60}
PART_BUDGET_S=${PART_BUDGET_S:-170}
DEADLINE=$(( $(date +%s) + PART_BUDGET_S ))
if [ "$DEVICE" = cpu ]; then
  NPROC=${NPROC:-2}
  TRAINER=(--cpu --width 64 --depth 2 --samples 2048 --batch 64)
  COST=(--device cpu --width 256 --depth 2)
else
  NPROC=${NPROC:-$($PY -c "import torch; print(max(1, torch.cuda.device_count()))")}
  TRAINER=(--width 1024 --depth 6 --samples 16384 --batch 256)
  COST=(--device cuda --width 2048 --depth 8 --batch 64 --repeat 5)
fi
RUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC")
rm -f "$OUTDIR"/trainer-*.json "$OUTDIR"/cost-*.json
# Versions from the package metadata (importing transformers here would cost seconds for nothing).
$PY -c "from importlib.metadata import version as v; print(' | '.join(f'{p} {v(p)}' for p in ('torch', 'transformers', 'accelerate')), '| processes $NPROC | device $DEVICE')"

failed=0
# run NAME TAIL_LINES ARGS...: one timed run, its log in OUTDIR/NAME.log, its last lines printed.
run() {
  local name=$1 lines=$2; shift 2
  local left=$(( DEADLINE - $(date +%s) ))
  local limit=$(( left < RUN_TIMEOUT_S ? left : RUN_TIMEOUT_S ))
  if [ "$limit" -lt 5 ]; then
    echo "=== $name: skipped, the part's ${PART_BUDGET_S}s budget is spent"; failed=1; return
  fi
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local status=$?
  grep -v -i "warn" "$OUTDIR/$name.log" | tail -"$lines"
  if [ "$status" -ne 0 ]; then
    failed=1
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
      echo "=== $name: timed out after ${limit}s (log: $OUTDIR/$name.log)"
    else
      echo "=== $name: failed, exit $status (log: $OUTDIR/$name.log)"
    fi
  else
    echo "=== $name: ok in $(( $(date +%s) - t0 ))s"
  fi
}

# On CPU accelerate enables no FSDP, so the Trainer's "fsdp2" run would repeat the ddp run: the CPU smoke
# keeps only the offload run of --engine fsdp2 (same script and flags, plus --offload-to-cpu).
TRAINER_ENGINES=(ddp fsdp2)
if [ "$DEVICE" = cpu ]; then TRAINER_ENGINES=(ddp); fi
for engine in "${TRAINER_ENGINES[@]}"; do
  echo "=== Trainer + AutoDropCallback, --engine $engine, $NPROC process(es)"
  run "trainer-$engine" 9 "${RUN[@]}" bench/trainer_overhead.py --engine "$engine" "${TRAINER[@]}" \
    --output-dir "$OUTDIR/trainer-$engine" --json "$OUTDIR/trainer-$engine.json"
done
echo "=== Trainer + AutoDropCallback, --engine fsdp2 with offload_to_cpu"
run trainer-fsdp2-offload 9 "${RUN[@]}" bench/trainer_overhead.py --engine fsdp2 --offload-to-cpu "${TRAINER[@]}" \
  --output-dir "$OUTDIR/trainer-fsdp2-offload" --json "$OUTDIR/trainer-fsdp2-offload.json"
for engine in ddp fsdp2; do
  echo "=== Reduction and snapshot placement, --engine $engine"
  run "cost-$engine" 6 "${RUN[@]}" bench/distributed_cost.py --engine "$engine" "${COST[@]}" \
    --json "$OUTDIR/cost-$engine.json"
done

$PY bench/gpu_tables.py distributed "$OUTDIR" | tee "$OUTDIR/table.md"
exit $failed
