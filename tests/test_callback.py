"""AutoDropCallback inside a real `transformers.Trainer` on scikit-learn's digits (CPU)."""

import logging
import math
import os

import pytest
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import SchedulerType

from hf_autodrop import AutoDropCallback
from hf_autodrop.callback import STATE_FILE, install

from .helpers import ALWAYS, MLP, autodrop_entries, copy_checkpoint, make_trainer, wsd_multiplier

KEYS = {
    "autodrop/angle",
    "autodrop/angle_change",
    "autodrop/threshold",
    "autodrop/lr_scale",
    "autodrop/phase",
    "autodrop/num_drops",
    "autodrop/statistic",
}
STEPS_PER_EPOCH = 8  # 256 examples / batch 32


def _tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag written under `logdir`, read back from the event files: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    events = EventMultiplexer()
    events.AddRunsFromDirectory(str(logdir))
    events.Reload()
    out = {}
    for run, tags in events.Runs().items():
        for tag in tags["scalars"]:
            out.setdefault(tag, []).extend((s.step, s.value) for s in events.Scalars(run, tag))
    return {tag: sorted(values) for tag, values in out.items()}


def _tag(scalars: dict, key: str) -> str | None:
    """The TensorBoard tag of a logged key (the Trainer writes training logs as `train/<key>`)."""
    return next((t for t in (f"train/{key}", key) if t in scalars), None)


def _callback(trainer) -> AutoDropCallback:
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, AutoDropCallback))


def _event_steps(measurements) -> set[int]:
    """The steps of the intervals that log a row of their own: a trigger, a drop, the cooldown's start."""
    events, cooled = set(), False
    for m in measurements:
        if m["triggered"] or m["dropped"] or (m["cooldown"] and not cooled):
            events.add(m["step"])
        cooled = m["cooldown"]
    return events


def _trainer_log_steps(trainer) -> list[int]:
    """The steps of the Trainer's own training log rows (the ones holding the training loss)."""
    return [h["step"] for h in trainer.state.log_history if "loss" in h]


class _LrRecorder(TrainerCallback):
    """The lr each optimizer step used."""

    def __init__(self):
        self.lrs = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append([g["lr"] for g in optimizer.param_groups])


class _LogRecorder(TrainerCallback):
    """What on_log delivers, as the reporting integrations see it."""

    def __init__(self):
        self.entries = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "autodrop/angle" in logs:
            self.entries.append(dict(logs))


class TestLogging:
    def test_every_epoch_logs_the_spec_keys(self, tmp_path):
        trainer = make_trainer(tmp_path, [AutoDropCallback(drop_delay=1, **ALWAYS)])
        trainer.train()
        entries = autodrop_entries(trainer)
        assert [e["step"] for e in entries] == [STEPS_PER_EPOCH * k for k in range(1, 7)]
        assert all(KEYS <= set(e) for e in entries)
        assert [e["autodrop/num_drops"] for e in entries] == [0, 0, 0, 1, 1, 1]
        assert [e["autodrop/phase"] for e in entries] == [0, 0, 1, 0, 0, 0]

    def test_interval_steps_counts_optimizer_updates(self, tmp_path):
        trainer = make_trainer(
            tmp_path, [AutoDropCallback(interval_steps=5, **ALWAYS)], num_train_epochs=3, gradient_accumulation_steps=2
        )
        trainer.train()
        # 256 / 32 = 8 batches = 4 optimizer updates per epoch, 12 in all.
        assert trainer.state.global_step == 12
        assert [m["step"] for m in _callback(trainer).measurements] == [5, 10]
        # Logged with the Trainer's epoch rows: the interval ending at step 5 at step 8, the one at 10 at 12.
        entries = autodrop_entries(trainer)
        assert [e["step"] for e in entries] == [8, 12] and [e["autodrop/since_anchor"] for e in entries] == [1, 2]

    @pytest.mark.parametrize("how", ["one-liner", "install"])
    def test_metrics_reach_tensorboard(self, tmp_path, monkeypatch, how):
        monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
        if how == "one-liner":
            trainer = make_trainer(tmp_path, [AutoDropCallback(drop_delay=1, **ALWAYS)], report_to=["tensorboard"])
        else:
            trainer = make_trainer(tmp_path, [], report_to=["tensorboard"])
            install(trainer, drop_delay=1, **ALWAYS)
        trainer.train()
        scalars = _tensorboard_scalars(tmp_path / "tb")
        assert all(_tag(scalars, k) for k in KEYS)
        steps = [STEPS_PER_EPOCH * k for k in range(1, 7)]
        assert [step for step, _ in scalars[_tag(scalars, "autodrop/num_drops")]] == steps
        assert [value for _, value in scalars[_tag(scalars, "autodrop/num_drops")]] == [0, 0, 0, 1, 1, 1]
        # The Trainer's own per-epoch loss log is not swallowed: in TensorBoard and in log_history.
        assert [step for step, _ in scalars[_tag(scalars, "loss")]] == steps
        assert [h["step"] for h in trainer.state.log_history if "loss" in h] == steps
        # Through trainer.log, the entries are in log_history once each.
        assert len(autodrop_entries(trainer)) == 6

    def test_trainer_subclass_overriding_train_and_log(self, tmp_path):
        """Like TRL's trainers: `train` wrapped, `log` overridden to flush metrics of its own."""
        from transformers import Trainer

        class Subclass(Trainer):
            flushes = 0

            def train(self, *args, **kwargs):
                return super().train(*args, **kwargs)

            def log(self, logs, start_time=None):
                Subclass.flushes += 1
                super().log(logs, start_time)

        seen = _LogRecorder()
        base = make_trainer(tmp_path, [])
        trainer = Subclass(
            model=base.model,
            args=base.args,
            train_dataset=base.train_dataset,
            callbacks=[AutoDropCallback(drop_delay=1, **ALWAYS), seen],
        )
        trainer.train()
        assert [e["autodrop/num_drops"] for e in seen.entries] == [0, 0, 0, 1, 1, 1]
        # The subclass's own log ran for the Trainer's logs only (6 epoch logs + the final summary).
        assert Subclass.flushes == 7

    def test_without_a_trainer_the_metrics_stay_in_log_history_and_say_so(self, tmp_path, autodrop_logs):
        from transformers import TrainerControl, TrainerState

        args = make_trainer(tmp_path, []).args
        callback = AutoDropCallback()
        for _ in range(2):
            callback.on_init_end(args, TrainerState(), TrainerControl())
        lines = [r.getMessage() for r in autodrop_logs.records if "could not find the Trainer" in r.getMessage()]
        assert len(lines) == 1 and "install(trainer)" in lines[0]

    def test_drop_is_one_info_line(self, tmp_path, autodrop_logs):
        make_trainer(tmp_path, [AutoDropCallback(drop_delay=1, drop_factor=0.5, **ALWAYS)]).train()
        lines = [r.getMessage() for r in autodrop_logs.records if "drop #" in r.getMessage()]
        assert len(lines) == 1
        assert "interval 4" in lines[0] and "lr 0.05 -> 0.025" in lines[0] and "angle" in lines[0]


@pytest.mark.parametrize(
    "optim, optimizer",
    [
        ("sgd", None),
        (None, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
        (None, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
        ("adamw_torch", None),
        ("adafactor", None),
    ],
    ids=["sgd", "momentum", "nesterov", "adamw", "adafactor"],
)
def test_any_optimizer(tmp_path, optim, optimizer):
    model = MLP()
    overrides = {"optim": optim} if optim else {}
    optimizers = (optimizer(model.parameters()), None) if optimizer else (None, None)
    recorder = _LrRecorder()
    trainer = make_trainer(
        tmp_path,
        [AutoDropCallback(drop_delay=1, drop_factor=0.2, **ALWAYS), recorder],
        model=model,
        optimizers=optimizers,
        **overrides,
    )
    trainer.train()
    lrs = [lr[0] for lr in recorder.lrs]
    assert lrs[: 4 * STEPS_PER_EPOCH] == pytest.approx([0.05] * 4 * STEPS_PER_EPOCH)
    assert lrs[4 * STEPS_PER_EPOCH :] == pytest.approx([0.01] * 2 * STEPS_PER_EPOCH)


_SCHEDULE_KWARGS = {
    "cosine_with_min_lr": {"min_lr_rate": 0.1},
    "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
    "warmup_stable_decay": {"num_decay_steps": 10},
}
_LAMBDA_SCHEDULES = [s.value for s in SchedulerType if s.value not in ("reduce_lr_on_plateau", "greedy")]


@pytest.mark.parametrize("schedule", _LAMBDA_SCHEDULES)
def test_every_lambda_schedule_keeps_the_drops(tmp_path, schedule, autodrop_logs):
    recorder = _LrRecorder()
    trainer = make_trainer(
        tmp_path,
        [AutoDropCallback(drop_delay=1, drop_factor=0.5, **ALWAYS), recorder],
        lr_scheduler_type=schedule,
        lr_scheduler_kwargs=_SCHEDULE_KWARGS.get(schedule, {}),
        warmup_steps=4,
    )
    trainer.train()
    # The same schedule without AutoDrop: every lr after the drop is exactly half of it.
    base = _LrRecorder()
    make_trainer(
        tmp_path / "base",
        [base],
        lr_scheduler_type=schedule,
        lr_scheduler_kwargs=_SCHEDULE_KWARGS.get(schedule, {}),
        warmup_steps=4,
    ).train()
    split = 4 * STEPS_PER_EPOCH
    assert [lr[0] for lr in recorder.lrs[:split]] == pytest.approx([lr[0] for lr in base.lrs[:split]])
    assert [lr[0] for lr in recorder.lrs[split:]] == pytest.approx([0.5 * lr[0] for lr in base.lrs[split:]])
    warnings = [r for r in autodrop_logs.records if "expects a constant learning rate" in r.getMessage()]
    assert len(warnings) == (0 if schedule in ("constant", "constant_with_warmup") else 1)


def test_constant_with_warmup_after_d_drops_is_warmup_times_factor_power_d(tmp_path):
    recorder = _LrRecorder()
    warmup = 20
    trainer = make_trainer(
        tmp_path,
        [AutoDropCallback(drop_delay=0, drop_factor=0.1, **ALWAYS), recorder],
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=warmup,
        num_train_epochs=10,
    )
    trainer.train()
    drops_before = lambda step: min(3, step // (3 * STEPS_PER_EPOCH))  # noqa: E731 - drops at epochs 3, 6, 9 (floor 1e-3)
    for step, lrs in enumerate(recorder.lrs):
        shape = min(1.0, step / warmup)
        assert lrs[0] == pytest.approx(0.05 * shape * max(1e-3, 0.1 ** drops_before(step))), step
    assert _callback(trainer).autodrop.num_drops == 3


@pytest.mark.parametrize("schedule", ["reduce_lr_on_plateau", "greedy"])
def test_metric_driven_schedules_are_refused(tmp_path, schedule):
    with pytest.raises(ValueError, match="fight AutoDrop"):
        make_trainer(tmp_path, [AutoDropCallback()], lr_scheduler_type=schedule, eval_strategy="epoch")


def test_param_groups_drop_and_floor_on_their_own(tmp_path):
    model = MLP()
    opt = torch.optim.SGD(
        [
            {"params": model.fc1.parameters(), "lr": 0.05},
            {"params": list(model.bn.parameters()) + list(model.fc2.parameters()), "lr": 0.002},
        ]
    )
    recorder = _LrRecorder()
    trainer = make_trainer(
        tmp_path,
        [AutoDropCallback(drop_delay=0, drop_factor=0.1, min_lr=1e-3, **ALWAYS), recorder],
        model=model,
        optimizers=(opt, None),
    )
    trainer.train()
    # Drops at epochs 3 and 6: group 0 goes 0.05 -> 0.005 -> 0.001 (floor), group 1 0.002 -> 0.001 -> 0.001.
    assert recorder.lrs[3 * STEPS_PER_EPOCH] == pytest.approx([5e-3, 1e-3])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-3])


def _clean(entries):
    """Log entries comparable with ==: NaN becomes None."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in e.items()} for e in entries]


def _lr_entries(trainer):
    return [(h["step"], h["learning_rate"]) for h in trainer.state.log_history if "learning_rate" in h]


def _resume_matches_straight_run(tmp_path, config: dict, epochs: int, stop_epoch: int, **overrides) -> list[dict]:
    """Train `epochs` epochs with checkpoints, resume a fresh Trainer from `stop_epoch`'s checkpoint, and
    check that its AutoDrop logs and final parameters equal the straight run's; returns its measurements."""

    def trainer(save_strategy):
        return make_trainer(
            tmp_path,
            [AutoDropCallback(**config)],
            num_train_epochs=epochs,
            save_strategy=save_strategy,
            restore_callback_states_from_checkpoint=True,
            **overrides,
        )

    straight = trainer("epoch")
    straight.train()
    resumed = trainer("no")
    resumed.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{stop_epoch * STEPS_PER_EPOCH}"))
    assert _clean(autodrop_entries(resumed)) == _clean(autodrop_entries(straight))
    for p, q in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(p.detach(), q.detach())
    return _callback(straight).measurements


class TestResumeTrend:
    """Exact resume with the trend test, whose state includes the window's angles."""

    # trend_z 100 lets the test pass at its first check (11 intervals after a reset): drops at intervals
    # 13 and 26 of 32 (two steps each); the stops land inside an averaging window and mid-window after a drop.
    CONFIG = dict(detector="trend", trend_z=100.0, drop_delay=2, drop_factor=0.5, interval_steps=2)

    @pytest.mark.parametrize("stop_epoch", [3, 5])
    def test_resume_is_exact(self, tmp_path, stop_epoch):
        measurements = _resume_matches_straight_run(tmp_path, self.CONFIG, 8, stop_epoch)
        assert [m["interval"] for m in measurements if m["dropped"]] == [13, 26]


class TestResumeGrowth:
    """Exact resume with the default (growth) test, whose state holds the anchor and the window's distances."""

    # growth_threshold 10 passes at every check, so drops come as soon as the rules allow (first check,
    # averaging over a quarter of the time since the anchor, each phase at least as long as the last).
    CONFIG = dict(growth_threshold=10.0, drop_factor=0.5, interval_steps=2)

    @pytest.mark.parametrize("stop_epoch", [2, 3, 5])
    def test_resume_is_exact(self, tmp_path, stop_epoch):
        measurements = _resume_matches_straight_run(tmp_path, self.CONFIG, 8, stop_epoch)
        assert sum(m["dropped"] for m in measurements) >= 2
        assert {m["phase"] for m in measurements} == {"monitor", "averaging"}


class TestCooldown:
    """The Trainer tells AutoDrop the run's length: its final fifth decays to the floor along 1 - sqrt."""

    # growth_threshold 1e-9: the saturation test never fires, so the decay is the only change of the lr.
    CONFIG = dict(growth_threshold=1e-9)

    def test_the_final_segment_decays_like_wsd_and_resume_inside_it_is_exact(self, tmp_path, caplog):
        with caplog.at_level(logging.INFO, logger="hf_autodrop"):
            measurements = _resume_matches_straight_run(tmp_path, self.CONFIG, 30, 26, learning_rate=0.2)
        # 30 epochs of 8 steps, one interval per step (240 // 300 -> 1): the decay covers steps 193-240.
        for m in measurements:  # the lr after step s is the one step s + 1 trains with
            assert m["lrs"][0] == pytest.approx(0.2 * wsd_multiplier(m["step"], 240), rel=1e-9), m["step"]
        assert not any(m["dropped"] or m["triggered"] for m in measurements)
        assert [m["step"] for m in measurements if m["cooldown"]] == list(range(192, 241))
        assert "the run ends after 240 intervals" in caplog.text and "cooldown of the run's final 0.2" in caplog.text

    def test_the_decay_moves_at_every_step_of_a_longer_interval_and_resumes_mid_interval(self, tmp_path):
        # Intervals of 3 steps: the decay (steps 193-240) still moves the lr at every optimizer step, and the
        # checkpoint at step 208 (a third into interval 70) resumes it exactly.
        config = dict(self.CONFIG, interval_steps=3)
        _resume_matches_straight_run(tmp_path / "resume", config, 30, 26, learning_rate=0.2)
        recorder = _LrRecorder()
        make_trainer(
            tmp_path / "lrs", [AutoDropCallback(**config), recorder], num_train_epochs=30, learning_rate=0.2
        ).train()
        used = [lrs[0] for lrs in recorder.lrs]  # the lr optimizer step s + 1 used
        assert len(used) == 240 and len(set(used[192:])) == 48
        for s, lr in enumerate(used):
            assert lr == pytest.approx(0.2 * wsd_multiplier(s, 240), rel=1e-9), s

    def test_the_logged_learning_rate_follows_the_decay_under_a_warmup_schedule(self, tmp_path):
        recorder = _LrRecorder()
        trainer = make_trainer(
            tmp_path,
            [AutoDropCallback(**self.CONFIG), recorder],
            num_train_epochs=10,
            lr_scheduler_type="constant_with_warmup",
            warmup_steps=8,
            learning_rate=0.1,
            logging_strategy="steps",
            logging_steps=4,
        )
        trainer.train()
        used = {k + 1: lrs[0] for k, lrs in enumerate(recorder.lrs)}  # the lr optimizer step k + 1 used
        logged = _lr_entries(trainer)
        assert len(logged) == 20
        # Each row shows the lr of the step it logs (newer transformers), or of the step after it (older ones
        # read get_last_lr() after the scheduler stepped): the warm-up's first row says which; the decay
        # must reach the log the same way as the warm-up does.
        ahead = 0 if logged[0][1] == pytest.approx(used[logged[0][0]], rel=1e-12) else 1
        for step, lr in logged:
            if step + ahead in used:
                assert lr == pytest.approx(used[step + ahead], rel=1e-12), (step, ahead)
        # Warm-up over 8 steps (step k uses (k - 1) / 8 x 0.1), then 0.1 until the decay (steps 65-80, the
        # first at its start, still 0.1 as in WSD) takes it towards the floor 1e-4.
        assert used[4] == pytest.approx(0.1 * 3 / 8) and used[9] == used[64] == pytest.approx(0.1)
        assert used[65] == pytest.approx(0.1) and used[65] > used[66] > used[72] > used[80] > 1e-4
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


class TestResume:
    EPOCHS = 10
    CONFIG = dict(detector="paper", drop_delay=2, drop_factor=0.5, threshold=60.0, max_threshold=120.0)

    @pytest.fixture(scope="class")
    def straight(self, tmp_path_factory):
        out = tmp_path_factory.mktemp("straight")
        trainer = make_trainer(
            out,
            [AutoDropCallback(**self.CONFIG)],
            num_train_epochs=self.EPOCHS,
            save_strategy="epoch",
            restore_callback_states_from_checkpoint=True,
        )
        trainer.train()
        params = [p.detach().clone() for p in trainer.model.parameters()]
        return out, trainer, params

    def test_the_straight_run_drops_and_averages(self, straight):
        _, trainer, _ = straight
        entries = autodrop_entries(trainer)
        assert entries[-1]["autodrop/num_drops"] >= 2 and any(e["autodrop/phase"] == 1 for e in entries)

    # Straight run: trigger at epochs 3 and 8, averaging at 4 and 9, drops at 5 and 10. Stopping covers
    # monitor, the first angle, the trigger, inside the averaging window, the drop, and after the reset.
    @pytest.mark.parametrize("stop_epoch", [1, 2, 3, 4, 5, 7, 9])
    def test_resume_from_any_epoch_is_exact(self, straight, tmp_path, stop_epoch):
        out, full, full_params = straight
        resumed = make_trainer(
            out,
            [AutoDropCallback(**self.CONFIG)],
            num_train_epochs=self.EPOCHS,
            save_strategy="no",
            restore_callback_states_from_checkpoint=True,
        )
        resumed.train(resume_from_checkpoint=str(out / f"checkpoint-{stop_epoch * STEPS_PER_EPOCH}"))
        assert _clean(autodrop_entries(resumed)) == _clean(autodrop_entries(full))
        assert _lr_entries(resumed) == _lr_entries(full)
        for p, q in zip(resumed.model.parameters(), full_params):
            assert torch.equal(p.detach(), q)
        cb = _callback(resumed)
        assert cb.autodrop.interval == self.EPOCHS
        assert cb.autodrop.num_drops == autodrop_entries(full)[-1]["autodrop/num_drops"]

    def test_checkpoint_holds_the_state_file(self, straight):
        out, *_ = straight
        for epoch in range(1, self.EPOCHS + 1):
            assert (out / f"checkpoint-{epoch * STEPS_PER_EPOCH}" / STATE_FILE).is_file()

    def test_install_link_survives_the_callback_being_rebuilt(self, straight):
        out, full, _ = straight
        seen = _LogRecorder()
        resumed = make_trainer(out, [seen], num_train_epochs=self.EPOCHS, restore_callback_states_from_checkpoint=True)
        install(resumed, **self.CONFIG)
        resumed.train(resume_from_checkpoint=str(out / f"checkpoint-{4 * STEPS_PER_EPOCH}"))
        # The resumed intervals reached on_log (the integrations' path), once each.
        assert [e["autodrop/num_drops"] for e in seen.entries] == [
            e["autodrop/num_drops"] for e in autodrop_entries(full)[4:]
        ]
        assert _clean(autodrop_entries(resumed)) == _clean(autodrop_entries(full))

    def test_one_liner_reaches_tensorboard_after_resume(self, straight, tmp_path, monkeypatch):
        out, full, _ = straight
        monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
        resumed = make_trainer(
            out,
            [AutoDropCallback(**self.CONFIG)],
            num_train_epochs=self.EPOCHS,
            report_to=["tensorboard"],
            restore_callback_states_from_checkpoint=True,
        )
        resumed.train(resume_from_checkpoint=str(out / f"checkpoint-{4 * STEPS_PER_EPOCH}"))
        scalars = _tensorboard_scalars(tmp_path / "tb")
        steps = [STEPS_PER_EPOCH * k for k in range(5, self.EPOCHS + 1)]
        assert [step for step, _ in scalars[_tag(scalars, "autodrop/num_drops")]] == steps
        assert [value for _, value in scalars[_tag(scalars, "autodrop/num_drops")]] == [
            e["autodrop/num_drops"] for e in autodrop_entries(full)[4:]
        ]
        assert [step for step, _ in scalars[_tag(scalars, "loss")]] == steps

    def test_resume_without_the_flag_warns_what_happens(self, straight, tmp_path, autodrop_logs):
        out, *_ = straight
        resumed = make_trainer(out, [AutoDropCallback(**self.CONFIG)], num_train_epochs=self.EPOCHS, save_strategy="no")
        resumed.train(resume_from_checkpoint=str(out / f"checkpoint-{4 * STEPS_PER_EPOCH}"))
        text = autodrop_logs.text
        assert "restore_callback_states_from_checkpoint=True" in text and "fresh history" in text
        assert _callback(resumed).autodrop.interval == self.EPOCHS - 4

    def test_missing_state_file_warns(self, straight, tmp_path, autodrop_logs):
        import shutil

        out, *_ = straight
        copy = tmp_path / "copy"
        shutil.copytree(out / f"checkpoint-{4 * STEPS_PER_EPOCH}", copy / f"checkpoint-{4 * STEPS_PER_EPOCH}")
        (copy / f"checkpoint-{4 * STEPS_PER_EPOCH}" / STATE_FILE).unlink()
        # Also hide the original file, which the checkpoint's trainer_state.json points to.
        original = out / f"checkpoint-{4 * STEPS_PER_EPOCH}" / STATE_FILE
        hidden = original.with_suffix(".hidden")
        original.rename(hidden)
        try:
            resumed = make_trainer(
                copy,
                [AutoDropCallback(**self.CONFIG)],
                num_train_epochs=5,
                save_strategy="no",
                restore_callback_states_from_checkpoint=True,
            )
            resumed.train(resume_from_checkpoint=str(copy / f"checkpoint-{4 * STEPS_PER_EPOCH}"))
        finally:
            hidden.rename(original)
        assert "is missing" in autodrop_logs.text and "fresh history" in autodrop_logs.text

    def test_corrupt_state_file_is_an_error(self, straight, tmp_path):
        ckpt = self._copy_epoch_4(straight, tmp_path)
        (ckpt / STATE_FILE).write_bytes(b"not a torch file")
        with pytest.raises(ValueError, match="unreadable"):
            self._resumed_trainer(tmp_path).train(resume_from_checkpoint=str(ckpt))

    def test_state_of_other_parameter_shapes_is_an_error(self, straight, tmp_path):
        from hf_autodrop import AutoDrop

        ckpt = self._copy_epoch_4(straight, tmp_path)
        payload = torch.load(ckpt / STATE_FILE, weights_only=True)
        other = MLP(hidden=16)
        payload["autodrop"] = {
            **AutoDrop(other, torch.optim.SGD(other.parameters(), lr=0.1)).state_dict(),
            "interval": payload["autodrop"]["interval"],
        }
        torch.save(payload, ckpt / STATE_FILE)
        with pytest.raises(ValueError, match="belongs to another model"):
            self._resumed_trainer(tmp_path).train(resume_from_checkpoint=str(ckpt))

    def _resumed_trainer(self, output_dir):
        return make_trainer(
            output_dir,
            [AutoDropCallback(**self.CONFIG)],
            num_train_epochs=5,
            save_strategy="no",
            restore_callback_states_from_checkpoint=True,
        )

    @staticmethod
    def _copy_epoch_4(straight, tmp_path):
        """A copy of the straight run's epoch-4 checkpoint whose trainer_state.json records the copy's AutoDrop file."""
        out, *_ = straight
        return copy_checkpoint(out, 4 * STEPS_PER_EPOCH, tmp_path)


class _Poison(TrainerCallback):
    """Writes NaN into one weight at the end of a given epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if round(state.epoch) == self.epoch:
            with torch.no_grad():
                model.fc2.weight[0, 0] = float("nan")


class TestOddRuns:
    def test_nan_parameters_warn_and_training_goes_on(self, tmp_path, autodrop_logs):
        trainer = make_trainer(tmp_path, [_Poison(2), AutoDropCallback(drop_delay=0, **ALWAYS)])
        trainer.train()
        entries = autodrop_entries(trainer)
        assert trainer.state.global_step == 6 * STEPS_PER_EPOCH
        assert all(e["autodrop/num_drops"] == 0 for e in entries)
        assert "NaN/Inf" in autodrop_logs.text

    def test_frozen_parameters_are_ignored(self, tmp_path):
        model = MLP()
        model.fc1.requires_grad_(False)
        trainer = make_trainer(tmp_path, [AutoDropCallback(drop_delay=1, **ALWAYS)], model=model)
        trainer.train()
        trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
        assert _callback(trainer).autodrop.state_nbytes() == 2 * trainable
        assert autodrop_entries(trainer)[-1]["autodrop/num_drops"] == 1

    def test_no_trainable_parameters_is_an_error_at_train_start(self, tmp_path):
        model = MLP()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        model.requires_grad_(False)
        trainer = make_trainer(tmp_path, [AutoDropCallback()], model=model, optimizers=(opt, None))
        with pytest.raises(ValueError, match="no trainable parameters"):
            trainer.train()

    def test_max_steps_ends_partial_epochs(self, tmp_path):
        trainer = make_trainer(tmp_path, [AutoDropCallback(drop_delay=0, **ALWAYS)], max_steps=3 * STEPS_PER_EPOCH + 3)
        trainer.train()
        assert [e["step"] for e in autodrop_entries(trainer)] == [8, 16, 24, 27]

    @pytest.mark.parametrize("eval_strategy", ["no", "epoch"])
    def test_evaluation_on_or_off(self, tmp_path, eval_strategy):
        trainer = make_trainer(tmp_path, [AutoDropCallback(drop_delay=1, **ALWAYS)], eval_strategy=eval_strategy)
        trainer.train()
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        assert len(evals) == (6 if eval_strategy == "epoch" else 0)
        assert len(autodrop_entries(trainer)) == 6 and autodrop_entries(trainer)[-1]["autodrop/num_drops"] == 1

    @pytest.mark.parametrize("precision", ["bf16", "fp16"])
    def test_mixed_precision(self, tmp_path, precision):
        model, seen = MLP(), set()
        model.fc1.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
        trainer = make_trainer(tmp_path, [AutoDropCallback(drop_delay=1, **ALWAYS)], model=model, **{precision: True})
        trainer.train()
        if precision == "bf16":
            assert seen == {torch.bfloat16}  # CPU autocast really ran in bf16
        entries = autodrop_entries(trainer)
        assert all(math.isfinite(e["autodrop/angle"]) for e in entries[1:4])
        assert entries[-1]["autodrop/num_drops"] == 1

    def test_dry_run_leaves_training_untouched(self, tmp_path, autodrop_logs):
        plain = make_trainer(tmp_path / "plain", [])
        plain.train()
        dry = make_trainer(tmp_path / "dry", [AutoDropCallback(dry_run=True, drop_delay=1, drop_factor=0.5, **ALWAYS)])
        dry.train()
        for p, q in zip(plain.model.parameters(), dry.model.parameters()):
            assert torch.equal(p, q)
        entries = autodrop_entries(dry)
        assert entries[-1]["autodrop/num_drops"] == 1 and entries[-1]["autodrop/lr_scale"] == 0.5
        assert "would drop" in autodrop_logs.text

    def test_stop_when_exhausted_ends_training(self, tmp_path):
        trainer = make_trainer(
            tmp_path, [AutoDropCallback(drop_delay=1, min_lr=0.05, stop_when_exhausted=True, **ALWAYS)]
        )
        trainer.train()
        assert trainer.state.global_step == 4 * STEPS_PER_EPOCH
        assert autodrop_entries(trainer)[-1]["autodrop/num_drops"] == 1

    def test_short_run_measures_more_often_than_per_epoch(self, tmp_path, autodrop_logs):
        # 5 epochs of 8 steps, the trend test: a drop needs 11 + 20 intervals; 40 // 93 -> every step.
        trainer = make_trainer(tmp_path, [AutoDropCallback(detector="trend")], num_train_epochs=5)
        trainer.train()
        assert "measuring every 1 optimizer steps instead (40 intervals)" in autodrop_logs.text
        measurements = _callback(trainer).measurements
        assert [m["step"] for m in measurements] == list(range(1, 41))
        # The Trainer's epoch rows carry the latest interval; a trigger or drop between them has a row of its own.
        epochs = [STEPS_PER_EPOCH * k for k in range(1, 6)]
        assert _trainer_log_steps(trainer) == epochs
        assert [e["step"] for e in autodrop_entries(trainer)] == sorted(set(epochs) | _event_steps(measurements))

    def test_growth_test_measures_about_300_times_and_logs_its_time_scale(self, tmp_path, autodrop_logs):
        # 80 epochs of 8 steps = 640 steps: every 640 // 300 = 2 steps, whatever the epoch count.
        trainer = make_trainer(tmp_path, [AutoDropCallback()], num_train_epochs=80)
        trainer.train()
        assert "measuring every 2 optimizer steps (320 intervals" in autodrop_logs.text
        measurements = _callback(trainer).measurements
        assert [m["step"] for m in measurements] == list(range(2, 641, 2))
        entries = autodrop_entries(trainer)
        epochs = [STEPS_PER_EPOCH * k for k in range(1, 81)]
        assert [e["step"] for e in entries] == sorted(set(epochs) | _event_steps(measurements))
        last = entries[-1]
        assert last["step"] == 640 and last["autodrop/since_anchor"] == measurements[-1]["since_anchor"]
        t = int(last["autodrop/since_anchor"])
        assert last["autodrop/window"] == t - (t + 1) // 2 + 1
        assert last["autodrop/window_steps"] == 2 * last["autodrop/window"]
        assert last["autodrop/distance_sq"] > 0

    def test_short_run_with_auto_interval_drops(self, tmp_path):
        # 3 epochs of 8 steps, a drop needs 3 + 1 intervals: every 24 // 12 = 2 steps, a drop at step 8.
        trainer = make_trainer(tmp_path, [AutoDropCallback(drop_delay=1, **ALWAYS)], num_train_epochs=3)
        trainer.train()
        measurements = _callback(trainer).measurements
        assert [m["step"] for m in measurements] == list(range(2, 25, 2))
        assert measurements[3]["num_drops"] == 1 and measurements[3]["dropped"]
        # Triggers at steps 6, 14, 22 get rows of their own; the drops at 8, 16, 24 share the epoch rows.
        entries = autodrop_entries(trainer)
        assert [e["step"] for e in entries] == [6, 8, 14, 16, 22, 24]
        assert [("loss" in e, e["autodrop/num_drops"]) for e in entries] == [
            (False, 0),
            (True, 1),
            (False, 1),
            (True, 2),
            (False, 2),
            (True, 3),
        ]

    def test_too_long_interval_warns_and_says_what_to_change(self, tmp_path, autodrop_logs):
        make_trainer(tmp_path, [AutoDropCallback(interval_steps=8)], num_train_epochs=5).train()
        assert "no drop can happen" in autodrop_logs.text and "interval_steps=1 or lower" in autodrop_logs.text


def test_decaying_schedule_warns_once_at_init(tmp_path, autodrop_logs):
    trainer = make_trainer(tmp_path, [AutoDropCallback(drop_delay=1, **ALWAYS)], lr_scheduler_type="linear")
    trainer.train()
    assert autodrop_logs.text.count("expects a constant learning rate") == 1


def test_plain_trainer_without_autodrop_imports_nothing_extra():
    import subprocess
    import sys

    code = "import sys, hf_autodrop; assert 'transformers' not in sys.modules, 'core imported transformers'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
