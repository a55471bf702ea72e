"""The demo: a small CNN on scikit-learn's digits, trained by the Hugging Face `Trainer` with AutoDrop.

Runs offline on a CPU in well under two minutes, prints the drops (epoch, lr, angle), the cooldown and
the test error, and writes `autodrop_demo/curves.png` (lr, training loss, angle and test error per epoch).

    python -m hf_autodrop.demo            # or: hf-autodrop-demo
    python -m hf_autodrop.demo --help

The demo runs the library's defaults (`AutoDropCallback()`): the growth test, with the cooldown
of a run of known length. On this task the parameters never settle at lr 0.05 within 60 epochs
(random shifts of every image and BatchNorm keep them moving: growth exponent about 0.4 late in the
run, above the 0.2 that means "settled", below the 1.5 that means "still drifting"), so the
saturation test stays quiet and the lr changes only in the cooldown: over the last fifth of the run
(from epoch 48) it decays from 0.05 to its floor 5e-5 along 1 - sqrt, as a warm-up-stable-decay
schedule's cooldown does.
`--detector paper --threshold 1 --max-threshold 5 --drop-delay 5` runs the paper's test from its
largest threshold instead, which drops three times. docs/results explains when each test fires.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import time

import torch
from torch import nn

from ._extras import require

__all__ = ["DigitsCNN", "DigitsDataset", "load_digits_arrays", "main", "run_demo", "train_digits"]

DEFAULTS = dict(
    epochs=60,
    lr=0.05,
    weight_decay=5e-4,
    batch_size=64,
    seed=0,
    drop_factor=0.1,
    detector="growth",  # the library's default
    threshold=1.0,  # the paper's test only (--detector paper)
    max_threshold=5.0,  # the paper's test only
    drop_delay=-1,  # -1: the library's automatic averaging window
)


class DigitsCNN(nn.Module):
    """Two 3x3 conv layers (16, 32 channels), a 2x2 max-pool and a linear head, for 8x8 digit images.

    The demo's (the defaults): BatchNorm after each conv and one linear layer (10 K parameters).
    `batchnorm=False, hidden=64` is the research studies' variant (a 64-unit hidden layer, 38 K).
    """

    def __init__(self, num_classes: int = 10, batchnorm: bool = True, hidden: int | None = None):
        super().__init__()
        norm = (lambda c: [nn.BatchNorm2d(c)]) if batchnorm else (lambda c: [])
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            *norm(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            *norm(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        features = 32 * 4 * 4
        if hidden is None:
            self.head = nn.Linear(features, num_classes)
        else:
            self.head = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, pixel_values, labels=None):
        logits = self.head(self.features(pixel_values))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class DigitsDataset(torch.utils.data.Dataset):
    """Digits as Trainer items; `augment` shifts each image by up to one pixel (pad 1 + random crop)."""

    def __init__(self, x, y, augment: bool = False):
        self.x, self.y, self.augment = torch.as_tensor(x), torch.as_tensor(y), augment

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        image = self.x[i]
        if self.augment:
            dy, dx = torch.randint(0, 3, (2,)).tolist()
            image = nn.functional.pad(image, (1, 1, 1, 1))[:, dy : dy + 8, dx : dx + 8]
        return {"pixel_values": image, "labels": self.y[i]}


@functools.lru_cache(maxsize=1)
def load_digits_arrays():
    """scikit-learn's digits (shipped with it, offline): `x` float32 (1797, 64) in [0, 1], `y` int64 labels."""
    with require("demo", "The demo", "numpy", "sklearn"):
        import numpy as np
        from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def load_digits_splits(seed: int = 0):
    """The digits as 1x8x8 images: 75 % train, 25 % test, stratified."""
    with require("demo", "The demo", "sklearn"):
        from sklearn.model_selection import train_test_split

    x, y = load_digits_arrays()
    return train_test_split(x.reshape(-1, 1, 8, 8), y, test_size=0.25, random_state=seed, stratify=y)


def train_digits(cfg: dict, output_dir: str, dry_run: bool = False) -> dict:
    """One Trainer run of the demo; `dry_run=True` measures everything but keeps the lr constant."""
    with require("demo", "The demo", "transformers", "accelerate"):
        from transformers import PrinterCallback, Trainer, TrainingArguments

        from hf_autodrop import AutoDropCallback

    x_train, x_test, y_train, y_test = load_digits_splits(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    model = DigitsCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])
    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=cfg["epochs"],
        per_device_train_batch_size=cfg["batch_size"],
        per_device_eval_batch_size=256,
        learning_rate=cfg["lr"],
        lr_scheduler_type="constant",
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=cfg["seed"],
        dataloader_num_workers=0,
    )
    settings = {"drop_factor": cfg["drop_factor"], "detector": cfg["detector"], "dry_run": dry_run}
    # Only the omega tests read the paper's threshold; the others ignore it.
    settings.update(threshold=cfg["threshold"], max_threshold=cfg["max_threshold"])
    if cfg["drop_delay"] >= 0:
        settings["drop_delay"] = cfg["drop_delay"]
    autodrop = AutoDropCallback(**settings)

    def error_rate(pred):
        return {"error": float((pred.predictions.argmax(-1) != pred.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=DigitsDataset(x_train, y_train, augment=True),
        eval_dataset=DigitsDataset(x_test, y_test),
        optimizers=(optimizer, None),
        compute_metrics=error_rate,
        callbacks=[autodrop],
    )
    trainer.remove_callback(PrinterCallback)  # the demo prints its own summary, not every epoch's logs
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start

    per_epoch: dict[int, dict] = {}
    for h in trainer.state.log_history:
        row = per_epoch.setdefault(round(h.get("epoch", 0)), {})
        for key in ("loss", "learning_rate", "eval_error"):
            if key in h:
                row[key] = h[key]
    for m in autodrop.measurements:  # the last measurement of each epoch
        row = per_epoch.setdefault(math.ceil(m["epoch"] - 1e-9), {})
        row["statistic"] = m["statistic"]
    epochs = sorted(e for e in per_epoch if e > 0)
    errors = [per_epoch[e].get("eval_error", math.inf) for e in epochs]
    return {
        "wall_time_s": wall,
        "final_test_error": errors[-1],
        "best_test_error": min(errors),
        "drops": [
            {
                "epoch": round(m["epoch"], 2),
                "lr": m["lrs"][0],
                "angle": m["angle"],
                # The phase's length: intervals since the start or the previous drop, in epochs.
                "since_last_drop_epochs": round(m["since_anchor"] * m["epoch"] / m["interval"], 1),
                "at_floor": m["exhausted"],
            }
            for m in autodrop.measurements
            if m["dropped"]
        ],
        "cooldown": _cooldown(autodrop.measurements),
        "epochs": [{"epoch": e, **per_epoch[e]} for e in epochs],
    }


def _cooldown(measurements: list[dict]) -> dict | None:
    """Where the end-of-run decay began and the lrs it went from and to, or None (no decay in the run)."""
    inside = [i for i, m in enumerate(measurements) if m["cooldown"]]
    if not inside:
        return None
    first = inside[0]
    before = measurements[first - 1]["lrs"][0] if first else None
    return {
        "from_epoch": round(measurements[first]["epoch"], 2),
        "from_lr": before,
        "to_lr": measurements[-1]["lrs"][0],
    }


def run_demo(output_dir: str = "autodrop_demo", baseline: bool = True, **overrides) -> dict:
    """Train with AutoDrop (and, with `baseline`, the same run at a constant lr); write results and plot."""
    cfg = {**DEFAULTS, **overrides}
    record = {"config": cfg, "autodrop": train_digits(cfg, output_dir)}
    if baseline:
        log = logging.getLogger("hf_autodrop")
        level, _ = log.level, log.setLevel(logging.WARNING)  # its would-be drops are not the demo's drops
        try:
            record["constant_lr"] = train_digits(cfg, output_dir, dry_run=True)
        finally:
            log.setLevel(level)
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(record, f, indent=2)
    record["plot"] = _plot(record, os.path.join(output_dir, "curves.png"))
    return record


def _plot(record: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("learning_rate", "learning rate"),
        ("loss", "training loss"),
        ("statistic", "the saturation\ntest's statistic"),
        ("eval_error", "test error"),
    ]
    fig, axes = plt.subplots(4, 1, figsize=(7, 9), sharex=True)
    runs = [("AutoDrop", record["autodrop"], "tab:blue")]
    if "constant_lr" in record:
        runs.append(("constant lr", record["constant_lr"], "tab:gray"))
    for ax, (key, label) in zip(axes, panels):
        for name, run, color in runs:
            rows = run["epochs"]
            ax.plot(
                [r["epoch"] for r in rows],
                [r.get(key, math.nan) for r in rows],
                marker=".",
                lw=1,
                color=color,
                label=name,
            )
        ax.set_ylabel(label)
        if key != "statistic":
            ax.set_yscale("symlog", linthresh=1e-3) if key == "eval_error" else ax.set_yscale("log")
        for drop in record["autodrop"]["drops"]:
            ax.axvline(drop["epoch"], color="tab:red", ls="--", lw=0.8)
        if record["autodrop"].get("cooldown"):
            ax.axvspan(record["autodrop"]["cooldown"]["from_epoch"], rows[-1]["epoch"], color="tab:blue", alpha=0.08)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower left")
    axes[-1].set_xlabel("epoch")
    axes[0].set_title("AutoDrop on scikit-learn digits (red dashes: drops; shaded: the cooldown)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _print_summary(record: dict) -> None:
    run = record["autodrop"]
    print(f"\nAutoDrop demo: {record['config']['epochs']} epochs in {run['wall_time_s']:.1f} s")
    print(f"{'drop':>4} {'epoch':>6} {'new lr':>10} {'angle (deg)':>12}")
    for i, d in enumerate(run["drops"], 1):
        note = "  (already at the floor)" if d["at_floor"] else ""
        print(f"{i:>4} {d['epoch']:>6g} {d['lr']:>10.3g} {d['angle']:>12.2f}{note}")
    if not run["drops"]:
        print("   (no drop)")
    if run.get("cooldown"):
        c = run["cooldown"]
        print(
            f"cooldown: from epoch {c['from_epoch']:g} the lr decays from {c['from_lr']:.3g} to {c['to_lr']:.3g} (1 - sqrt)"
        )
    runs = [("AutoDrop", run)] + ([("constant lr", record["constant_lr"])] if "constant_lr" in record else [])
    for name, r in runs:
        print(
            f"{name:>12} test error: final {100 * r['final_test_error']:.2f} %, best {100 * r['best_test_error']:.2f} %"
        )
    print(f"curves: {record['plot']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="autodrop_demo")
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="skip the constant-lr comparison run"
    )
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    opts = vars(parser.parse_args(argv))
    output_dir, baseline = opts.pop("output_dir"), opts.pop("baseline")
    logging.basicConfig(format="%(message)s")
    logging.getLogger("hf_autodrop").setLevel(logging.INFO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    record = run_demo(output_dir, baseline=baseline, **opts)
    _print_summary(record)
    return record


def console() -> None:
    """The `hf-autodrop-demo` console script. Console scripts exit with `sys.exit(<return value>)`, so
    this returns nothing: `main()`'s record would be printed to stderr with exit status 1."""
    main()


if __name__ == "__main__":
    main()
