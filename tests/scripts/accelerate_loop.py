"""A custom training loop with `accelerate` and `AutoDrop` used directly (no Trainer).

Usage (2 processes on CPU):
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no tests/scripts/accelerate_loop.py OUT_DIR
Each process writes OUT_DIR/loop-rank{R}.json with the measurements it saw. `train(None)` runs the same
loop on one process without accelerate, with the same global batch, for comparison.
"""

import json
import os
import sys

import torch

from hf_autodrop import AutoDrop
from tests.helpers import MLP, Digits

EPOCHS = 10
GLOBAL_BATCH = 32
# The angle change first falls below 1 degree at epoch 9 (0.14; every earlier change is above 1.7).
CONFIG = dict(detector="paper", drop_delay=1, drop_factor=0.5, threshold=1.0, max_threshold=50.0)


def train(accelerator=None) -> list[dict]:
    torch.manual_seed(0)
    model = MLP(batchnorm=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    world = accelerator.num_processes if accelerator else 1
    data = torch.utils.data.DataLoader(Digits("train", 256), batch_size=GLOBAL_BATCH // world, shuffle=False)
    if accelerator is not None:
        model, optimizer, data = accelerator.prepare(model, optimizer, data)
    # After prepare: x_0 is the wrapped model's. The 2-process run also keeps the snapshots "offloaded"
    # (behind accelerate's optimizer wrapper), which must not change what is computed.
    autodrop = AutoDrop(model, optimizer, offload_to_cpu=accelerator is not None, **CONFIG)
    measurements = []
    for _ in range(EPOCHS):
        for batch in data:
            optimizer.zero_grad()
            loss = model(**batch)["loss"]
            accelerator.backward(loss) if accelerator else loss.backward()
            optimizer.step()
        m = autodrop.step()
        measurements.append({"angle": m.angle, "dropped": m.dropped, "phase": m.phase, "lrs": list(m.lrs)})
    return measurements


def main() -> None:
    from accelerate import Accelerator

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    measurements = train(accelerator)
    with open(os.path.join(sys.argv[1], f"loop-rank{accelerator.process_index}.json"), "w") as f:
        json.dump({"world_size": accelerator.num_processes, "measurements": measurements}, f)


if __name__ == "__main__":
    main()
