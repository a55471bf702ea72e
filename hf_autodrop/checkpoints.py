"""Finding the newest checkpoint a killed run can resume from exactly.

The Trainer's `resume_from_checkpoint=True` takes the highest-numbered `checkpoint-N` folder, even one
whose save was cut short by a kill (no `trainer_state.json` yet, a half-written one, or a rank's files
missing), and fails there or resumes from torn files. `newest_complete_checkpoint` skips such folders:

    from hf_autodrop import newest_complete_checkpoint

    trainer.train(resume_from_checkpoint=newest_complete_checkpoint(args.output_dir))

It returns None when there is none (`train(resume_from_checkpoint=None)` then starts afresh), so the
same line starts a run and resumes it. `checkpoint_problem(folder)` says why one folder is incomplete.
This module needs only the standard library and torch (no transformers).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zipfile

import torch

__all__ = ["checkpoint_problem", "newest_complete_checkpoint"]

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
# The Trainer's model files (transformers' SAFE_WEIGHTS_NAME, WEIGHTS_NAME, their sharded indexes, PEFT's).
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_OPTIMIZER, _SCHEDULER = "optimizer.pt", "scheduler.pt"


def _state_file_name(rank: int, world_size: int) -> str:
    # The names AutoDropCallback writes (hf_autodrop._state_files.state_file_name, kept here without transformers).
    return "autodrop_state.pt" if world_size == 1 else f"autodrop_state-rank{rank}-of-{world_size}.pt"


def _autodrop_entries(trainer_state: dict) -> list:
    """The AutoDropCallback entries of trainer_state.json's stateful_callbacks (a list when several)."""
    entry = (trainer_state.get("stateful_callbacks") or {}).get("AutoDropCallback")
    entries = entry if isinstance(entry, list) else [entry] if entry is not None else []
    return [e.get("attributes", {}).get("_checkpoint") if isinstance(e, dict) else e for e in entries]


def _torn(path: str) -> str | None:
    """Why the file at `path` is torn (cut short by a kill while it was written), or None when it is whole.

    torch files are zip archives whose directory is written last, and safetensors files record the end of
    their data in their header: both checks read only a few KiB, whatever the file's size.
    """
    try:
        if path.endswith(".safetensors"):
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    return f"{path} is truncated ({size} bytes)"
                (n,) = struct.unpack("<Q", head)
                header = json.loads(f.read(n)) if 8 + n <= size else None
            if header is None:
                return f"{path} is truncated (its header is cut short)"
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            return None if 8 + n + end == size else f"{path} is truncated ({size} of {8 + n + end} bytes)"
        with zipfile.ZipFile(path) as z:
            z.infolist()
        return None
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        return f"{path} is unreadable or truncated ({type(err).__name__}: {err})"


def _weights_problem(folder: str) -> str | None:
    """None when the folder holds whole model weights in one of the Trainer's layouts."""
    for index in _INDEXES:
        path = os.path.join(folder, index)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError) as err:
                return f"{path} is unreadable or truncated ({type(err).__name__}: {err})"
            for shard in shards:
                file = os.path.join(folder, shard)
                if not os.path.isfile(file):
                    return f"{file} is missing ({index} lists it)"
                if (torn := _torn(file)) is not None:
                    return torn
            return None
    for name in _WEIGHTS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return _torn(path)
    if any(_engine_folder(n) for n in os.listdir(folder)):
        return None  # FSDP's or DeepSpeed's own sharded layout (its files are written by every process)
    return f"{folder} holds no model weights ({', '.join(_WEIGHTS)} or a sharded index)"


def _engine_folder(name: str) -> bool:
    return name.startswith(("pytorch_model_fsdp", "optimizer_0", "global_step"))


def checkpoint_problem(folder: str, require_optimizer: bool = True) -> str | None:
    """Why the checkpoint `folder` (`.../checkpoint-N`) is not complete, or None when it is.

    A checkpoint is complete when:

    1. `trainer_state.json` (the last file the Trainer writes into a checkpoint, after the model,
       optimizer, scheduler and RNG files) is there, parses as JSON and records `global_step` N;
    2. the model weights are there and whole (`model.safetensors`, `pytorch_model.bin`, the shards a
       sharded index lists, PEFT's adapter, or FSDP's / DeepSpeed's own folders);
    3. with `require_optimizer=True` (pass False for runs with `save_only_model=True`): `optimizer.pt`
       and `scheduler.pt` are there and whole (or FSDP's / DeepSpeed's own optimizer files);
    4. when it records AutoDrop state (`stateful_callbacks.AutoDropCallback`, written by
       `AutoDropCallback` for a world of W processes): each of the W state files
       (`autodrop_state.pt`, or `autodrop_state-rank{R}-of-{W}.pt`) is in the folder, is a complete torch
       file, and belongs to this checkpoint (its run id, step and interval are the ones trainer_state.json
       records);
    5. when the folder holds RNG states (`rng_state.pth`, or process zero's `rng_state_0.pth`): with W > 1
       processes, those of all W processes, each whole (each process writes its own, and process zero
       does not wait for the others before it writes trainer_state.json).

    "Whole" means not cut short while being written: a rerun that saves the same step again over an
    incomplete folder rewrites its files in place, so a second kill can tear a file beside an older
    `trainer_state.json`.
    """
    name = os.path.basename(os.path.normpath(folder))
    match = _CHECKPOINT.match(name)
    if match is None or not os.path.isdir(folder):
        return f"{folder} is not a checkpoint-N folder"
    step = int(match.group(1))
    path = os.path.join(folder, TRAINER_STATE)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return f"{path} is missing (the save was cut short before the Trainer wrote it)"
    except (OSError, ValueError) as err:
        return f"{path} is unreadable or truncated ({type(err).__name__}: {err})"
    if not isinstance(state, dict) or state.get("global_step") != step:
        got = state.get("global_step") if isinstance(state, dict) else type(state).__name__
        return f"{path} records global_step {got!r}, not {step}"

    if (problem := _weights_problem(folder)) is not None:
        return problem
    if require_optimizer:
        names = os.listdir(folder)
        if not any(_engine_folder(n) or n == "optimizer.bin" for n in names):
            for file in (_OPTIMIZER, _SCHEDULER):
                file = os.path.join(folder, file)
                if not os.path.isfile(file):
                    return f"{file} is missing (pass require_optimizer=False for a run saved with save_only_model=True)"
                if (torn := _torn(file)) is not None:
                    return torn

    world_size = 1
    for info in _autodrop_entries(state):
        if info is None:
            continue  # the callback had not started training when this state was written
        if not isinstance(info, dict) or not isinstance(info.get("world_size"), int) or info["world_size"] < 1:
            return f"{path}: the AutoDrop entry is damaged ({info!r})"
        world_size = info["world_size"]
        for rank in range(world_size):
            file = os.path.join(folder, _state_file_name(rank, world_size))
            if not os.path.isfile(file):
                return f"{file} is missing (trainer_state.json records AutoDrop state of {world_size} process(es))"
            try:
                payload = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:  # noqa: BLE001 - any unreadable file makes the checkpoint incomplete
                return f"{file} is unreadable or truncated ({type(err).__name__}: {err})"
            autodrop = payload.get("autodrop") if isinstance(payload, dict) else None
            found = None
            if isinstance(autodrop, dict):
                found = (payload.get("run_id"), payload.get("global_step"), autodrop.get("interval"))
            wanted = (info.get("run_id"), step, info.get("interval"))
            if found != wanted:
                return f"{file} belongs to another run or step ({found}; trainer_state.json records {wanted})"

    present = [f for f in ("rng_state.pth", "rng_state_0.pth") if os.path.isfile(os.path.join(folder, f))]
    if present:
        files = ["rng_state.pth"] if present == ["rng_state.pth"] else [f"rng_state_{r}.pth" for r in range(world_size)]
        for file in (os.path.join(folder, f) for f in files):
            if not os.path.isfile(file):
                return f"{file} is missing (the checkpoint holds the RNG states of {world_size} process(es))"
            if (torn := _torn(file)) is not None:
                return torn
    return None


def newest_complete_checkpoint(
    output_dir: str, require_optimizer: bool = True, remove_newer_incomplete: bool = False
) -> str | None:
    """The newest complete `checkpoint-N` folder in `output_dir` (see `checkpoint_problem`), or None.

    Use it where the Trainer's `resume_from_checkpoint=True` would pick the newest folder, complete or not:
    `trainer.train(resume_from_checkpoint=newest_complete_checkpoint(args.output_dir))`. Every process
    of a distributed run may call it: they read the same folders (call it before any process saves).

    With `remove_newer_incomplete=True` the incomplete folders numbered above the one returned are deleted
    (on a shared folder: on process zero only, once the others have read the result): the Trainer counts
    them among the newest checkpoints when it applies `save_total_limit`.
    """
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(m.group(1)), name)
        for name in os.listdir(output_dir)
        if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    incomplete = []
    for _, name in reversed(steps):
        folder = os.path.join(output_dir, name)
        if checkpoint_problem(folder, require_optimizer=require_optimizer) is None:
            break
        incomplete.append(folder)
    else:
        folder = None
    if remove_newer_incomplete:
        for path in incomplete:
            shutil.rmtree(path, ignore_errors=True)
    return folder
