"""How a plain `AutoDropCallback` reaches the Trainer's `report_to` integrations by itself.

The Trainer hands its callbacks the model, the optimizer and the state, never itself, and it copies
`logs` into `log_history` before `on_log` reaches the reporting callbacks (TensorBoard, W&B, MLflow,
trackio, ...), which run before any user callback. So a callback that only edits `logs` or
`log_history` is seen by none of them. What every integration does see is `Trainer.log`.

The Trainer calls `on_init_end` from its `__init__` and `on_train_begin` from `train()` (also after a
resume has rebuilt the callback); in both, a frame up the call stack runs a method of the Trainer
(or of a subclass, such as TRL's), with the Trainer as its `self`. `find_trainer` looks there.
`log` then goes through `transformers.Trainer.log`, the base class's, so that a subclass's `log`
(TRL's averages and clears its own metric buffers there) keeps its own schedule.
"""

from __future__ import annotations

import sys

# Frames between the callback's event method and the Trainer's: the handler's on_* and call_event,
# plus room for wrappers (subclasses overriding train(), accelerate's launch helpers).
_MAX_DEPTH = 30


def find_trainer():
    """The `transformers.Trainer` (any subclass) whose method is on the call stack, or None."""
    from transformers import Trainer

    frame = sys._getframe(1)
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back
    return None


def log(trainer, logs: dict, control) -> None:
    """Log `logs` like the Trainer's own logs: into `log_history` and every `report_to` integration.

    The handler's `on_log` clears `control.should_log`, which would swallow a loss log the Trainer has
    pending for this step; it is put back.
    """
    from transformers import Trainer

    pending = control.should_log
    if isinstance(trainer, Trainer):
        Trainer.log(trainer, dict(logs))
    else:  # linked by `install` to a trainer of another family
        trainer.log(dict(logs))
    control.should_log = pending
