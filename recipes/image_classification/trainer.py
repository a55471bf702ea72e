"""Training: the `Trainer` with the paper's weight decay and baseline schedule, and the test metrics.

The metrics go through the `evaluate` library, with a metric module that ships beside this file
(`metrics/top_k_accuracy.py`), so that scoring never downloads anything. The baseline's schedule is
torch's `MultiStepLR` over optimizer steps (after an optional `LinearLR` warm-up).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

TOP_K_METRIC = Path(__file__).resolve().parent / "metrics" / "top_k_accuracy.py"


def top5_indices(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keep only the top-5 class indices of each prediction (evaluation never holds all logits)."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.topk(min(5, logits.shape[-1]), dim=-1).indices


class ErrorMetrics:
    """`compute_metrics` for the `Trainer`: top-1 and top-5 test error in percent, through `evaluate`."""

    def __init__(self):
        import evaluate

        # keep_in_memory: no cache files, so several processes (DDP) never share one.
        self.metric = evaluate.load(str(TOP_K_METRIC), keep_in_memory=True)

    def __call__(self, eval_pred) -> dict[str, float]:
        topk, labels = np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids)
        scores = self.metric.compute(predictions=topk, references=labels, k=[1, 5])
        return {
            "top1_error": 100.0 * (1.0 - scores["top1_accuracy"]),
            "top5_error": 100.0 * (1.0 - scores["top5_accuracy"]),
        }


def multistep_scheduler(optimizer, milestone_steps: list[int], drop_factor: float, warmup_steps: int = 0):
    """torch's `MultiStepLR` over optimizer steps: the updates after step `m` use the lower lr.

    With a warm-up, a `LinearLR` chained in front gives the updates 1..warmup_steps the factors
    1/warmup_steps, 2/warmup_steps, ..., 1 (the Trainer's warm-up, without its first zero-lr update);
    the factors multiply, so the milestones stay where they are.
    """
    from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, MultiStepLR

    multistep = MultiStepLR(optimizer, milestones=sorted(int(m) for m in milestone_steps), gamma=drop_factor)
    if warmup_steps <= 1:
        return multistep
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1)
    return ChainedScheduler([warmup, multistep], optimizer=optimizer)


def trainer_class():
    from transformers import Trainer, TrainerCallback
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

        @property
        def milestone_steps(self) -> list[int]:
            return [m * self.steps_per_epoch for m in self.milestones or []]

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.milestones is None:
                return super().create_scheduler(num_training_steps, optimizer)
            if self.lr_scheduler is None:
                if not self.steps_per_epoch:
                    raise ValueError("multistep needs the number of steps per epoch; pass --num_train_examples")
                self.lr_scheduler = multistep_scheduler(
                    optimizer or self.optimizer,
                    self.milestone_steps,
                    self.drop_factor,
                    self.args.get_warmup_steps(num_training_steps),
                )
                self._created_lr_scheduler = True
            return self.lr_scheduler

    class LoopClock(TrainerCallback):
        """Wall-clock bounds of the training loop (for the GPU-busy fraction in bench/gpu_cifar_epoch.sh)."""

        began_at = ended_at = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.began_at = time.time()

        def on_train_end(self, args, state, control, **kwargs):
            self.ended_at = time.time()

    return RecipeTrainer, LoopClock
