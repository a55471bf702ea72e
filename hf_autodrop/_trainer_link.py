"""How a plain `AutoDropCallback` reaches the Trainer: the stack-frame helpers, its logs, `install`.

The Trainer hands its callbacks the model, the optimizer and the state, never itself. `Trainer.log`
copies `logs` into `log_history` and then calls `on_log` on every callback in the handler's order:
the reporting integrations (TensorBoard, W&B, MLflow, trackio, ...) come before any user callback,
and the console printer (or progress bar) last. So AutoDrop's metrics reach them in one of two ways:

- merged into the Trainer's own training log row: `MergeLogs`, placed first in the handler's list,
  adds the latest measurement's `autodrop/*` keys to `logs` (and to the row just appended to
  `log_history`) before any integration or the console sees them;
- as a row of their own at a trigger, a drop or the cooldown's start when the Trainer does not log
  that step: `log` calls `transformers.Trainer.log`, the base class's, so that a subclass's `log`
  (TRL's averages and clears its own metric buffers there) keeps its own schedule.

The Trainer calls `on_init_end` from its `__init__` and `on_train_begin` from `train()` (also after a
resume has rebuilt the callback); in both, a frame up the call stack runs a method of the Trainer (or
of a subclass, such as TRL's) with the Trainer as its `self`. `walk` is the one walk up the stack:
`find_trainer` looks for that frame, `trainer_local` for a local of the Trainer's training loop, and
`live_instance_being_restored` for the Trainer's `_load_callback_state` rebuilding the callback.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable

from transformers import TrainerCallback

__all__ = ["MergeLogs", "find_trainer", "install", "link", "live_instance_being_restored", "log", "trainer_local"]

# Frames between the callback's event method and the Trainer's: the handler's on_* and call_event,
# plus room for wrappers (subclasses overriding train(), accelerate's launch helpers).
_MAX_DEPTH = 30


def walk(match: Callable, start: int = 1, depth: int = _MAX_DEPTH):
    """The first frame for which `match(frame)` holds, going up from `start` frames above the caller.

    `start=0` begins at the caller, `start=1` at the caller's caller; at most `depth` frames are looked at.
    None when not found.
    """
    try:
        frame = sys._getframe(start + 1)
    except ValueError:  # the stack is not that deep
        return None
    for _ in range(depth):
        if frame is None:
            return None
        if match(frame):
            return frame
        frame = frame.f_back
    return None


def find_trainer():
    """The `transformers.Trainer` (any subclass) whose method is on the call stack, or None."""
    from transformers import Trainer

    frame = walk(lambda f: isinstance(f.f_locals.get("self"), Trainer), start=1)
    return None if frame is None else frame.f_locals["self"]


def trainer_local(name: str, kind: type, function: str = "_inner_training_loop"):
    """Local `name` (when of type `kind`) of the Trainer's `function` up the call stack, or None.

    The Trainer does not tell callbacks which checkpoint it resumes from; `_inner_training_loop` holds it
    in its `resume_from_checkpoint` argument (transformers 4.45 to 5.x).
    """
    frame = walk(lambda f: f.f_code.co_name == function, start=1)
    value = None if frame is None else frame.f_locals.get(name)
    return value if isinstance(value, kind) else None


def live_instance_being_restored(cls):
    """The callback the Trainer's `_load_callback_state` is rebuilding right now, if that is the caller.

    transformers (4.45 to 5.x) runs `new_callback = type(callback)(**args)` inside
    `Trainer._load_callback_state` with the live instance in its local `callback`. Called from
    `cls.__new__`: the frame above `__new__` is whoever called the class.
    """
    frame = walk(lambda f: f.f_code.co_name == "_load_callback_state", start=2, depth=1)
    live = None if frame is None else frame.f_locals.get("callback")
    return live if type(live) is cls and hasattr(live, "config") else None


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


class MergeLogs(TrainerCallback):
    """First in the Trainer's callback list: merges AutoDrop's latest metrics into the Trainer's own rows."""

    def __init__(self, callback):
        self.source = weakref.ref(callback)

    def on_log(self, args, state, control, logs=None, **kwargs):
        callback = self.source()
        if callback is not None and logs is not None:
            callback._merge_into(logs, state)
        return control


def link(trainer, callback) -> None:
    """Point `callback` at `trainer` (to log through it) and put its `MergeLogs` first in the trainer's list."""
    callback._trainer_ref = weakref.ref(trainer)
    handler = getattr(trainer, "callback_handler", None)
    callbacks = getattr(handler, "callbacks", None)
    if not isinstance(callbacks, list):
        return
    if not any(isinstance(c, MergeLogs) and c.source() is callback for c in callbacks):
        callbacks.insert(0, MergeLogs(callback))


class _TrainerLink(TrainerCallback):
    """Links every `AutoDropCallback` of a Trainer to it, also after a resume rebuilt it (see `install`)."""

    def __init__(self, trainer):
        self._trainer = weakref.ref(trainer)

    def on_train_begin(self, args, state, control, **kwargs):
        from .callback import AutoDropCallback

        trainer = self._trainer()
        if trainer is not None:
            for cb in trainer.callback_handler.callbacks:
                if isinstance(cb, AutoDropCallback):
                    link(trainer, cb)
        return control


def install(trainer, callback=None, **fields):
    """Add AutoDrop to a built `Trainer`, linked explicitly to `trainer.log`.

    Not needed with a `transformers.Trainer` (or subclass): `Trainer(callbacks=[AutoDropCallback()])`
    finds its Trainer by itself. `install` remains for code that already calls it, and for trainers
    that are not `transformers.Trainer` subclasses but run its callbacks; the link survives the
    callback being rebuilt on resume. Returns the `AutoDropCallback`.

    Example:
        ```python
        trainer = Trainer(model=model, args=args, train_dataset=train)
        autodrop = install(trainer, drop_factor=0.2)
        trainer.train()
        ```
    """
    from .callback import AutoDropCallback

    if callback is None:
        callback = next((c for c in trainer.callback_handler.callbacks if isinstance(c, AutoDropCallback)), None)
        if callback is None:
            callback = AutoDropCallback(**fields)
            trainer.add_callback(callback)
        elif fields:
            raise ValueError("the Trainer already has an AutoDropCallback; configure it there, not in install()")
    elif callback not in trainer.callback_handler.callbacks:
        trainer.add_callback(callback)
    if not any(isinstance(c, _TrainerLink) for c in trainer.callback_handler.callbacks):
        trainer.add_callback(_TrainerLink(trainer))
    link(trainer, callback)
    return callback
