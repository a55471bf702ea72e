"""`AutoDropCallback`: AutoDrop for the Hugging Face `Trainer` (a thin adapter over `AutoDrop`)."""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import uuid
import weakref
from dataclasses import asdict

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from . import _trainer_link
from .config import AutoDropConfig
from .controller import AutoDrop, Measurement
from .distributed import agree

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
    per run (or every `interval_steps` optimizer updates), logs the `autodrop/*` metrics through the
    Trainer's own `log` (so into `state.log_history` and every `report_to` integration: TensorBoard,
    W&B, MLflow, ...), and drops the lr of every param group, keeping the base schedule's shape (use
    `lr_scheduler_type="constant"` or `"constant_with_warmup"`). It tells AutoDrop the run's length
    (`max_steps`), so that with the default growth test a run that never saturates still starts its last
    `cooldown_fraction` (a tenth) at a lower lr, unless its parameters still drift then.

    Checkpoints hold AutoDrop's tensors in `checkpoint-N/autodrop_state.pt` (with several processes, one
    `autodrop_state-rank{R}-of-{W}.pt` per process), written atomically before the Trainer writes the
    checkpoint's `trainer_state.json`; resume exactly, with the same number of processes, with
    `TrainingArguments(restore_callback_states_from_checkpoint=True)`. On resume the callback you passed
    stays the one that trains (the Trainer would otherwise replace it with a copy rebuilt from the
    checkpoint), and its config wins over the saved one (README "Reliability").

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

    # Flush AutoDrop's state file to the disk (fsync) before a checkpoint points to it. The temporary name and
    # the atomic rename alone already protect against a killed process; the fsync adds protection against a
    # power loss or kernel crash, at the price of waiting for the disk (README "Reliability" measures it).
    # The Trainer does not fsync its own checkpoint files. Set `AutoDropCallback.durable = False` to skip it.
    durable: bool = True

    def __new__(cls, *args, **kwargs):
        # On resume the Trainer's `_load_callback_state` rebuilds every stateful callback as
        # `type(callback)(**saved_args)` and swaps it in for the live one. Handing back the live instance
        # keeps the object the user holds training, with the config the user gave it.
        live = _live_instance_being_restored(cls)
        if live is not None:
            live._restoring = True
            return live
        return super().__new__(cls)

    def __init__(self, config: AutoDropConfig | dict | None = None, **fields):
        if self.__dict__.pop("_restoring", False):
            return  # the live instance handed back on resume keeps its own config; the saved one is checked on load
        self.config = AutoDropConfig.coerce(config, **fields)
        self.autodrop: AutoDrop | None = None
        self.measurements: list[dict] = []
        # Set by the Trainer (from trainer_state.json) when it rebuilds this callback on resume.
        self._checkpoint: dict | None = None
        self._run_id = uuid.uuid4().hex
        self._output_dir = "."
        self._global_step = 0
        self._trainer_ref = None  # the Trainer to log through (found at on_init_end / on_train_begin)
        self._warned_unlinked = False
        self._warned_schedule = False
        self._warned_fraction = False
        self._every: int | None = None  # optimizer steps per interval; None = once per epoch
        self._training = False  # between on_train_begin and on_train_end
        self._written_step: int | None = None  # the step whose state this process last wrote into a checkpoint
        self._staged_step: int | None = None  # the step whose state this process last staged
        self._flushing: _Flush | None = None  # process zero's staged file on its way to the disk

    # ------------------------------------------------------------------ ExportableState
    def state(self) -> dict:
        """JSON state for `trainer_state.json`: the config, and where the tensor state file is.

        The Trainer calls this inside `_save_checkpoint`, after the model, optimizer and RNG files and
        before it writes `trainer_state.json`, pushes the checkpoint to the Hub or deletes old
        checkpoints: process zero writes its state file (and moves the other processes' staged files
        into the checkpoint) here, so the checkpoint never points to a file that is not complete.
        """
        info = None
        if self.autodrop is not None:
            self._save_into_checkpoint()
            info = {
                "run_id": self._run_id,
                "global_step": self._global_step,
                "interval": self.autodrop.interval,
                "num_drops": self.autodrop.num_drops,
                "phase": self.autodrop.phase,
                "threshold": self.autodrop.threshold,
                "world_size": self.autodrop.world_size,
                # Where process zero's tensors are; on resume the file beside the resumed checkpoint comes first.
                "file": os.path.abspath(self._state_path(self._output_dir, self._global_step, 0)),
            }
        return {"args": self.config.to_dict(), "attributes": {"_checkpoint": info}}

    # ------------------------------------------------------------------ Trainer events
    def on_init_end(self, args, state, control, **kwargs):
        self._claim(state)
        self._check_schedule(args)
        self._link_trainer()

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self._claim(state)
        self._check_schedule(args)
        self._link_trainer()
        self._output_dir, self._global_step = args.output_dir, state.global_step
        self._written_step = self._staged_step = self._flushing = None
        checkpoint, self._checkpoint = self._checkpoint, None  # consumed by this train() only
        resume_dir = _trainer_local("resume_from_checkpoint", str)
        if model is None or optimizer is None:
            raise RuntimeError("AutoDropCallback needs the Trainer's model and optimizer at train start")
        self.autodrop = AutoDrop(model, optimizer, lr_scheduler, self.config)
        self._training = True
        if self.autodrop.world_size > 1 and checkpoint is None:
            # Every process writes its own state file; they must carry the one run id that process zero
            # records in trainer_state.json.
            import torch.distributed as dist

            ids = [self._run_id]
            dist.broadcast_object_list(ids, src=0)
            self._run_id = ids[0]
        resuming = state.global_step > 0
        self._every = self._plan_interval(state, report=not resuming)
        if resuming:
            self._resume(args, state, checkpoint, resume_dir)
        else:
            self.measurements = []
        self._set_horizon(state, report=not resuming)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        self._global_step = state.global_step
        if self._every is not None and state.global_step % self._every == 0:
            self._measure(args, state, control)
        self._stage_if_saving(control)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._every is None:
            fraction = state.epoch - math.floor(state.epoch) if state.epoch is not None else 0.0
            if 1e-6 < fraction < 1 - 1e-6 and not self._warned_fraction:
                self._warned_fraction = True
                logger.warning(
                    "AutoDrop: this epoch ends the run after %.3g of an epoch (epoch %.4g), so its interval is "
                    "shorter than the others; its angle is measured over the shorter interval. Use a whole "
                    "number of epochs (or interval_steps) for intervals of equal length.",
                    fraction,
                    state.epoch,
                )
            self._measure(args, state, control)
        self._stage_if_saving(control)
        return control

    def on_save(self, args, state, control, **kwargs):
        # Process zero wrote its file in state(); the others' staged files are moved in place by it, or
        # here. A process whose file is not in the checkpoint yet (a save decided after on_step_end, such
        # as save_strategy="best") writes it now.
        if self.autodrop is not None and self._written_step != state.global_step:
            self._move_staged(self.autodrop.rank)
            path = self._state_path(self._output_dir, state.global_step)
            if not os.path.isfile(path) or self._staged_step != state.global_step:
                self._write(path)
            self._written_step = state.global_step
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False
        return control

    # ------------------------------------------------------------------ crash-safe saving
    def _payload(self) -> dict:
        return {
            "run_id": self._run_id,
            "global_step": self._global_step,
            "autodrop": self.autodrop.state_dict(),
            "measurements": list(self.measurements),
        }

    def _write(self, path: str) -> None:
        """Write this process's state to `path` atomically: complete under its name, or not there at all."""
        _atomic_save(self._payload(), path, fsync=self.durable)

    def _save_into_checkpoint(self) -> None:
        """Inside the Trainer's `_save_checkpoint` (process zero): this process's file and the staged ones."""
        folder = os.path.join(self._output_dir, f"checkpoint-{self._global_step}")
        # TrainerState also calls state() when it is built; only a checkpoint being written is saved into.
        if not self._training or self._written_step == self._global_step or not os.path.isdir(folder):
            return
        for rank in range(self.autodrop.world_size):
            self._move_staged(rank)
        path = self._state_path(self._output_dir, self._global_step)
        if self._staged_step != self._global_step or not os.path.isfile(path):
            self._write(path)  # a save decided after on_step_end/on_epoch_end: nothing was staged
        self._written_step = self._global_step

    def _staging_path(self, rank: int) -> str:
        name = state_file_name(rank, self.autodrop.world_size)
        return os.path.join(self._output_dir, ".autodrop-staging", f"checkpoint-{self._global_step}", name)

    def _stage_if_saving(self, control) -> None:
        """When the Trainer is about to save, write this process's state to a staging folder first.

        Process zero's file is flushed to disk on a background thread while the Trainer writes the model
        and optimizer, and moved into the checkpoint (from `state()`) just before `trainer_state.json`:
        the durability costs little time. With several processes the others stage theirs durably, and
        one collective makes sure every process staged its file (or all stop with one error) before
        process zero moves them in.
        """
        if self.autodrop is None or not control.should_save or self._staged_step == self._global_step:
            return
        self._staged_step = self._global_step
        rank = self.autodrop.rank
        error = None
        try:
            _atomic_save(self._payload(), self._staging_path(rank), fsync=self.durable and rank != 0)
            if rank == 0 and self.durable:
                self._flushing = _Flush(self._staging_path(rank))
        except Exception as err:  # noqa: BLE001 - reported on every process, never left to hang the others
            error = err
        failed = [r for r, code in enumerate(agree(int(error is not None))) if code]
        if failed:
            raise RuntimeError(
                f"AutoDrop could not stage its state for checkpoint-{self._global_step} on process(es) {failed}"
                + (f" (this one: {type(error).__name__}: {error})" if error else "")
                + "; training stops so that no checkpoint misses AutoDrop's state. Free disk space (or fix the "
                "output_dir's permissions) and resume from the last checkpoint."
            ) from error

    def _move_staged(self, rank: int) -> None:
        """Move process `rank`'s staged file for this step into the checkpoint, if it is (still) staged."""
        staged = self._staging_path(rank)
        if rank == self.autodrop.rank and self._flushing is not None:
            flushing, self._flushing = self._flushing, None
            flushing.wait()  # on disk before the checkpoint points to it
        if not os.path.isfile(staged):
            return
        target = self._state_path(self._output_dir, self._global_step, rank)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.replace(staged, target)
        except FileNotFoundError:  # its own process moved it first
            return
        if self.durable:
            _fsync_dir(os.path.dirname(target))
        for folder in (os.path.dirname(staged), os.path.dirname(os.path.dirname(staged))):
            try:
                os.rmdir(folder)
            except OSError:
                break  # not empty yet (or gone): the last process to move its file removes it

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
            _trainer_link.log(trainer, logs, control)  # log_history + every report_to integration
        else:
            state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})
        if m.should_stop:
            logger.info("AutoDrop: every param group is at its floor; stopping training (stop_when_exhausted=True)")
            control.should_training_stop = True

    def _link_trainer(self) -> None:
        """Find the Trainer running this event (see `_trainer_link`) to log through it."""
        trainer = _trainer_link.find_trainer()
        if trainer is not None:
            self._trainer_ref = weakref.ref(trainer)
        elif self._trainer_ref is None and not self._warned_unlinked:
            self._warned_unlinked = True
            logger.info(
                "AutoDrop: could not find the Trainer running this callback; the autodrop/* metrics go to "
                "state.log_history only, not to the report_to integrations. Link it explicitly with "
                "hf_autodrop.callback.install(trainer)."
            )

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

    def _set_horizon(self, state, report: bool) -> None:
        """The run's length in intervals (from `max_steps`, which a resumed run may have changed), for the
        cooldown of its final segment (`AutoDropConfig.cooldown_fraction`)."""
        if self._every is not None:
            horizon = state.max_steps / self._every if state.max_steps > 0 else None
        else:
            horizon = float(state.num_train_epochs) if state.num_train_epochs else None
        self.autodrop.set_horizon(horizon)
        start = self.autodrop.cooldown_start
        if report and start is not None:
            logger.info(
                "AutoDrop: the run ends after %.6g intervals; unless a drop lands in its final %.3g (from interval "
                "%d on) or the parameters still drift then, it starts that segment at a lower lr "
                "(cooldown_fraction=%g; 0 turns it off).",
                horizon,
                self.config.cooldown_fraction,
                start,
                self.config.cooldown_fraction,
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

    def _resume(self, args, state, info, resume_dir: str | None) -> None:
        """Load this process's state file; every process resumes, or all stop with one error."""
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
        missing = error = None
        try:
            info = _checked_entry(info)
            path = self._load(args, state, info, resume_dir)
        except _Missing as err:
            missing = err
        except Exception as err:  # noqa: BLE001 - every failure is reported, after all processes know
            error = err
        codes = agree(0 if missing is None and error is None else (1 if error is None else 2))
        if self.autodrop.world_size == 1:
            if error is not None:
                raise error
        elif any(codes):
            failed = {r: ("missing" if c == 1 else "unloadable") for r, c in enumerate(codes) if c}
            if set(failed.values()) != {"missing"} or len(failed) != len(codes):
                raise RuntimeError(
                    f"AutoDrop cannot resume on every process: its state file is {failed} (by rank); this process: "
                    f"{error or missing or 'loaded'}. Every process stops instead of letting the replicas diverge. "
                    "Restore the missing or damaged files from the run (one autodrop_state-rank{R}-of-{W}.pt per "
                    "process beside the checkpoint's other files), or resume from another checkpoint."
                ) from (error or missing)
        if missing is not None:  # on every process: all start afresh alike
            logger.warning(
                "AutoDrop: %s AutoDrop starts a fresh history from the current parameters (threshold %g, drop "
                "count 0); keep %s beside the checkpoint's other files to resume exactly.",
                missing,
                self.config.threshold,
                STATE_FILE,
            )
            return
        logger.info(
            "AutoDrop: resumed from %s (interval %d, %d drops, phase %s)",
            path,
            self.autodrop.interval,
            self.autodrop.num_drops,
            self.autodrop.phase,
        )

    def _load(self, args, state, info: dict, resume_dir: str | None) -> str:
        """Find this process's file of this checkpoint and load it; returns its path."""
        saved_world = info["world_size"]
        if saved_world != self.autodrop.world_size:
            raise ValueError(
                f"This checkpoint's AutoDrop state was written by {saved_world} process(es) but this run has "
                f"{self.autodrop.world_size}: AutoDrop's state is sharded like the parameters and cannot be "
                f"resharded. Resume with {saved_world} process(es), or without "
                "restore_callback_states_from_checkpoint to restart AutoDrop's history."
            )
        name = state_file_name(self.autodrop.rank, saved_world)
        # The checkpoint being resumed first (it may be a moved copy, or one downloaded from the Hub), then
        # the usual place, then the folder recorded at save time.
        folders = [resume_dir, os.path.join(args.output_dir, f"checkpoint-{state.global_step}")]
        folders.append(os.path.dirname(info["file"]) if info.get("file") else None)
        candidates = list(dict.fromkeys(os.path.abspath(os.path.join(f, name)) for f in folders if f))
        rejected = []
        for path in candidates:
            if not os.path.isfile(path):
                continue
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
                rejected.append(f"{path} is unreadable ({err})")
                continue
            if not isinstance(payload, dict) or not isinstance(payload.get("autodrop"), dict):
                rejected.append(f"{path} is not an AutoDrop state file")
                continue
            found = (payload.get("run_id"), payload.get("global_step"), payload["autodrop"].get("interval"))
            wanted = (info["run_id"], state.global_step, info["interval"])
            if found != wanted:
                rejected.append(
                    f"{path} belongs to another run or step (run {found[0]}, step {found[1]}, interval {found[2]}; "
                    f"this checkpoint's trainer_state.json records run {wanted[0]}, step {wanted[1]}, interval "
                    f"{wanted[2]})"
                )
                continue
            self.autodrop.load_state_dict(payload["autodrop"])
            self._run_id = payload["run_id"]
            self.measurements = list(payload.get("measurements", []))
            return path
        if rejected:
            raise ValueError(
                "refusing to resume from mismatched or damaged AutoDrop state: "
                + "; ".join(rejected)
                + ". Restore the checkpoint's own AutoDrop file, or delete it to restart AutoDrop's history."
            )
        raise _Missing(
            f"the checkpoint records AutoDrop state (interval {info['interval']}, {info['num_drops']} drops) but "
            f"{name} is missing (looked in {', '.join(os.path.dirname(c) for c in candidates)})."
        )

    def _claim(self, state) -> None:
        """Refuse a second AutoDropCallback in the same Trainer: every drop would be applied twice."""
        owner = getattr(state, "_hf_autodrop_callback", None)
        other = owner() if owner is not None else None
        if other is not None and other is not self:
            raise ValueError(
                "This Trainer has two AutoDropCallbacks: each would apply every drop, so the lr would fall by "
                "drop_factor**2 and the averages be written twice. Keep one AutoDropCallback "
                "(trainer.remove_callback(AutoDropCallback) removes one)."
            )
        # A TrainerState lives for one Trainer's init or one train() call: the marker never outlives it.
        state._hf_autodrop_callback = weakref.ref(self)


class _Missing(Exception):
    """This process's state file is not there."""


def _checked_entry(info) -> dict:
    """The AutoDrop entry of trainer_state.json, or a clear error when it is damaged."""
    expected = {"run_id": str, "interval": int, "num_drops": int, "world_size": int}
    problems = (
        ["it is not a mapping"]
        if not isinstance(info, dict)
        else [f"'{k}' is missing or not {t.__name__}" for k, t in expected.items() if not isinstance(info.get(k), t)]
    )
    if isinstance(info, dict) and not isinstance(info.get("file", ""), str):
        problems.append("'file' is not a path")
    if problems:
        raise ValueError(
            f"The AutoDrop entry of this checkpoint's trainer_state.json (stateful_callbacks.AutoDropCallback."
            f"attributes._checkpoint) is damaged: {'; '.join(problems)}. Restore trainer_state.json from a copy, "
            "or resume without restore_callback_states_from_checkpoint to restart AutoDrop's history."
        )
    return info


def _atomic_save(payload: dict, path: str, fsync: bool = True) -> None:
    """`torch.save` to a temporary name in the same folder, flushed (to disk with `fsync`), renamed into place."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(folder)


class _Flush:
    """`fsync` of a written file on a background thread (the GIL is released while the disk works)."""

    def __init__(self, path: str):
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(path,), name="autodrop-fsync", daemon=True)
        self._thread.start()

    def _run(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as err:  # noqa: BLE001 - re-raised in the training thread by wait()
            self._error = err

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def _fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _trainer_local(name: str, kind: type, function: str = "_inner_training_loop", depth: int = 12):
    """Local `name` (when of type `kind`) of the Trainer's `function` up the call stack.

    The Trainer does not tell callbacks which checkpoint it resumes from; `_inner_training_loop` holds it
    in its `resume_from_checkpoint` argument (transformers 4.45 to 5.x). None when not found.
    """
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        if frame.f_code.co_name == function:
            value = frame.f_locals.get(name)
            return value if isinstance(value, kind) else None
        frame = frame.f_back
    return None


def _live_instance_being_restored(cls):
    """The callback the Trainer's `_load_callback_state` is rebuilding right now, if that is the caller.

    transformers (4.45 to 5.x) runs `new_callback = type(callback)(**args)` inside
    `Trainer._load_callback_state` with the live instance in its local `callback`.
    """
    frame = sys._getframe(2)  # 0: here, 1: __new__, 2: whoever called the class
    if frame is None or frame.f_code.co_name != "_load_callback_state":
        return None
    live = frame.f_locals.get("callback")
    return live if type(live) is cls and hasattr(live, "config") else None


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
    """Add AutoDrop to a built `Trainer`, linked explicitly to `trainer.log`.

    Not needed with a `transformers.Trainer` (or subclass): `Trainer(callbacks=[AutoDropCallback()])`
    finds its Trainer by itself. `install` remains for code that already calls it, and for trainers
    that are not `transformers.Trainer` subclasses but run its callbacks; the link survives the
    callback being rebuilt on resume.

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
