"""AutoDrop under real DeepSpeed ZeRO-3 on 2 CPU processes (gloo), against the unsharded computation.

Needs `deepspeed` (CPU accelerator). Both processes train on the same batches, so ZeRO-3's averaged
gradients equal the unsharded twin's: AutoDrop must read the fp32 master partitions without their padding
(angles within 1e-6 degrees, the same decisions), and at a drop write the average into the masters and
into `ds_tensor`, including small persistent parameters that stay gathered (the forward pass afterwards
equals the twin's).
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import socket
import traceback

import pytest
import torch

from hf_autodrop import AutoDrop

from ._distributed import Net, batches, run_once, spawn

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install --no-build-isolation deepspeed)")

CONFIG = dict(detector="paper", drop_delay=1, threshold=180.0, max_threshold=180.0)  # drops at intervals 4 and 8
INTERVALS, STEPS = 8, 2
PERSISTENCE = {"partitioned": 0, "persistent": 10**5}  # stage3_param_persistence_threshold


def _run(persistence: int, rank: int) -> dict:
    import deepspeed

    torch.manual_seed(0)
    reference = Net()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    ref_drop = AutoDrop(reference, ref_opt, **CONFIG)
    config = {
        "train_micro_batch_size_per_gpu": 16,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": persistence},
        "zero_allow_untested_optimizer": True,
    }
    model = copy.deepcopy(reference)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    autodrop = AutoDrop(engine, optimizer, **CONFIG)
    valid = [t.numel() for t in autodrop._shards.tensors()]
    padded = [p.ds_tensor.numel() for p in engine.module.parameters() if p.requires_grad]
    probe = torch.randn(4, 7, generator=torch.Generator().manual_seed(5))
    data = iter(batches(INTERVALS * STEPS))
    out = {"engine": autodrop._shards.engine, "valid": valid, "padded": padded, "angles": [], "drops": []}
    for interval in range(1, INTERVALS + 1):
        for _ in range(STEPS):
            x, y = next(data)
            loss = torch.nn.functional.mse_loss(engine(x), y)
            engine.backward(loss)
            engine.step()
            ref_opt.zero_grad()
            torch.nn.functional.mse_loss(reference(x), y).backward()
            ref_opt.step()
        m, r = autodrop.step(), ref_drop.step()
        out["angles"].append((m.angle, r.angle))
        out["drops"].append((m.dropped, r.dropped, m.lrs, r.lrs))
        with torch.no_grad():
            engine.eval()
            reference.eval()
            diff = (engine(probe) - reference(probe)).abs().max().item()
            engine.train()
            reference.train()
        assert diff <= 1e-5, f"forward after interval {interval} differs from the unsharded twin by {diff}"
        if m.dropped:
            with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
                for mine, theirs in zip(engine.module.parameters(), reference.parameters()):
                    d = (mine.detach() - theirs.detach()).abs().max().item()
                    assert d <= 1e-6, f"parameters differ by {d} after the drop at interval {interval}"
    return out


def _worker(rank: int, world: int, init: str, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        DS_ACCELERATOR="cpu",
    )
    torch.set_num_threads(1)
    import deepspeed
    import deepspeed.ops

    # The CPU accelerator would compile a shared-memory all-reduce op (minutes, once); gloo is enough here.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=120))
    results = {}
    for name, persistence in PERSISTENCE.items():
        try:
            results[name] = _run(persistence, rank)
        except Exception:  # noqa: BLE001 - reported by the test
            results[name] = {"error": traceback.format_exc()}
    torch.save(results, f"{out_dir}/rank{rank}.pt")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    def produce(folder):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        spawn(_worker, folder, port, str(folder))

    tmp = run_once(tmp_path_factory, "zero3", produce)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("params", list(PERSISTENCE))
def test_zero3_angles_decisions_and_written_average_equal_the_unsharded_run(results, params):
    for rank in range(2):
        res = results[rank][params]
        assert "error" not in res, res.get("error")
        assert res["engine"] == "DeepSpeed ZeRO-3"
        for mine, theirs in res["angles"]:
            assert (math.isnan(mine) and math.isnan(theirs)) or abs(mine - theirs) <= 1e-6
        assert [d[0] for d in res["drops"]] == [d[1] for d in res["drops"]]
        assert sum(d[0] for d in res["drops"]) == 2
        assert all(d[2] == pytest.approx(d[3]) for d in res["drops"])
    # The partitions are ceil(numel / 2) long; AutoDrop reads only the valid part, and every element once.
    padded, valid = results[0][params]["padded"], [r[params]["valid"] for r in results]
    assert [a + b for a, b in zip(*valid)] == [3, 28, 4, 12, 3]  # scale, a.weight, a.bias, b.weight, c.weight
    assert any(v < p for v, p in zip(valid[1], padded)), "the test model must have padded partitions"
    assert results[0][params]["angles"] == results[1][params]["angles"] or all(
        math.isnan(a) and math.isnan(b) or a == b
        for (a, _), (b, _) in zip(results[0][params]["angles"], results[1][params]["angles"])
    )
