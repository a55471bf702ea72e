"""Faults a careful user and a crashing cluster cause: killed saves, moved and pushed checkpoints,
corrupted and foreign state files, changed configs on resume, and the custom-loop inputs AutoDrop refuses.

The kills are real: a training process SIGKILLs itself at the dangerous moment of a checkpoint's save.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from hf_autodrop import (
    AutoDrop,
    AutoDropCallback,
    AutoDropConfig,
    angle_degrees,
    checkpoint_problem,
    newest_complete_checkpoint,
)
from hf_autodrop.callback import STATE_FILE, install

from ._distributed import REPO
from .helpers import ALWAYS, MLP, Digits, autodrop_entries, copy_checkpoint, make_trainer
from .scripts import killed_run

STEPS_PER_EPOCH = 8  # 256 examples / batch 32


def _clean(entries):
    """Log entries comparable with ==: NaN becomes None."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in e.items()} for e in entries]


def _callback(trainer) -> AutoDropCallback:
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, AutoDropCallback))


def _same_run(resumed, straight, straight_params):
    assert _clean(autodrop_entries(resumed)) == _clean(autodrop_entries(straight))
    for p, q in zip(resumed.model.parameters(), straight_params):
        assert torch.equal(p.detach(), q)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run the killed, moved and pushed ones must reproduce (checkpoints every epoch)."""
    out = tmp_path_factory.mktemp("straight")
    trainer = killed_run.trainer(str(out))
    trainer.train()
    assert [m["interval"] for m in _callback(trainer).measurements if m["dropped"]] == [5]
    return out, trainer, [p.detach().clone() for p in trainer.model.parameters()]


def _kill(out, moment, step):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.scripts.killed_run", str(out), moment, str(step)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


class TestKilledSaves:
    KILL = 4 * STEPS_PER_EPOCH  # inside the averaging window

    def test_kill_inside_autodrop_save_leaves_the_previous_checkpoint_intact(self, straight, tmp_path):
        _, full, full_params = straight
        _kill(tmp_path, "inside-autodrop-save", self.KILL)
        # AutoDrop writes its state before the Trainer starts the checkpoint: the half-written file is a
        # temporary one in the staging folder, and the newest checkpoint is the previous, intact one
        # (save_total_limit=1 deletes old checkpoints only after a new one is complete).
        previous = tmp_path / f"checkpoint-{self.KILL - STEPS_PER_EPOCH}"
        assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [previous.name]
        assert list(tmp_path.glob(f".autodrop-staging/checkpoint-{self.KILL}/.autodrop_state.pt.tmp-*"))
        resumed = killed_run.trainer(str(tmp_path), save_strategy="no")
        resumed.train(resume_from_checkpoint=True)
        assert resumed.state.global_step == killed_run.EPOCHS * STEPS_PER_EPOCH
        _same_run(resumed, full, full_params)

    def test_kill_before_trainer_state_leaves_the_previous_checkpoint_intact(self, straight, tmp_path):
        _, full, full_params = straight
        _kill(tmp_path, "before-trainer-state", self.KILL)
        broken = tmp_path / f"checkpoint-{self.KILL}"
        previous = tmp_path / f"checkpoint-{self.KILL - STEPS_PER_EPOCH}"
        assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [previous.name, broken.name]
        assert (broken / STATE_FILE).is_file() and not (broken / "trainer_state.json").exists()
        assert (previous / STATE_FILE).is_file() and (previous / "trainer_state.json").is_file()
        # resume_from_checkpoint=True picks the newest folder, which is incomplete: the Trainer itself refuses it.
        with pytest.raises(FileNotFoundError, match="trainer_state.json"):
            killed_run.trainer(str(tmp_path)).train(resume_from_checkpoint=True)
        # newest_complete_checkpoint skips it.
        assert "trainer_state.json is missing" in checkpoint_problem(str(broken))
        assert newest_complete_checkpoint(str(tmp_path)) == str(previous)
        resumed = killed_run.trainer(str(tmp_path), save_strategy="no")
        resumed.train(resume_from_checkpoint=newest_complete_checkpoint(str(tmp_path)))
        _same_run(resumed, full, full_params)

    def test_kill_after_trainer_state_resumes_exactly_from_that_checkpoint(self, straight, tmp_path):
        _, full, full_params = straight
        _kill(tmp_path, "after-trainer-state", self.KILL)
        # The AutoDrop file was complete before trainer_state.json pointed to it; save_total_limit=1 had not yet
        # deleted the older checkpoint.
        assert (tmp_path / f"checkpoint-{self.KILL}" / STATE_FILE).is_file()
        resumed = killed_run.trainer(str(tmp_path), save_strategy="no")
        resumed.train(resume_from_checkpoint=True)
        assert resumed.state.global_step == killed_run.EPOCHS * STEPS_PER_EPOCH
        _same_run(resumed, full, full_params)


def _tear(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class TestNewestCompleteCheckpoint:
    """`newest_complete_checkpoint` never picks a folder a kill left incomplete, however it was cut short."""

    @pytest.mark.parametrize(
        "damage, problem",
        [
            (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
            (lambda c: _tear(c / "trainer_state.json"), "trainer_state.json is unreadable or truncated"),
            (lambda c: _tear(c / "model.safetensors"), "model.safetensors is truncated"),
            (lambda c: (c / "model.safetensors").unlink(), "holds no model weights"),
            (lambda c: _tear(c / "optimizer.pt"), "optimizer.pt is unreadable or truncated"),
            (lambda c: (c / "scheduler.pt").unlink(), "scheduler.pt is missing"),
            (lambda c: _tear(c / "rng_state.pth"), "rng_state.pth is unreadable or truncated"),
            (lambda c: (c / STATE_FILE).unlink(), "autodrop_state.pt is missing"),
            (lambda c: _tear(c / STATE_FILE), "autodrop_state.pt is unreadable or truncated"),
        ],
        ids=[
            "no-trainer-state",
            "torn-trainer-state",
            "torn-weights",
            "no-weights",
            "torn-optimizer",
            "no-scheduler",
            "torn-rng",
            "no-autodrop-file",
            "torn-autodrop-file",
        ],
    )
    def test_an_incomplete_newest_folder_is_skipped(self, straight, tmp_path, damage, problem):
        out, *_ = straight
        for step in (3 * STEPS_PER_EPOCH, 4 * STEPS_PER_EPOCH):
            shutil.copytree(out / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
        newest, previous = (
            tmp_path / f"checkpoint-{4 * STEPS_PER_EPOCH}",
            tmp_path / f"checkpoint-{3 * STEPS_PER_EPOCH}",
        )
        assert checkpoint_problem(str(newest)) is None
        assert newest_complete_checkpoint(str(tmp_path)) == str(newest)
        damage(newest)
        assert problem in checkpoint_problem(str(newest))
        assert newest_complete_checkpoint(str(tmp_path)) == str(previous)

    def test_the_autodrop_file_of_another_step_makes_it_incomplete(self, straight, tmp_path):
        out, *_ = straight
        ckpt = tmp_path / f"checkpoint-{4 * STEPS_PER_EPOCH}"
        shutil.copytree(out / ckpt.name, ckpt)
        shutil.copy(out / f"checkpoint-{3 * STEPS_PER_EPOCH}" / STATE_FILE, ckpt / STATE_FILE)
        assert "belongs to another run or step" in checkpoint_problem(str(ckpt))

    def test_none_without_a_complete_one_and_newer_incomplete_ones_removed_on_request(self, straight, tmp_path):
        out, *_ = straight
        assert newest_complete_checkpoint(str(tmp_path / "absent")) is None
        assert newest_complete_checkpoint(str(tmp_path)) is None
        for step in (8, 16, 24):
            shutil.copytree(out / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
        (tmp_path / "checkpoint-16" / "trainer_state.json").unlink()
        (tmp_path / "checkpoint-24" / "optimizer.pt").unlink()
        (tmp_path / "checkpoint-30").mkdir()  # a folder the Trainer had only just created
        assert newest_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-8")
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"checkpoint-{s}" for s in (16, 24, 30, 8)]
        assert newest_complete_checkpoint(str(tmp_path), remove_newer_incomplete=True) == str(tmp_path / "checkpoint-8")
        assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-8"]

    def test_save_only_model_checkpoints_need_require_optimizer_false(self, tmp_path):
        make_trainer(
            tmp_path,
            [AutoDropCallback(**killed_run.CONFIG)],
            num_train_epochs=2,
            save_strategy="epoch",
            save_only_model=True,
        ).train()
        assert "optimizer.pt is missing" in checkpoint_problem(str(tmp_path / "checkpoint-16"))
        assert newest_complete_checkpoint(str(tmp_path)) is None
        assert newest_complete_checkpoint(str(tmp_path), require_optimizer=False) == str(tmp_path / "checkpoint-16")


class _FakeHub:
    """Stands in for the Hub: every upload_folder copies the folder, synchronously, into a local folder."""

    def __init__(self, root: Path):
        self.root, self.pushes = root, []

    def create_repo(self, repo_id, **kwargs):
        import huggingface_hub

        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, path_in_repo=None, **kwargs):
        from concurrent.futures import Future

        if path_in_repo:  # the checkpoint push; keep every version to resume from one of them
            target = self.root / f"push-{len(self.pushes)}" / path_in_repo
            shutil.copytree(folder_path, target)
            self.pushes.append(target)
        done = Future()
        done.set_result(None)
        return done


def test_a_checkpoint_pushed_to_the_hub_resumes_exactly(straight, tmp_path, monkeypatch):
    import transformers.trainer

    _, full, full_params = straight
    hub = _FakeHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda *a, **k: hub)
    out = tmp_path / "run"
    killed_run.trainer(str(out), push_to_hub=True, hub_strategy="checkpoint", hub_model_id="me/autodrop").train()
    pushed = hub.pushes[3]  # last-checkpoint as pushed after epoch 4
    assert pushed.name == "last-checkpoint" and (pushed / STATE_FILE).is_file()
    shutil.rmtree(out)  # only the Hub's copy is left
    resumed = killed_run.trainer(str(tmp_path / "elsewhere"), save_strategy="no")
    resumed.train(resume_from_checkpoint=str(pushed))
    _same_run(resumed, full, full_params)


def test_a_moved_checkpoint_prefers_its_own_file_over_the_recorded_path(straight, tmp_path):
    out, full, full_params = straight
    moved = tmp_path / "checkpoint-32"
    shutil.copytree(out / "checkpoint-32", moved)
    # The recorded absolute path (and output_dir/checkpoint-32) now hold a newer file of the same run.
    original = out / "checkpoint-32" / STATE_FILE
    kept = original.read_bytes()
    shutil.copy(out / "checkpoint-40" / STATE_FILE, original)
    try:
        resumed = killed_run.trainer(str(out), save_strategy="no")
        resumed.train(resume_from_checkpoint=str(moved))
    finally:
        original.write_bytes(kept)
    _same_run(resumed, full, full_params)


class TestDamagedOrForeignState:
    def test_a_flipped_exponent_bit_in_the_running_average_is_refused(self, straight, tmp_path):
        out, *_ = straight
        ckpt = copy_checkpoint(out, 4 * STEPS_PER_EPOCH, tmp_path)
        payload = torch.load(ckpt / STATE_FILE, weights_only=True)
        assert payload["autodrop"]["phase"] == "averaging"
        average = payload["autodrop"]["average"][0]
        average.view(torch.int32)[123] ^= 1 << 30  # one exponent bit: 0.05 becomes ~1e37
        assert average.abs().max() > 1e30
        torch.save(payload, ckpt / STATE_FILE)
        with pytest.raises(ValueError, match="'average' fails its checksum"):
            killed_run.trainer(str(tmp_path), save_strategy="no").train(resume_from_checkpoint=str(ckpt))

    def test_a_truncated_file_is_refused(self, straight, tmp_path):
        out, *_ = straight
        ckpt = copy_checkpoint(out, 4 * STEPS_PER_EPOCH, tmp_path)
        data = (ckpt / STATE_FILE).read_bytes()
        (ckpt / STATE_FILE).write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match="unreadable"):
            killed_run.trainer(str(tmp_path), save_strategy="no").train(resume_from_checkpoint=str(ckpt))

    def test_the_state_of_a_branch_of_the_same_run_is_refused(self, straight, tmp_path):
        out, *_ = straight
        # A branch: the same run resumed from epoch 3 on other data, saving its own epoch-4 checkpoint (same run
        # id, same step and interval as the original's).
        branch = tmp_path / "branch"
        copy_checkpoint(out, 3 * STEPS_PER_EPOCH, branch)
        other_data = Digits("train", 256)
        other_data.x = other_data.x.flip(0)
        killed_run.trainer(str(branch), train_dataset=other_data).train(
            resume_from_checkpoint=str(branch / "checkpoint-24")
        )
        ckpt = copy_checkpoint(out, 4 * STEPS_PER_EPOCH, tmp_path / "mixed")
        shutil.copy(branch / "checkpoint-32" / STATE_FILE, ckpt / STATE_FILE)
        with pytest.raises(ValueError, match="other parameter values than the model holds now"):
            killed_run.trainer(str(tmp_path / "mixed"), save_strategy="no").train(resume_from_checkpoint=str(ckpt))

    def test_a_damaged_trainer_state_entry_is_a_clear_error(self, straight, tmp_path):
        out, *_ = straight
        ckpt = copy_checkpoint(out, 4 * STEPS_PER_EPOCH, tmp_path)
        path = ckpt / "trainer_state.json"
        state = json.loads(path.read_text())
        del state["stateful_callbacks"]["AutoDropCallback"]["attributes"]["_checkpoint"]["run_id"]
        path.write_text(json.dumps(state))
        with pytest.raises(ValueError, match="trainer_state.json .* is damaged: 'run_id' is missing"):
            killed_run.trainer(str(tmp_path), save_strategy="no").train(resume_from_checkpoint=str(ckpt))


class TestResumeHonoursTheUser:
    def test_the_callback_the_user_holds_stays_live_and_its_config_wins(self, straight, tmp_path, autodrop_logs):
        out, full, _ = straight
        mine = AutoDropCallback({**killed_run.CONFIG, "drop_factor": 0.2})
        resumed = killed_run.trainer(str(out), callback=mine, save_strategy="no")
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-32"))
        assert _callback(resumed) is mine and mine.config.drop_factor == 0.2
        assert "drop_factor 0.5 -> 0.2" in autodrop_logs.text and "later drops use the new factor" in autodrop_logs.text
        # The saved history is kept (the trigger at epoch 3), and the drop at epoch 5 uses the new factor.
        assert [m["interval"] for m in mine.measurements] == list(range(1, killed_run.EPOCHS + 1))
        assert [m["dropped"] for m in mine.measurements] == [m["dropped"] for m in _callback(full).measurements]
        assert mine.autodrop.lr_scales == [pytest.approx(0.2)] * len(mine.autodrop.lr_scales)

    def test_install_hands_out_the_live_callback(self, straight, tmp_path):
        out, full, _ = straight
        resumed = killed_run.trainer(str(out), callback=_Nothing(), save_strategy="no")
        mine = install(resumed, **killed_run.CONFIG)
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-32"))
        assert _callback(resumed) is mine
        assert _clean(mine.measurements) == _clean(_callback(full).measurements)

    @pytest.mark.parametrize(
        "change, reason",
        [
            (dict(detector="trend"), "belongs to the saved saturation test"),
            (dict(drop_delay=1), "already holds 2 snapshots, more than drop_delay=1 allows"),
            (dict(dry_run=True), None),
        ],
    )
    def test_a_change_the_history_cannot_honour_is_refused(self, straight, tmp_path, change, reason):
        out, *_ = straight
        callback = AutoDropCallback({**killed_run.CONFIG, **change})
        resumed = killed_run.trainer(str(out), callback=callback, save_strategy="no")
        if reason is None:  # no drop yet at epoch 4: switching to a dry run is honoured
            resumed.train(resume_from_checkpoint=str(out / "checkpoint-32"))
            assert callback.autodrop.num_drops == 1 and callback.autodrop.lr_scales[0] == 0.5
            assert resumed.optimizer.param_groups[0]["lr"] == 0.05
            return
        with pytest.raises(ValueError, match=reason):
            resumed.train(resume_from_checkpoint=str(out / "checkpoint-32"))


class _Nothing(TrainerCallback):
    pass


def test_two_autodrop_callbacks_are_refused(tmp_path):
    with pytest.raises(ValueError, match="two AutoDropCallbacks"):
        make_trainer(tmp_path, [AutoDropCallback(), AutoDropCallback()])
    trainer = make_trainer(tmp_path, [AutoDropCallback()])
    trainer.add_callback(AutoDropCallback(drop_factor=0.2))
    with pytest.raises(ValueError, match="two AutoDropCallbacks"):
        trainer.train()


@pytest.mark.parametrize("positional", [0.2, 0, "0.2"])
def test_a_positional_field_is_a_clear_error(positional):
    with pytest.raises(TypeError, match=r"pass single fields by name, e.g. drop_factor="):
        AutoDropCallback(positional)


def test_a_fractional_last_epoch_says_its_interval_is_shorter(tmp_path, autodrop_logs):
    trainer = make_trainer(tmp_path, [AutoDropCallback(drop_delay=1, **ALWAYS)], num_train_epochs=4.5)
    trainer.train()
    assert [e["epoch"] for e in autodrop_entries(trainer)] == [1, 2, 3, 4, 4.5]
    assert autodrop_logs.text.count("its interval is shorter than the others") == 1


# ---------------------------------------------------------------------------------------------- custom loops
def _params(*shapes, dtype=torch.float32):
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*s, dtype=dtype)) for s in shapes]


def _train_step(params, opt):
    opt.zero_grad()
    sum((p * torch.randn_like(p)).sum() for p in params).backward()
    opt.step()


class TestRefusedAtConstruction:
    def test_an_optimizer_without_the_model_parameters(self):
        model, other = MLP(), MLP()
        with pytest.raises(ValueError, match="are not in the optimizer AutoDrop was given"):
            AutoDrop(model, torch.optim.SGD(other.parameters(), lr=0.1))

    @pytest.mark.parametrize("lr", [math.nan, -0.1, math.inf])
    def test_a_nan_or_negative_lr(self, lr):
        params = _params((3,))
        with pytest.raises(ValueError, match="finite learning rate >= 0"):
            AutoDrop(params, _sgd_with_lr(params, lr))

    def test_complex_and_sparse_parameters(self):
        z = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
        with pytest.raises(ValueError, match="dtype torch.complex64"):
            AutoDrop([z], torch.optim.SGD([z], lr=0.1))
        s = torch.nn.Parameter(torch.randn(4, 4).to_sparse())
        with pytest.raises(ValueError, match="layout torch.sparse_coo"):
            AutoDrop([s], torch.optim.SGD([s], lr=0.1))

    @pytest.mark.parametrize(
        "make",
        [
            lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=1e-3),
            lambda opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=10, eta_min=1e-3),
        ],
        ids=["CosineAnnealingLR", "CosineAnnealingWarmRestarts"],
    )
    def test_cosine_annealing_to_a_positive_eta_min(self, make):
        params = _params((3,))
        opt = torch.optim.SGD(params, lr=0.1)
        with pytest.raises(ValueError, match=r"eta_min=0.001\): the schedule anneals towards the absolute floor"):
            AutoDrop(params, opt, make(opt))

    def test_cosine_annealing_to_zero_keeps_every_drop(self):
        params = _params((3,))
        opt = torch.optim.SGD(params, lr=0.1)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=4)
        plain_opt = torch.optim.SGD(_params((3,)), lr=0.1)
        plain = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(plain_opt, T_0=4)
        ad = AutoDrop(params, opt, sched, drop_delay=0, drop_factor=0.5, **ALWAYS)
        for _ in range(3):  # a drop at the third interval
            for _ in range(4):
                _train_step(params, opt)
                sched.step()
                plain_opt.step()
                plain.step()
            ad.step()
        for _ in range(12):  # three more cycles: never above half the plain schedule
            _train_step(params, opt)
            sched.step()
            plain.step()
            assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * plain.get_last_lr()[0])


def _sgd_with_lr(params, lr):
    opt = torch.optim.SGD(params, lr=0.1)
    opt.param_groups[0]["lr"] = lr
    return opt


class TestRefusedWhenTheLoopChanges:
    def test_add_param_group_after_autodrop_is_built(self):
        params = _params((3,), (2,))
        opt = torch.optim.SGD(params[:1], lr=0.1)
        ad = AutoDrop(params[:1], opt)
        opt.add_param_group({"params": params[1:], "lr": 0.1})
        _train_step(params, opt)
        with pytest.raises(RuntimeError, match="now has 2 param groups but had 1"):
            ad.step()

    def test_an_optimizer_rebuilt_mid_run(self):
        params = _params((3,))
        opt = torch.optim.SGD(params, lr=0.1)
        ad = AutoDrop(params, opt)
        _train_step(params, opt)
        ad.step()
        opt = torch.optim.SGD(params, lr=0.1)  # the loop rebuilds its optimizer; AutoDrop still holds the old one
        _train_step(params, opt)
        with pytest.raises(RuntimeError, match="seems to have rebuilt its optimizer"):
            ad.step()

    def test_parameters_resized_mid_run(self):
        params = _params((3,))
        opt = torch.optim.SGD(params, lr=0.1)
        ad = AutoDrop(params, opt)
        with torch.no_grad():
            params[0].data = torch.randn(5)
        with pytest.raises(RuntimeError, match=r"resized: \[0\]"):
            ad.step()


class TestNumbers:
    def test_float64_parameters_keep_float64_snapshots(self):
        params = _params((1000,), dtype=torch.float64)
        opt = torch.optim.SGD(params, lr=1.0)
        ad = AutoDrop(params, opt, drop_delay=0, **ALWAYS)
        g = torch.Generator().manual_seed(1)
        points = [params[0].detach().clone()]
        for _ in range(2):
            with torch.no_grad():  # updates of 1e-7 relative size, which float32 copies round away
                params[0].add_(1e-7 * torch.randn(1000, generator=g, dtype=torch.float64))
            points.append(params[0].detach().clone())
            m = ad.step()
        exact = angle_degrees(points[1] - points[0], points[2] - points[1])
        assert m.angle == pytest.approx(exact, abs=1e-9)
        with torch.no_grad():
            params[0].add_(1e-7 * torch.randn(1000, generator=g, dtype=torch.float64))
        before = params[0].detach().clone()
        assert ad.step().dropped  # drop_delay=0: the average is this one snapshot, written back bit for bit
        assert torch.equal(params[0].detach(), before)

    def test_a_transient_spike_is_left_out_of_the_average(self, autodrop_logs):
        params = _params((50,))
        opt = torch.optim.SGD(params, lr=0.01)
        ad = AutoDrop(params, opt, drop_delay=3, **ALWAYS)
        for interval in range(1, 10):
            _train_step(params, opt)
            if interval == 4:  # inside the window that the trigger at interval 3 opened
                with torch.no_grad():
                    params[0][7] = 1e30
            elif interval == 5:
                with torch.no_grad():
                    params[0][7] = 0.0
            m = ad.step()
            if m.dropped:
                break
        # Intervals 4 (to the spike) and 5 (back from it) are left out: the drop comes two intervals later.
        assert m.interval == 3 + 3 + 2 and m.dropped
        assert params[0].abs().max() < 10
        assert autodrop_logs.text.count("left out of the running average") == 2

    def test_a_non_finite_interval_is_left_out_of_the_average(self, autodrop_logs):
        params = _params((50,))
        opt = torch.optim.SGD(params, lr=0.01)
        ad = AutoDrop(params, opt, drop_delay=2, **ALWAYS)
        for interval in range(1, 10):
            _train_step(params, opt)
            if interval == 4:
                with torch.no_grad():
                    params[0][7] = math.inf
            elif interval == 5:
                with torch.no_grad():
                    params[0][7] = 0.0
            m = ad.step()
            if m.dropped:
                break
        assert m.interval == 3 + 2 + 2 and torch.isfinite(params[0]).all()
        assert "NaN/Inf" in autodrop_logs.text


def test_load_refuses_a_state_saved_with_other_weights_and_says_what_to_load_first():
    params = _params((4,))
    opt = torch.optim.SGD(params, lr=0.1)
    ad = AutoDrop(params, opt)
    _train_step(params, opt)
    ad.step()
    state = ad.state_dict()
    _train_step(params, opt)
    with pytest.raises(ValueError, match="model's weights were not loaded before AutoDrop's state"):
        AutoDrop(params, opt).load_state_dict(state)


def test_config_changes_in_a_custom_loop_load(autodrop_logs):
    params = _params((4,))
    opt = torch.optim.SGD(params, lr=0.1)
    ad = AutoDrop(params, opt, config=AutoDropConfig(min_lr=1e-3, detector="trend"))
    state = ad.state_dict()
    again = AutoDrop(params, opt, config=AutoDropConfig(min_lr=0.05, detector="trend"))
    again.load_state_dict(state)
    assert again._lr.floors == [0.05]
    assert "min_lr 0.001 -> 0.05" in autodrop_logs.text
    with pytest.raises(ValueError, match="trend_window"):
        AutoDrop(params, opt, detector="trend", trend_window=20).load_state_dict(state)
    with pytest.raises(ValueError, match="detector"):
        AutoDrop(params, opt).load_state_dict(state)  # the growth test needs an anchor the trend state lacks


@pytest.mark.parametrize("durable", [True, False])
def test_a_save_decided_after_the_step_and_without_fsync_still_resumes_exactly(straight, tmp_path, durable):
    """save_strategy="best" decides to save after evaluating, so nothing was staged: state() writes the file."""
    _, full, full_params = straight
    callback = AutoDropCallback(**killed_run.CONFIG)
    callback.durable = durable
    best = dict(save_strategy="best", eval_strategy="epoch", metric_for_best_model="loss", greater_is_better=False)
    run = killed_run.trainer(str(tmp_path), callback=callback, **best)
    run.train()
    saved = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*"))
    assert saved and all((tmp_path / f"checkpoint-{s}" / STATE_FILE).is_file() for s in saved)
    assert not (tmp_path / ".autodrop-staging").exists()
    resumed = killed_run.trainer(str(tmp_path), save_strategy="no", eval_strategy="epoch")
    resumed.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{saved[0]}"))
    assert _clean(autodrop_entries(resumed)) == _clean(autodrop_entries(full))
    for p, q in zip(resumed.model.parameters(), full_params):
        assert torch.equal(p.detach(), q)


# ------------------------------------------------------------------------------ faults that ended unclean
def test_a_loop_that_skips_non_finite_steps_and_repairs_a_parameter_trains_on(autodrop_logs):
    """GradScaler skips a step whose gradients are not finite; the loop repairs the infinite weight itself.

    The interval after the fault has no optimizer step but a parameter moved (from inf back to a finite
    value): that is the non-finite path ("no trigger or drop at this interval"), not a rebuilt optimizer.
    """
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    ad = AutoDrop(model, opt)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    good = [p.detach().clone() for p in model.parameters()]
    skipped = 0
    for step in range(12):  # one optimizer step per interval
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        scaler.scale(loss).backward()
        before = opt.param_groups[0]["params"][0].detach().clone()
        scaler.step(opt)  # skipped when the gradients hold inf/NaN
        scaler.update()
        with torch.no_grad():
            if not torch.isfinite(loss):
                skipped += torch.equal(before, model.weight.detach())
                for p, g in zip(model.parameters(), good):  # the loop repairs it from its last finite copy
                    p.copy_(g)
            else:
                good = [p.detach().clone() for p in model.parameters()]
            if step == 4:  # a fault leaves a weight infinite at the interval's end
                model.weight[0, 3] = math.inf
        m = ad.step()
    assert skipped == 1 and m.interval == 12 and torch.isfinite(model.weight).all()
    assert autodrop_logs.text.count("NaN/Inf") == 2  # the interval to the fault, the one back from it


def test_a_state_missing_a_field_says_how_to_restart_or_restore():
    params = _params((4,))
    opt = torch.optim.SGD(params, lr=0.1)
    ad = AutoDrop(params, opt)
    _train_step(params, opt)
    ad.step()
    state = ad.state_dict()
    del state["recent_angles"]
    with pytest.raises(ValueError, match="KeyError: 'recent_angles'") as err:
        AutoDrop(params, opt).load_state_dict(state)
    assert "Restore the state file from a copy" in str(err.value)
    assert "a new AutoDrop without loading this state" in str(err.value)
    assert "restore_callback_states_from_checkpoint" in str(err.value)


def test_a_state_of_another_trainable_set_of_the_same_count_says_what_to_do():
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.fc1.weight.requires_grad_(False)  # one set of frozen parameters when saving ...
    state = AutoDrop(model, opt).state_dict()
    model.fc1.weight.requires_grad_(True)
    model.fc2.weight.requires_grad_(False)  # ... another, of the same count, when loading
    with pytest.raises(ValueError, match="belongs to another model") as err:
        AutoDrop(model, opt).load_state_dict(state)
    message = str(err.value)
    assert "Resume with the trainable parameters it was saved with" in message
    assert "a new AutoDrop without loading this state" in message
    assert "delete its autodrop_state file" in message


class TestSchedulerOfAnotherOptimizer:
    def test_a_scheduler_built_on_another_optimizer_is_refused(self):
        params = _params((3,))
        opt, other = torch.optim.SGD(params, lr=0.1), torch.optim.SGD(_params((3,)), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(other, lambda s: 1.0)
        with pytest.raises(ValueError, match="was built on another optimizer") as err:
            AutoDrop(params, opt, sched)
        assert "Pass the scheduler built on this optimizer" in str(err.value)

    def test_an_optimizer_where_the_scheduler_goes_is_refused_as_such(self):
        params = _params((3,))
        opt = torch.optim.SGD(params, lr=0.1)
        with pytest.raises(TypeError, match="the third argument is the scheduler; you passed an optimizer"):
            AutoDrop(params, opt, opt)

    def test_accelerate_wrappers_of_the_same_optimizer_and_scheduler_are_accepted(self):
        from accelerate import Accelerator

        params = _params((3,))
        opt = torch.optim.SGD(params, lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5)
        wrapped_opt, wrapped_sched = Accelerator(cpu=True).prepare(opt, sched)
        assert wrapped_opt is not opt and wrapped_sched is not sched
        ad = AutoDrop(params, wrapped_opt, wrapped_sched)
        assert ad.lr_scales == [1.0]

    def test_a_wrapped_scheduler_of_another_optimizer_is_refused(self):
        from accelerate import Accelerator

        params = _params((3,))
        opt, other = torch.optim.SGD(params, lr=0.1), torch.optim.SGD(_params((3,)), lr=0.1)
        wrapped_sched = Accelerator(cpu=True).prepare(torch.optim.lr_scheduler.StepLR(other, step_size=5))
        with pytest.raises(ValueError, match="was built on another optimizer"):
            AutoDrop(params, opt, wrapped_sched)
