#!/usr/bin/env bash
# A shortened first row of the paper's Table 1 (ResNet-18 on CIFAR-10, both schedules) in under 10
# minutes on one GPU, printing every epoch's time and test error as it goes, then a two-row table.
#
#   bash bench/gpu_table1.sh                       # 12 epochs per schedule, seed 0
#   EPOCHS=8 SEED=1 bash bench/gpu_table1.sh       # shorter / another seed
#   CIFAR10_DIR=/data/cifar10 bash bench/gpu_table1.sh   # a local copy (machines without network)
#   bash bench/gpu_table1.sh --max_train_samples 5000    # extra flags go to both recipe runs
#
# The shortening keeps the paper's proportions: the baseline drops x0.2 at 30/60/80% of the epochs
# (the paper's 60/120/160 of 200), and AutoDrop measures every ceil(steps / 200) optimizer steps so that
# the run has the paper's 200 intervals, with its n_d = 20 and thresholds unchanged. The full row is
# `python recipes/cifar10_resnet18.py --seed S [--schedule multistep]` (1.5-2.5 h per run).
# Each schedule gets at most BUDGET_S seconds (default 285, so both fit in 10 minutes with start-up);
# a run cut short still prints the epochs it finished. The first epoch time includes start-up.
set -uo pipefail
cd "$(dirname "$0")/.."

EPOCHS=${EPOCHS:-12}
SEED=${SEED:-0}
BUDGET_S=${BUDGET_S:-285}
OUT=${OUT:-out/gpu_table1}
PYTHON=${PYTHON:-python}
BATCH=128
TRAIN_EXAMPLES=50000

read -r INTERVAL MILESTONES < <("$PYTHON" - "$EPOCHS" "$BATCH" "$TRAIN_EXAMPLES" <<'EOF'
import math, sys
epochs, batch, n = map(int, sys.argv[1:])
steps = math.ceil(n / batch) * epochs
print(math.ceil(steps / 200), ",".join(str(max(1, round(f * epochs))) for f in (0.3, 0.6, 0.8)))
EOF
)

DATA_ARGS=()
if [[ -n "${CIFAR10_DIR:-}" ]]; then DATA_ARGS=(--data_dir "$CIFAR10_DIR"); fi

echo "== shortened Table 1 row: ResNet-18 / CIFAR-10, $EPOCHS epochs per schedule, seed $SEED"
echo "== baseline x0.2 at epochs $MILESTONES; AutoDrop rho 0.2 every $INTERVAL steps (200 intervals); budget ${BUDGET_S}s each"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "(nvidia-smi not found)"

# Prints one line per evaluation: epoch, test error, the epoch's wall time and the time so far.
progress() {
  "$PYTHON" -u -c '
import re, sys, time
name, start, last = sys.argv[1], time.time(), time.time()
for line in sys.stdin:
    err = re.search(r"eval_top1_error.\W*([0-9.eE+-]+)", line)
    if err is None:
        if re.search(r"Error|Traceback|error:", line):
            print(f"[{name}] {line.rstrip()}", flush=True)
        continue
    ep = re.search(r".epoch.\W*([0-9.]+)", line)
    epoch = ep.group(1) if ep else "?"
    now = time.time()
    print(f"[{name}] epoch {epoch}: test error {float(err.group(1)):.2f}% | "
          f"epoch time {now - last:.1f} s | elapsed {now - start:.0f} s", flush=True)
    last = now
' "$1"
}

for schedule in multistep autodrop; do
  out="$OUT/$schedule-seed$SEED"
  echo "== $schedule -> $out"
  timeout --signal=INT "$BUDGET_S" "$PYTHON" recipes/cifar10_resnet18.py \
    --schedule "$schedule" --num_train_epochs "$EPOCHS" --output_dir "$out" --seed "$SEED" \
    --drop_factor 0.2 --milestones "$MILESTONES" --interval_steps "$INTERVAL" \
    --eval_strategy epoch --logging_strategy epoch --save_strategy no --disable_tqdm true \
    --bf16 true --per_device_train_batch_size "$BATCH" "${DATA_ARGS[@]}" "$@" 2>&1 | progress "$schedule"
  status=${PIPESTATUS[0]}
  if [[ $status -eq 124 ]]; then echo "== $schedule: stopped at the ${BUDGET_S}s budget"; fi
done

echo "== summary (test error %, from results.json)"
"$PYTHON" - "$OUT" "$SEED" <<'EOF'
import json, pathlib, sys
out, seed = pathlib.Path(sys.argv[1]), sys.argv[2]
print(f"{'schedule':<10} {'final':>7} {'best':>7} {'best ep':>7} {'epochs':>6} {'s/epoch':>8} {'drops':>5}")
for schedule in ("multistep", "autodrop"):
    path = out / f"{schedule}-seed{seed}" / "results.json"
    if not path.exists():
        print(f"{schedule:<10} no results.json (cut short or failed)")
        continue
    r = json.loads(path.read_text())
    epochs = r.get("epochs") or 0
    per_epoch = (r.get("train_runtime_s") or r.get("wall_time_s") or 0) / max(epochs, 1)
    print(f"{schedule:<10} {r.get('final_test_error', float('nan')):7.2f} {r.get('best_test_error', float('nan')):7.2f} "
          f"{r.get('best_epoch', '-')!s:>7} {epochs:6.0f} {per_epoch:8.1f} {len(r.get('drops', [])):5d}")
EOF
