"""What AutoDrop costs on several processes: bytes sent, the reduction's time, and the snapshots' placement.

For one model under DDP or FSDP2 it prints, per process count:
  - the bytes AutoDrop sends per interval (payload of its all-reduces, counted during `AutoDrop.step()`),
  - the time of that reduction, next to the time of one training step (forward, backward, optimizer),
  - the time of one `AutoDrop.step()` with the snapshots on the parameters' device and with
    `offload_to_cpu=True` (pinned CPU memory), and the accelerator bytes AutoDrop holds either way.

CPU (spawns the processes itself, gloo):
    python bench/distributed_cost.py --engine fsdp2 --world 2
GPU (one process per GPU, NCCL):
    torchrun --standalone --nproc_per_node 1 bench/distributed_cost.py --engine fsdp2 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from hf_autodrop import AutoDrop


def make_model(width: int, depth: int) -> nn.Module:
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)]
    return nn.Sequential(*layers)


def shard(model: nn.Module, engine: str, device: torch.device) -> nn.Module:
    model = model.to(device)
    if engine == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat: int, before=None) -> float:
    """Median seconds of `fn()` over `repeat` runs (after one warm-up); `before()` runs untimed each time."""
    times = []
    for i in range(repeat + 1):
        if before is not None:
            before()
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = shard(make_model(args.width, args.depth), args.engine, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch, args.width, device=device)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        optimizer.step()

    step_time = timed(train_step, device, args.repeat)
    out = {"train_step_s": step_time}
    for offload in (False, True):
        autodrop = AutoDrop(
            model, optimizer, offload_to_cpu=offload, detector="paper", threshold=1e-9, max_threshold=1e-9
        )
        train_step()
        shards = autodrop._shards
        sent, reductions = shards.bytes_sent, shards.reductions
        autodrop.step()
        out["bytes_per_interval"] = shards.bytes_sent - sent
        out["reductions_per_interval"] = shards.reductions - reductions

        # A training step before each measurement moves the parameters, as between two real intervals.
        out[f"autodrop_step_s_offload={offload}"] = timed(autodrop.step, device, args.repeat, before=train_step)
        on_device = sum(
            f.numel() * f.element_size() for f in autodrop._snapshot.flats + autodrop._displacement.flats
        ) * (not offload)
        out[f"device_bytes_offload={offload}"] = on_device
        out["owned_elements"] = sum(t.numel() for t in autodrop._shards.tensors())
        out["engine"] = autodrop._shards.engine
    sums = torch.zeros(3, dtype=torch.float64)
    out["reduction_s"] = timed(lambda: autodrop._shards.all_reduce(sums), device, 5 * args.repeat)
    out["params"] = sum(p.numel() for p in make_model(args.width, args.depth).parameters())
    return out


def report(results: list[dict], args) -> dict:
    """Print the numbers, and return them as one dict (what `--json` writes)."""
    r = results[0]
    world = len(results)
    print(
        f"model: {args.depth} x MLP block of width {args.width}: {r['params'] / 1e6:.1f} M parameters, "
        f"{args.engine} on {world} process(es), device {args.device}, batch {args.batch} per process"
    )
    print(
        f"engine detected by AutoDrop: {r['engine']}; elements owned per process: "
        f"{[x['owned_elements'] for x in results]}"
    )
    print(
        f"bytes AutoDrop sends per interval and process: {r['bytes_per_interval']} "
        f"({r['reductions_per_interval']} all-reduce of 3 float64)"
    )
    slowest = max(x["reduction_s"] for x in results)
    step = max(x["train_step_s"] for x in results)
    print(f"reduction: {slowest * 1e3:.3f} ms | one training step: {step * 1e3:.2f} ms | ratio {slowest / step:.4f}")
    summary = {
        "engine_asked": args.engine,
        "engine": r["engine"],
        "world_size": world,
        "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "parameters": r["params"],
        "width": args.width,
        "depth": args.depth,
        "batch": args.batch,
        "owned_elements": [x["owned_elements"] for x in results],
        "bytes_per_interval": r["bytes_per_interval"],
        "reductions_per_interval": r["reductions_per_interval"],
        "reduction_ms": slowest * 1e3,
        "train_step_ms": step * 1e3,
    }
    for offload in (False, True):
        t = max(x[f"autodrop_step_s_offload={offload}"] for x in results)
        mem = r[f"device_bytes_offload={offload}"]
        print(
            f"AutoDrop.step() offload_to_cpu={offload!s:5}: {t * 1e3:8.2f} ms per interval "
            f"({t / step:.2f} training steps); AutoDrop's bytes on the parameters' device: {mem / 2**20:.1f} MiB"
        )
        key = "offload" if offload else "on_device"
        summary[f"autodrop_step_ms_{key}"] = t * 1e3
        summary[f"device_mib_{key}"] = mem / 2**20
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def worker(rank: int, world: int, init: str, args, out_dir: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.save(measure(args, torch.device("cpu")), f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["ddp", "fsdp2"], default="fsdp2")
    parser.add_argument("--world", type=int, default=2, help="processes to spawn on CPU (ignored under torchrun)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="also write the numbers to this JSON file (bench/gpu_tables.py reads it)")
    args = parser.parse_args()
    if "RANK" in os.environ:  # under torchrun
        backend = "nccl" if args.device == "cuda" else "gloo"
        dist.init_process_group(backend)
        rank = dist.get_rank()
        device = (
            torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if args.device == "cuda" else torch.device("cpu")
        )
        if device.type == "cuda":
            torch.cuda.set_device(device)
        result = measure(args, device)
        results = [None] * dist.get_world_size()
        dist.all_gather_object(results, result)
        if rank == 0:
            report(results, args)
        # Every rank waits for rank 0's report: a rank that tore its gloo group down first could leave rank 0's
        # destroy_process_group facing a closed peer ("terminate called without an active exception", SIGABRT).
        dist.barrier()
        dist.destroy_process_group()
        return
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(args.world, f"file://{tmp}/rendezvous", args, tmp), nprocs=args.world)
        report([torch.load(f"{tmp}/{r}.pt", weights_only=False) for r in range(args.world)], args)


if __name__ == "__main__":
    main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Everything is printed and written; skip the interpreter's finalization, where gloo's threads can
        # still abort a process that destroyed its group (SIGABRT, intermittent in bench/gpu_all.sh's CPU smoke).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
