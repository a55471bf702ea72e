#!/usr/bin/env bash
# Every GPU number the docs wait for, in ONE command under 10 minutes on one GPU, offline:
#
#   bash bench/gpu_all.sh [output folder]       # default: $OUT, else out/gpu_all
#   DEVICE=cpu bash bench/gpu_all.sh /tmp/smoke # the CPU smoke test of the same script (tiny sizes, gloo)
#   bash bench/gpu_all.sh --budgets             # print the parts' budgets and their sum; runs nothing
#
# Parts, in order, each under `timeout` with its own budget (seconds, GPU; env overrides):
#   setup        SETUP_S=45    versions, the GPU, and a synthetic uoft-cs/cifar10 in the Hub's schema
#                              (50,000 + 10,000 PNGs, recipes/hub_schema.py), written once for both CIFAR parts
#   cifar_epoch  EPOCH_S=75    bench/gpu_cifar_epoch.sh: one recipe epoch, images/s, GPU busy fraction
#   distributed  DIST_S=150    bench/gpu_distributed.sh: Trainer + AutoDrop under DDP / FSDP2 / offload,
#                              reduction and snapshot placement on a 270 M-parameter model (NPROC=1)
#   table1       TABLE1_S=290  bench/gpu_table1.sh: both schedules, EPOCHS=12 (at most (TABLE1_S-20)/2 each)
# The budgets sum to 560 s (9 min 20 s); printing the tables takes a few seconds more. A part that
# fails or overruns is stopped and reported, and the later parts still run; the script exits non-zero
# at the end if any part did not finish ok.
#
# Everything goes under the output folder: data/ (the synthetic set), <part>.log (each part's whole
# output), cifar_epoch/, distributed/, table1/ (each part's own files and table.md), status.tsv (part,
# status, seconds, budget, exit code) and tables.md (every markdown table the docs need, with the docs
# page each one is for, then the status table). tables.md is printed at the end, then one line per part.
#
# The numbers on synthetic data: times, throughput, busy fraction, AutoDrop's overhead and drops carry
# over to CIFAR-10; the test errors do not (random pixels and labels: about 90%, chance level).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 \
  TOKENIZERS_PARALLELISM=false
export PYTHON=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
export DEVICE

if [ "$DEVICE" = cpu ]; then
  # Tiny sizes: the same scripts, recipes and tables, in about a minute or two on 2 CPU cores.
  SETUP_S=${SETUP_S:-60} EPOCH_S=${EPOCH_S:-90} DIST_S=${DIST_S:-120} TABLE1_S=${TABLE1_S:-120}
  IMAGES=${IMAGES:-64} EVAL_IMAGES=${EVAL_IMAGES:-32} EPOCHS=${EPOCHS:-2} BATCH=${BATCH:-16}
  WORKERS=${WORKERS:-0} NPROC=${NPROC:-2}
  RECIPE_FLAGS=(--model_kwargs '{"channels": [8, 16, 32, 64]}' --per_device_eval_batch_size 32)
else
  SETUP_S=${SETUP_S:-45} EPOCH_S=${EPOCH_S:-75} DIST_S=${DIST_S:-150} TABLE1_S=${TABLE1_S:-290}
  IMAGES=${IMAGES:-50000} EVAL_IMAGES=${EVAL_IMAGES:-10000} EPOCHS=${EPOCHS:-12} BATCH=${BATCH:-128}
  WORKERS=${WORKERS:-12} NPROC=${NPROC:-1}
  RECIPE_FLAGS=()
fi
if [ "${1:-}" = --budgets ]; then  # the parts' budgets and their sum, in seconds; runs nothing
  echo "setup $SETUP_S"; echo "cifar_epoch $EPOCH_S"; echo "distributed $DIST_S"; echo "table1 $TABLE1_S"
  echo "total $(( SETUP_S + EPOCH_S + DIST_S + TABLE1_S ))"
  exit 0
fi
OUTDIR=${1:-${OUT:-out/gpu_all}}
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd)
DATA="$OUTDIR/data/cifar10"
STARTED=$(date +%s)
: > "$OUTDIR/status.tsv"
failed=0

# part NAME BUDGET COMMAND...: run under `timeout`, output to the console and OUTDIR/NAME.log, status recorded.
part() {
  local name=$1 budget=$2; shift 2
  local t0=$(date +%s)
  echo "########## $name (budget ${budget}s, $(( t0 - STARTED ))s since the start)"
  timeout --kill-after=10 "$budget" "$@" 2>&1 | tee "$OUTDIR/$name.log"
  local rc=${PIPESTATUS[0]} status=ok
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="timed out"; elif [ "$rc" -ne 0 ]; then status=failed; fi
  [ "$rc" -ne 0 ] && failed=1
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" "$budget" "$rc" >> "$OUTDIR/status.tsv"
  echo "########## $name: $status ($(( $(date +%s) - t0 ))s)"
}

setup() {
  "$PYTHON" - "$DEVICE" <<'EOF' || return 1
import sys, torch, torchvision, timm, transformers, accelerate, datasets, matplotlib  # noqa: F401
print("torch", torch.__version__, "| transformers", transformers.__version__, "| accelerate", accelerate.__version__,
      "| timm", timm.__version__, "| datasets", datasets.__version__)
if sys.argv[1] != "cpu":
    assert torch.cuda.is_available(), "no CUDA device"
    print("GPU:", torch.cuda.get_device_name(0), "| devices:", torch.cuda.device_count(),
          "| bf16:", torch.cuda.is_bf16_supported())
EOF
  if [ "$DEVICE" != cpu ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; fi
  if [ -f "$DATA/dataset_dict.json" ]; then echo "reusing $DATA"; return 0; fi
  local t0=$(date +%s)
  "$PYTHON" -c "
import sys; sys.path.insert(0, 'recipes')
import hub_schema
hub_schema.write_synthetic('uoft-cs/cifar10', sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
" "$DATA" "$IMAGES" "$EVAL_IMAGES" 2>&1 | grep -v "Saving the dataset" || true
  [ -f "$DATA/dataset_dict.json" ] || { echo "no data set written to $DATA" >&2; return 1; }
  echo "wrote $IMAGES + $EVAL_IMAGES synthetic CIFAR-10 images (Hub schema) to $DATA in $(( $(date +%s) - t0 )) s"
}
export -f setup
export DATA IMAGES EVAL_IMAGES

part setup "$SETUP_S" bash -c setup
part cifar_epoch "$EPOCH_S" env DATA="$DATA" WORKERS="$WORKERS" CHECKED=1 \
  bash bench/gpu_cifar_epoch.sh "$OUTDIR/cifar_epoch" "${RECIPE_FLAGS[@]}" --per_device_train_batch_size "$BATCH"
part distributed "$DIST_S" env NPROC="$NPROC" PART_BUDGET_S=$(( DIST_S - 10 )) \
  bash bench/gpu_distributed.sh "$OUTDIR/distributed"
part table1 "$TABLE1_S" env CIFAR10_DIR="$DATA" OUT="$OUTDIR/table1" EPOCHS="$EPOCHS" BATCH="$BATCH" \
  TRAIN_EXAMPLES="$IMAGES" WORKERS="$WORKERS" BUDGET_S=$(( (TABLE1_S - 20) / 2 )) \
  bash bench/gpu_table1.sh "${RECIPE_FLAGS[@]}"

"$PYTHON" bench/gpu_tables.py all "$OUTDIR" > "$OUTDIR/tables.md" 2>&1 || failed=1
echo
echo "################################ tables (also in $OUTDIR/tables.md)"
cat "$OUTDIR/tables.md"
echo
echo "################################ parts ($(( $(date +%s) - STARTED ))s in all; device $DEVICE)"
while IFS=$'\t' read -r name status seconds budget rc; do
  echo "$name: $status (${seconds}s of ${budget}s, exit $rc)"
done < "$OUTDIR/status.tsv"
exit $failed
