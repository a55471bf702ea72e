"""Markdown tables from the outputs of bench/gpu_*.sh: the numbers the docs' GPU sections wait for.

    python bench/gpu_tables.py cifar_epoch OUT/cifar_epoch   # recipes/README.md, "Time and cost to expect"
    python bench/gpu_tables.py distributed OUT/distributed   # docs/distributed.md (offload, cost), docs/cost.md
    python bench/gpu_tables.py table1 OUT/table1             # docs/results/README.md, "GPU"
    python bench/gpu_tables.py all OUT                       # all three and the parts' status (bench/gpu_all.sh)

Each table is read from the files the scripts leave (results.json, gpu_util.csv, the benches' --json
files, the progress logs), so a part that was cut short still shows what it finished; a missing
number is "-" and a missing part is one line saying so.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

SCHEDULES = ("multistep", "autodrop")


def _num(x, fmt: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return fmt.format(x)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _device(r: dict) -> str:
    hw = r.get("hardware", {})
    return (hw.get("gpus") or [hw.get("device", "?")])[0]


def cifar_epoch(folder: Path) -> str:
    """One epoch of the recipe: wall time of the training loop, images/s, the GPU's busy fraction."""
    path = folder / "run" / "results.json"
    if not path.exists():
        return f"(cifar_epoch: no {path}: the run failed or was cut short; see {folder}/run.log)"
    r = json.loads(path.read_text())
    t0, t1 = r["train_loop_began_at"], r["train_loop_ended_at"]
    samples = []
    util = folder / "gpu_util.csv"
    if util.exists():
        for line in util.read_text().splitlines():
            try:
                stamp, busy, mem = [s.strip() for s in line.split(",")]
                t = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()
                if t0 <= t <= t1:
                    samples.append((float(busy), float(mem)))
            except ValueError:
                continue
    n = r["num_train_examples"]
    training = r["config"]["training"]
    busy = statistics.fmean(u for u, _ in samples) / 100 if samples else None
    peak = max((m for _, m in samples), default=None)
    row = [
        _device(r),
        _num(t1 - t0, "{:.1f}"),
        _num(n / (t1 - t0), "{:,.0f}"),
        _num(busy),
        len(samples) if util.exists() else "- (no nvidia-smi)",
        _num(peak, "{:,.0f}"),
        f"{n:,}",
        r["total_batch_size"],
        training["dataloader_num_workers"],
        r["hardware"].get("mixed_precision", "-"),
        r["config"]["model"].get("channels_last"),
        _num(r.get("wall_time_s"), "{:.1f}"),
    ]
    header = [
        "device",
        "epoch wall time (s)",
        "images/s",
        "GPU busy fraction",
        "util samples",
        "peak GPU memory (MiB)",
        "train images",
        "batch",
        "workers",
        "precision",
        "channels_last",
        "whole run (s)",
    ]
    return _table(header, [row])


def distributed(folder: Path) -> str:
    """The Trainer's per-interval overhead (DDP, FSDP2, FSDP2 + offload) and the reduction / placement costs."""
    out = []
    rows = []
    order = {"ddp": 0, "fsdp2": 1, "fsdp2-offload": 2}
    for path in sorted(folder.glob("trainer-*.json"), key=lambda p: (order.get(p.stem[8:], 9), p.name)):
        r = json.loads(path.read_text())
        epochs = r["epochs"]
        ad = [e["autodrop_ms"] for e in epochs]
        ep = [e["epoch_ms"] for e in epochs]
        angles = [e["angle"] for e in epochs if e["angle"] is not None]
        rows.append(
            [
                path.stem.removeprefix("trainer-"),
                r["engine"],
                r["world_size"],
                r["device_name"],
                _num(r["parameters"] / 1e6, "{:.1f}"),
                r["offload_to_cpu"],
                _num(r["state_mib"], "{:.1f}"),
                f"{_num(statistics.median(ad))} / {_num(max(ad))}" if ad else "-",
                _num(statistics.median(ep) if ep else None, "{:.1f}"),
                _num(statistics.median([a / e for a, e in zip(ad, ep)]) * 100 if ad else None, "{:.2f}%"),
                f"{_num(angles[0], '{:.3f}')} -> {_num(angles[-1], '{:.3f}')}" if angles else "-",
                len(epochs),
            ]
        )
    header = [
        "run",
        "engine (AutoDrop's)",
        "processes",
        "device",
        "parameters (M)",
        "offload_to_cpu",
        "AutoDrop state per process (MiB)",
        "AutoDrop ms per interval (median / max)",
        "epoch ms (median)",
        "overhead (median)",
        "angle, first -> last (deg)",
        "intervals",
    ]
    out.append("Trainer + AutoDropCallback (bench/trainer_overhead.py), one interval per epoch:\n")
    out.append(_table(header, rows) if rows else f"(no trainer-*.json in {folder}: every Trainer run failed)")
    rows = []
    for path in sorted(folder.glob("cost-*.json")):
        r = json.loads(path.read_text())
        rows.append(
            [
                r["engine"],
                r["world_size"],
                r["device_name"],
                _num(r["parameters"] / 1e6, "{:.1f}"),
                r["bytes_per_interval"],
                _num(r["reduction_ms"], "{:.3f}"),
                _num(r["train_step_ms"]),
                _num(r["reduction_ms"] / r["train_step_ms"], "{:.4f}"),
                _num(r["autodrop_step_ms_on_device"]),
                _num(r["autodrop_step_ms_offload"]),
                f"{_num(r['device_mib_on_device'], '{:.0f}')} / {_num(r['device_mib_offload'], '{:.0f}')}",
            ]
        )
    header = [
        "engine (AutoDrop's)",
        "processes",
        "device",
        "parameters (M)",
        "bytes sent per interval",
        "reduction ms",
        "training step ms",
        "reduction / step",
        "AutoDrop.step() ms, snapshots on device",
        "AutoDrop.step() ms, offload_to_cpu",
        "AutoDrop's device MiB (on device / offloaded)",
    ]
    out.append("\nReduction and snapshot placement (bench/distributed_cost.py):\n")
    out.append(_table(header, rows) if rows else f"(no cost-*.json in {folder}: every cost run failed)")
    return "\n".join(out)


PROGRESS = re.compile(r"epoch ([0-9.?]+): test error ([0-9.]+)% \| epoch time ([0-9.]+) s")


def table1(folder: Path) -> str:
    """The shortened Table 1 row: both schedules' test error, epochs, time per epoch and drops."""
    rows = []
    for schedule in SCHEDULES:
        runs = sorted(folder.glob(f"{schedule}-seed*"))
        run = runs[0] if runs else folder / f"{schedule}-seed0"
        path = run / "results.json"
        if path.exists():
            r = json.loads(path.read_text())
            epochs = r.get("epochs") or 0
            per_epoch = (r.get("train_runtime_s") or r.get("wall_time_s") or 0) / max(epochs, 1)
            drops = r.get("drops", [])
            rows.append(
                [
                    schedule,
                    _num(r.get("final_test_error")),
                    _num(r.get("best_test_error")),
                    _num(r.get("best_epoch"), "{:.0f}"),
                    _num(float(epochs), "{:.0f}"),
                    _num(per_epoch, "{:.1f}"),
                    f"{len(drops)} ({', '.join(format(d['epoch'], '.1f') for d in drops) or '-'})",
                    _device(r),
                    "finished",
                ]
            )
            continue
        # Cut short or failed: what the progress log recorded, epoch by epoch.
        log = folder / f"{schedule}.progress.log"
        found = [m.groups() for m in PROGRESS.finditer(log.read_text())] if log.exists() else []
        if not found:
            rows.append([schedule, "-", "-", "-", "0", "-", "-", "-", "failed, no epoch finished"])
            continue
        errors = [float(e) for _, e, _ in found]
        times = [float(t) for _, _, t in found]
        best = min(range(len(errors)), key=errors.__getitem__)
        rows.append(
            [
                schedule,
                _num(errors[-1]),
                _num(errors[best]),
                found[best][0],
                len(found),
                # The first epoch's time includes start-up; the median of the rest is the epoch's.
                _num(statistics.median(times[1:] if len(times) > 1 else times), "{:.1f}"),
                "- (no results.json)",
                "-",
                "cut short (from the progress log)",
            ]
        )
    header = [
        "schedule",
        "final test error (%)",
        "best (%)",
        "best epoch",
        "epochs",
        "s/epoch",
        "drops (epochs)",
        "device",
        "run",
    ]
    return _table(header, rows)


PARTS = {
    "cifar_epoch": (cifar_epoch, "recipes/README.md, 'Time and cost to expect' (bench/gpu_cifar_epoch.sh)"),
    "distributed": (
        distributed,
        "docs/distributed.md, offload_to_cpu and Cost; docs/cost.md (bench/gpu_distributed.sh)",
    ),
    "table1": (table1, "docs/results/README.md, 'GPU' (bench/gpu_table1.sh)"),
}


def status_table(out: Path) -> str:
    path = out / "status.tsv"
    if not path.exists():
        return "(no status.tsv)"
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    return _table(["part", "status", "seconds", "budget (s)", "exit code"], rows)


def all_tables(out: Path) -> str:
    parts = []
    for name, (fn, where) in PARTS.items():
        folder = out / name
        body = fn(folder) if folder.exists() else f"({name}: no {folder}; the part did not run)"
        parts.append(f"### {name}: for {where}\n\n{body}\n")
    parts.append(f"### parts\n\n{status_table(out)}\n")
    return "\n".join(parts)


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] not in (*PARTS, "all"):
        raise SystemExit(f"usage: python bench/gpu_tables.py {{{','.join(PARTS)},all}} FOLDER")
    name, folder = argv[0], Path(argv[1])
    print(all_tables(folder) if name == "all" else PARTS[name][0](folder))


if __name__ == "__main__":
    main(sys.argv[1:])
