"""A Trainer run with AutoDropCallback, on one process or under torchrun (DDP, gloo, CPU).

Usage: torchrun --standalone --nproc_per_node 2 tests/scripts/trainer_run.py OUT_DIR PER_DEVICE_BATCH RESUME_STEP [resume-only]
Writes OUT_DIR/full-rank{R}.json and OUT_DIR/resumed-rank{R}.json: the AutoDrop measurements each
process saw and its final parameters, for a full run and for a run resumed from checkpoint-RESUME_STEP
(with `resume-only`, only the resumed run).
"""

import json
import os
import sys

import torch

from hf_autodrop import AutoDropCallback
from tests.helpers import MLP, make_trainer
from tests.test_distributed_trainer import CONFIG, EPOCHS


def run(out: str, batch: int, resume: int | None = None) -> dict:
    torch.manual_seed(0)
    model = MLP(batchnorm=False)  # BatchNorm would see per-process batches: not the single-process run
    callback = AutoDropCallback(**CONFIG)
    # Under torchrun the Trainer sets up DDP itself; gloo is the CPU backend.
    backend = {"ddp_backend": "gloo"} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}
    trainer = make_trainer(
        out,
        [callback],
        model=model,
        per_device_train_batch_size=batch,
        num_train_epochs=EPOCHS,
        **backend,
        save_strategy="epoch",
        restore_callback_states_from_checkpoint=True,
    )
    trainer.train(resume_from_checkpoint=os.path.join(out, f"checkpoint-{resume}") if resume else None)
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, AutoDropCallback))
    params = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    return {
        "world_size": trainer.args.world_size,
        "measurements": [
            {k: m[k] for k in ("epoch", "angle", "angle_change", "tolerance", "dropped", "phase", "lrs")}
            for m in callback.measurements
        ],
        "params": params.tolist(),
    }


def main() -> None:
    """Under torchrun: a full run, then a run resumed from checkpoint-RESUME_STEP (same processes)."""
    out, batch, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    runs = [("resumed", resume)] if sys.argv[4:] == ["resume-only"] else [("full", None), ("resumed", resume)]
    for name, start in runs:
        record = run(out, batch, start)
        with open(os.path.join(out, f"{name}-rank{rank}.json"), "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main()
