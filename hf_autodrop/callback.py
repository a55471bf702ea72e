"""`AutoDropCallback`: AutoDrop for the Hugging Face `Trainer` (a thin adapter over `AutoDrop`)."""

from __future__ import annotations

import logging
import math
import os
import uuid
import weakref
from dataclasses import asdict

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .config import AutoDropConfig
from .controller import AutoDrop, Measurement

__all__ = ["AutoDropCallback", "install", "STATE_FILE", "state_file_name"]

logger = logging.getLogger("hf_autodrop")

STATE_FILE = "autodrop_state.pt"


def state_file_name(rank: int, world_size: int) -> str:
    """`autodrop_state.pt` on one process; `autodrop_state-rank{R}-of-{W}.pt` per process on several.

    Under a sharded engine each process holds only its shard of AutoDrop's tensors, so each process
    writes its own file beside the engine's own sharded checkpoint files.
    """
    return STATE_FILE if world_size == 1 else f"autodrop_state-rank{rank}-of-{world_size}.pt"


# Base schedules that keep the lr constant between drops; every other one decays by itself.
_CONSTANT_SCHEDULES = {"constant", "constant_with_warmup"}
# Schedules that set the lr from metrics themselves and would fight AutoDrop.
_INCOMPATIBLE_SCHEDULES = {"reduce_lr_on_plateau", "greedy"}


def _schedule_name(args) -> str:
    kind = args.lr_scheduler_type
    return str(getattr(kind, "value", kind))


class AutoDropCallback(TrainerCallback, ExportableState):
    """Drops the `Trainer`'s learning rate automatically when training at it has saturated.

    `Trainer(..., callbacks=[AutoDropCallback()])` is all it takes. AutoDrop measures about 300 times
    per run (or every `interval_steps` optimizer updates), logs the `autodrop/*` metrics into
    `trainer.state.log_history`, and drops the lr of every param group, keeping the base schedule's
    shape (use `lr_scheduler_type="constant"` or `"constant_with_warmup"`). To send the metrics to
    the `report_to` integrations (TensorBoard, W&B, ...) as well, add the callback with
    `hf_autodrop.callback.install(trainer)` instead (the README explains why a plain callback cannot).

    Checkpoints hold AutoDrop's tensors in `checkpoint-N/autodrop_state.pt` (with several processes, one
    `autodrop_state-rank{R}-of-{W}.pt` per process); resume exactly, with the same number of processes,
    with `TrainingArguments(restore_callback_states_from_checkpoint=True)`.

    Args:
        config (`AutoDropConfig` or `dict`, *optional*):
            The configuration; keyword arguments (the `AutoDropConfig` fields: `drop_factor`,
            `min_lr`, `detector`, `growth_threshold`, `drop_delay`, `interval_steps`, ...) override single
            fields. With `interval_steps=None` and the default growth test the run is measured every
            `config.auto_interval_steps(max_steps)` (= max_steps // 300) optimizer steps, logged at train
            start; the decision does not depend on that interval. With the omega tests (`"paper"`,
            `"trend"`) it is measured once per epoch, or every `config.auto_interval_steps(max_steps)` steps
            when the run has fewer epochs than a drop needs (`config.min_intervals_per_drop`).

    Attributes:
        autodrop (`AutoDrop`): the controller, built when training begins.
        measurements (`list[dict]`): every interval's measurement of this process, with `step` and `epoch`.

    Example:
        ```python
        from transformers import Trainer, TrainingArguments
        from hf_autodrop import AutoDropCallback

        args = TrainingArguments("out", lr_scheduler_type="constant", num_train_epochs=200)
        trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[AutoDropCallback(drop_factor=0.2)])
        trainer.train()
        ```
    """

    def __init__(self, config: AutoDropConfig | dict | None = None, **fields):
        if isinstance(config, dict):
            config = AutoDropConfig(**config)
        self.config = (config or AutoDropConfig()).replace(**fields) if fields else (config or AutoDropConfig())
        self.autodrop: AutoDrop | None = None
        self.measurements: list[dict] = []
        # Set by the Trainer (from trainer_state.json) when it rebuilds this callback on resume.
        self._checkpoint: dict | None = None
        self._run_id = uuid.uuid4().hex
        self._output_dir = "."
        self._global_step = 0
        self._trainer_ref = None  # set through `install` to reach the reporting integrations
        self._warned_schedule = False
        self._every: int | None = None  # optimizer steps per interval; None = once per epoch

    # ------------------------------------------------------------------ ExportableState
    def state(self) -> dict:
        """JSON state for `trainer_state.json`: the config, and where the tensor state file goes."""
        info = None
        if self.autodrop is not None:
            info = {
                "run_id": self._run_id,
                "interval": self.autodrop.interval,
                "num_drops": self.autodrop.num_drops,
                "phase": self.autodrop.phase,
                "threshold": self.autodrop.threshold,
                "world_size": self.autodrop.world_size,
                # Where on_save (which runs after this) writes process zero's tensors; found again on resume.
                "file": os.path.abspath(self._state_path(self._output_dir, self._global_step, 0)),
            }
        return {"args": self.config.to_dict(), "attributes": {"_checkpoint": info}}

    # ------------------------------------------------------------------ Trainer events
    def on_init_end(self, args, state, control, **kwargs):
        self._check_schedule(args)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self._check_schedule(args)
        self._output_dir, self._global_step = args.output_dir, state.global_step
        if model is None or optimizer is None:
            raise RuntimeError("AutoDropCallback needs the Trainer's model and optimizer at train start")
        self.autodrop = AutoDrop(model, optimizer, lr_scheduler, self.config)
        if self.autodrop.world_size > 1 and self._checkpoint is None:
            # Every process writes its own state file; they must carry the one run id that process zero
            # records in trainer_state.json.
            import torch.distributed as dist

            ids = [self._run_id]
            dist.broadcast_object_list(ids, src=0)
            self._run_id = ids[0]
        resuming = state.global_step > 0
        self._every = self._plan_interval(state, report=not resuming)
        if resuming:
            self._resume(args, state)
        else:
            self.measurements = []
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self._global_step = state.global_step
        if self._every is not None and state.global_step % self._every == 0:
            self._measure(args, state, control)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._every is None:
            self._measure(args, state, control)
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.autodrop is None:
            return control
        path = self._state_path(args.output_dir, state.global_step)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(
            {"run_id": self._run_id, "global_step": state.global_step, "autodrop": self.autodrop.state_dict()}, path
        )
        return control

    def _state_path(self, output_dir: str, global_step: int, rank: int | None = None) -> str:
        """This process's state file in `checkpoint-{global_step}` (process `rank`'s when given)."""
        rank = self.autodrop.rank if rank is None else rank
        name = state_file_name(rank, self.autodrop.world_size)
        return os.path.join(output_dir, f"checkpoint-{global_step}", name)

    # ------------------------------------------------------------------ helpers
    def _measure(self, args, state, control) -> None:
        if self.autodrop is None:
            return
        m: Measurement = self.autodrop.step()
        self.measurements.append({**asdict(m), "step": state.global_step, "epoch": state.epoch})
        logs = m.logs()
        if self._every is not None:
            logs["autodrop/window_steps"] = float(m.window * self._every)
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is not None:
            # log_history + every report_to integration, like the Trainer's own logs. The handler's
            # on_log clears control.should_log, which would swallow the Trainer's pending loss log.
            pending = control.should_log
            trainer.log(dict(logs))
            control.should_log = pending
        else:
            state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})
        if m.should_stop:
            logger.info("AutoDrop: every param group is at its floor; stopping training (stop_when_exhausted=True)")
            control.should_training_stop = True

    def _check_schedule(self, args) -> None:
        name = _schedule_name(args)
        if name in _INCOMPATIBLE_SCHEDULES:
            raise ValueError(
                f"AutoDropCallback cannot run with lr_scheduler_type={name!r}: that scheduler sets the learning "
                "rate from metrics itself and would fight AutoDrop. Use lr_scheduler_type='constant' or "
                "'constant_with_warmup'."
            )
        if name not in _CONSTANT_SCHEDULES and not self._warned_schedule:
            self._warned_schedule = True
            logger.warning(
                "AutoDrop expects a constant learning rate between drops, but lr_scheduler_type=%r decays by "
                "itself; AutoDrop's drops multiply that schedule. Set lr_scheduler_type='constant' (or "
                "'constant_with_warmup') to let AutoDrop alone decide when the lr goes down.",
                name,
            )

    def _plan_interval(self, state, report: bool) -> int | None:
        """Optimizer steps per interval, or None for once per epoch.

        With `interval_steps=None` the callback measures once per epoch when the run has epochs
        enough for a drop; otherwise (few epochs, or a step-based run shorter than a few epochs) it
        measures every `config.auto_interval_steps(max_steps)` steps, which leaves room for about three
        drops, and says so. The choice depends only on the planned run, so a resumed run makes
        the same one.
        """
        cfg = self.config
        needed = cfg.min_intervals_per_drop
        if cfg.interval_steps is not None:
            every = cfg.interval_steps
            planned = state.max_steps // every
            if report and planned < needed:
                logger.warning(
                    "AutoDrop: this run plans %d intervals of %d steps, but the earliest possible drop comes "
                    "after %d intervals (the first check + drop_delay), so no drop can happen. Set "
                    "interval_steps=%d or lower (the run has %d optimizer steps), leave it unset to let "
                    "AutoDrop choose, or lower drop_delay.",
                    planned,
                    every,
                    needed,
                    cfg.auto_interval_steps(state.max_steps),
                    state.max_steps,
                )
            return every
        if cfg.detector == "growth":
            # The growth test's decision does not depend on the interval; measuring about 200 times per run
            # keeps its window well sampled early in the run, at any run length.
            every = cfg.auto_interval_steps(state.max_steps)
            if report:
                logger.info(
                    "AutoDrop: measuring every %d optimizer steps (%d intervals over the run's %d steps); the "
                    "growth test judges saturation over the latter half of the time since the start or the last "
                    "drop, whatever the interval. Set interval_steps to choose yourself.",
                    every,
                    state.max_steps // every,
                    state.max_steps,
                )
            return every
        epochs = math.ceil(state.num_train_epochs)
        if epochs >= needed:
            return None
        every = cfg.auto_interval_steps(state.max_steps)
        if report:
            level = logging.INFO if state.max_steps // every >= needed else logging.WARNING
            logger.log(
                level,
                "AutoDrop: the run plans %d epoch(s), fewer than the %d intervals a drop needs (the first check + "
                "drop_delay); measuring every %d optimizer steps instead (%d intervals). Set interval_steps "
                "to choose yourself.",
                epochs,
                needed,
                every,
                state.max_steps // every,
            )
        return every

    def _resume(self, args, state) -> None:
        info = self._checkpoint
        if info is None:
            logger.warning(
                "AutoDrop: resuming at step %d without AutoDrop's saved state (the Trainer was not given "
                "TrainingArguments(restore_callback_states_from_checkpoint=True), or the checkpoint has no "
                "AutoDrop entry). AutoDrop starts a fresh history from the current parameters: the lr the "
                "checkpoint already holds becomes its new initial lr, the threshold restarts at %g and the "
                "drop count at 0. Set restore_callback_states_from_checkpoint=True to resume exactly.",
                state.global_step,
                self.config.threshold,
            )
            return
        saved_world = info.get("world_size", 1)
        if saved_world != self.autodrop.world_size:
            raise ValueError(
                f"This checkpoint's AutoDrop state was written by {saved_world} process(es) but this run has "
                f"{self.autodrop.world_size}: AutoDrop's state is sharded like the parameters and cannot be "
                f"resharded. Resume with {saved_world} process(es), or without "
                "restore_callback_states_from_checkpoint to restart AutoDrop's history."
            )
        # The recorded folder first (resuming from a checkpoint elsewhere), then the usual place.
        recorded = info.get("file")
        if recorded:
            recorded = os.path.join(os.path.dirname(recorded), state_file_name(self.autodrop.rank, saved_world))
        candidates = [recorded, self._state_path(args.output_dir, state.global_step)]
        path = next((p for p in candidates if p and os.path.isfile(p)), candidates[-1])
        if not os.path.isfile(path):
            logger.warning(
                "AutoDrop: the checkpoint records AutoDrop state (interval %d, %d drops) but %s is missing. "
                "AutoDrop starts a fresh history from the current parameters (threshold %g, drop count 0); "
                "keep %s beside the checkpoint's other files to resume exactly.",
                info["interval"],
                info["num_drops"],
                path,
                self.config.threshold,
                STATE_FILE,
            )
            return
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
            raise RuntimeError(
                f"AutoDrop state file {path} is unreadable ({err}); delete it to restart "
                "AutoDrop's history, or restore it from a backup"
            ) from err
        if not isinstance(payload, dict) or "autodrop" not in payload:
            raise ValueError(f"{path} is not an AutoDrop state file")
        if payload.get("run_id") != info["run_id"] or payload["autodrop"].get("interval") != info["interval"]:
            raise ValueError(
                f"{path} belongs to another run (run {payload.get('run_id')}, interval "
                f"{payload['autodrop'].get('interval')}) than this checkpoint's trainer_state.json (run "
                f"{info['run_id']}, interval {info['interval']}); refusing to resume from mismatched AutoDrop state."
            )
        try:
            self.autodrop.load_state_dict(payload["autodrop"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path} is damaged: {err!r}") from err
        self._run_id = payload["run_id"]
        self.measurements = []
        logger.info(
            "AutoDrop: resumed from %s (interval %d, %d drops, phase %s)",
            path,
            self.autodrop.interval,
            self.autodrop.num_drops,
            self.autodrop.phase,
        )


class _TrainerLink(TrainerCallback):
    """Gives every `AutoDropCallback` of a Trainer the Trainer's `log`, also after a resume rebuilt it."""

    def __init__(self, trainer):
        self._trainer = weakref.ref(trainer)

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self._trainer()
        if trainer is not None:
            for cb in trainer.callback_handler.callbacks:
                if isinstance(cb, AutoDropCallback):
                    cb._trainer_ref = self._trainer
        return control


def install(trainer, callback: AutoDropCallback | None = None, **fields) -> AutoDropCallback:
    """Add AutoDrop to a built `Trainer` so that its metrics also reach the `report_to` integrations.

    The Trainer runs user callbacks after the reporting integrations and copies `logs` into
    `log_history` before `on_log`, so a plain callback cannot put metrics in front of TensorBoard or
    W&B. `install` links the callback to `trainer.log`, the Trainer's own logging path, and the link
    survives the callback being rebuilt on resume.

    Example:
        ```python
        trainer = Trainer(model=model, args=args, train_dataset=train)
        autodrop = install(trainer, drop_factor=0.2)
        trainer.train()
        ```
    """
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
    callback._trainer_ref = weakref.ref(trainer)
    return callback
