"""Runs of unknown length: AutoDrop left to stop by itself, against WSD told the length AutoDrop used.

    python -m experiments.unknown_length_study --workers 2   # the evidence (docs/results/unknown_length.md)
    python -m experiments.unknown_length_study --quick       # a smoke run (used by the tests)

A user who cannot say how long to train (a streaming dataset, a custom loop that never calls `set_horizon`,
a large `max_steps`) runs `AutoDropCallback(AutoDropConfig(cooldown_fraction=0, stop_when_exhausted=True))`:
no end-of-run decay (nothing to end), the saturation drops alone, and training stops at the drop that finds
every param group at its floor (1e-3 x the initial lr, five x0.2 drops). Each task runs so through the real
`Trainer` with `max_steps` at `CAP` x the peer study's full length, at the task's base lr, and records the
step T at which it stopped (or the cap). Then, seed by seed, WSD (1 - sqrt over the last 20 %, to 0), cosine
and the constant lr run with `max_steps = T`: what a user who had known T in advance would have got. The
report gives the test metric of each and the paired difference against WSD, and T against the peer study's
full length (the compute).
"""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np

from .common import Study, markdown_table
from .peer_study import TASKS, _mean_se
from .trainer_study import Method, TaskSpec, load_runs, run_all, save_runs

CAP = 8  # AutoDrop may run up to this many times the peer study's full length
UNKNOWN = "AutoDrop (no horizon, stop_when_exhausted)"
AUTODROP = Method(UNKNOWN, "autodrop", autodrop={"cooldown_fraction": 0.0, "stop_when_exhausted": True})
PEERS = (
    Method("WSD (1-sqrt, last 20 %) told T", "wsd"),
    Method("cosine told T", "cosine"),
    Method("constant lr", "constant"),
)
STUDY_TASKS = ("digits_bn", "digits", "friedman")


def steps_per_epoch(task: TaskSpec) -> int:
    from .trainer_study import _data_and_model

    return math.ceil(len(_data_and_model(task)[0]) / task.batch_size)


def capped(task: TaskSpec, cap: float) -> TaskSpec:
    """The task with `max_steps` at `cap` x its full length, tested every epoch."""
    full = task.max_steps or task.epochs * steps_per_epoch(task)
    return dataclasses.replace(task, name=f"{task.name}@cap", epochs=None, max_steps=round(cap * full))


def told(task: TaskSpec, steps: int) -> TaskSpec:
    return dataclasses.replace(task, name=f"{task.name}@T", epochs=None, max_steps=steps)


def stop_step(run: dict) -> int:
    return int(run["curve"][-1]["step"])


def report(results: list[dict], full_steps: dict[str, int]) -> str:
    sections = []
    for name in dict.fromkeys(r["task"].split("@")[0] for r in results):
        spec = TASKS[name]
        digits = 2 if "%" in spec.metric else 4
        mine = {r["seed"]: r for r in results if r["task"] == f"{name}@cap"}
        rows = []
        t_steps = [stop_step(r) for r in mine.values()]
        stopped = sum(any("stop_when_exhausted=True" in line for line in r["log"]) for r in mine.values())
        drops = [sum(m["dropped"] for m in r["autodrop"]) for r in mine.values()]
        mean, se = _mean_se([r["final"] for r in mine.values()])
        wsd = {r["seed"]: r for r in results if r["task"] == f"{name}@T.{r['seed']}" and r["kind"] == "wsd"}
        by_method: dict[str, dict[int, dict]] = {}
        for r in results:
            if r["task"].startswith(f"{name}@T."):
                by_method.setdefault(r["method"], {})[r["seed"]] = r
        rows.append([UNKNOWN, f"{mean:.{digits}f} ± {se:.{digits}f}", *_paired(mine, wsd, digits)])
        for method, seeds in by_method.items():
            mean, se = _mean_se([r["final"] for r in seeds.values()])
            paired = ("", "", "") if method == PEERS[0].name else _paired(seeds, wsd, digits)
            rows.append([method, f"{mean:.{digits}f} ± {se:.{digits}f}", *paired])
        head = (
            f"### {name} ({spec.metric}; base lr {spec.lr:g})\n\n"
            f"AutoDrop stopped by itself in {stopped} of {len(mine)} seeds (the others ran to the cap); "
            f"T = {np.mean(t_steps) / full_steps[name]:.2f} x the peer study's full length ({full_steps[name]} steps) "
            f"on average (per seed: {', '.join(f'{t / full_steps[name]:.2f}' for t in t_steps)}), "
            f"{np.mean(drops):.1f} drops per run.\n\n"
        )
        sections.append(
            head
            + markdown_table(
                [
                    "method",
                    "final, mean ± s.e.",
                    "minus WSD told T, paired",
                    "seeds better/equal/worse",
                    "verdict (2 s.e.)",
                ],
                rows,
            )
        )
    return "\n\n".join(sections)


def _paired(seeds: dict[int, dict], wsd: dict[int, dict], digits: int) -> tuple[str, str, str]:
    common = sorted(set(seeds) & set(wsd))
    if not common:
        return "", "", ""
    diffs = [seeds[s]["final"] - wsd[s]["final"] for s in common]
    d, dse = _mean_se(diffs)
    better, worse = sum(x < 0 for x in diffs), sum(x > 0 for x in diffs)
    verdict = "better" if d + 2 * dse < 0 else "worse" if d - 2 * dse > 0 else "tie"
    return f"{d:+.{digits}f} ± {dse:.{digits}f}", f"{better}/{len(common) - better - worse}/{worse}", verdict


def main(argv=None) -> str:
    def extra(parser):
        parser.add_argument("--tasks", default=",".join(STUDY_TASKS), help="comma-separated, of " + ", ".join(TASKS))

    study = Study(
        "experiments.unknown_length_study", __doc__.splitlines()[0], argv=argv, saves_runs=True, extra_args=extra
    )
    seeds = list(range(study.args.seeds or (1 if study.quick else 5)))
    names = study.args.tasks.split(",")
    tasks = {n: dataclasses.replace(TASKS[n], epochs=3) if study.quick else TASKS[n] for n in names}
    full_steps = {n: t.max_steps or t.epochs * steps_per_epoch(t) for n, t in tasks.items()}
    runs_path = study.path("unknown_length_runs.json.gz")
    if study.report_only:
        results, provenance = load_runs(runs_path)
    else:

        def progress(r):
            print(
                f"[{r['task']}] {r['method']} seed={r['seed']}: final {r['final']:.4f} at step {stop_step(r)}",
                file=sys.stderr,
            )

        cap = 2 if study.quick else CAP
        first = run_all(
            [(capped(t, cap), AUTODROP, s, t.lr) for t in tasks.values() for s in seeds], study.args.workers, progress
        )
        # Each seed's peers are told that seed's T (a task name per seed keeps run_all's keys apart).
        jobs = [
            (
                dataclasses.replace(
                    told(tasks[r["task"].split("@")[0]], stop_step(r)), name=f"{r['task'].split('@')[0]}@T.{r['seed']}"
                ),
                m,
                r["seed"],
                r["lr"],
            )
            for r in first
            for m in PEERS
        ]
        results = first + run_all(jobs, study.args.workers, progress)
        provenance = study.provenance()
        save_runs(runs_path, results, provenance)
    return study.write_report(
        "unknown_length.md",
        "Runs of unknown length: AutoDrop stopping by itself against WSD told its length",
        __doc__.split("\n\n", 2)[2].strip() + "\n\n" + report(results, full_steps),
        provenance=provenance if study.report_only else None,
    )


if __name__ == "__main__":
    print(main(sys.argv[1:]))
