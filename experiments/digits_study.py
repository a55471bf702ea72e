"""Digits with a small CNN and the `Trainer`: AutoDrop against constant, multistep, cosine, plateau, schedule-free.

    python -m experiments.digits_study --workers 2    # the evidence
    python -m experiments.digits_study --quick        # a smoke run (used by the tests)
    python -m experiments.digits_study --autodrop '{"threshold": 0.5}'   # other AutoDrop settings

Writes `digits.md`, `digits_curves.png` and `digits_to_best.png` into `--out` (default `docs/results`).
"""

from __future__ import annotations

import sys

from .common import Study
from .trainer_study import TaskSpec, main_for

TASK = TaskSpec("digits", "test error (%)", "sgd", lr=0.05, weight_decay=5e-4, batch_size=64, epochs=40)
QUICK_TASK = TaskSpec("digits", "test error (%)", "sgd", lr=0.05, weight_decay=5e-4, batch_size=64, epochs=5)
SWEEP_LRS = (0.15, 0.1, 0.05, 0.03)  # the paper's Table 2 values (its default 0.05 is ours too)
# One AutoDrop row with a threshold read off the constant-lr dry run of seed 0 (about the 10th
# percentile of abs(dw) per epoch there) and a drop delay that fits a 40-epoch run: not a default.
TUNED = dict(drop_factor=0.2, threshold=1.0, max_threshold=10.0, drop_delay=5)
# The smoke run is too short for any rule to fire by itself: a threshold every change passes forces drops.
TUNED_QUICK = dict(drop_factor=0.2, threshold=180.0, max_threshold=180.0, drop_delay=1)
# schedulefree's README: "For SGD, a learning rate 10x-50x larger than classical rates seems to be a good starting point."
SCHEDULEFREE_LR_SCALE = 10.0

SETUP = (
    "scikit-learn's 8x8 digits, fixed split 997 train / 300 validation / 500 test; a CNN with two 3x3 "
    "convolutions (16, 32 channels), a max-pool and a 64-unit hidden layer (38 k parameters); SGD momentum 0.9, "
    "weight decay 5e-4, batch 64 (16 steps per epoch), lr 0.05, {epochs} epochs, no gradient clipping, "
    "`Trainer` on CPU. Multistep drops by 0.2 at 30/60/80% of the epochs (the paper's baselines); cosine is the "
    "Trainer's `cosine` (to 0 at the end, no warm-up); `reduce_lr_on_plateau` is the Trainer's with torch's "
    "defaults (factor 0.1, patience 10) on the validation loss every epoch; schedule-free is "
    "`schedulefree.SGDScheduleFree` (momentum 0.9, 5% warm-up) at 10x the lr (its README's advice for SGD); AutoDrop measures once per epoch."
)


def main(argv=None) -> str:
    study = Study("experiments.digits_study", __doc__.splitlines()[0], argv=argv, saves_runs=True)
    task = QUICK_TASK if study.quick else TASK
    sweep = (0.1, 0.05) if study.quick else SWEEP_LRS
    return main_for(
        study,
        task,
        sweep_lrs=sweep,
        tuned=TUNED_QUICK if study.quick else TUNED,
        setup=SETUP.format(epochs=task.epochs),
        schedulefree_lr_scale=SCHEDULEFREE_LR_SCALE,
    )


if __name__ == "__main__":
    print(main(sys.argv[1:]))
