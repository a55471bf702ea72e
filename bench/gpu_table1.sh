#!/usr/bin/env bash
# A shortened first row of the paper's Table 1 (ResNet-18 on CIFAR-10, both schedules) in under 10
# minutes on one GPU, printing every epoch's time and test error as it goes, then a two-row table.
#
#   bash bench/gpu_table1.sh                       # 12 epochs per schedule, seed 0
#   EPOCHS=8 SEED=1 bash bench/gpu_table1.sh       # shorter / another seed
#   CIFAR10_DIR=/data/cifar10 bash bench/gpu_table1.sh   # a local copy (machines without network)
#   bash bench/gpu_table1.sh --max_train_samples 5000    # extra flags go to both recipe runs
#   DEVICE=cpu BATCH=16 TRAIN_EXAMPLES=64 CIFAR10_DIR=... bash bench/gpu_table1.sh --model_kwargs ...  # CPU smoke
#
# The shortening keeps the paper's proportions: the baseline drops x0.2 at 30/60/80% of the epochs
# (the paper's 60/120/160 of 200), and AutoDrop measures every ceil(steps / 200) optimizer steps so that
# the run has the paper's 200 intervals, with its n_d = 20 and thresholds unchanged. The full row is
# `python recipes/cifar10_resnet18.py --seed S [--schedule multistep]` (1.5-2.5 h per run).
# Each schedule gets at most BUDGET_S seconds (default 285, so both fit in 10 minutes with start-up);
# a run cut short still shows the epochs it finished (from its progress log). The first epoch time
# includes start-up. TRAIN_EXAMPLES (default 50000) must be the training set's size: the interval and
# the milestones are computed from it. Outputs: $OUT (default out/gpu_table1): <schedule>-seed<S>/
# (the recipe's results.json, ...), <schedule>.log (the recipe's output), <schedule>.progress.log,
# table.md. Exits non-zero if a schedule failed or was cut short.
set -uo pipefail
cd "$(dirname "$0")/.."

EPOCHS=${EPOCHS:-12}
SEED=${SEED:-0}
BUDGET_S=${BUDGET_S:-285}
OUT=${OUT:-out/gpu_table1}
PYTHON=${PYTHON:-python}
BATCH=${BATCH:-128}
TRAIN_EXAMPLES=${TRAIN_EXAMPLES:-50000}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-8}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"

read -r INTERVAL MILESTONES < <("$PYTHON" - "$EPOCHS" "$BATCH" "$TRAIN_EXAMPLES" <<'EOF'
import math, sys
epochs, batch, n = map(int, sys.argv[1:])
steps = math.ceil(n / batch) * epochs
print(math.ceil(steps / 200), " ".join(str(max(1, round(f * epochs))) for f in (0.3, 0.6, 0.8)))
EOF
)

DATA_ARGS=()
if [[ -n "${CIFAR10_DIR:-}" ]]; then DATA_ARGS=(--data_dir "$CIFAR10_DIR"); fi
if [[ "$DEVICE" = cpu ]]; then DEVICE_ARGS=(--use_cpu --bf16 false); else DEVICE_ARGS=(--bf16 true); fi
read -r -a MILESTONE_LIST <<< "$MILESTONES"

echo "== shortened Table 1 row: ResNet-18 / CIFAR-10, $EPOCHS epochs per schedule, seed $SEED"
echo "== baseline x0.2 at epochs $MILESTONES; AutoDrop rho 0.2 every $INTERVAL steps (200 intervals); budget ${BUDGET_S}s each"
if [[ "$DEVICE" != cpu ]]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "(nvidia-smi not found)"
fi

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

failed=0
for schedule in multistep autodrop; do
  out="$OUT/$schedule-seed$SEED"
  rm -f "$out/results.json"
  echo "== $schedule -> $out"
  # --kill-after: a run that ignores the interrupt (stuck dataloader workers) is killed 15 s later.
  timeout --signal=INT --kill-after=15 "$BUDGET_S" "$PYTHON" recipes/cifar10_resnet18.py \
    --schedule "$schedule" --num_train_epochs "$EPOCHS" --output_dir "$out" --seed "$SEED" \
    --drop_factor 0.2 --milestones "${MILESTONE_LIST[@]}" --interval_steps "$INTERVAL" \
    --eval_strategy epoch --logging_strategy epoch --save_strategy no --disable_tqdm true \
    --dataloader_num_workers "$WORKERS" --per_device_train_batch_size "$BATCH" \
    "${DEVICE_ARGS[@]}" "${DATA_ARGS[@]}" "$@" 2>&1 | tee "$OUT/$schedule.log" | progress "$schedule" \
    | tee "$OUT/$schedule.progress.log"
  status=${PIPESTATUS[0]}
  if [[ $status -eq 124 || $status -eq 137 ]]; then
    echo "== $schedule: stopped at the ${BUDGET_S}s budget"; failed=124
  elif [[ $status -ne 0 ]]; then
    echo "== $schedule: failed (exit $status; log: $OUT/$schedule.log)"; tail -5 "$OUT/$schedule.log"
    [[ $failed -eq 0 ]] && failed=$status
  fi
done

echo "== summary (test error %, from results.json or, for a run cut short, its progress log)"
"$PYTHON" bench/gpu_tables.py table1 "$OUT" | tee "$OUT/table.md"
exit $failed
