"""AutoDrop on 2 real processes (gloo, CPU) under each engine, against the unsharded computation.

One spawn runs every engine in turn (a spawn costs seconds); each engine trains a sharded model and an
unsharded twin on the same batches, so the averaged gradients, hence the trajectories, are identical.
AutoDrop on the sharded model must then measure the same angles (1e-6 degrees), take the same decisions
at the same intervals, write the same averaged parameters (1e-6), send at most one all-reduce of three
float64 numbers per interval (none under DDP), keep state proportional to its shard, and resume exactly
from its per-rank state.
"""

from __future__ import annotations

import copy
import datetime
import math
import traceback

import pytest
import torch
import torch.distributed as dist

from hf_autodrop import AutoDrop

from ._distributed import Net, batches, run_once, spawn

ENGINES = ["ddp", "fsdp1", "fsdp1_flat", "fsdp1_hybrid", "fsdp2", "fsdp2_bf16", "hsdp", "zero3_simulated"]
CONFIG = dict(
    detector="paper", drop_delay=1, threshold=180.0, max_threshold=180.0
)  # triggers at intervals 3 and 7, drops at 4 and 8
INTERVALS, STEPS = 10, 3
# FSDP1 turns a hybrid shard whose shard groups have one process into NO_SHARD with its own gradient
# scaling, and bf16 compute changes the gradients, so these trajectories are not the fp32 unsharded one:
# the twin copies the sharded model's fp32 parameters instead of training.
MIRRORED = {"fsdp1_hybrid", "fsdp2_bf16"}
SAVE_AT = 3  # inside the averaging window


# ---------------------------------------------------------------------------------------------- engines
def _shard(engine: str, model: torch.nn.Module, rank: int, world: int):
    """The sharded model, and a function returning its full parameters (in `Net.parameters()` order)."""
    if engine == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model)
        return ddp, lambda: [p.detach().clone() for p in ddp.module.parameters()]
    if engine.startswith("fsdp1"):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import ShardingStrategy

        if engine == "fsdp1_hybrid":  # HSDP: 2 replicas of a 1-way shard
            mesh = init_device_mesh("cpu", (world, 1))
            fsdp = FSDP(
                model,
                device_id=torch.device("cpu"),
                sharding_strategy=ShardingStrategy.HYBRID_SHARD,
                device_mesh=mesh,
                use_orig_params=True,
            )
        elif engine == "fsdp1_flat":  # SHARD_GRAD_OP keeps the gathered copy after a forward
            fsdp = FSDP(
                model,
                device_id=torch.device("cpu"),
                sharding_strategy=ShardingStrategy.SHARD_GRAD_OP,
                use_orig_params=False,
            )
        else:
            fsdp = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True)

        def full():
            with FSDP.summon_full_params(fsdp):
                return [p.detach().clone() for p in fsdp.module.parameters()]

        return fsdp, full
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if engine == "fsdp2":
        fully_shard(model.a)  # nested units, like a transformer's layers
        fully_shard(model, reshard_after_forward=False)  # the root stays gathered after a forward
    elif engine == "fsdp2_bf16":  # bf16 compute; AutoDrop must read the fp32 sharded parameters
        from torch.distributed.fsdp import MixedPrecisionPolicy

        fully_shard(model, mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))
    else:  # HSDP: 2 replicas of a 1-way shard; only the replica at coordinate 0 may count
        mesh = init_device_mesh("cpu", (world, 1), mesh_dim_names=("replicate", "shard"))
        fully_shard(model, mesh=mesh)

    def full():
        for module in model.modules():  # after a forward the root may still hold gathered parameters
            if isinstance(module, FSDPModule):
                module.reshard()
        return [p.full_tensor().detach().clone() for p in model.parameters()]

    return model, full


class _SimulatedZero3:
    """ZeRO-3's partition layout without DeepSpeed: every parameter is split into `ceil(numel / W)`
    elements per rank, the last partition padded with garbage (DeepSpeed leaves it uninitialised and
    weight decay moves it); the fp32 masters and `ds_tensor` (bf16 here) mirror a full-size model."""

    def __init__(self, full_model: torch.nn.Module, rank: int, world: int):
        self.full = full_model
        self.params = []
        self.masters = {}
        group = dist.group.WORLD
        for i, p in enumerate(full_model.parameters()):
            part = math.ceil(p.numel() / world)
            fake = torch.nn.Parameter(torch.empty(0), requires_grad=p.requires_grad)
            fake.ds_id, fake.ds_numel, fake.ds_process_group = i, p.numel(), group
            fake.ds_status = type("Status", (), {"name": "NOT_AVAILABLE"})()
            fake.ds_tensor = torch.full((part,), 7e5, dtype=torch.bfloat16)
            fake.ds_tensor.ds_numel = part
            self.masters[i] = torch.full((part,), 9e5)
            fake.start, fake.valid = rank * part, max(0, min(p.numel() - rank * part, part))
            self.params.append(fake)

    def pull(self):
        """The engine's step: new full values into the valid part of each partition, new garbage in the tail."""
        for fake, p in zip(self.params, self.full.parameters()):
            master = self.masters[fake.ds_id]
            master.normal_(mean=3e5)
            master[: fake.valid] = p.detach().reshape(-1)[fake.start : fake.start + fake.valid]
            fake.ds_tensor.copy_(master)

    def full_params(self, world: int):
        """Gather the valid parts of the masters (checks the ds_tensor copies on the way)."""
        out = []
        for fake, p in zip(self.params, self.full.parameters()):
            master = self.masters[fake.ds_id]
            assert torch.equal(fake.ds_tensor[: fake.valid], master[: fake.valid].to(torch.bfloat16))
            gathered = [torch.empty_like(master) for _ in range(world)]
            dist.all_gather(gathered, master.contiguous())
            out.append(torch.cat(gathered)[: p.numel()].view_as(p))
        return out


class _CountReductions:
    """Counts the all-reduces (and their bytes) that happen inside AutoDrop.step()."""

    def __init__(self):
        self.calls, self.bytes = 0, 0

    def __enter__(self):
        self._orig = dist.all_reduce

        def counting(tensor, *args, **kwargs):
            self.calls += 1
            self.bytes += tensor.numel() * tensor.element_size()
            return self._orig(tensor, *args, **kwargs)

        dist.all_reduce = counting
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self._orig


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


def _run(engine: str, rank: int, world: int) -> dict:
    from hf_autodrop import distributed as hd

    torch.manual_seed(0)
    reference = Net(frozen=engine != "fsdp1_flat")
    model = copy.deepcopy(reference)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    ref_drop = AutoDrop(reference, ref_opt, **CONFIG)

    simulated = None
    if engine == "zero3_simulated":
        simulated = _SimulatedZero3(model, rank, world)
        hd._Zero3._get_master = staticmethod(lambda p: simulated.masters[p.ds_id])
        hd._Zero3._set_master = staticmethod(lambda p, v: simulated.masters[p.ds_id].copy_(v))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # drives the full model
        full_params = lambda: simulated.full_params(world)  # noqa: E731
        simulated.pull()
        autodrop = AutoDrop(simulated.params, opt, **CONFIG)
        wrapped = model
    else:
        wrapped, full_params = _shard(engine, model, rank, world)
        opt = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9)
        autodrop = AutoDrop(wrapped, opt, **CONFIG)

    data = iter(batches(INTERVALS * STEPS))
    measured, reductions, saved = [], [], None
    for interval in range(1, INTERVALS + 1):
        for _ in range(STEPS):
            x, y = next(data)
            for net, o in ((wrapped, opt), (reference, ref_opt))[: 1 if engine in MIRRORED else 2]:
                o.zero_grad()
                torch.nn.functional.mse_loss(net(x), y).backward()
                o.step()
        if simulated is not None:
            simulated.pull()
        if engine in MIRRORED:
            with torch.no_grad():
                torch._foreach_copy_(list(reference.parameters()), full_params())
        _same_forward(wrapped, reference, engine, "before", interval)  # an evaluation: engines may keep gathered copies
        with _CountReductions() as count:
            m = autodrop.step()
        _after_step(m, model, simulated, world)
        r = ref_drop.step()
        _same_forward(wrapped, reference, engine, "after", interval)  # the forward uses what AutoDrop wrote
        reductions.append((count.calls, count.bytes))
        measured.append((m.angle, r.angle, m.dropped, r.dropped, m.phase, r.phase, m.lrs, r.lrs))
        if m.dropped or interval == INTERVALS:
            for mine, theirs in zip(full_params(), reference.parameters()):
                diff = (mine - theirs.detach()).abs().max().item()
                assert diff <= 1e-6, f"{engine}: parameters differ by {diff} after interval {interval}"
        if interval == SAVE_AT:
            saved = _save(engine, wrapped, opt, autodrop, simulated)
        if interval == SAVE_AT + 4:
            resumed = _resume(wrapped, opt, saved, simulated, world, [m[0] for m in measured[SAVE_AT:]])
    for interval, (angle, ref_angle, dropped, ref_dropped, phase, ref_phase, lrs, ref_lrs) in enumerate(measured, 1):
        assert _close(angle, ref_angle), f"{engine}: angle {angle} vs unsharded {ref_angle} at interval {interval}"
        assert (dropped, phase) == (ref_dropped, ref_phase), f"{engine}: decisions differ at interval {interval}"
        assert lrs == pytest.approx(ref_lrs, rel=1e-12)
    assert sum(m[2] for m in measured) == 2
    return {
        "engine": autodrop._shards.engine,
        "angles": [m[0] for m in measured],
        "reductions": reductions,
        "state_bytes": autodrop.state_nbytes(),
        "ref_state_bytes": ref_drop.state_nbytes(),
        "shard_numel": sum(t.numel() for t in autodrop._shards.tensors()),
        "counted": list(autodrop._shards.counted),
        "dtypes": sorted({str(t.dtype) for t in autodrop._shards.tensors()}),
        "resumed": resumed,
        "saved_state": saved["autodrop"] if rank == 0 else None,
    }


def _save(engine, model, opt, autodrop, simulated) -> dict:
    """What a checkpoint holds on this rank: the local shards, the optimizer state and AutoDrop's state."""
    return {
        "params": [t.clone() for t in autodrop._shards.tensors()],
        "opt": _detached(opt.state_dict()),
        "autodrop": _detached(autodrop.state_dict()),
        "model": _detached(model.state_dict()) if simulated is not None else None,
    }


def _detached(obj):
    """A deep copy in which every tensor is a detached clone (as torch.save/torch.load would give)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _detached(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detached(v) for v in obj)
    return copy.deepcopy(obj)


PROBE = torch.randn(5, 7, generator=torch.Generator().manual_seed(9))


def _same_forward(model, reference, engine, when, interval) -> None:
    with torch.no_grad():
        diff = (model(PROBE).float() - reference(PROBE)).abs().max().item()
    assert diff <= (3e-2 if engine == "fsdp2_bf16" else 1e-5), (
        f"{engine}: forward {when} AutoDrop's step at interval {interval} differs by {diff}"
    )


def _after_step(m, model, simulated, world) -> None:
    """Simulated ZeRO-3: after a drop, the engine's next forward gathers what AutoDrop wrote."""
    if simulated is not None and m.dropped:
        for p, full in zip(model.parameters(), simulated.full_params(world)):
            p.data.copy_(full)


def _resume(model, opt, saved, simulated, world, expected) -> bool:
    """Rewind to the saved interval, resume a fresh AutoDrop from the per-rank state, replay: same angles."""
    if simulated is not None:
        model.load_state_dict(saved["model"])
        simulated.pull()
        autodrop = AutoDrop(simulated.params, opt, **CONFIG)
    else:
        autodrop = AutoDrop(model, opt, **CONFIG)
        with torch.no_grad():
            tensors = autodrop._shards.tensors()
            torch._foreach_copy_(tensors, saved["params"])
            autodrop._shards.commit(tensors)
    opt.load_state_dict(saved["opt"])
    autodrop.load_state_dict(saved["autodrop"])
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.1)
    data = iter(batches(INTERVALS * STEPS))
    for _ in range(SAVE_AT * STEPS):
        next(data)
    for angle in expected:
        for _ in range(STEPS):
            x, y = next(data)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        if simulated is not None:
            simulated.pull()
        m = autodrop.step()
        _after_step(m, model, simulated, world)
        if not _close(m.angle, angle, 1e-9):
            return False
    return True


def _worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    results = {}
    for engine in ENGINES:
        try:
            results[engine] = _run(engine, rank, world)
        except Exception:  # noqa: BLE001 - reported by the test for this engine
            results[engine] = {"error": traceback.format_exc()}
        dist.barrier()
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = run_once(tmp_path_factory, "engines", lambda folder: spawn(_worker, folder, str(folder)))
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("engine", ENGINES)
def test_sharded_angle_decisions_and_average_equal_the_unsharded_run(results, engine):
    for rank in range(2):
        assert "error" not in results[rank][engine], results[rank][engine].get("error")
    r0, r1 = results[0][engine], results[1][engine]
    # Every rank saw the same angles (bit for bit: the same reduced sums) and took the same decisions.
    assert r0["angles"] == r1["angles"] or all(_close(a, b, 0.0) for a, b in zip(r0["angles"], r1["angles"]))
    assert r0["resumed"] and r1["resumed"], "resuming from the per-rank state did not replay the same angles"


@pytest.mark.parametrize("engine", ENGINES)
def test_one_reduction_of_three_float64_per_interval_none_under_ddp(results, engine):
    for rank in range(2):
        reductions = results[rank][engine]["reductions"]
        expected = (0, 0) if engine == "ddp" else (1, 24)
        assert reductions == [expected] * INTERVALS


@pytest.mark.parametrize("engine", ["fsdp1", "fsdp2", "zero3_simulated"])
def test_state_is_proportional_to_the_shard(results, engine):
    shards = [results[r][engine]["shard_numel"] for r in range(2)]
    assert sum(shards) == 50 and all(0 < s < 50 for s in shards)
    for r in range(2):
        # Outside averaging: two float32 copies of the local shard (plus the BatchNorm-free model's 0 buffers).
        assert results[r][engine]["state_bytes"] == 2 * 4 * shards[r]


def test_bf16_compute_reads_the_fp32_sharded_parameters(results):
    for rank in range(2):
        assert results[rank]["fsdp2_bf16"]["dtypes"] == ["torch.float32"]


@pytest.mark.parametrize("engine", ["hsdp", "fsdp1_hybrid"])
def test_hsdp_counts_the_replica_once(results, engine):
    # Both processes hold the whole (1-way sharded) parameters; only the replica at coordinate 0 counts,
    # so the reduced sums are those of one copy (the angles equal the unsharded run's, checked above).
    assert all(results[0][engine]["counted"]) and not any(results[1][engine]["counted"])
    assert results[0][engine]["shard_numel"] == results[1][engine]["shard_numel"] == 50


def test_resuming_on_another_world_size_is_a_clear_error(results):
    saved = results[0]["fsdp2"]["saved_state"]
    assert saved["distributed"]["world_size"] == 2
    torch.manual_seed(0)
    model = Net()
    autodrop = AutoDrop(model, torch.optim.SGD(model.parameters(), lr=0.1), **CONFIG)
    with pytest.raises(ValueError, match=r"2 process\(es\) but this run has 1"):
        autodrop.load_state_dict(saved)
