#!/usr/bin/env bash
# One CIFAR-10 ResNet-18 epoch with the recipe's settings on one GPU, and the GPU's busy fraction.
#
# Runs recipes/cifar10_resnet18.py unchanged (SGD, batch 128, AutoDrop measuring per epoch, bf16
# autocast, channels_last, dataloader workers) for one epoch on a synthetic copy of uoft-cs/cifar10 in
# the Hub's schema (50,000 + 10,000 PNGs written with `datasets`, no network needed), while nvidia-smi
# samples the GPU's utilisation (the share of time a kernel was running) every 100 ms. Prints the
# epoch's wall time, images/s and the mean busy fraction over the training loop alone.
# Takes about 1-2 minutes on an H100/H200 (well under the 5-minute budget).
#
# Usage: bash bench/gpu_cifar_epoch.sh [output folder]     (env: WORKERS=12 PYTHON=python3 IMAGES=50000)
# Needs torch (CUDA), torchvision, timm, transformers, accelerate, datasets, matplotlib, huggingface_hub.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-/tmp/gpu_cifar_epoch}}
PYTHON=${PYTHON:-python3}
WORKERS=${WORKERS:-12}
IMAGES=${IMAGES:-50000}
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1

if ! "$PYTHON" -c "import torch, torchvision, timm, transformers, accelerate, datasets, matplotlib" 2>/dev/null; then
  echo "missing Python packages; install the recipes extra: pip install -e '.[recipes]'" >&2
  "$PYTHON" -c "import torch, torchvision, timm, transformers, accelerate, datasets, matplotlib"
fi
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"

DATA="$OUTDIR/cifar10-synthetic"
if [ ! -f "$DATA/dataset_dict.json" ]; then
  t0=$(date +%s)
  "$PYTHON" -c "
import sys; sys.path.insert(0, 'recipes')
import hub_schema
hub_schema.write_synthetic('uoft-cs/cifar10', '$DATA', $IMAGES, 10000)
"
  echo "wrote $IMAGES + 10000 synthetic CIFAR-10 images in $(( $(date +%s) - t0 )) s"
fi

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 100 \
  > "$OUTDIR/gpu_util.csv" &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT

"$PYTHON" recipes/cifar10_resnet18.py --data_dir "$DATA" --output_dir "$OUTDIR/run" --num_train_epochs 1 \
  --eval_strategy no --save_strategy no --bf16 true --channels_last true \
  --dataloader_num_workers "$WORKERS" --dataloader_persistent_workers true --disable_tqdm true --report_to none \
  2>&1 | tee "$OUTDIR/run.log" | grep -E "train_runtime|final test error|Error|error:" || true
kill $SAMPLER 2>/dev/null || true
sleep 0.5

"$PYTHON" - "$OUTDIR" <<'EOF'
import json, sys
from datetime import datetime
from pathlib import Path

out = Path(sys.argv[1])
r = json.loads((out / "run" / "results.json").read_text())
t0, t1 = r["train_loop_began_at"], r["train_loop_ended_at"]
samples = []
for line in (out / "gpu_util.csv").read_text().splitlines():
    try:
        stamp, util, mem = [s.strip() for s in line.split(",")]
        t = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()
    except ValueError:
        continue
    if t0 <= t <= t1:
        samples.append((float(util), float(mem)))
n = r["num_train_examples"]
busy = sum(u for u, _ in samples) / len(samples) / 100 if samples else float("nan")
print(f"| GPU | epoch wall time (s) | images/s | GPU busy fraction | samples | peak memory (MiB) | workers |")
print(f"| --- | --- | --- | --- | --- | --- | --- |")
print(f"| {r['hardware'].get('gpus', ['?'])[0]} | {t1 - t0:.1f} | {n / (t1 - t0):,.0f} | {busy:.2f} | {len(samples)} | "
      f"{max((m for _, m in samples), default=float('nan')):,.0f} | {r['config']['training']['dataloader_num_workers']} |")
EOF
