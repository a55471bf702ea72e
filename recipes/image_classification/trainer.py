"""Training: the `Trainer` with the paper's weight decay and baseline schedule, and the test metrics."""

from __future__ import annotations

import time

import numpy as np
import torch


def top5_indices(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keep only the top-5 class indices of each prediction (evaluation never holds all logits)."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.topk(min(5, logits.shape[-1]), dim=-1).indices


def error_metrics(eval_pred) -> dict[str, float]:
    """Top-1 and top-5 test error in percent."""
    topk, labels = np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids)
    top1 = float((topk[:, 0] == labels).mean())
    top5 = float((topk == labels[:, None]).any(axis=1).mean())
    return {"top1_error": 100.0 * (1.0 - top1), "top5_error": 100.0 * (1.0 - top5)}


class EpochMilestones:
    """`LambdaLR` factor of the baseline: `drop_factor ** (milestones passed)`, after an optional linear warm-up.

    `step` is the number of optimizer updates done, so the updates of epoch `m + 1` (1-based) are the
    first to use the lower lr of milestone `m`. A class, not a lambda, so `scheduler.pt` keeps it.
    """

    def __init__(self, milestone_steps: list[int], drop_factor: float, warmup_steps: int = 0):
        self.milestone_steps = sorted(int(m) for m in milestone_steps)
        self.drop_factor = float(drop_factor)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        warmup = step / max(1, self.warmup_steps) if step < self.warmup_steps else 1.0
        return warmup * self.drop_factor ** sum(step >= m for m in self.milestone_steps)


def _trainer_class():
    from transformers import Trainer
    from transformers.trainer_utils import has_length

    class RecipeTrainer(Trainer):
        """`Trainer` with the paper's weight decay (every parameter) and the fixed multistep baseline."""

        def __init__(
            self,
            *args,
            milestones: list[int] | None = None,
            drop_factor: float = 0.1,
            steps_per_epoch: int | None = None,
            weight_decay_all: bool = True,
            **kwargs,
        ):
            self.milestones, self.drop_factor = milestones, drop_factor
            self.weight_decay_all = weight_decay_all
            self.steps_per_epoch = steps_per_epoch  # known in advance only when streaming
            super().__init__(*args, **kwargs)

        def get_decay_parameter_names(self, model) -> list[str]:
            if self.weight_decay_all:
                return [n for n, p in model.named_parameters()]
            return super().get_decay_parameter_names(model)

        def get_train_dataloader(self):
            loader = super().get_train_dataloader()
            if has_length(loader):
                # The Trainer's own count of optimizer updates per epoch (the last one may be partial).
                n, ga = len(loader), self.args.gradient_accumulation_steps
                self.steps_per_epoch = max(n // ga + int(n % ga > 0), 1)
            return loader

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.milestones is None:
                return super().create_scheduler(num_training_steps, optimizer)
            if self.lr_scheduler is None:
                if not self.steps_per_epoch:
                    raise ValueError("multistep needs the number of steps per epoch; pass --num_train_examples")
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer,
                    EpochMilestones(
                        [m * self.steps_per_epoch for m in self.milestones],
                        self.drop_factor,
                        self.args.get_warmup_steps(num_training_steps),
                    ),
                )
                self._created_lr_scheduler = True
            return self.lr_scheduler

    return RecipeTrainer


def _lr_tracker():
    from transformers import TrainerCallback

    class LRTracker(TrainerCallback):
        """Writes each epoch's lr (`recipe/lr`) and every lr decrease (`recipe/lr_drop`) into `log_history`.

        `log_history` is saved in every checkpoint, so the record survives a resume. A decrease is seen
        before the next update (or at the end), so the order of the callbacks does not matter (the
        `Trainer` re-adds a restored AutoDrop callback at the end of the list on resume); it is
        recorded with the number of updates done when it took effect.
        """

        def __init__(self):
            self.last = None
            self.began_at = self.ended_at = None  # wall-clock bounds of the training loop (GPU busy fraction)

        def _check(self, state, optimizer) -> float:
            lr = float(optimizer.param_groups[0]["lr"])
            if self.last is not None and lr < self.last * (1 - 1e-9):
                state.log_history.append(
                    {
                        "recipe/lr_drop": lr,
                        "recipe/lr_before": self.last,
                        "epoch": state.epoch,
                        "step": state.global_step,
                    }
                )
            self.last = lr
            return lr

        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            self.began_at = time.time()
            self.last = float(optimizer.param_groups[0]["lr"])

        def on_epoch_begin(self, args, state, control, optimizer=None, **kwargs):
            lr = self._check(state, optimizer)
            state.log_history.append({"recipe/lr": lr, "epoch": state.epoch or 0.0, "step": state.global_step})

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            self._check(state, optimizer)

        def on_train_end(self, args, state, control, optimizer=None, **kwargs):
            lr = self._check(state, optimizer)
            state.log_history.append({"recipe/lr": lr, "epoch": state.epoch, "step": state.global_step})
            self.ended_at = time.time()

    return LRTracker()
