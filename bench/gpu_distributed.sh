#!/usr/bin/env bash
# AutoDrop on a GPU machine, in under 5 minutes: the Trainer with AutoDropCallback under DDP and FSDP2
# (angles and AutoDrop's overhead per interval), then the cost of the reduction and of offload_to_cpu
# (snapshots in pinned CPU memory) against snapshots on the GPU, for a 270 M-parameter model.
#
#   bash bench/gpu_distributed.sh              # one process per visible GPU (NCCL)
#   NPROC=1 bash bench/gpu_distributed.sh      # one GPU: DDP degenerates to one process (no wrapper);
#                                              # FSDP2 still shards over a 1-process mesh (DTensor path)
#   DEVICE=cpu NPROC=2 bash bench/gpu_distributed.sh   # smoke test of this script on CPU (gloo, small sizes;
#                                              # accelerate runs no FSDP on CPU, so "fsdp2" trains as DDP there)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
NPROC=${NPROC:-$($PY -c "import torch; print(max(1, torch.cuda.device_count()))")}
RUN="$PY -m torch.distributed.run --standalone --nproc_per_node $NPROC"
if [ "$DEVICE" = cpu ]; then
  TRAINER="--cpu --width 64 --depth 2 --samples 2048 --batch 64"
  COST="--device cpu --width 256 --depth 2"
else
  TRAINER="--width 1024 --depth 6 --samples 16384 --batch 256"
  COST="--device cuda --width 2048 --depth 8 --batch 64 --repeat 5"
fi
$PY -c "import torch, transformers, accelerate; print('torch', torch.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| GPUs', torch.cuda.device_count())"
for engine in ddp fsdp2; do
  echo "=== Trainer + AutoDropCallback, --engine $engine, $NPROC process(es)"
  timeout 100 $RUN bench/trainer_overhead.py --engine "$engine" $TRAINER 2>&1 | grep -v -i "warn" | tail -9
done
echo "=== Trainer + AutoDropCallback, --engine fsdp2 with offload_to_cpu"
timeout 100 $RUN bench/trainer_overhead.py --engine fsdp2 --offload-to-cpu $TRAINER 2>&1 | grep -v -i "warn" | tail -9
for engine in ddp fsdp2; do
  echo "=== Reduction and snapshot placement, --engine $engine"
  timeout 100 $RUN bench/distributed_cost.py --engine "$engine" $COST 2>&1 | grep -v -i "warn" | tail -6
done
