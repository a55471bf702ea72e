#!/usr/bin/env bash
# One CIFAR-10 ResNet-18 epoch with the recipe's settings on one GPU, and the GPU's busy fraction.
#
# Runs recipes/cifar10_resnet18.py unchanged (SGD, batch 128, AutoDrop measuring per epoch, bf16
# autocast, channels_last, dataloader workers) for one epoch on a synthetic copy of uoft-cs/cifar10 in
# the Hub's schema (50,000 + 10,000 PNGs written with `datasets`, no network needed), while nvidia-smi
# samples the GPU's utilisation (the share of time a kernel was running) every 100 ms. Prints the
# epoch's wall time, images/s and the mean busy fraction over the training loop alone, as a markdown
# table (also written to <output folder>/table.md).
# Estimate (not measured yet): about 1-2 minutes on an H100/H200 with the data written on the spot.
#
# Usage: bash bench/gpu_cifar_epoch.sh [output folder] [extra recipe flags ...]
#   env: WORKERS=12 PYTHON=python3 IMAGES=50000 EVAL_IMAGES=10000 DATA=<an existing synthetic copy>
#        CHECKED=1: skip the package and CUDA checks (bench/gpu_all.sh made them)
#        DEVICE=cpu: the smoke test of this script (no CUDA, no nvidia-smi, float32; pass small sizes)
# Needs torch (CUDA), torchvision, timm, transformers, accelerate, datasets, matplotlib, huggingface_hub.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-/tmp/gpu_cifar_epoch}}
shift || true
PYTHON=${PYTHON:-python3}
WORKERS=${WORKERS:-12}
IMAGES=${IMAGES:-50000}
EVAL_IMAGES=${EVAL_IMAGES:-10000}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1

# (bench/gpu_all.sh checked the packages already: CHECKED=1 skips the seconds these imports take.)
if [ -z "${CHECKED:-}" ] && ! "$PYTHON" -c "import torch, torchvision, timm, transformers, accelerate, datasets, matplotlib" 2>/dev/null; then
  echo "missing Python packages; install the recipes extra: pip install -e '.[recipes]'" >&2
  "$PYTHON" -c "import torch, torchvision, timm, transformers, accelerate, datasets, matplotlib"
fi
if [ "$DEVICE" = cpu ]; then
  DEVICE_FLAGS=(--use_cpu --bf16 false)
else
  [ -n "${CHECKED:-}" ] || "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"
  DEVICE_FLAGS=(--bf16 true)
fi

DATA=${DATA:-$OUTDIR/cifar10-synthetic}
if [ ! -f "$DATA/dataset_dict.json" ]; then
  t0=$(date +%s)
  "$PYTHON" -c "
import sys; sys.path.insert(0, 'recipes')
import hub_schema
hub_schema.write_synthetic('uoft-cs/cifar10', sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
" "$DATA" "$IMAGES" "$EVAL_IMAGES"
  echo "wrote $IMAGES + $EVAL_IMAGES synthetic CIFAR-10 images in $(( $(date +%s) - t0 )) s"
fi

rm -f "$OUTDIR/gpu_util.csv" "$OUTDIR/run/results.json"
SAMPLER=
if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 100 \
    > "$OUTDIR/gpu_util.csv" &
  SAMPLER=$!
  trap 'kill $SAMPLER 2>/dev/null || true' EXIT
elif [ "$DEVICE" != cpu ]; then
  echo "nvidia-smi not found: no busy fraction" >&2
fi

set +e
"$PYTHON" recipes/cifar10_resnet18.py --data_dir "$DATA" --output_dir "$OUTDIR/run" --num_train_epochs 1 \
  --eval_strategy no --save_strategy no --channels_last true "${DEVICE_FLAGS[@]}" \
  --dataloader_num_workers "$WORKERS" --dataloader_persistent_workers true --disable_tqdm true --report_to none \
  "$@" > "$OUTDIR/run.log" 2>&1
status=$?
set -e
grep -E "train_runtime|final test error|Error|error:" "$OUTDIR/run.log" || true
if [ -n "$SAMPLER" ]; then kill "$SAMPLER" 2>/dev/null || true; fi
sleep 0.5
if [ "$status" -ne 0 ]; then
  echo "the recipe failed (exit $status); last lines of $OUTDIR/run.log:" >&2
  tail -20 "$OUTDIR/run.log" >&2
  exit "$status"
fi

"$PYTHON" bench/gpu_tables.py cifar_epoch "$OUTDIR" | tee "$OUTDIR/table.md"
