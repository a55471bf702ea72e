"""`AutoDropCallback`: AutoDrop for the Hugging Face `Trainer` (a thin adapter over `AutoDrop`)."""

from __future__ import annotations

import logging
import math
import os
import uuid
import weakref
from dataclasses import fields

from ._extras import require

with require("hf", "AutoDropCallback", "transformers"):
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

from . import _trainer_link
from ._state_files import (
    MEASUREMENTS_FILE,
    STATE_FILE,
    Flush,
    MeasurementsLog,
    Missing,
    Outcome,
    atomic_save,
    checked_entry,
    find_state,
    move_into_place,
    state_file_name,
)
from ._state_files import atomic_save as _atomic_save  # noqa: F401 - the name bench/reliability_cost.py imports
from ._trainer_link import install
from .config import AutoDropConfig
from .controller import AutoDrop, Measurement
from .detectors import make_test
from .distributed import agree
from .lr import unwrap_optimizer

__all__ = ["AutoDropCallback", "install", "MEASUREMENTS_FILE", "STATE_FILE", "state_file_name"]

logger = logging.getLogger("hf_autodrop")

# The fields of a measurement record (`AutoDropCallback.measurements`), besides `step` and `epoch`.
_FIELDS = tuple(f.name for f in fields(Measurement))

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
    per run (or every `interval_steps` optimizer updates) and drops the lr of every param group, keeping
    the base schedule's shape (use `lr_scheduler_type="constant"` or `"constant_with_warmup"`).

    Logging follows the Trainer's cadence (`logging_strategy`, `logging_steps`): the latest
    measurement's `autodrop/*` metrics are added to each of the Trainer's own training log rows (the
    console, `state.log_history` and every `report_to` integration: TensorBoard, W&B, MLflow, ...),
    and a trigger, a drop or the cooldown's start the Trainer does not log at that step gets a row of
    its own. With `logging_strategy="no"` nothing is logged there (the drops still go to the
    `hf_autodrop` logger at INFO). Every interval's record is in `measurements` and, on process zero,
    in `output_dir/autodrop_measurements.jsonl` (one JSON object per line, NaN written as null). It tells AutoDrop the run's length
    (`max_steps`), so that with the default growth test the lr decays to its floor over the run's last
    `cooldown_fraction` (a fifth), along 1 - sqrt, as transformers' `warmup_stable_decay` cools down.

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
        live = _trainer_link.live_instance_being_restored(cls)
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
        self._flushing: Flush | None = None  # process zero's staged file on its way to the disk
        self._logging = True  # the Trainer logs (logging_strategy is not "no")
        self._pending: dict | None = None  # the latest measurement not shown yet, for the Trainer's next log row
        self._journal: MeasurementsLog | None = None  # process zero's autodrop_measurements.jsonl
        self._optimizer = None

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
        resume_dir = _trainer_link.trainer_local("resume_from_checkpoint", str)
        if model is None or optimizer is None:
            raise RuntimeError("AutoDropCallback needs the Trainer's model and optimizer at train start")
        self.autodrop = AutoDrop(model, optimizer, lr_scheduler, self.config)
        self._optimizer = unwrap_optimizer(optimizer)
        self._logging = str(getattr(args.logging_strategy, "value", args.logging_strategy)) != "no"
        self._pending = None
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
        restored = False
        if resuming:
            restored = self._resume(args, state, checkpoint, resume_dir)
        else:
            self.measurements = []
        self._open_journal(args, state, resuming, restored)
        self._set_horizon(state, report=not resuming)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        # With a linked Trainer, MergeLogs (first in its list) has merged already; this covers a Trainer not found.
        if logs is not None:
            self._merge_into(logs, state)
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        if self._pending is not None:
            self._flush_event(state, control)  # the last step's event, which no Trainer row took
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
        elif self._pending is not None and not control.should_log:
            self._flush_event(state, control)  # no epoch row follows this step's event
        self._stage_if_saving(control)
        return control

    def on_save(self, args, state, control, **kwargs):
        # Process zero wrote its file in state(); the others' staged files are moved in place by it, or
        # here. A process whose file is not in the checkpoint yet (a save decided after on_step_end, such
        # as save_strategy="best") writes it now.
        if self._journal is not None:
            self._journal.flush()
        if self.autodrop is not None and self._written_step != state.global_step:
            self._move_staged(self.autodrop.rank)
            path = self._state_path(self._output_dir, state.global_step)
            if not os.path.isfile(path) or self._staged_step != state.global_step:
                self._write(path)
            self._written_step = state.global_step
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._flush_event(state, control)
        self._training = False
        if self._journal is not None:
            self._journal.close()
        return control

    # ------------------------------------------------------------------ crash-safe saving
    def _payload(self) -> dict:
        return {
            "run_id": self._run_id,
            "global_step": self._global_step,
            "autodrop": self.autodrop.state_dict(),
            "measurements": list(self.measurements),
            "pending_log": self._pending,
        }

    def _write(self, path: str) -> None:
        """Write this process's state to `path` atomically: complete under its name, or not there at all."""
        atomic_save(self._payload(), path, fsync=self.durable)

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
        if self._journal is not None:
            self._journal.flush()  # the measurements file holds every interval up to the checkpoint
        self._staged_step = self._global_step
        rank = self.autodrop.rank
        error = None
        try:
            atomic_save(self._payload(), self._staging_path(rank), fsync=self.durable and rank != 0)
            if rank == 0 and self.durable:
                self._flushing = Flush(self._staging_path(rank))
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
        move_into_place(staged, self._state_path(self._output_dir, self._global_step, rank), self.durable)

    def _state_path(self, output_dir: str, global_step: int, rank: int | None = None) -> str:
        """This process's state file in `checkpoint-{global_step}` (process `rank`'s when given)."""
        rank = self.autodrop.rank if rank is None else rank
        name = state_file_name(rank, self.autodrop.world_size)
        return os.path.join(output_dir, f"checkpoint-{global_step}", name)

    # ------------------------------------------------------------------ measuring and logging
    def _measure(self, args, state, control) -> None:
        if self.autodrop is None:
            return
        lr_used = self._optimizer.param_groups[0]["lr"]  # by this interval's last step, before a drop
        m: Measurement = self.autodrop.step()
        record = {name: getattr(m, name) for name in _FIELDS}
        record["step"], record["epoch"] = state.global_step, state.epoch
        cooldown_starts = m.cooldown and not (self.measurements and self.measurements[-1]["cooldown"])
        self.measurements.append(record)
        if self._journal is not None:
            self._journal.append(record)
        if self._logging:
            logs = m.logs()
            if self._every is not None:
                logs["autodrop/window_steps"] = float(m.window * self._every)
            self._pending = {
                "logs": logs,
                "step": state.global_step,
                "dropped": m.dropped,
                "lr_used": float(lr_used),
                "lr_after": float(m.lrs[0]) if m.lrs else float(lr_used),
                "event": bool(m.triggered or m.dropped or cooldown_starts),
            }
            if self._pending["event"] and self._every is None and not control.should_log:
                self._log_pending(state, control)  # the Trainer does not log this epoch's end: a row of its own
            # At a step's end an event waits: the Trainer may still log this step at the epoch's end
            # (logging_strategy="epoch"); if it does not, on_epoch_end or on_step_begin logs it.
        if m.should_stop:
            logger.info("AutoDrop: every param group is at its floor; stopping training (stop_when_exhausted=True)")
            control.should_training_stop = True

    def _flush_event(self, state, control) -> None:
        """Log a pending trigger, drop or cooldown start the Trainer did not log with its own row."""
        if self._pending is not None and self._pending["event"]:
            self._log_pending(state, control)

    def _log_pending(self, state, control) -> None:
        """The pending measurement as a row of its own, through the Trainer's `log` when linked."""
        logs, self._pending = self._pending["logs"], None
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is not None:
            _trainer_link.log(trainer, logs, control)  # log_history + every report_to integration + console
        else:
            state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})

    def _merge_into(self, logs: dict, state) -> None:
        """Add the pending measurement's metrics to the Trainer's training log row `logs` (and its copy in
        `log_history`), before the integrations and the console see it (see `_trainer_link.MergeLogs`)."""
        pending = self._pending
        if pending is None or ("loss" not in logs and "learning_rate" not in logs):
            return  # nothing new, or not a training row (evaluation, the final summary)
        self._pending = None
        extra = dict(pending["logs"])
        # The row of a drop's step shows the lr that step used: a Trainer that reads get_last_lr() after
        # the drop (older transformers) would show the new one, which the next row shows.
        if pending["dropped"] and pending["step"] == state.global_step and "learning_rate" in logs:
            if logs["learning_rate"] == pending["lr_after"] != pending["lr_used"]:
                extra["learning_rate"] = pending["lr_used"]
        last = state.log_history[-1] if state.log_history else None
        is_copy = (
            last is not None
            and last.get("step") == state.global_step
            and all(last.get(k) is v for k, v in logs.items())
        )
        logs.update(extra)
        if is_copy:
            last.update(extra)

    def _open_journal(self, args, state, resuming: bool, restored: bool) -> None:
        """Process zero's `autodrop_measurements.jsonl`: afresh, or rewound to the resumed interval."""
        if self._journal is not None:
            self._journal.close()
        self._journal = None
        if not state.is_world_process_zero:
            return
        self._journal = MeasurementsLog(args.output_dir)
        if restored:
            self._journal.start(records=self.measurements)
        elif resuming:  # no AutoDrop state: keep what the file holds up to the resumed step
            self._journal.start(up_to_step=state.global_step)
        else:
            self._journal.start()

    def _link_trainer(self) -> None:
        """Find the Trainer running this event (see `_trainer_link`) to log through it."""
        trainer = _trainer_link.find_trainer()
        if trainer is not None:
            _trainer_link.link(trainer, self)
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
                "AutoDrop: the run ends after %.6g intervals; over its final %.3g (from interval %d on) the lr "
                "decays to its floor along 1 - sqrt (cooldown_fraction=%g; 0 turns it off).",
                horizon,
                self.config.cooldown_fraction,
                start + 1,
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
        test = make_test(cfg)
        if not test.measures_per_epoch:
            # A test whose decision does not depend on the interval (the growth test): measuring about 300
            # times per run keeps its window well sampled early in the run, at any run length.
            every = test.auto_interval_steps(state.max_steps)
            if report:
                logger.info(
                    "AutoDrop: measuring every %d optimizer steps (%d intervals over the run's %d steps); the "
                    "%s test judges saturation over the latter half of the time since the start or the last "
                    "drop, whatever the interval. Set interval_steps to choose yourself.",
                    every,
                    state.max_steps // every,
                    state.max_steps,
                    cfg.detector,
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

    def _resume(self, args, state, info, resume_dir: str | None) -> bool:
        """Load this process's state file; every process resumes, or all stop with one error.

        Returns True when AutoDrop's state was restored, False when it starts a fresh history.
        """
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
            return False
        outcome, missing, error = Outcome.LOADED, None, None
        try:
            path = self._load(args, state, checked_entry(info), resume_dir)
        except Missing as err:
            outcome, missing = Outcome.MISSING, err
        except Exception as err:  # noqa: BLE001 - every failure is reported, after all processes know
            outcome, error = Outcome.UNLOADABLE, err
        outcomes = [Outcome(code) for code in agree(outcome)]
        if self.autodrop.world_size == 1:
            if error is not None:
                raise error
        elif any(o is not Outcome.LOADED for o in outcomes):
            failed = {r: o.name.lower() for r, o in enumerate(outcomes) if o is not Outcome.LOADED}
            if set(failed.values()) != {"missing"} or len(failed) != len(outcomes):
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
            return False
        logger.info(
            "AutoDrop: resumed from %s (interval %d, %d drops, phase %s)",
            path,
            self.autodrop.interval,
            self.autodrop.num_drops,
            self.autodrop.phase,
        )
        return True

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
        path, payload = find_state(info, name, folders, state.global_step)
        self.autodrop.load_state_dict(payload["autodrop"])
        self._run_id = payload["run_id"]
        self.measurements = list(payload.get("measurements", []))
        # The state file is staged before the Trainer's log of its step: a measurement the checkpoint's
        # log_history already shows is not pending any more.
        pending = payload.get("pending_log")
        logged = [h.get("step", -1) for h in state.log_history if "loss" in h or "autodrop/angle" in h]
        if not self._logging or not isinstance(pending, dict) or pending.get("step", -1) <= max(logged, default=-1):
            pending = None
        self._pending = pending
        return path

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
