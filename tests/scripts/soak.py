"""Kill-anywhere soak: Trainer runs with AutoDropCallback SIGKILLed at seeded random moments, each time
resumed from `newest_complete_checkpoint`, must end bit for bit where the uninterrupted run ends.

Each run segment is a real process forked from this one (the imports are paid once), that SIGKILLs itself
at its chosen moment: at a step's end, or inside one of a checkpoint's writes (the file cut to half its
length first, as a kill during the write leaves it), or inside the deletion of old checkpoints. A DDP
segment is two forked processes (gloo, CPU); when one dies, the other is killed, as torchrun does.

Longer soak: `python -m tests.scripts.soak --kills 48 --rounds 5` (at most one kill per step: 48 kills a run at every
step; each round a new seed; exit status 1 on any difference).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path

import torch

STEPS = 48  # max_steps: 12 epochs of 4 steps (128 examples, batch 32)
SAVE_STEPS = 3  # saves fall inside epochs, so most resumes are mid-epoch
# `where` a kill lands; the first two at a step's end, the others inside the save of the step.
AT_STEP = ("step-end",)
IN_SAVE = (
    "autodrop-staging",  # AutoDrop's own file half written, in output_dir/.autodrop-staging
    "weights",  # model.safetensors half written
    "optimizer",  # optimizer.pt half written
    "scheduler",
    "rng",  # this process's rng_state*.pth half written
    "trainer-state",  # trainer_state.json half written
    "after-trainer-state",  # the checkpoint complete, before old checkpoints are deleted
    "rotate",  # half of an old checkpoint's files deleted (save_total_limit)
)
VARIANTS = {
    # The growth test at the automatic interval (one step here), with the end-of-run decay over the last
    # fifth (from step 38). The 48 steps never saturate at the default growth_threshold; at 1.9 (drift
    # slowing down counts) it triggers at step 19 and drops at 24, so the kills land in an averaging
    # window, after a drop and inside the decay.
    "growth": dict(config=dict(growth_threshold=1.9), save_total_limit=None),
    # The paper's test with a threshold every change passes: triggers, averaging windows and drops early,
    # and old checkpoints deleted as it goes.
    "paper": dict(
        config=dict(detector="paper", threshold=180.0, max_threshold=180.0, drop_delay=2, interval_steps=2),
        save_total_limit=2,
    ),
    "ddp": dict(config=dict(growth_threshold=1.9), save_total_limit=None),
}


def trainer(out: str, variant: str, world_size: int = 1):
    from hf_autodrop import AutoDropCallback
    from tests.helpers import MLP, make_trainer

    spec = VARIANTS[variant]
    extra = {"ddp_backend": "gloo"} if world_size > 1 else {}
    torch.manual_seed(0)
    return make_trainer(
        out,
        [AutoDropCallback(**spec["config"])],
        model=MLP(batchnorm=world_size == 1),  # BatchNorm would see per-process batches under DDP
        n_train=128,
        per_device_train_batch_size=32 // world_size,
        max_steps=STEPS,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        save_total_limit=spec["save_total_limit"],
        logging_strategy="steps",
        logging_steps=1,
        restore_callback_states_from_checkpoint=True,
        learning_rate=spec.get("learning_rate", 0.05),
        **extra,
    )


# ------------------------------------------------------------------------------------------ kill hooks
def _die():
    """SIGKILL this process, noting first where (`KILLS_LOG` in the run's folder: the test checks that every
    chosen moment was reached)."""
    with open(install_kill.log, "a") as f:
        f.write(json.dumps([install_kill.moment[0], install_kill.moment[1], int(os.environ.get("RANK", "0"))]) + "\n")
    os.kill(os.getpid(), signal.SIGKILL)


KILLS_LOG = "kills.jsonl"


def _half(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def install_kill(out: str, step: int, where: str) -> None:
    """Patch the writes of this process so that it SIGKILLs itself at (`step`, `where`)."""
    install_kill.log, install_kill.moment = os.path.join(out, KILLS_LOG), (step, where)
    import safetensors.torch
    import transformers.trainer_utils
    from transformers import TrainerCallback, TrainerState

    now = {"step": -1}  # the step the Trainer is taking (set at each step's begin)

    class Tracker(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            now["step"] = state.global_step + 1  # the step's end and its save see this step

        def on_step_end(self, args, state, control, **kwargs):
            if where == "step-end" and state.global_step == step:
                _die()

    install_kill.tracker = Tracker()
    if where in ("step-end", "after-trainer-state", "trainer-state"):
        save_to_json = TrainerState.save_to_json

        def write(self, path):
            save_to_json(self, path)
            if self.global_step == step and where == "trainer-state":
                _half(path)
                _die()
            if self.global_step == step and where == "after-trainer-state":
                _die()

        TrainerState.save_to_json = write
        return
    if where == "weights":
        save_file = safetensors.torch.save_file

        def save_weights(tensors, filename, *args, **kwargs):
            save_file(tensors, filename, *args, **kwargs)
            if now["step"] == step:
                _half(filename)
                _die()

        safetensors.torch.save_file = save_weights
        return
    if where == "rotate":
        rmtree = transformers.trainer_utils.shutil.rmtree

        def half_deleted(path, *args, **kwargs):
            if now["step"] == step:
                files = sorted(os.listdir(path))
                for name in files[: len(files) // 2]:
                    os.unlink(os.path.join(path, name))
                _die()
            rmtree(path, *args, **kwargs)

        transformers.trainer_utils.shutil.rmtree = half_deleted  # the shutil that rotate_checkpoints calls
        return
    names = {"autodrop-staging": ".autodrop_state", "optimizer": "optimizer.pt", "scheduler": "scheduler.pt"}
    prefix = names.get(where, "rng_state")
    save = torch.save

    def save_then_die(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        name = os.path.basename(f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", ""))
        if now["step"] == step and name.startswith(prefix):
            if isinstance(f, (str, os.PathLike)):
                _half(f)
            else:
                f.flush()
                f.truncate(f.tell() // 2)
                f.flush()
            _die()

    torch.save = save_then_die


# ------------------------------------------------------------------------------------------ one segment
def _result(t) -> dict:
    from hf_autodrop import AutoDropCallback

    callback = next(c for c in t.callback_handler.callbacks if isinstance(c, AutoDropCallback))
    rows = [h for h in t.state.log_history if "train_runtime" not in h]
    return {
        "params": [p.detach().clone() for p in t.model.parameters()],
        "log_history": rows,
        "measurements": callback.measurements,
        "journal": (Path(t.args.output_dir) / "autodrop_measurements.jsonl").read_text()
        if t.args.process_index == 0
        else None,
    }


def _segment(out: str, variant: str, kill, rank: int, world_size: int, port: int) -> None:
    """Body of one forked process: resume from the newest complete checkpoint, train, die at `kill`."""
    from hf_autodrop import newest_complete_checkpoint

    torch.set_num_threads(1)
    if world_size > 1:
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(True)
        PartialState._reset_state()
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
    t = trainer(out, variant, world_size)
    if kill is not None and (kill[2] is None or kill[2] == rank):
        install_kill(out, kill[0], kill[1])
        t.add_callback(install_kill.tracker)
    resume = newest_complete_checkpoint(out)
    if rank == 0:
        newest = max((n for n in os.listdir(out) if n.startswith("checkpoint-")), default=None, key=_step_of)
        with open(os.path.join(out, RESUMES_LOG), "a") as f:
            f.write(json.dumps([os.path.basename(resume) if resume else None, newest]) + "\n")
    t.train(resume_from_checkpoint=resume)
    torch.save(_result(t), os.path.join(out, f"result-rank{rank}.pt"))


RESUMES_LOG = "resumes.jsonl"  # per segment: the checkpoint it resumed from, and the newest folder there was


def _step_of(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_segment(out: str, variant: str, kill=None, world_size: int = 1, timeout: float = 120.0) -> list[int]:
    """Fork the segment's processes; returns their exit statuses (negative: killed by that signal).

    When one process dies the others are SIGKILLed (a rank blocked in a collective would wait forever),
    and count as killed too.
    """
    port = _free_port() if world_size > 1 else 0
    pids = []
    for rank in range(world_size):
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller (pytest)
            code = 1
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # the Trainer prints every log row
            try:
                _segment(out, variant, kill, rank, world_size, port)
                code = 0
            except BaseException:  # noqa: BLE001 - reported through the exit status and stderr
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    status: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(status) < world_size:
        pid, raw = os.waitpid(-1, os.WNOHANG) if time.monotonic() < deadline else (0, 0)
        if pid == 0:
            if time.monotonic() >= deadline:
                for p in pids:
                    if p not in status:
                        os.kill(p, signal.SIGKILL)
                        status[p] = -999  # timed out
                        os.waitpid(p, 0)
                break
            time.sleep(0.01)
            continue
        if pid not in pids:
            continue
        status[pid] = -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
        if status[pid] != 0:  # the launcher's part: the other ranks go down with it
            for p in pids:
                if p not in status:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
    for p in pids:  # reap the ones killed above
        if p not in status:
            _, raw = os.waitpid(p, 0)
            status[p] = -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
    return [status[p] for p in pids]


def load_result(out: str, rank: int = 0) -> dict:
    return torch.load(os.path.join(out, f"result-rank{rank}.pt"), weights_only=False)


# ------------------------------------------------------------------------------------------ the kills
def phases(result: dict) -> dict[int, set[str]]:
    """The uninterrupted run's steps by what is going on there: averaging, right after a drop, cooldown."""
    by_step: dict[int, set[str]] = {s: set() for s in range(1, STEPS + 1)}
    measured = result["measurements"]
    for i, m in enumerate(measured):
        end = measured[i + 1]["step"] if i + 1 < len(measured) else STEPS
        for s in range(m["step"] + 1, end + 1):  # the steps of the interval that follows this measurement
            if m["phase"] == "averaging":
                by_step[s].add("averaging")
            if m["cooldown"]:
                by_step[s].add("cooldown")
        if m["dropped"]:
            for s in (m["step"], m["step"] + 1):
                if s in by_step:
                    by_step[s].add("after-drop")
    return by_step


def choose_kills(rng: random.Random, result: dict, n: int, world_size: int = 1, save_total_limit=None) -> list:
    """`n` seeded kill moments (step, where, rank or None for every rank), in the order the run reaches
    them, spread over the kinds of moment and the phases of the run; one kill per step, so that each
    resumed segment runs past the checkpoint it resumed from."""
    by_step = phases(result)
    saves = [s for s in range(SAVE_STEPS, STEPS + 1, SAVE_STEPS)]
    in_save = [w for w in IN_SAVE if w != "rotate" or save_total_limit]
    if world_size > 1:
        in_save = [w for w in in_save if w != "autodrop-staging"] + ["autodrop-staging"]
    chosen: dict[int, str] = {}
    # Half the kills inside saves (each kind once before any twice), the others at steps' ends, where
    # every phase the run goes through gets its share.
    wanted_saves = min(len(saves), n // 2)
    kinds = []
    while len(kinds) < wanted_saves:
        kinds += rng.sample(in_save, len(in_save))
    for step, where in zip(sorted(rng.sample(saves, wanted_saves)), kinds):
        chosen[step] = where
    for step in [s for s in chosen if chosen[s] == "rotate" and s < 3 * SAVE_STEPS]:
        # Only from the third save on are there old checkpoints to delete: trade with a later save.
        later = next(s for s in sorted(chosen) if s >= 3 * SAVE_STEPS and chosen[s] != "rotate")
        chosen[step], chosen[later] = chosen[later], "rotate"
    pools = [
        [s for s in by_step if tag in by_step[s] and s not in chosen] for tag in ("averaging", "after-drop", "cooldown")
    ]
    pools.append([s for s in by_step if s not in chosen])
    while len(chosen) < n:
        pool = [s for s in pools[len(chosen) % len(pools)] if s not in chosen] or [
            s for s in by_step if s not in chosen
        ]
        if not pool:
            break
        chosen[rng.choice(pool)] = "step-end"
    kills = []
    # Under DDP: every rank at once, or one of them (each choice in turn, in a seeded order).
    ranks = iter(rng.sample([None, *range(world_size)], world_size + 1) * n)
    for step in sorted(chosen):
        rank = None
        if world_size > 1:
            # The model, optimizer, scheduler and trainer_state.json only process zero writes.
            rank = next(ranks) if chosen[step] in ("step-end", "rng", "autodrop-staging") else 0
        kills.append((step, chosen[step], rank))
    return kills


def soak(root: str, variant: str, n_kills: int, seed: int, log=print) -> dict:
    """The uninterrupted run, then the killed-and-resumed chain; returns both results and what happened."""
    world_size = 2 if variant == "ddp" else 1
    straight_dir, chain_dir = os.path.join(root, f"{variant}-straight"), os.path.join(root, f"{variant}-killed")
    os.makedirs(straight_dir)
    os.makedirs(chain_dir)
    trainer(os.path.join(root, "warm-up"), variant)  # the Trainer's lazy imports, paid once before the forks
    codes = run_segment(straight_dir, variant, world_size=world_size)
    if codes != [0] * world_size:
        raise AssertionError(f"{variant}: the uninterrupted run failed ({codes})")
    straight = load_result(straight_dir)
    kills = choose_kills(random.Random(seed), straight, n_kills, world_size, VARIANTS[variant]["save_total_limit"])
    events = []
    for kill in kills:
        codes = run_segment(chain_dir, variant, kill, world_size)
        log(f"{variant}: kill at {kill} -> exit statuses {codes}")
        # The killed process ends by SIGKILL; another rank is SIGKILLed by the launcher, or fails first on its
        # broken connection (gloo: "Connection reset by peer").
        if codes[0 if kill[2] is None else kill[2]] != -signal.SIGKILL or 0 in codes:
            raise AssertionError(f"{variant}: the segment killed at {kill} ended with {codes}, not SIGKILL")
        with open(os.path.join(chain_dir, KILLS_LOG)) as f:
            died = [tuple(json.loads(line)) for line in f][len(events) :]
        events.extend(died)
        ranks = set(range(world_size)) if kill[2] is None else {kill[2]}
        if not died or any(d[:2] != kill[:2] or d[2] not in ranks for d in died):
            raise AssertionError(f"{variant}: the segment meant to die at {kill} died at {died}")
    codes = run_segment(chain_dir, variant, world_size=world_size)
    if codes != [0] * world_size:
        raise AssertionError(f"{variant}: the last resumed segment failed ({codes}) after kills {kills}")
    resumed = [load_result(chain_dir, r) for r in range(world_size)]
    straight = [load_result(straight_dir, r) for r in range(world_size)]
    with open(os.path.join(chain_dir, RESUMES_LOG)) as f:
        resumes = [json.loads(line) for line in f]
    return {"straight": straight, "resumed": resumed, "kills": kills, "died": events, "resumes": resumes}


def differences(straight: dict, resumed: dict) -> list[str]:
    """What differs between two results (empty: bit for bit the same)."""
    out = []
    for i, (p, q) in enumerate(zip(straight["params"], resumed["params"])):
        if not torch.equal(p, q):
            out.append(f"parameter {i} differs (max abs {(p - q).abs().max().item():.3g})")

    def clean(rows):
        return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]

    a, b = clean(straight["log_history"]), clean(resumed["log_history"])
    if a != b:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        out.append(f"log_history differs from row {first}: {a[first : first + 1]} vs {b[first : first + 1]}")
    if clean(straight["measurements"]) != clean(resumed["measurements"]):
        out.append("the AutoDrop measurements differ")
    if straight["journal"] != resumed["journal"]:
        out.append("autodrop_measurements.jsonl differs")
    return out


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40, help="kills per variant (at most one per step: <= 48)")
    parser.add_argument("--variant", nargs="+", default=["growth", "paper", "ddp"], choices=sorted(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1, help="repeat with seeds seed, seed+1, ...")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    failures = 0
    for r in range(args.rounds):
        for variant in args.variant:
            with tempfile.TemporaryDirectory() as root:
                start = time.perf_counter()
                got = soak(root, variant, min(args.kills, STEPS), args.seed + r, log=lambda *_: None)
                diffs = [d for s, q in zip(got["straight"], got["resumed"]) for d in differences(s, q)]
                failures += bool(diffs)
                status = "bit for bit" if not diffs else "; ".join(diffs)
                print(
                    f"seed {args.seed + r} {variant}: {len(got['kills'])} kills, {time.perf_counter() - start:.1f} s: {status}"
                )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
