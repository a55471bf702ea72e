"""Applying a drop to an optimizer so that its learning-rate scheduler keeps it.

A `LambdaLR` (every schedule `transformers.get_scheduler` builds) recomputes
`lr = base_lr * lambda(step)` at every step, so writing `param_groups[i]["lr"]` alone is undone at
the next step. Chainable schedulers (`StepLR`, `MultiStepLR`, `ExponentialLR`, ...) instead update
from the current `param_groups[i]["lr"]`. Scaling both `base_lrs[i]` and the current lr by the same
factor is kept by both kinds, keeps the scheduler's own shape (warm-up, steps) multiplied by the
drops, and survives the scheduler's own `state_dict()` on resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

__all__ = ["LRGroups", "dropped_lr", "unwrap_optimizer", "unwrap_scheduler"]

# Schedulers that own the lr themselves and would silently undo (or fight) a drop.
_UNSUPPORTED = ("ReduceLROnPlateau", "OneCycleLR", "CyclicLR", "GreedyLR")
# Schedulers that anneal towards an absolute floor: once drops take the base lr below `eta_min`, every
# cycle climbs back above the dropped lr.
_ANNEALING_TO_ETA_MIN = ("CosineAnnealingLR", "CosineAnnealingWarmRestarts")


def unwrap_optimizer(optimizer):
    """The innermost optimizer: the one whose own `step()` updates the parameters.

    Wrappers keep the optimizer they wrap in `.optimizer` and share its `param_groups`: accelerate's
    `AcceleratedOptimizer` (itself a `torch.optim.Optimizer` subclass, so "stop at the first torch
    optimizer" would stop too early), DeepSpeed's ZeRO optimizers. Follow that chain to its end: the
    lr is set there and step hooks registered there run at every real update.
    """
    while hasattr(getattr(optimizer, "optimizer", None), "param_groups") and optimizer.optimizer is not optimizer:
        optimizer = optimizer.optimizer
    return optimizer


def unwrap_scheduler(scheduler):
    """The torch scheduler behind wrappers such as accelerate's `AcceleratedScheduler`."""
    while scheduler is not None and not hasattr(scheduler, "base_lrs") and hasattr(scheduler, "scheduler"):
        scheduler = scheduler.scheduler
    return scheduler


def _all_schedulers(scheduler) -> Iterator:
    """The scheduler and, for `SequentialLR`/`ChainedScheduler`, the schedulers inside it."""
    yield scheduler
    for child in getattr(scheduler, "_schedulers", ()):
        yield from _all_schedulers(child)


def dropped_lr(lr: float, floor: float, drop_factor: float) -> float:
    """`max(floor, drop_factor * lr)`, never above `lr`; an lr within 1e-9 of its floor counts as at it.

    The tolerance keeps repeated multiplication (0.05 * 0.1**3 = 5.000000000000001e-05) from leaving
    an lr one rounding error above its floor, where it would "drop" by 1e-16 instead of being exhausted.
    """
    if lr <= floor * (1.0 + 1e-9):
        return lr
    return max(floor, drop_factor * lr)


def drop_factor_at(lr: float, floor: float, drop_factor: float) -> float:
    """The factor `dropped_lr(lr, ...) / lr` (1.0 for an lr of 0)."""
    return dropped_lr(lr, floor, drop_factor) / lr if lr > 0 else 1.0


class LRGroups:
    """The learning rates AutoDrop owns: one "base lr" per param group, its floor and its drop scale.

    The base lr of group `i` is `scheduler.base_lrs[i]` when a scheduler is given (the peak of the
    schedule), else the group's current lr.
    """

    def __init__(self, optimizer, scheduler=None, min_lr: float | None = None):
        self.optimizer = optimizer = unwrap_optimizer(optimizer)
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"optimizer must be a torch Optimizer, got {type(optimizer).__name__}")
        self.scheduler = scheduler = unwrap_scheduler(scheduler)
        if scheduler is not None and hasattr(scheduler, "param_groups"):
            raise TypeError(
                f"the third argument is the scheduler; you passed an optimizer ({type(scheduler).__name__}). Pass "
                "the scheduler built on this optimizer, or leave it out (AutoDrop(model, optimizer) with no scheduler)."
            )
        if scheduler is not None and not callable(getattr(scheduler, "step", None)):
            raise TypeError(f"scheduler must be a torch LRScheduler (or None), got {type(scheduler).__name__}")
        if scheduler is not None:
            self._check_scheduler_optimizer(scheduler)
            names = {type(s).__name__ for s in _all_schedulers(scheduler)}
            bad = names.intersection(_UNSUPPORTED)
            if bad or self._base_lr_owner() is None:
                raise ValueError(
                    f"AutoDrop cannot work with {sorted(bad) or type(scheduler).__name__}: this scheduler "
                    "sets the learning rate itself and would undo or fight every drop. Use no scheduler, a "
                    "constant one (optionally with warm-up, e.g. get_constant_schedule_with_warmup) or any "
                    "LambdaLR/StepLR-like scheduler."
                )
            for s in _all_schedulers(scheduler):
                if type(s).__name__ in _ANNEALING_TO_ETA_MIN and getattr(s, "eta_min", 0) != 0:
                    raise ValueError(
                        f"AutoDrop cannot work with {type(s).__name__}(eta_min={s.eta_min}): the schedule anneals "
                        "towards the absolute floor eta_min, so once drops take the lr below it every cycle "
                        "climbs back above the dropped lr. Use eta_min=0 and AutoDrop's own floor "
                        "(AutoDropConfig.min_lr), or a LambdaLR schedule with a relative floor."
                    )
        for i, group in enumerate(optimizer.param_groups):
            lr = group.get("lr")
            if isinstance(lr, torch.Tensor):
                raise TypeError(f"param group {i} has a tensor lr; AutoDrop needs a Python float lr")
            if lr is None or not isinstance(lr, (int, float)):
                raise ValueError(
                    f"param group {i} has lr={lr!r}; AutoDrop needs an explicit learning rate in every param "
                    "group (for transformers' Adafactor pass lr=... with relative_step=False)."
                )
            if not math.isfinite(lr) or lr < 0:
                raise ValueError(f"param group {i} has lr={lr!r}; AutoDrop needs a finite learning rate >= 0.")
        self.initial = self.base_lrs()
        for i, lr in enumerate(self.initial):
            if not math.isfinite(lr) or lr < 0:
                raise ValueError(
                    f"the scheduler's base lr of param group {i} is {lr!r}; AutoDrop needs a finite base lr >= 0."
                )
        self.floors = [min_lr if min_lr is not None else 1e-3 * lr for lr in self.initial]
        self.scales = [1.0] * len(self.initial)

    def _check_scheduler_optimizer(self, scheduler) -> None:
        """Refuse a scheduler (or a scheduler inside `SequentialLR`/`ChainedScheduler`) built on another optimizer.

        Both sides are unwrapped (accelerate's and DeepSpeed's wrappers keep the optimizer they wrap in
        `.optimizer`); a wrapper sharing the optimizer's `param_groups` is the same optimizer too.
        """
        for s in _all_schedulers(scheduler):
            owner = getattr(s, "optimizer", None)
            if owner is None or not hasattr(owner, "param_groups"):
                continue  # a scheduler that does not say which optimizer it drives
            if unwrap_optimizer(owner) is self.optimizer or owner.param_groups is self.optimizer.param_groups:
                continue
            raise ValueError(
                f"the scheduler {type(s).__name__} was built on another optimizer ({type(owner).__name__} at "
                f"{id(owner):#x}) than the one AutoDrop was given ({type(self.optimizer).__name__} at "
                f"{id(self.optimizer):#x}): every drop would scale a schedule that does not set this optimizer's lr. "
                "Pass the scheduler built on this optimizer (the one whose optimizer.step() trains the model)."
            )

    def check_groups(self) -> None:
        """Raise when the optimizer's param groups are no longer the ones AutoDrop was built for."""
        groups = len(self.optimizer.param_groups)
        if groups != len(self.initial):
            raise RuntimeError(
                f"The optimizer now has {groups} param groups but had {len(self.initial)} when AutoDrop was "
                "built (add_param_group after AutoDrop?): the new group would never drop and its parameters "
                "are not measured. Add every param group before building AutoDrop."
            )

    def _base_lr_owner(self):
        """The (first) scheduler holding `base_lrs`: `SequentialLR` itself has none, its children do."""
        return next((s for s in _all_schedulers(self.scheduler) if hasattr(s, "base_lrs")), None)

    def base_lrs(self) -> list[float]:
        if self.scheduler is not None:
            return [float(lr) for lr in self._base_lr_owner().base_lrs]
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def current_lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def drop(self, drop_factor: float, apply: bool) -> bool:
        """Drop every group's base lr to `max(floor, drop_factor * base)` (never raising it).

        With `apply=False` (dry run) only the virtual scales move. Returns True when no group could
        drop any further (every group was already at its floor).
        """
        bases = self.base_lrs()
        if not apply:  # the lrs were never changed: the virtual base is the real one times the scale
            bases = [b * s for b, s in zip(bases, self.scales)]
        factors = [drop_factor_at(base, floor, drop_factor) for base, floor in zip(bases, self.floors)]
        self.scales = [s * f for s, f in zip(self.scales, factors)]
        if apply:
            self._scale(factors)
        return all(f == 1.0 for f in factors)

    def floor_scales(self) -> list[float]:
        """Every group's floor as a scale of its initial lr (the scale it cannot drop below)."""
        return [f / i if i > 0 else 1.0 for f, i in zip(self.floors, self.initial)]

    def set_scales(self, scales: list[float], apply: bool, report: bool = True) -> None:
        """Set every group's lr to `scale` x its initial one (the cooldown's decay), keeping the schedule's
        shape like a drop; with `apply=False` (dry run) only the virtual scales move. `report=False` leaves
        the scheduler's `get_last_lr()` alone: set between an optimizer step and the scheduler's step, it
        still says the lr of the step just taken (which the Trainer logs), and the scheduler's step brings it
        up to date."""
        factors = [new / old if old > 0 else 1.0 for new, old in zip(scales, self.scales)]
        self.scales = [new if old > 0 else old for new, old in zip(scales, self.scales)]
        if apply:
            self._scale(factors, report)

    def _scale(self, factors: list[float], report: bool = True) -> None:
        for group, f in zip(self.optimizer.param_groups, factors):
            group["lr"] = group["lr"] * f
        if self.scheduler is None:
            return
        for sched in _all_schedulers(self.scheduler):
            if hasattr(sched, "base_lrs"):
                sched.base_lrs = [b * f for b, f in zip(sched.base_lrs, factors)]
            if report and hasattr(sched, "_last_lr"):
                # What get_last_lr() (and the Trainer's logged learning_rate) reports until the next step.
                sched._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"initial": list(self.initial), "floors": list(self.floors), "scales": list(self.scales)}

    def load_state_dict(self, state: dict, min_lr: float | None | str = "saved") -> None:
        """Restore; with `min_lr` other than `"saved"`, the floors are recomputed from it (a changed config)."""
        n = len(self.optimizer.param_groups)
        if any(len(state[k]) != n for k in ("initial", "floors", "scales")):
            raise ValueError(f"AutoDrop state has {len(state['initial'])} param groups but the optimizer has {n}")
        self.initial = [float(x) for x in state["initial"]]
        self.floors = [float(x) for x in state["floors"]]
        self.scales = [float(x) for x in state["scales"]]
        if min_lr != "saved":
            self.floors = [min_lr if min_lr is not None else 1e-3 * lr for lr in self.initial]
