"""What a run reports: `results.json`'s fields from the `Trainer`'s log history, and the training curve."""

from __future__ import annotations

import math
import os
import platform
import shlex
from importlib import metadata
from pathlib import Path

import torch

from .recipe import Recipe


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in (
        "hf_autodrop",
        "torch",
        "torchvision",
        "timm",
        "transformers",
        "accelerate",
        "datasets",
        "huggingface_hub",
        "safetensors",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            if pkg == "hf_autodrop":
                import hf_autodrop

                out[pkg] = hf_autodrop.__version__
    return out


def _hardware(training_args) -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "world_size": training_args.world_size,
        "device": str(training_args.device),
        "mixed_precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no",
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def command_line(recipe: Recipe, argv: list[str], training_args) -> str:
    """The command that reproduces this run from the repository's root, as one shell line (no token in it)."""
    script = f"recipes/{recipe.name}.py"
    kept, skip = [], False
    for a in argv:
        if skip or a.startswith("--hub_token="):
            skip = False
        elif a == "--hub_token":
            skip = True
        else:
            kept.append(a)
    argv = kept
    if training_args.world_size > 1:
        return f"accelerate launch --num_processes {training_args.world_size} {script} {shlex.join(argv)}".strip()
    return f"python {script} {shlex.join(argv)}".strip()


def summarize(log_history: list[dict], measurements_available: bool) -> dict:
    """Per-epoch history, drops, final and best test error from a `Trainer`'s `log_history`."""
    evals = [h for h in log_history if "eval_top1_error" in h]
    losses = [h for h in log_history if "loss" in h and "epoch" in h]
    angles = [h for h in log_history if "autodrop/angle" in h]
    lrs = [h for h in log_history if "recipe/lr" in h]
    drops = [
        {"epoch": h["epoch"], "step": h["step"], "lr": h["recipe/lr_drop"], "lr_before": h["recipe/lr_before"]}
        for h in log_history
        if "recipe/lr_drop" in h
    ]
    out: dict = {
        "history": {
            "eval": [
                {
                    "epoch": h["epoch"],
                    "step": h.get("step"),
                    "top1_error": h["eval_top1_error"],
                    "top5_error": h.get("eval_top5_error"),
                    "loss": h.get("eval_loss"),
                }
                for h in evals
            ],
            "train_loss": [{"epoch": h["epoch"], "loss": h["loss"]} for h in losses],
            "lr": [{"epoch": h["epoch"], "lr": h["recipe/lr"]} for h in lrs],
            "angle": [
                {
                    "epoch": h["epoch"],
                    "angle": h["autodrop/angle"],
                    "angle_change": h.get("autodrop/angle_change"),
                    "threshold": h.get("autodrop/threshold"),
                    "phase": h.get("autodrop/phase"),
                }
                for h in angles
            ]
            if measurements_available
            else [],
        },
        "drops": drops,
        "drop_epochs": [d["epoch"] for d in drops],
        "drop_lrs": [d["lr"] for d in drops],
    }
    if evals:
        best = min(evals, key=lambda h: h["eval_top1_error"])
        out.update(
            final_test_error=evals[-1]["eval_top1_error"],
            final_top5_error=evals[-1].get("eval_top5_error"),
            best_test_error=best["eval_top1_error"],
            best_epoch=best["epoch"],
        )
    return out


def plot_curves(results: dict, path: Path) -> Path:
    """lr, training loss, angle and test error against epochs, with the drops marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = results["history"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    panels = [
        ("learning rate", hist["lr"], "lr", True),
        ("training loss", hist["train_loss"], "loss", False),
        ("angle (degrees)", hist["angle"], "angle", False),
        ("test error (%)", hist["eval"], "top1_error", False),
    ]
    for ax, (label, rows, key, log) in zip(axes, panels):
        xs = [r["epoch"] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        ys = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        if key == "lr":
            ax.step(xs, ys, where="post")
        else:
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        if log and ys and min(ys) > 0:
            ax.set_yscale("log")
        for d in results["drops"]:
            ax.axvline(d["epoch"], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        if not ys:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{results['title']}: {results['method']} (seed {results['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
