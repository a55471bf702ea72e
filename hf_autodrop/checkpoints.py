"""Finding the newest checkpoint a killed run can resume from exactly.

The Trainer's `resume_from_checkpoint=True` takes the highest-numbered `checkpoint-N` folder, even one
whose save was cut short by a kill (no `trainer_state.json` yet, or a half-written one), and fails there.
`last_complete_checkpoint` skips such folders:

    from hf_autodrop.checkpoints import last_complete_checkpoint

    trainer.train(resume_from_checkpoint=last_complete_checkpoint(args.output_dir))

It returns None when there is none (`train(resume_from_checkpoint=None)` then starts afresh). This module
needs only the standard library and torch (no transformers).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch

__all__ = ["checkpoint_problem", "last_complete_checkpoint"]

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


def _state_file_name(rank: int, world_size: int) -> str:
    # The names AutoDropCallback writes (hf_autodrop.callback.state_file_name, kept here without transformers).
    return "autodrop_state.pt" if world_size == 1 else f"autodrop_state-rank{rank}-of-{world_size}.pt"


def _autodrop_entries(trainer_state: dict) -> list:
    """The AutoDropCallback entries of trainer_state.json's stateful_callbacks (a list when several)."""
    entry = (trainer_state.get("stateful_callbacks") or {}).get("AutoDropCallback")
    entries = entry if isinstance(entry, list) else [entry] if entry is not None else []
    return [e.get("attributes", {}).get("_checkpoint") if isinstance(e, dict) else e for e in entries]


def _loadable(path: str) -> Exception | None:
    """None when `path` is a complete torch file; the error otherwise (mmap: the tensors are not read)."""
    try:
        return None if isinstance(torch.load(path, map_location="cpu", weights_only=True, mmap=True), dict) else (
            ValueError("not a dict")
        )
    except Exception as err:  # noqa: BLE001 - any unreadable file makes the checkpoint incomplete
        return err


def checkpoint_problem(folder: str) -> str | None:
    """Why the checkpoint `folder` (`.../checkpoint-N`) is not complete, or None when it is.

    A checkpoint is complete when:

    1. `trainer_state.json` (the last file the Trainer writes into a checkpoint, after the model,
       optimizer, scheduler and RNG files) is there, parses as JSON and records `global_step` N;
    2. when it records AutoDrop state (`stateful_callbacks.AutoDropCallback`, written by
       `AutoDropCallback` for a world of W processes): each of the W state files
       (`autodrop_state.pt`, or `autodrop_state-rank{R}-of-{W}.pt`) is in the folder, is a complete torch
       file, and belongs to this checkpoint (its run id, step and interval are the ones trainer_state.json
       records);
    3. when the folder holds RNG states (`rng_state.pth`, or process zero's `rng_state_0.pth`): with W > 1
       processes, those of all W processes, each a complete torch file (each process writes its own, and
       process zero does not wait for the others before it writes trainer_state.json).

    The files of a kill before step 1 (model, optimizer) are written before trainer_state.json by the same
    process, so they are complete once it is.
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
            found = (payload.get("run_id"), payload.get("global_step"), None) if autodrop is not None else None
            if found is not None:
                found = (found[0], found[1], autodrop.get("interval") if isinstance(autodrop, dict) else None)
            wanted = (info.get("run_id"), step, info.get("interval"))
            if found != wanted:
                return f"{file} belongs to another run or step ({found}; trainer_state.json records {wanted})"

    rng = [f for f in ("rng_state.pth", "rng_state_0.pth") if os.path.isfile(os.path.join(folder, f))]
    if rng:
        files = ["rng_state.pth"] if world_size == 1 and rng == ["rng_state.pth"] else []
        files = files or [f"rng_state_{r}.pth" for r in range(world_size)]
        for file in (os.path.join(folder, f) for f in files):
            if not os.path.isfile(file):
                return f"{file} is missing (the checkpoint holds the RNG states of {world_size} process(es))"
            err = _loadable(file)
            if err is not None:
                return f"{file} is unreadable or truncated ({type(err).__name__}: {err})"
    return None


def last_complete_checkpoint(output_dir: str, remove_newer_incomplete: bool = False) -> str | None:
    """The newest complete `checkpoint-N` folder in `output_dir` (see `checkpoint_problem`), or None.

    Use it where the Trainer's `resume_from_checkpoint=True` would pick the newest folder, complete or not:
    `trainer.train(resume_from_checkpoint=last_complete_checkpoint(args.output_dir))`.

    With `remove_newer_incomplete=True` the incomplete folders numbered above the one returned are deleted:
    the Trainer counts them as the newest checkpoints when it applies `save_total_limit`, and would delete
    the complete ones it saves next instead. Call it so on process zero only (or on every process with
    a shared folder once the others have read the result).
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
        if checkpoint_problem(folder) is None:
            break
        incomplete.append(folder)
    else:
        folder = None
    if remove_newer_incomplete:
        for path in incomplete:
            shutil.rmtree(path, ignore_errors=True)
    return folder
