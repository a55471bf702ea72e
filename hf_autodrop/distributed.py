"""What each process owns of the parameters, and the one reduction of three scalars across processes.

AutoDrop's angle is global: `<a,b> / (|a| |b|)` over every trainable element of the model. Each term is a
sum over elements, so each process sums over the elements it owns and one all-reduce of the float64
3-vector `[<a,b>, |a|^2, |b|^2]` gives every process the same global sums, hence the same angle and the
same decision at the same interval. Snapshots, the displacement and the running average are kept for the
owned elements only, so AutoDrop's memory per process is proportional to its shard.

What "owned" means depends on the engine (checked against each engine's code):

- one process, or `DistributedDataParallel`: every process holds the full parameters (identical replicas
  under DDP), so each computes the global sums alone and nothing crosses the network;
- FSDP1 (`FullyShardedDataParallel`, `use_orig_params` True or False): each `FlatParameter`'s local
  shard (`_local_shard`, the fp32 shard the optimizer updates), cut into the original parameters' pieces
  with `_shard_param_infos`; the FlatParameter's padding (filled with non-zero values) is never read;
- FSDP2 (`fully_shard`) and any DTensor parameter: `to_local()` after every FSDP module is resharded
  (the unpadded local chunk, possibly empty, writable in place);
- DeepSpeed ZeRO-3: the fp32 master partition (`deepspeed.utils.safe_get_local_fp32_param`) cut to the
  valid elements (the partition's tail is uninitialised padding); writes go to the master and to
  `ds_tensor`, and gathered parameters are refreshed;
- DeepSpeed ZeRO-1/2 (and its bf16 optimizer): every process holds whole parameters, but the optimizer
  updates fp32 master partitions and copies them back into the parameters after every step, so the owned
  elements are each parameter's fragment of this process's master partition (`_hp_mapping`); a write
  goes into that fragment and into the parameters of every process (one all-reduce of the written
  parameters, at a drop only).

Replicated copies are counted once: with HSDP (FSDP1 hybrid sharding, FSDP2 on a 2-D mesh) only the
processes at coordinate 0 of every replicate dimension contribute to the sums; parameters that are plain
replicated tensors next to sharded ones contribute only on global rank 0.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["LocalShards", "agree", "local_shards"]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _reduce_device() -> torch.device:
    """Where the 3-vector must live for the default process group's backend."""
    backend = str(dist.get_backend()).lower()
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    accelerator = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
    return accelerator if accelerator is not None else torch.device("cpu")


class LocalShards:
    """The trainable elements this process owns, as the optimizer updates them.

    `tensors()` returns them (re-read every time, because engines swap the storage of their
    parameters between intervals); after writing into those tensors, `commit(tensors)` propagates the
    values wherever the engine keeps another copy. `counted[i]` says whether `tensors()[i]` enters the
    sums on this process (False for the extra copies of replicated elements). `all_reduce(sums)` turns
    local partial sums into global ones: one all-reduce of three float64 numbers when the elements are
    sharded, nothing when every process holds the full parameters.
    """

    engine = "single process"
    sharded = False

    def __init__(self, params: list[torch.Tensor]):
        self._params = params
        self.rank, self.world_size = _world()
        self.counted = [True] * len(params)
        self.reductions = self.bytes_sent = 0  # what AutoDrop sent so far (the payload of its all-reduces)

    def tensors(self) -> list[torch.Tensor]:
        return self._params

    def commit(self, tensors: list[torch.Tensor]) -> None:
        """Propagate values written into `tensors` to the engine's other copies (none by default)."""

    def all_reduce(self, sums: torch.Tensor) -> torch.Tensor:
        """Global `[<a,b>, |a|^2, |b|^2]` from this process's partial sums (float64, on the CPU)."""
        if not self.sharded or self.world_size == 1:
            return sums
        buffer = sums.to(_reduce_device())
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        self.reductions += 1
        self.bytes_sent += buffer.numel() * buffer.element_size()
        return buffer.cpu()

    def describe(self) -> dict:
        """Plain facts for the state dict and the error messages."""
        return {"engine": self.engine, "rank": self.rank, "world_size": self.world_size}


class _Replicated(LocalShards):
    """One process, or DDP: the full parameters on every process, no communication."""

    def __init__(self, params):
        super().__init__(params)
        if self.world_size > 1:
            self.engine = "replicated (DDP)"


class _FSDP1(LocalShards):
    """`FullyShardedDataParallel`: pieces of each FlatParameter's local shard, padding excluded."""

    engine = "FSDP1"
    sharded = True

    def __init__(self, model: torch.nn.Module):
        from torch.distributed.fsdp import ShardingStrategy
        from torch.distributed.fsdp._traversal_utils import _get_fsdp_states

        super().__init__([])
        hybrid = (ShardingStrategy.HYBRID_SHARD, ShardingStrategy._HYBRID_SHARD_ZERO2)
        self._pieces: list[tuple[object, int, int]] = []  # (handle, offset in the local shard, numel)
        self.counted = []
        for state in _get_fsdp_states(model):
            handle = state._handle
            if handle is None:
                continue
            flat = handle.flat_param
            if state.sharding_strategy in hybrid:
                counted = dist.get_rank(state._inter_node_pg) == 0
                span = state.process_group.size() * state._inter_node_pg.size()
            elif state.sharding_strategy == ShardingStrategy.NO_SHARD:
                counted, span = self.rank == 0, self.world_size
            else:
                counted, span = True, state.process_group.size()
            if span != self.world_size:
                raise NotImplementedError(
                    f"AutoDrop supports FSDP1 sharded (or hybrid-sharded) over all {self.world_size} processes; "
                    f"this FSDP unit spans {span}."
                )
            originals = flat._params if flat._params is not None else [flat] * len(flat._shard_param_infos)
            for param, info in zip(originals, flat._shard_param_infos):
                if info.in_shard and info.numel_in_shard > 0 and param.requires_grad:
                    self._pieces.append((handle, info.offset_in_shard, info.numel_in_shard))
                    self.counted.append(counted)

    def tensors(self):
        # `_local_shard` is the sharded fp32 storage the optimizer updates, in sharded and unsharded
        # states alike (with CPU offload, the pinned CPU shard). FSDP sets it at its lazy init (the first
        # forward); before that the FlatParameter itself holds the shard.
        return [self._shard(handle).narrow(0, offset, numel) for handle, offset, numel in self._pieces]

    @staticmethod
    def _shard(handle) -> torch.Tensor:
        flat = handle.flat_param
        local = getattr(flat, "_local_shard", None)
        return local if local is not None else flat.data

    def commit(self, tensors):
        # A handle whose gathered copy is still allocated (unsharded, or SHARD_GRAD_OP after a forward,
        # which keeps it while pointing at the shard) would run the next forward on that stale copy
        # without gathering: free it, so that the next forward gathers the new values.
        for handle in dict.fromkeys(h for h, _, _ in self._pieces):
            if handle.uses_sharded_strategy and not handle.needs_unshard():
                handle.reshard(free_unsharded_flat_param=True)
                handle.post_reshard()


class _DTensors(LocalShards):
    """FSDP2 (`fully_shard`), HSDP and other DTensor parameters: `to_local()` of the sharded parameters."""

    engine = "FSDP2 (DTensor)"
    sharded = True

    def __init__(self, model: torch.nn.Module | None, params: list[torch.Tensor]):
        super().__init__(params)
        self._model = model
        self._reshard()
        if model is not None:
            self._params = self._trainable()
        self.counted = [self._counted(p) for p in self._params]
        self._shapes = [tuple(self._local(p).shape) for p in self._params]

    def _trainable(self) -> list[torch.Tensor]:
        return [p for p in self._model.parameters() if p.requires_grad]

    def _reshard(self) -> None:
        # After a forward with reshard_after_forward=False the module holds unsharded parameters;
        # resharding registers the sharded DTensors again (a no-op when already sharded).
        if self._model is None:
            return
        from torch.distributed.fsdp import FSDPModule

        for module in self._model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    @staticmethod
    def _local(p: torch.Tensor) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        return p.to_local() if isinstance(p, DTensor) else p

    def _counted(self, p: torch.Tensor) -> bool:
        from torch.distributed.tensor import DTensor

        if not isinstance(p, DTensor):
            return self.rank == 0  # a replicated plain tensor next to sharded ones: count it once
        coordinate = p.device_mesh.get_coordinate()
        for dim, placement in enumerate(p.placements):
            if placement.is_partial():
                raise NotImplementedError(f"AutoDrop cannot read a parameter with a Partial placement ({p.placements})")
            if placement.is_replicate() and coordinate[dim] != 0:
                return False
        return True

    def tensors(self):
        self._reshard()
        if self._model is not None:
            self._params = self._trainable()
        local = [self._local(p) for p in self._params]
        shapes = [tuple(t.shape) for t in local]
        if shapes != self._shapes:
            raise RuntimeError(
                "the local shards of the trainable parameters changed shape since AutoDrop started "
                f"({len(self._shapes)} -> {len(shapes)} tensors); build AutoDrop after sharding and keep the "
                "set of trainable parameters fixed."
            )
        return local


class _Zero3(LocalShards):
    """DeepSpeed ZeRO-3: the valid part of each fp32 master partition; writes reach `ds_tensor` too."""

    engine = "DeepSpeed ZeRO-3"
    sharded = True

    def __init__(self, params: list[torch.Tensor]):
        super().__init__(params)
        self._valid = []
        for p in params:
            group = p.ds_process_group
            if dist.get_world_size(group) != self.world_size:
                raise NotImplementedError(
                    "AutoDrop supports ZeRO-3 partitioned over all processes; this parameter's partition group "
                    f"has {dist.get_world_size(group)} of {self.world_size} (MiCS / hpZ are not supported)."
                )
            part = p.ds_tensor.ds_numel  # ceil(numel / world): the padded partition size
            self._valid.append(max(0, min(p.ds_numel - dist.get_rank(group) * part, part)))

    @staticmethod
    def _get_master(p):
        from deepspeed.utils import safe_get_local_fp32_param

        return safe_get_local_fp32_param(p)

    @staticmethod
    def _set_master(p, value):
        from deepspeed.utils import safe_set_local_fp32_param

        safe_set_local_fp32_param(p, value)

    def tensors(self):
        # A view of the master partition; a copy when the optimizer state is offloaded elsewhere.
        return [self._get_master(p).narrow(0, 0, n) for p, n in zip(self._params, self._valid)]

    def commit(self, tensors):
        for p, n, value in zip(self._params, self._valid, tensors):
            master = self._get_master(p)
            if master.data_ptr() != value.data_ptr():  # tensors() handed out a copy
                master = master.clone()
                master.narrow(0, 0, n).copy_(value)
                self._set_master(p, master)
            p.ds_tensor.data.narrow(0, 0, n).copy_(value)
        # Gathered parameters (persistent small ones, or any left gathered) hold stale full copies:
        # partition them and gather the persistent ones again, as DeepSpeed does after loading a checkpoint.
        gathered = [p for p in self._params if getattr(p.ds_status, "name", None) == "AVAILABLE"]
        if gathered:
            gathered[0].partition(gathered, has_been_updated=False)
            persistent = [p for p in gathered if getattr(p, "ds_persist", False)]
            if persistent:
                persistent[0].all_gather(persistent)


class _Zero12(LocalShards):
    """DeepSpeed ZeRO-1/2: each parameter's fragment of this process's fp32 master partition.

    The parameters are whole on every process, but writing them alone is lost: after every step ZeRO-1/2
    copies its fp32 master partitions back into them. So AutoDrop reads and writes the masters (the
    fragments are views into them), and after a write rebuilds the parameters from every process's
    fragments (one all-reduce of zeros plus the owned fragment: exact, the fragments are disjoint).
    """

    engine = "DeepSpeed ZeRO-1/2"
    sharded = True

    def __init__(self, params: list[torch.Tensor]):
        super().__init__(params)
        for p in params:
            group = p._dp_group
            if dist.get_world_size(group) != self.world_size:
                raise NotImplementedError(
                    "AutoDrop supports ZeRO-1/2 partitioned over all processes; this parameter's data-parallel "
                    f"group has {dist.get_world_size(group)} of {self.world_size}."
                )

    def tensors(self):
        out = []
        for p in self._params:
            mapping = p._hp_mapping
            out.append(mapping.get_hp_fragment() if mapping is not None else p.new_empty(0, dtype=torch.float32))
        return out

    def commit(self, tensors):
        if not self._params:
            return
        first = self._params[0]
        master_dtype = next((t.dtype for t in tensors if t.numel()), torch.float32)
        sizes = [p.numel() for p in self._params]
        full = torch.zeros(sum(sizes), dtype=master_dtype, device=first.device)
        offset = 0
        for p, n, value in zip(self._params, sizes, tensors):
            mapping = p._hp_mapping
            if mapping is not None:
                master = mapping.get_hp_fragment()
                if master.data_ptr() != value.data_ptr():
                    master.data.copy_(value)
                address = mapping.lp_fragment_address
                full.narrow(0, offset + address.start, address.numel).copy_(value)
            offset += n
        dist.all_reduce(full, op=dist.ReduceOp.SUM, group=first._dp_group)
        with torch.no_grad():
            for p, piece in zip(self._params, full.split(sizes)):
                p.data.copy_(piece.view_as(p))


def local_shards(model_or_params, params: list[torch.Tensor]) -> LocalShards:
    """The `LocalShards` for trainable `params` (taken from `model_or_params`), engine detected from them."""
    if not dist.is_available():
        return _Replicated(params)
    model = model_or_params if isinstance(model_or_params, torch.nn.Module) else None
    if model is not None and hasattr(model, "module") and type(model).__name__ == "DeepSpeedEngine":
        model = model.module
    if any(hasattr(p, "ds_id") for p in params):
        return _Zero3([p for p in params if hasattr(p, "ds_id")])
    if any(hasattr(p, "_hp_mapping") for p in params):
        return _Zero12([p for p in params if hasattr(p, "_hp_mapping")])
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    # An FSDP2 module can hold its gathered plain tensors right now (after a forward with
    # reshard_after_forward=False): decide from the modules, and read the parameters once resharded.
    if any(isinstance(p, DTensor) for p in params) or (
        model is not None and any(isinstance(m, FSDPModule) for m in model.modules())
    ):
        return _DTensors(model, params)
    from torch.distributed.fsdp import FullyShardedDataParallel

    if model is not None and any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        return _FSDP1(model)
    if any(type(p).__name__ == "FlatParameter" for p in params):
        raise ValueError("FSDP1 parameters were passed without their module: pass the FSDP-wrapped model to AutoDrop")
    return _Replicated(params)


def agree(code: int) -> list[int]:
    """Every process's `code` (0 = fine), on every process: one all-reduce of one int per process.

    Lets all processes take the same decision about something only some of them saw (a state file
    missing or damaged on one rank): they all go on, or all stop with the same error.
    """
    rank, world_size = _world()
    if world_size == 1:
        return [int(code)]
    codes = torch.zeros(world_size, dtype=torch.int64)
    codes[rank] = int(code)
    buffer = codes.to(_reduce_device())
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return [int(c) for c in buffer.cpu().tolist()]
