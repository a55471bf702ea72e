"""What the reliability guards cost: `AutoDrop.step()` and the state save, this checkout against a baseline.

The baseline is another git revision of `hf_autodrop` (default `main`), imported side by side under another
name, so both run in the same process on the same model, interleaved. Prints, per model size:
- step: the median time of one `AutoDrop.step()` (monitor phase), baseline and now, and their ratio;
- state_dict: `state_dict()` (now with a checksum of every state tensor and the parameters' fingerprint);
- save: the whole save of one process's state file, as the Trainer callback does it: baseline `torch.save`
  to the final path; now `torch.save` to a temporary name, flush + fsync, rename, fsync of the folder.
  `save, no fsync` is the new save without the two fsyncs, to show what durability itself costs;
- checkpoint: one whole Trainer checkpoint save as a run does it (on_step_end, the model, SGD optimizer,
  scheduler, RNG and trainer_state.json files, on_save) with the baseline's AutoDropCallback against this
  one's, with `durable` fsyncs and without (`--trainer`, needs transformers).

    python bench/reliability_cost.py [--baseline main] [--sizes 1e6 1e7 1e8] [--repeats 5] [--trainer]
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def _baseline(ref: str, root: Path):
    """`hf_autodrop` at git revision `ref`, importable as `hf_autodrop_baseline`."""
    archive = subprocess.run(["git", "archive", ref, "hf_autodrop"], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    (root / "hf_autodrop").rename(root / "hf_autodrop_baseline")
    sys.path.insert(0, str(root))
    return importlib.import_module("hf_autodrop_baseline")


def _model(n_params: int) -> torch.nn.Module:
    width = 1024 if n_params >= 10**7 else 256
    layers = max(1, round(n_params / (width * width + width)))
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(base, n_params: int, repeats: int, folder: str) -> dict:
    from hf_autodrop import AutoDrop
    from hf_autodrop.callback import _atomic_save

    torch.manual_seed(0)
    model = _model(n_params)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    config = dict(detector="paper", threshold=1e-9, max_threshold=1e-9, drop_delay=10**6)  # never triggers
    old, new = base.AutoDrop(model, opt, **config), AutoDrop(model, opt, **config)

    def interval():  # a random displacement through the optimizer, like a training interval
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()

    for ad in (old, new):
        for _ in range(2):
            interval()
            ad.step()

    def save_old():
        torch.save({"autodrop": old.state_dict()}, os.path.join(folder, "old.pt"))

    def save_new():
        _atomic_save({"autodrop": new.state_dict()}, os.path.join(folder, "new.pt"))

    def save_new_no_fsync():
        fsync = os.fsync
        os.fsync = lambda fd: None
        try:
            save_new()
        finally:
            os.fsync = fsync

    def fresh(fn):
        # Every save goes to a new file, as in a run (each checkpoint is a new folder): rewriting an existing
        # file would make some filesystems (ext4's auto_da_alloc) flush it on close, like an fsync.
        for name in ("old.pt", "new.pt"):
            if os.path.exists(os.path.join(folder, name)):
                os.unlink(os.path.join(folder, name))
        return _timed(fn)

    t = {k: [] for k in ("step_old", "step_new", "sd_old", "sd_new", "save_old", "save_new", "save_nofsync")}
    for _ in range(repeats):  # interleaved, so that drift hits both alike
        interval()
        t["step_old"].append(_timed(old.step))
        t["step_new"].append(_timed(new.step))
        t["sd_old"].append(_timed(old.state_dict))
        t["sd_new"].append(_timed(new.state_dict))
        t["save_old"].append(fresh(save_old))
        t["save_new"].append(fresh(save_new))
        t["save_nofsync"].append(fresh(save_new_no_fsync))
    m = {k: statistics.median(v) for k, v in t.items()}
    m["params"] = sum(p.numel() for p in params)
    return m


def measure_checkpoint(base, n_params: int, repeats: int, folder: str) -> tuple[float, float, float]:
    """Median seconds of one Trainer checkpoint save: baseline callback, this one, this one without fsync."""
    from transformers import Trainer, TrainingArguments

    from hf_autodrop import AutoDropCallback

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"x": torch.randn(width)}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _model(n_params)

        def forward(self, x):
            return {"loss": self.body(x).pow(2).mean()}

    width = 1024 if n_params >= 10**7 else 256
    trainers = []
    durable = AutoDropCallback()
    fast = AutoDropCallback()
    fast.durable = False
    for name, callback in (("base", base.AutoDropCallback()), ("now", durable), ("now-nofsync", fast)):
        args = TrainingArguments(
            os.path.join(folder, name),
            max_steps=1,
            per_device_train_batch_size=8,
            lr_scheduler_type="constant",
            optim="sgd",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(model=Net(), args=args, train_dataset=Data(), callbacks=[callback])
        trainer.train()  # builds AutoDrop; the checkpoints below are written by hand
        trainers.append(trainer)

    for trainer in trainers:  # as in the middle of a run: no measurement due, a save due
        callback = next(c for c in trainer.callback_handler.callbacks if type(c).__name__ == "AutoDropCallback")
        callback._every = None
        callback._training = True

    def save(trainer):
        # What the Trainer runs for a save at the end of a step: the callbacks' on_step_end (where this
        # checkout stages its file and starts flushing it), the checkpoint, then on_save (where the
        # baseline wrote its file).
        trainer.control.should_save = True
        trainer.callback_handler.on_step_end(trainer.args, trainer.state, trainer.control)
        trainer._save_checkpoint(trainer.model, None)
        trainer.callback_handler.on_save(trainer.args, trainer.state, trainer.control)

    times = {0: [], 1: [], 2: []}
    for _ in range(repeats):
        for i, trainer in enumerate(trainers):
            # A new checkpoint folder each time, as in a run; the previous one is deleted untimed.
            previous = os.path.join(trainer.args.output_dir, f"checkpoint-{trainer.state.global_step}")
            shutil.rmtree(previous, ignore_errors=True)
            trainer.state.global_step += 1
            times[i].append(_timed(lambda t=trainer: save(t)))
    return tuple(statistics.median(times[i]) for i in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default="main")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trainer", action="store_true", help="also time whole Trainer checkpoints")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = _baseline(args.baseline, Path(tmp))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu; baseline {args.baseline}")
        head = ["params", "step base", "step now", "ratio", "state_dict", "ratio", "save base", "save now", "ratio"]
        print(("{:>12}" + "{:>11}" * 8 + "{:>16}").format(*head, "ratio no fsync"))
        for size in args.sizes:
            r = measure(base, int(size), args.repeats, tmp)
            print(
                (
                    "{:>12,}"
                    + "{:>11.4f}" * 2
                    + "{:>11.3f}"
                    + "{:>11.4f}{:>11.3f}"
                    + "{:>11.4f}" * 2
                    + "{:>11.3f}{:>16.3f}"
                ).format(
                    r["params"],
                    r["step_old"],
                    r["step_new"],
                    r["step_new"] / r["step_old"],
                    r["sd_new"],
                    r["sd_new"] / max(r["sd_old"], 1e-9),
                    r["save_old"],
                    r["save_new"],
                    r["save_new"] / r["save_old"],
                    r["save_nofsync"] / r["save_old"],
                )
            )
        if args.trainer:
            print(f"{'params':>12}{'checkpoint base':>17}{'checkpoint now':>16}{'ratio':>8}{'ratio no fsync':>16}")
            for size in args.sizes:
                old, new, fast = measure_checkpoint(base, int(size), args.repeats, tmp)
                print(f"{int(size):>12,}{old:>17.4f}{new:>16.4f}{new / old:>8.3f}{fast / old:>16.3f}")


if __name__ == "__main__":
    main()
