"""Small real tasks for the tests: scikit-learn's digits (offline) and tiny models the Trainer accepts."""

from __future__ import annotations

import torch
from torch import nn

from hf_autodrop.demo import load_digits_arrays


class Digits(torch.utils.data.Dataset):
    """scikit-learn's digits as {"x": (64,), "labels": ()} items; `n` first examples of a split."""

    def __init__(self, split: str = "train", n: int | None = None, image: bool = False):
        x, y = load_digits_arrays()
        cut = 1400
        x, y = (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])
        if n is not None:
            x, y = x[:n], y[:n]
        self.x = torch.from_numpy(x).reshape(-1, 1, 8, 8) if image else torch.from_numpy(x)
        self.y = torch.from_numpy(y)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class MLP(nn.Module):
    """A classifier with a BatchNorm (floating buffers + an integer counter) and a Trainer-style output."""

    def __init__(self, hidden: int = 32, batchnorm: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.bn = nn.BatchNorm1d(hidden) if batchnorm else nn.Identity()
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x, labels=None):
        logits = self.fc2(torch.relu(self.bn(self.fc1(x))))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def training_args(output_dir, **overrides):
    from transformers import TrainingArguments

    kwargs = dict(
        output_dir=str(output_dir),
        num_train_epochs=6,
        per_device_train_batch_size=32,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="epoch",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        optim="sgd",
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def make_trainer(
    output_dir, callbacks, model=None, n_train=256, train_dataset=None, optimizers=(None, None), **overrides
):
    from transformers import Trainer

    torch.manual_seed(0)
    model = model if model is not None else MLP()
    return Trainer(
        model=model,
        args=training_args(output_dir, **overrides),
        train_dataset=train_dataset if train_dataset is not None else Digits("train", n_train),
        eval_dataset=Digits("test", 128),
        callbacks=callbacks,
        optimizers=optimizers,
    )


def autodrop_entries(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "autodrop/angle" in h]


# A threshold no angle change reaches: the trigger fires at the first check (third interval after a
# reset), so drops land at fixed intervals 3 + drop_delay, 2 * (3 + drop_delay), ...
ALWAYS = dict(detector="paper", threshold=180.0, max_threshold=180.0)


def copy_checkpoint(out, step, tmp_path):
    """A copy of `out`/checkpoint-`step` under `tmp_path` whose trainer_state.json records the copy's own
    AutoDrop file (as a checkpoint moved or downloaded elsewhere would, once re-pointed)."""
    import json
    import shutil

    from hf_autodrop.callback import STATE_FILE

    ckpt = tmp_path / f"checkpoint-{step}"
    shutil.copytree(out / ckpt.name, ckpt)
    path = ckpt / "trainer_state.json"
    state = json.loads(path.read_text())
    state["stateful_callbacks"]["AutoDropCallback"]["attributes"]["_checkpoint"]["file"] = str(ckpt / STATE_FILE)
    path.write_text(json.dumps(state))
    return ckpt


def wsd_multiplier(step: float, total: int, fraction: float = 0.2, floor: float = 1e-3) -> float:
    """transformers' warmup_stable_decay multiplier (no warm-up, 1 - sqrt over the last `fraction` of `total`
    steps, min_lr_ratio `floor`: AutoDrop's default floor) at `step`: the decay AutoDrop's must match."""
    from transformers.optimization import get_wsd_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    decay = round(fraction * total)
    schedule = get_wsd_schedule(optimizer, 0, decay, num_training_steps=total, decay_type="1-sqrt", min_lr_ratio=floor)
    return schedule.lr_lambdas[0](step)
