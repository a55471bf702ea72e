"""What a run reports: `results.json`'s fields from the `Trainer`'s log history, and the training curve."""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

import torch

from hf_autodrop.measurement import Measurement

from .recipe import Recipe


def versions() -> dict[str, str]:
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


def hardware(training_args) -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "world_size": training_args.world_size,
        "device": str(training_args.device),
        "mixed_precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no",
        "launcher": launcher(training_args.world_size),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _parent_argv() -> list[str] | None:
    """The command line of the process that started this one (Linux: /proc), or None."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _launcher_in(argv: list[str]) -> tuple[str, int] | None:
    """`("torchrun" or "accelerate launch", index of its first option)` if `argv` runs one of them."""
    i = 0
    while i < len(argv) and Path(argv[i]).name.startswith("python"):
        i += 1
    if i + 1 < len(argv) and argv[i] == "-m":
        module = argv[i + 1]
        if module in ("torch.distributed.run", "torch.distributed.launch"):
            return "torchrun", i + 2
        if module in ("accelerate.commands.launch", "accelerate.commands.accelerate_cli"):
            return "accelerate launch", i + 2 + (module.endswith("_cli") and argv[i + 2 : i + 3] == ["launch"])
        return None
    if i < len(argv) and Path(argv[i]).name == "torchrun":
        return "torchrun", i + 1
    if i + 1 < len(argv) and Path(argv[i]).name == "accelerate" and argv[i + 1] == "launch":
        return "accelerate launch", i + 2
    return None


def launcher(world_size: int) -> dict:
    """How this run was started: `name` (python, torchrun or accelerate launch), its `options` (as typed, when the
    launcher's own command line can be read), `num_processes`, `num_machines` and `processes_per_machine`.

    torchrun sets `TORCHELASTIC_RUN_ID`, accelerate launch sets `ACCELERATE_DYNAMO_BACKEND` (and starts torchrun's
    agent inside itself for several processes); `WORLD_SIZE` / `LOCAL_WORLD_SIZE` give processes and machines.
    """
    env = os.environ
    local = int(env.get("LOCAL_WORLD_SIZE", world_size) or world_size)
    info = {
        "name": "python",
        "options": None,
        "num_processes": world_size,
        "num_machines": max(1, world_size // max(1, local)),
        "processes_per_machine": local,
    }
    if "ACCELERATE_DYNAMO_BACKEND" in env:
        info["name"] = "accelerate launch"
    elif "TORCHELASTIC_RUN_ID" in env:
        info["name"] = "torchrun"
    if info["name"] == "python":
        return info
    parent = _parent_argv() or []
    found = _launcher_in(parent)
    script = sys.argv[0] if sys.argv else None
    if found is not None and found[0] == info["name"] and script in parent[found[1] :]:
        info["options"] = parent[found[1] : parent.index(script, found[1])]
    elif info["name"] == "torchrun":
        info["options"] = ["--nnodes", str(info["num_machines"]), "--nproc_per_node", str(local)]
    else:
        info["options"] = ["--num_processes", str(world_size), "--num_machines", str(info["num_machines"])]
    return info


def _without_token(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for a in argv:
        if skip or a.startswith("--hub_token="):
            skip = False
        elif a == "--hub_token":
            skip = True
        else:
            kept.append(a)
    return kept


def command_line(recipe: Recipe, argv: list[str], training_args) -> str:
    """The command that reproduces this run from the repository's root, as one shell line (no token in it).

    The launcher is the one that started this run (`launcher`): `python`, or torchrun / accelerate launch with
    the options they were given (processes, machines, config file), read from the launcher's own command line
    where it can be read, else rebuilt from the environment.
    """
    script = f"recipes/{recipe.name}.py"
    start = launcher(training_args.world_size)
    prefix = (
        "python" if start["name"] == "python" else f"{start['name']} {shlex.join(_without_token(start['options']))}"
    )
    return f"{prefix.strip()} {script} {shlex.join(_without_token(argv))}".strip()


def autodrop_drops(log_history: list[dict], learning_rate: float) -> list[dict]:
    """AutoDrop's drops, from its own `autodrop/*` entries in `log_history` (kept in every checkpoint).

    Each measurement logs `autodrop/num_drops` (drops so far) and `autodrop/lr_scale` (the product of
    the drop factors applied); a drop is an entry whose count went up, at that entry's step and epoch.
    """
    drops, count, scale = [], 0, 1.0
    for h in log_history:
        if "autodrop/num_drops" not in h:
            continue
        n, new_scale = int(h["autodrop/num_drops"]), float(h["autodrop/lr_scale"])
        if n > count:
            drops.append(
                {
                    "epoch": h["epoch"],
                    "step": h["step"],
                    "lr": learning_rate * new_scale,
                    "lr_before": learning_rate * scale,
                }
            )
        count, scale = n, new_scale
    return drops


def multistep_drops(
    milestone_steps: list[int], steps_per_epoch: int, global_step: int, learning_rate: float, drop_factor: float
) -> list[dict]:
    """The baseline's drops that this run reached: the scheduler's milestones up to its last step."""
    drops = []
    for k, step in enumerate(sorted(milestone_steps)):
        if step > global_step:
            break
        drops.append(
            {
                "epoch": step / steps_per_epoch,
                "step": step,
                "lr": learning_rate * drop_factor ** (k + 1),
                "lr_before": learning_rate * drop_factor**k,
            }
        )
    return drops


def summarize(
    log_history: list[dict],
    drops: list[dict],
    learning_rate: float,
    angles_measured: bool,
    measurements: list[dict] | None = None,
) -> dict:
    """Per-epoch history, final and best test error from a `Trainer`'s `log_history`, with the run's `drops`.

    `history["angle"]` holds every interval's measurement when the callback's `measurements` are given
    (they survive a resume through the checkpoint), else the rows of `log_history` that carry an angle
    (the Trainer's logging cadence).

    `history["lr"]` is the lr as a step function: `learning_rate` from epoch 0, then each drop's lr
    from its epoch on, and the last value at the last logged epoch. `history["trainer_lr"]` holds the
    `Trainer`'s own `learning_rate` logs, which read the scheduler's last lr: they show an AutoDrop
    drop only from the next optimizer step on (one logging interval late when logging per epoch).
    """
    evals = [h for h in log_history if "eval_top1_error" in h]
    losses = [h for h in log_history if "loss" in h and "epoch" in h]
    if measurements is not None:  # each record as the log row it would make (Measurement.logs())
        fields = {f.name for f in dataclasses.fields(Measurement)}
        angles = [
            {"epoch": m["epoch"], **Measurement(**{k: v for k, v in m.items() if k in fields}).logs()}
            for m in measurements
        ]
    else:
        angles = [h for h in log_history if "autodrop/angle" in h]
    trainer_lr = [{"epoch": h["epoch"], "lr": h["learning_rate"]} for h in log_history if "learning_rate" in h]
    lrs = [{"epoch": 0.0, "lr": learning_rate}] + [{"epoch": d["epoch"], "lr": d["lr"]} for d in drops]
    last_epoch = max([h["epoch"] for h in log_history if "epoch" in h] or [0.0])
    if last_epoch > lrs[-1]["epoch"]:
        lrs.append({"epoch": last_epoch, "lr": lrs[-1]["lr"]})
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
            "lr": lrs,
            "trainer_lr": trainer_lr,
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
            if angles_measured
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
