"""The held-out task of issue 9, fixed before any AutoDrop setting was tuned on it (reported as-is).

Friedman #1 regression (scikit-learn's `make_friedman1`, generated offline; see `experiments.tasks`),
a 10-64-64-1 ReLU MLP, AdamW (lr 3e-3, no weight decay), batch 32 (125 steps per epoch), 30 epochs
(3,750 optimizer steps), no gradient clipping. The metric is the mean squared error of the
standardised target (the noise alone is about 0.04). The comparison: a constant lr, cosine given the
run length, a hand-made step schedule (x0.2 at 30/60/80% of the epochs), `reduce_lr_on_plateau`
(torch's defaults on the validation loss every epoch), AutoDrop with the library's defaults and
AutoDrop with the paper's test; 5 seeds. `experiments.interval_study` runs it.
"""

from __future__ import annotations

import dataclasses

from .trainer_study import TaskSpec

TASK = TaskSpec("friedman", "test MSE (standardised)", "adamw", lr=3e-3, weight_decay=0.0, batch_size=32, epochs=30)
QUICK_TASK = dataclasses.replace(TASK, epochs=2)
