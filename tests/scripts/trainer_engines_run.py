"""The plain Trainer one-liner under FSDP2 or DeepSpeed ZeRO-2/ZeRO-3, from TrainingArguments alone (gloo, CPU).

Usage: torchrun --standalone --nproc_per_node 2 tests/scripts/trainer_engines_run.py ENGINE OUT_DIR PER_DEVICE_BATCH RESUME_STEP
ENGINE is fsdp2, zero2 or zero3 (or single, in one process). Writes OUT_DIR/{full,resumed}-rank{R}.json: the
AutoDrop measurements each process saw and the final parameters (gathered), for a full run and for a run
resumed from checkpoint-RESUME_STEP.
"""

import json
import os
import sys

import torch

from hf_autodrop import AutoDropCallback
from tests.helpers import MLP, make_trainer

EPOCHS = 6
# Drops at the first check after each reset (threshold 180 degrees), so the drops land at fixed epochs and
# the comparison is about the angles and what the drop writes into the sharded parameters.
CONFIG = dict(detector="paper", drop_delay=1, drop_factor=0.5, threshold=180.0, max_threshold=180.0)


def zero(stage: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
    }


ENGINES = {
    "single": {},
    "fsdp2": {"fsdp": "full_shard", "fsdp_config": {"version": 2}},
    "zero2": {"deepspeed": zero(2)},
    "zero3": {"deepspeed": zero(3)},
}


class MLP64(MLP):
    """The tests' MLP in float64 (the images arrive as float32)."""

    def __init__(self):
        super().__init__(batchnorm=False)  # BatchNorm would see per-process batches: not the single-process run
        self.double()

    def forward(self, x, labels=None):
        return super().forward(x.double(), labels)


def full_parameters(trainer) -> list[float]:
    """Every parameter, whole, in the model's order (gathered from the shards)."""
    if trainer.is_deepspeed_enabled:
        import deepspeed

        params = list(trainer.model.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return torch.cat([p.detach().reshape(-1).clone() for p in params]).tolist()
    if trainer.is_fsdp_enabled:
        return torch.cat([p.full_tensor().detach().reshape(-1) for p in trainer.model.parameters()]).tolist()
    return torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()]).tolist()


def run(engine: str, out: str, batch: int, resume: int | None = None) -> dict:
    torch.manual_seed(0)
    model = MLP64()  # float64: what differs between the runs is the summation order only
    callback = AutoDropCallback(**CONFIG)
    extra = {"ddp_backend": "gloo"} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}
    trainer = make_trainer(
        out,
        [callback],
        model=model,
        per_device_train_batch_size=batch,
        num_train_epochs=EPOCHS,
        save_strategy="epoch",
        restore_callback_states_from_checkpoint=True,
        **extra,
        **ENGINES[engine],
    )
    trainer.train(resume_from_checkpoint=os.path.join(out, f"checkpoint-{resume}") if resume else None)
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, AutoDropCallback))
    return {
        "world_size": trainer.args.world_size,
        "measurements": [
            {k: m[k] for k in ("epoch", "angle", "angle_change", "tolerance", "dropped", "phase", "lrs")}
            for m in callback.measurements
        ],
        "params": full_parameters(trainer),
    }


def main() -> None:
    engine, out, batch, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    for name, start in [("full", None), ("resumed", resume)]:
        record = run(engine, out, batch, start)
        with open(os.path.join(out, f"{name}-rank{rank}.json"), "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main()
