"""Shared pieces of the multi-process tests: launching 2 real processes (gloo, CPU) and a small model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run_once(tmp_path_factory, name: str, produce) -> Path:
    """`produce(folder)` once per test session, even when pytest-xdist runs the tests of a module in
    several workers (each would otherwise run a module-scoped fixture, i.e. launch its processes again)."""
    from filelock import FileLock

    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    root = tmp_path_factory.getbasetemp().parent if shared else tmp_path_factory.getbasetemp()
    folder = root / f"once-{name}"
    with FileLock(str(root / f"once-{name}.lock")):
        if not (folder / "done").exists():
            folder.mkdir(exist_ok=True)
            produce(folder)
            (folder / "done").touch()
    return folder


def spawn(fn, tmp_path: Path, *args, nprocs: int = 2) -> None:
    """Run `fn(rank, world_size, init_method, *args)` in `nprocs` fresh processes (file:// rendezvous)."""
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(fn, args=(nprocs, init, *args), nprocs=nprocs, join=True)


def launch(argv: list[str], timeout: int = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a launcher (torchrun, accelerate launch) with this checkout importable; fail with its output.

    `env`: extra environment variables (e.g. DS_ACCELERATOR=cpu)."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


class Net(nn.Module):
    """Shapes chosen to exercise the sharding edge cases on 2 processes.

    51 elements (odd: FSDP1 pads its FlatParameter), parameters of odd sizes (ZeRO-3 pads their last
    partition), a (1, 3) parameter whose FSDP2 shard is empty on rank 1, and (with `frozen`) a frozen
    bias that must be ignored (50 trainable elements).
    """

    def __init__(self, frozen: bool = True):
        super().__init__()
        self.a = nn.Linear(7, 4)
        self.b = nn.Linear(4, 3, bias=False)
        self.scale = nn.Parameter(torch.ones(1, 3))
        self.c = nn.Linear(3, 1)
        self.c.bias.requires_grad_(not frozen)

    def forward(self, x):
        return self.c(self.b(torch.tanh(self.a(x))) * self.scale).sum(-1)


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        yield torch.randn(16, 7, generator=g), torch.randn(16, generator=g)
