"""The Trainer with AutoDropCallback under DDP or FSDP2: the angle and AutoDrop's overhead at every interval.

Prints one line per interval (epoch): the angle, the time AutoDrop took at the interval boundary, the
time of the interval's training, and their ratio. Synthetic data, a stack of MLP blocks (`--width`,
`--depth`), SGD with momentum, a constant learning rate.

GPU (one process per GPU; NCCL):
    torchrun --standalone --nproc_per_node 1 bench/trainer_overhead.py --engine fsdp2
CPU (gloo), e.g. to check the script itself:
    torchrun --standalone --nproc_per_node 2 bench/trainer_overhead.py --engine fsdp2 --cpu --width 64 --depth 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn


class Blocks(nn.Module):
    def __init__(self, width: int, depth: int, classes: int = 10):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
            for _ in range(depth)
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x, labels=None):
        for block in self.blocks:
            x = x + block(x)
        logits = self.head(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Synthetic(torch.utils.data.Dataset):
    def __init__(self, n: int, width: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, width, generator=g)
        self.y = (self.x[:, :10] + 0.5 * torch.randn(n, 10, generator=g)).argmax(-1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["ddp", "fsdp2"], default="ddp")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--offload-to-cpu", action="store_true")
    parser.add_argument("--output-dir", default="/tmp/autodrop_trainer_overhead")
    parser.add_argument("--json", help="also write the run's numbers to this JSON file (bench/gpu_tables.py reads it)")
    args = parser.parse_args()

    from transformers import Trainer, TrainerCallback, TrainingArguments

    from hf_autodrop import AutoDropCallback

    torch.manual_seed(0)
    model = Blocks(args.width, args.depth)
    extra = {}
    if args.engine == "fsdp2":
        extra = dict(fsdp=True, fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["Sequential"]})
    if args.cpu:
        extra.update(use_cpu=True, ddp_backend="gloo")
    training = TrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        optim="sgd",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        **extra,
    )
    autodrop = AutoDropCallback(detector="paper", threshold=0.05, drop_delay=2, offload_to_cpu=args.offload_to_cpu)
    device_sync = (lambda: None) if args.cpu or not torch.cuda.is_available() else torch.cuda.synchronize
    timings: list[dict] = []
    measure = autodrop._measure

    def timed_measure(*a, **k):
        device_sync()
        start = time.perf_counter()
        measure(*a, **k)
        device_sync()
        timings[-1]["autodrop_s"] = time.perf_counter() - start

    autodrop._measure = timed_measure

    class EpochClock(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            device_sync()
            timings.append({"start": time.perf_counter()})

        def on_epoch_end(self, args, state, control, **kwargs):
            device_sync()
            timings[-1]["train_s"] = time.perf_counter() - timings[-1]["start"]

    # EpochClock's on_epoch_end runs before AutoDrop's: the epoch's time excludes AutoDrop's.
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=Synthetic(args.samples, args.width),
        callbacks=[EpochClock(), autodrop],
    )
    trainer.train()
    cb = next(c for c in trainer.callback_handler.callbacks if isinstance(c, AutoDropCallback))
    if trainer.args.process_index == 0:
        params = sum(p.numel() for p in Blocks(args.width, args.depth).parameters())
        print(
            f"engine {cb.autodrop._shards.engine} (--engine {args.engine}), {trainer.args.world_size} process(es), "
            f"device {trainer.args.device}, {params / 1e6:.1f} M parameters, offload_to_cpu={args.offload_to_cpu}, "
            f"AutoDrop state on this process: {cb.autodrop.state_nbytes() / 2**20:.1f} MiB"
        )
        print(f"{'epoch':>5} {'angle (deg)':>12} {'phase':>9} {'AutoDrop ms':>12} {'epoch ms':>10} {'overhead':>9}")
        rows = []
        for m, t in zip(cb.measurements, timings):
            print(
                f"{m['epoch']:5.0f} {m['angle']:12.5f} {m['phase']:>9} {t['autodrop_s'] * 1e3:12.2f} "
                f"{t['train_s'] * 1e3:10.1f} {t['autodrop_s'] / t['train_s']:9.2%}"
            )
            angle = float(m["angle"])
            rows.append(
                {
                    "epoch": float(m["epoch"]),
                    "angle": angle if math.isfinite(angle) else None,
                    "phase": str(m["phase"]),
                    "autodrop_ms": t["autodrop_s"] * 1e3,
                    "epoch_ms": t["train_s"] * 1e3,
                }
            )
        if args.json:
            summary = {
                "engine_asked": args.engine,
                "engine": str(cb.autodrop._shards.engine),
                "world_size": trainer.args.world_size,
                "device": str(trainer.args.device),
                "device_name": torch.cuda.get_device_name(0) if trainer.args.device.type == "cuda" else "cpu",
                "parameters": params,
                "offload_to_cpu": args.offload_to_cpu,
                "state_mib": cb.autodrop.state_nbytes() / 2**20,
                "width": args.width,
                "depth": args.depth,
                "batch": args.batch,
                "samples": args.samples,
                "epochs": rows,
            }
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        # Destroyed here, not left to the interpreter's exit: gloo's worker threads still holding work then
        # abort the process ("terminate called without an active exception", SIGABRT; seen in the CPU smoke
        # of bench/gpu_all.sh, and pytorch/pytorch#179291 describes the same at interpreter finalization).
        torch.distributed.destroy_process_group()
    os.environ.pop("ACCELERATE_USE_FSDP", None)


if __name__ == "__main__":
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Everything is printed and written; skip the interpreter's finalization, where gloo's threads can
        # still abort a process that destroyed its group (SIGABRT, intermittent in bench/gpu_all.sh's CPU smoke).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
