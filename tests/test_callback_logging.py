"""AutoDropCallback logs at the Trainer's cadence; every interval's record stays in measurements and a JSONL file."""

import json
import math

from hf_autodrop import AutoDropCallback
from hf_autodrop.callback import MEASUREMENTS_FILE

from .helpers import ALWAYS, autodrop_entries, make_trainer
from .test_callback import _callback, _event_steps, _tag, _tensorboard_scalars, _trainer_log_steps

STEPS_PER_EPOCH = 8


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _as_json(records):
    """`measurements` as the JSONL file holds them (NaN as null, tuples as lists)."""
    return [
        {
            k: (None if isinstance(v, float) and math.isnan(v) else list(v) if isinstance(v, tuple) else v)
            for k, v in r.items()
        }
        for r in records
    ]


def test_default_run_logs_at_the_trainers_cadence(tmp_path, monkeypatch, capsys):
    # 25 epochs of 8 steps = 200 steps: the default interval is one step (200 measurements), logging_steps 50.
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    trainer = make_trainer(
        tmp_path,
        [AutoDropCallback()],
        num_train_epochs=25,
        logging_strategy="steps",
        logging_steps=50,
        report_to=["tensorboard"],
    )
    trainer.train()
    measurements = _callback(trainer).measurements
    assert [m["step"] for m in measurements] == list(range(1, 201))
    assert _trainer_log_steps(trainer) == [50, 100, 150, 200]
    rows = sorted({50, 100, 150, 200} | _event_steps(measurements))
    assert len(rows) <= 4 + 3  # at most a trigger, a drop and a cooldown start besides the Trainer's rows
    assert [e["step"] for e in autodrop_entries(trainer)] == rows
    # Console: one printed dict per row, plus the Trainer's final summary.
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(printed) == len(rows) + 1 and sum("autodrop/angle" in line for line in printed) == len(rows)
    scalars = _tensorboard_scalars(tmp_path / "tb")
    assert [s for s, _ in scalars[_tag(scalars, "autodrop/angle")]] == rows
    assert [s for s, _ in scalars[_tag(scalars, "loss")]] == [50, 100, 150, 200]
    assert _jsonl(tmp_path / MEASUREMENTS_FILE) == _as_json(measurements)


def test_logging_strategy_no_logs_nothing_but_the_drop_lines(tmp_path, monkeypatch, capsys, autodrop_logs):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    trainer = make_trainer(
        tmp_path, [AutoDropCallback(drop_delay=1, **ALWAYS)], logging_strategy="no", report_to=["tensorboard"]
    )
    trainer.train()
    assert not any(k.startswith("autodrop/") for h in trainer.state.log_history for k in h)
    assert "autodrop/" not in capsys.readouterr().out
    assert not any("autodrop" in tag for tag in _tensorboard_scalars(tmp_path / "tb"))
    assert sum("drop #" in r.getMessage() for r in autodrop_logs.records) == 1
    measurements = _callback(trainer).measurements
    assert len(measurements) == 6 and _jsonl(tmp_path / MEASUREMENTS_FILE) == _as_json(measurements)


def test_the_row_of_a_drop_shows_the_lr_its_step_used(tmp_path):
    trainer = make_trainer(tmp_path, [AutoDropCallback(drop_delay=1, drop_factor=0.5, **ALWAYS)])
    trainer.train()
    rows = [(h["step"], h["learning_rate"], h["autodrop/num_drops"]) for h in autodrop_entries(trainer)]
    # The drop at the end of epoch 4 (step 32): that row shows 0.05, the next one 0.025.
    assert rows[3] == (32, 0.05, 1) and rows[4] == (40, 0.025, 1)


def test_the_jsonl_file_is_exact_after_a_resume(tmp_path):
    def trainer(save_strategy):
        return make_trainer(
            tmp_path,
            [AutoDropCallback(growth_threshold=10.0, drop_factor=0.5, interval_steps=2)],
            num_train_epochs=6,
            save_strategy=save_strategy,
            restore_callback_states_from_checkpoint=True,
        )

    straight = trainer("epoch")
    straight.train()
    full = _as_json(_callback(straight).measurements)
    assert _jsonl(tmp_path / MEASUREMENTS_FILE) == full  # the straight run wrote all 24 intervals
    resumed = trainer("no")  # the same output_dir: its file already holds all of them
    resumed.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{3 * STEPS_PER_EPOCH}"))
    assert _jsonl(tmp_path / MEASUREMENTS_FILE) == full == _as_json(_callback(resumed).measurements)
    assert len(full) == 24 and sum(m["dropped"] for m in full) >= 1


def test_the_jsonl_file_holds_every_interval_up_to_each_checkpoint(tmp_path):
    # Records are written in batches (about once a second); a checkpoint writes those still waiting, so
    # that a resume without AutoDrop's state finds the file complete up to it.
    from transformers import TrainerCallback

    seen = []

    class ReadAtSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            seen.append((state.global_step, [r["step"] for r in _jsonl(tmp_path / MEASUREMENTS_FILE)]))

    trainer = make_trainer(
        tmp_path,
        [AutoDropCallback(interval_steps=2), ReadAtSave()],
        num_train_epochs=3,
        save_strategy="steps",
        save_steps=10,
    )
    trainer.train()
    assert [step for step, _ in seen] == [10, 20, 24]
    for step, written in seen:
        assert written == list(range(2, step + 1, 2))
    assert _jsonl(tmp_path / MEASUREMENTS_FILE) == _as_json(_callback(trainer).measurements)
