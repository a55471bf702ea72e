"""The plain Trainer one-liner under FSDP2 or DeepSpeed ZeRO-2/ZeRO-3, chosen by TrainingArguments (gloo, CPU).

Usage: torchrun --standalone --nproc_per_node 2 tests/scripts/trainer_engines_run.py OUT_DIR RESUME_STEP ENGINE...
ENGINE is fsdp2, zero2 or zero3 (`single`, the plain Trainer, runs in one process, from the test). For each
engine, writes OUT_DIR/ENGINE/{full,resumed}-rank{R}.json: the wrapper the Trainer built, the AutoDrop
measurements each process saw, the lr history and the final parameters (gathered), for a full run and
(unless RESUME_STEP is 0) for a run resumed from checkpoint-RESUME_STEP of the full one. The global batch
is 32 whatever the number of processes (per-device batch 32 / WORLD_SIZE).

On a CPU-only machine accelerate needs two nudges that a GPU run does not (see `cpu_engine`); the Trainer,
its arguments and the callback are the user's one-liner.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import torch

from hf_autodrop import AutoDropCallback
from tests.helpers import MLP, Digits, training_args

EPOCHS = 8
STEPS_PER_EPOCH = 8  # 256 examples / global batch 32
RESUME_EPOCH = 3  # inside the averaging window: the drop at epoch 4 comes after the resume
# The paper's test on a real angle change: it first falls below 0.5 degrees at epoch 3 (0.29, a margin far
# above the runs' differences), so AutoDrop averages during epoch 4 and drops there.
CONFIG = dict(detector="paper", drop_delay=1, drop_factor=0.5, threshold=0.5, max_threshold=50.0)


def zero(stage: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,  # the Trainer's torch SGD
    }


# What a user writes in TrainingArguments for each engine (besides the common arguments of the tests).
ENGINES = {
    "single": {},
    "fsdp2": {"fsdp": "full_shard", "fsdp_config": {"version": 2}},
    "zero2": {"deepspeed": zero(2)},
    "zero3": {"deepspeed": zero(3)},
}


class MLP64(MLP):
    """The tests' MLP in float64 (the digits arrive as float32): the runs then differ by summation order only."""

    def __init__(self):
        super().__init__(batchnorm=False)  # BatchNorm would see per-process batches: not the single-process run
        self.double()

    def forward(self, x, labels=None):
        return super().forward(x.double(), labels)


@contextlib.contextmanager
def cpu_engine(engine: str):
    """Let accelerate 1.16 build the engine the TrainingArguments ask for on a CPU-only machine (gloo).

    - FSDP: `AcceleratorState.__init__` (accelerate/state.py) sets `distributed_type = FSDP` and keeps the
      plugin only inside `elif self.distributed_type in [MULTI_GPU, MULTI_MLU, ..., MULTI_NEURON]`; the
      gloo state `TrainingArguments(use_cpu=True)` builds is MULTI_CPU, so the plugin is dropped and the
      Trainer silently trains with DDP. Presenting the (already initialised, CPU) process group as
      MULTI_GPU for that one decision keeps the plugin; the state becomes FSDP right away and the rest is
      accelerate's FSDP2 path (`fully_shard` on a CPU mesh).
    - DeepSpeed: `use_cpu=True` turns DeepSpeed off (TrainingArguments._setup_devices checks `use_cpu` before
      `deepspeed`, and PartialState only starts DeepSpeed when `not cpu`), and without it PartialState
      (`_prepare_backend`) finds no accelerator, hence no backend, and sets `num_processes = 1` on every
      process: each would train on the whole dataset. A PartialState built with `backend="gloo"` under
      `ACCELERATE_USE_DEEPSPEED=true`, reused through `accelerator_config={"use_configured_state": True}`,
      has the real world size.
    Yields the extra TrainingArguments.
    """
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)  # a fresh state per Trainer, as TrainingArguments does
    if engine.startswith("zero"):
        previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        try:
            PartialState(backend="gloo")
            yield {"use_cpu": False, "accelerator_config": {"use_configured_state": True}}
        finally:
            if previous is None:
                os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
            else:
                os.environ["ACCELERATE_USE_DEEPSPEED"] = previous
    else:
        yield {"ddp_backend": "gloo"} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}


def build(engine: str, out: str, batch: int, callbacks: list):
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType
    from transformers import Trainer

    with cpu_engine(engine) as extra:
        args = training_args(
            out,
            per_device_train_batch_size=batch,
            num_train_epochs=EPOCHS,
            optim_args="momentum=0.9",  # stateful: FSDP2's full optimizer state dict cannot load an empty one
            save_strategy="epoch",
            restore_callback_states_from_checkpoint=True,
            **extra,
            **ENGINES[engine],
        )
        if engine == "fsdp2":
            assert args.distributed_state.distributed_type == DistributedType.MULTI_CPU
            PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU  # see cpu_engine
        torch.manual_seed(0)
        return Trainer(
            model=MLP64(),
            args=args,
            train_dataset=Digits("train", 256),
            eval_dataset=Digits("test", 128),
            callbacks=callbacks,
        )


def wrapper(trainer) -> dict:
    """What the Trainer really built: the test fails if an engine fell back to DDP or to one process."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    info = {
        "world_size": trainer.args.world_size,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "wrapped": type(trainer.model_wrapped).__name__,
        "fsdp_modules": sum(isinstance(m, FSDPModule) for m in trainer.model.modules()),
        "dtensor_params": sum(isinstance(p, DTensor) for p in trainer.model.parameters()),
        "local_elements": sum(
            (p.to_local() if isinstance(p, DTensor) else p).numel() for p in trainer.model.parameters()
        ),
    }
    if trainer.is_deepspeed_enabled:
        engine = trainer.model_wrapped
        info["zero_stage"] = engine.zero_optimization_stage()
        info["optimizer"] = type(engine.optimizer).__name__
        info["dp_world_size"] = engine.dp_world_size
        info["local_elements"] = sum(
            p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in trainer.model.parameters()
        )
    return info


def full_parameters(trainer) -> list[float]:
    """Every parameter, whole, in the model's order (gathered from the shards)."""
    params = list(trainer.model.parameters())
    if trainer.is_deepspeed_enabled and hasattr(params[0], "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return torch.cat([p.detach().reshape(-1).clone() for p in params]).tolist()
    if trainer.is_fsdp_enabled:
        return torch.cat([p.full_tensor().detach().reshape(-1) for p in params]).tolist()
    return torch.cat([p.detach().reshape(-1) for p in params]).tolist()


def run(engine: str, out: str, batch: int, resume: int | None = None) -> dict:
    trainer = build(engine, out, batch, [AutoDropCallback(**CONFIG)])
    trainer.train(resume_from_checkpoint=os.path.join(out, f"checkpoint-{resume}") if resume else None)
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, AutoDropCallback))
    return {
        **wrapper(trainer),
        "autodrop_engine": callback.autodrop._shards.engine,
        "measurements": [
            {k: m[k] for k in ("epoch", "angle", "angle_change", "tolerance", "dropped", "phase", "lrs")}
            for m in callback.measurements
        ],
        "lr_history": [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h],
        "params": full_parameters(trainer),
    }


def main() -> None:
    out, resume, engines = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    if any(e.startswith("zero") for e in engines):
        import deepspeed.ops

        # The CPU accelerator would compile a shared-memory all-reduce op (minutes, once); gloo is enough here.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    for engine in engines:
        folder = os.path.join(out, engine)
        os.makedirs(folder, exist_ok=True)
        for name, start in [("full", None), ("resumed", resume)][: 2 if resume else 1]:
            record = run(engine, folder, 32 // int(os.environ.get("WORLD_SIZE", "1")), start)
            with open(os.path.join(folder, f"{name}-rank{rank}.json"), "w") as f:
                json.dump(record, f)


if __name__ == "__main__":
    main()
