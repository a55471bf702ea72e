"""A Trainer run with AutoDropCallback that SIGKILLs itself at a dangerous moment of one checkpoint's save.

Usage: python tests/scripts/killed_run.py OUT_DIR MOMENT KILL_STEP
MOMENT is where process KILL_STEP's checkpoint save is cut short by SIGKILL:
- "inside-autodrop-save": AutoDrop's state file half written (the bytes so far flushed to disk);
- "before-trainer-state": the Trainer wrote the model, optimizer, RNG and AutoDrop files, not yet
  trainer_state.json;
- "after-trainer-state": right after the Trainer wrote the checkpoint's trainer_state.json (where the
  AutoDrop state used to be written only later, from on_save), before old checkpoints are deleted.
The tests build the uninterrupted reference run in-process with `trainer()`.
"""

import os
import signal
import sys

import torch

from hf_autodrop import AutoDropCallback
from tests.helpers import make_trainer

EPOCHS = 8
# Triggers at epoch 3, drops at epoch 5 (paper test, a threshold every change passes): the kills land
# inside the averaging window.
CONFIG = dict(detector="paper", drop_delay=2, drop_factor=0.5, threshold=60.0, max_threshold=120.0)


def trainer(out: str, callback=None, **overrides):
    callback = callback if callback is not None else AutoDropCallback(**CONFIG)
    kwargs = dict(num_train_epochs=EPOCHS, save_strategy="epoch", restore_callback_states_from_checkpoint=True)
    return make_trainer(out, [callback], **{**kwargs, **overrides})


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    out, moment, kill_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    t = trainer(out, save_total_limit=1)
    if moment == "inside-autodrop-save":
        save = torch.save

        def half_then_die(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and "autodrop" in obj and obj["global_step"] == kill_step:
                save(obj, f, *args, **kwargs)
                f.truncate(f.tell() // 2)
                f.flush()
                os.fsync(f.fileno())
                _kill()
            return save(obj, f, *args, **kwargs)

        torch.save = half_then_die
    elif moment in ("before-trainer-state", "after-trainer-state"):
        from transformers import TrainerState

        save_to_json = TrainerState.save_to_json

        def die_around_the_write(self, path):
            if self.global_step == kill_step and moment == "before-trainer-state":
                _kill()
            save_to_json(self, path)
            if self.global_step == kill_step:
                _kill()

        TrainerState.save_to_json = die_around_the_write
    else:
        raise SystemExit(f"unknown moment {moment!r}")
    t.train()


if __name__ == "__main__":
    main()
