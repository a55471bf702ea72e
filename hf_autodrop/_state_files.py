"""AutoDropCallback's files: crash-safe writing, finding the state on resume, the measurements log.

- `atomic_save` writes a state file under a temporary name, flushes it (to the disk with `fsync`) and
  renames it into place: the file is complete under its name or not there at all. `Flush` runs the
  `fsync` on a background thread while the Trainer writes its own checkpoint files; `move_into_place`
  moves a staged file into its checkpoint.
- `find_state` looks for this process's state file of the checkpoint being resumed and checks it
  belongs to it (`Outcome` names what became of the lookup on each process).
- `MeasurementsLog` appends every interval's record to `autodrop_measurements.jsonl` in `output_dir`
  (one JSON object per line), rewound on resume to the resumed interval.
"""

from __future__ import annotations

import enum
import json
import math
import os
import threading
import time

import torch

__all__ = [
    "MEASUREMENTS_FILE",
    "STATE_FILE",
    "Flush",
    "MeasurementsLog",
    "Missing",
    "Outcome",
    "atomic_save",
    "checked_entry",
    "find_state",
    "fsync_dir",
    "move_into_place",
    "state_file_name",
]

STATE_FILE = "autodrop_state.pt"
MEASUREMENTS_FILE = "autodrop_measurements.jsonl"
# The longest a measurement record waits in memory before `MeasurementsLog` writes it.
WRITE_EVERY_S = 1.0


def state_file_name(rank: int, world_size: int) -> str:
    """`autodrop_state.pt` on one process; `autodrop_state-rank{R}-of-{W}.pt` per process on several.

    Under a sharded engine each process holds only its shard of AutoDrop's tensors, so each process
    writes its own file beside the engine's own sharded checkpoint files.
    """
    return STATE_FILE if world_size == 1 else f"autodrop_state-rank{rank}-of-{world_size}.pt"


# ---------------------------------------------------------------------- crash-safe writing
def atomic_save(payload: dict, path: str, fsync: bool = True) -> None:
    """`torch.save` to a temporary name in the same folder, flushed (to disk with `fsync`), renamed into place."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(folder)


class Flush:
    """`fsync` of a written file on a background thread (the GIL is released while the disk works)."""

    def __init__(self, path: str):
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(path,), name="autodrop-fsync", daemon=True)
        self._thread.start()

    def _run(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as err:  # noqa: BLE001 - re-raised in the training thread by wait()
            self._error = err

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def move_into_place(staged: str, target: str, durable: bool) -> None:
    """Move a staged state file to `target` (a no-op when it is gone: its own process moved it first).

    Removes the staging folders it leaves empty (the last process to move its file removes them).
    """
    if not os.path.isfile(staged):
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.replace(staged, target)
    except FileNotFoundError:
        return
    if durable:
        fsync_dir(os.path.dirname(target))
    for folder in (os.path.dirname(staged), os.path.dirname(os.path.dirname(staged))):
        try:
            os.rmdir(folder)
        except OSError:
            break  # not empty yet (or gone)


# ---------------------------------------------------------------------- resume lookup
class Outcome(enum.IntEnum):
    """What became of one process's state lookup on resume (exchanged between processes as an int)."""

    LOADED = 0
    MISSING = 1  # the checkpoint records AutoDrop state but this process's file is not there
    UNLOADABLE = 2  # a file is there but damaged, of another run or step, or of another model


class Missing(Exception):
    """This process's state file is not there."""


def checked_entry(info) -> dict:
    """The AutoDrop entry of trainer_state.json, or a clear error when it is damaged."""
    expected = {"run_id": str, "interval": int, "num_drops": int, "world_size": int}
    problems = (
        ["it is not a mapping"]
        if not isinstance(info, dict)
        else [f"'{k}' is missing or not {t.__name__}" for k, t in expected.items() if not isinstance(info.get(k), t)]
    )
    if isinstance(info, dict) and not isinstance(info.get("file", ""), str):
        problems.append("'file' is not a path")
    if problems:
        raise ValueError(
            f"The AutoDrop entry of this checkpoint's trainer_state.json (stateful_callbacks.AutoDropCallback."
            f"attributes._checkpoint) is damaged: {'; '.join(problems)}. Restore trainer_state.json from a copy, "
            "or resume without restore_callback_states_from_checkpoint to restart AutoDrop's history."
        )
    return info


def find_state(info: dict, name: str, folders: list[str | None], global_step: int) -> tuple[str, dict]:
    """This process's state file `name` of the checkpoint `info` describes, and its payload.

    Looks in `folders` in order (the first that holds a file of this run, step and interval wins).
    Raises `ValueError` when every file found is damaged or of another run or step, `Missing` when
    there is none.
    """
    candidates = list(dict.fromkeys(os.path.abspath(os.path.join(f, name)) for f in folders if f))
    rejected = []
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
            rejected.append(f"{path} is unreadable ({err})")
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("autodrop"), dict):
            rejected.append(f"{path} is not an AutoDrop state file")
            continue
        found = (payload.get("run_id"), payload.get("global_step"), payload["autodrop"].get("interval"))
        wanted = (info["run_id"], global_step, info["interval"])
        if found != wanted:
            rejected.append(
                f"{path} belongs to another run or step (run {found[0]}, step {found[1]}, interval {found[2]}; "
                f"this checkpoint's trainer_state.json records run {wanted[0]}, step {wanted[1]}, interval "
                f"{wanted[2]})"
            )
            continue
        return path, payload
    if rejected:
        raise ValueError(
            "refusing to resume from mismatched or damaged AutoDrop state: "
            + "; ".join(rejected)
            + ". Restore the checkpoint's own AutoDrop file, or delete it to restart AutoDrop's history."
        )
    raise Missing(
        f"the checkpoint records AutoDrop state (interval {info['interval']}, {info['num_drops']} drops) but "
        f"{name} is missing (looked in {', '.join(os.path.dirname(c) for c in candidates)})."
    )


# ---------------------------------------------------------------------- the measurements log
def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # standard JSON has no NaN/Inf
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    return value


def json_line(record: dict) -> str:
    """One measurement record as one line of standard JSON (NaN and infinities become null)."""
    return json.dumps({k: _json_value(v) for k, v in record.items()}, allow_nan=False) + "\n"


class MeasurementsLog:
    """`autodrop_measurements.jsonl`: every interval's record, one JSON object per line, in order.

    Records are written in batches, one `write` and a flush each: at most `WRITE_EVERY_S` after the last
    write, whenever the Trainer saves a checkpoint (`flush`, so that the file holds every interval up to
    it), and at the run's end. A killed process loses at most the last second's records and leaves at most
    a partial last line. (A `write` and a flush per interval cost 0.1-0.2 ms, a few percent of a small
    model's step at an interval of one step.) `start` begins the file afresh, or on resume rewrites it (atomically: temporary name,
    rename) with the records the run had up to the resumed checkpoint, so that no interval is missing
    or written twice whatever the file held beyond that checkpoint.
    """

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, MEASUREMENTS_FILE)
        self._file = None
        self._pending: list[dict] = []  # records not written yet
        self._written_at = time.monotonic()

    def start(self, records: list[dict] | None = None, up_to_step: int | None = None) -> None:
        """Open the log: with `records`, holding exactly them; with `up_to_step` only (a resume without
        AutoDrop's state), keeping the file's complete lines of steps up to it; else empty."""
        self.close()
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if records is None and up_to_step is not None:
            records = []
            if os.path.isfile(self.path):
                with open(self.path, encoding="utf-8") as f:
                    for line in f:
                        try:
                            record = json.loads(line)
                        except ValueError:
                            break  # a partial last line, left by a killed process
                        if isinstance(record, dict) and isinstance(record.get("step"), int):
                            if record["step"] <= up_to_step:
                                records.append(record)
            text = "".join(json.dumps(r) + "\n" for r in records)
        else:
            text = "".join(json_line(r) for r in records or [])
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run, closed by close()

    def append(self, record: dict) -> None:
        if self._file is not None:
            self._pending.append(record)
            if time.monotonic() - self._written_at >= WRITE_EVERY_S:
                self.flush()

    def flush(self) -> None:
        """Write the pending records (one `write`) and flush them to the operating system."""
        self._written_at = time.monotonic()
        if self._file is not None and self._pending:
            self._file.write("".join(json_line(r) for r in self._pending))
            self._file.flush()
        self._pending = []

    def close(self) -> None:
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
        self._pending = []
