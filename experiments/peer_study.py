"""AutoDrop's defaults against the schedules users pick instead: WSD, schedule-free, cosine, linear, constant.

    python -m experiments.peer_study --workers 2                  # the evidence (docs/results/peers.md)
    python -m experiments.peer_study --tasks digits_bn --seeds 3  # one task
    python -m experiments.peer_study --lr-grid 1                  # every method at the base lr only
    python -m experiments.peer_study --quick                      # a smoke run (used by the tests)

Every task runs through the real `Trainer` at full length and cut to 1/4 and 1/10 (every schedule is told
the cut length, as a user who sets `max_steps` would), with the same seeds for every method. Every method
gets the same small lr grid, the study's base lr x {1/3, 1, 3} (schedule-free: its README's range, x {10,
20, 50} for SGD and x {1, 3, 10} for AdamW); per task, length and method the lr with the best mean final
validation metric over the seeds is kept (ties: the validation loss) and its test metric reported. WSD is
transformers' `warmup_stable_decay` with `decay_type="1-sqrt"` over the last 20 % of the steps (no
warm-up, to 0); schedule-free is `schedulefree`'s SGD or AdamW (5 % warm-up); AutoDrop is
`AutoDropCallback()` at every default on a constant lr, plus one row without its cooldown
(`cooldown_fraction=0`: the saturation drops alone, what a run of unknown length gets). Each row is
compared with WSD (at WSD's own chosen lr) seed by seed: the mean of the paired differences and its
standard error. For the runs where AutoDrop drops before the decay (the parameters settle), the report
gives the compute to reach WSD's final metric.

Writes `peers.md`, `peers_runs.json.gz` and `peers_<task>.png` (lr and test metric against the epoch,
AutoDrop beside WSD, seed 0, full length) into `--out` (default `docs/results`).
"""

from __future__ import annotations

import dataclasses
import math
import sys

import numpy as np

from .common import Study, markdown_table
from .trainer_study import Method, TaskSpec, load_runs, run_all, save_runs

TASKS = {
    # experiments/digits_study.py's task: SGD momentum 0.9, a CNN without BatchNorm.
    "digits": TaskSpec("digits", "test error (%)", "sgd", lr=0.05, weight_decay=5e-4, batch_size=64, epochs=40),
    # The same data and optimizer with the demo's BatchNorm CNN: the SGD + BatchNorm convolutional task.
    "digits_bn": TaskSpec("digits_bn", "test error (%)", "sgd", lr=0.05, weight_decay=5e-4, batch_size=64, epochs=40),
    # experiments/friedman_task.py's task: AdamW on a regression MLP.
    "friedman": TaskSpec(
        "friedman", "test MSE (standardised)", "adamw", lr=3e-3, weight_decay=0.0, batch_size=32, epochs=30
    ),
    # A transformers language model through the Trainer, from a config: a 2-layer GPT-2 over bytes of the
    # standard library's text (the char LM's data), AdamW, 1,000 steps (under one epoch), clipping at 1.0.
    "gpt2": TaskSpec(
        "gpt2",
        "test loss (bits/char)",
        "adamw",
        lr=3e-3,
        weight_decay=0.01,
        batch_size=16,
        max_steps=1000,
        eval_steps=100,
        max_grad_norm=1.0,
    ),
}
# Every method's lr grid, as multiples of the task's base lr; schedule-free's is its README's range.
LR_GRID = (1 / 3, 1.0, 3.0)
SCHEDULEFREE_GRID = {"sgd": (10.0, 20.0, 50.0), "adamw": (1.0, 3.0, 10.0)}
CUTS = (1.0, 0.25, 0.1)
AUTODROP = "AutoDrop (defaults)"
NO_COOLDOWN = "AutoDrop (defaults, cooldown_fraction=0)"
WSD = "WSD (1-sqrt, last 20 %)"


SCHEDULEFREE = "schedule-free"


def methods() -> list[Method]:
    return [
        Method("constant lr", "constant"),
        Method("cosine", "cosine"),
        Method("linear", "linear"),
        Method(WSD, "wsd"),
        Method(SCHEDULEFREE, "schedulefree"),
        Method(AUTODROP, "autodrop", autodrop={}),
        Method(NO_COOLDOWN, "autodrop", autodrop={"cooldown_fraction": 0.0}),
    ]


def grid(task: TaskSpec, method: Method, lr_grid: tuple[float, ...]) -> tuple[float, ...]:
    """The lr multipliers `method` is tried at: schedule-free its README's range, every other method `lr_grid`.

    `--lr-grid 1` (the base lr only) keeps schedule-free at the low end of its range.
    """
    if method.kind != "schedulefree":
        return lr_grid
    own = SCHEDULEFREE_GRID[task.optimizer]
    return own if len(lr_grid) > 1 else own[:1]


def cut(task: TaskSpec, fraction: float) -> TaskSpec:
    if task.max_steps:
        steps = max(20, round(task.max_steps * fraction))
        eval_steps = min(task.eval_steps, max(1, steps // 10)) if task.eval_steps else None
        return dataclasses.replace(task, name=f"{task.name}@{steps}st", max_steps=steps, eval_steps=eval_steps)
    epochs = max(2, round(task.epochs * fraction))
    return dataclasses.replace(task, name=f"{task.name}@{epochs}ep", epochs=epochs)


def _validation_key(runs: list[dict]) -> tuple[float, float]:
    """Lower is better: the mean final validation metric over the seeds, then the mean validation loss."""

    def mean(key: str) -> float:
        values = [r[key] for r in runs]
        return math.inf if not all(math.isfinite(v) for v in values) else float(np.mean(values))

    return mean("final_val"), mean("final_val_loss")


def select(results: list[dict]) -> tuple[list[dict], dict[tuple[str, str], dict[float, tuple[float, float]]]]:
    """Per (task @ length, method) the runs at the lr with the best validation key, and every lr's key."""
    by: dict[tuple[str, str], dict[float, list[dict]]] = {}
    for r in results:
        by.setdefault((r["task"], r["method"]), {}).setdefault(r["run_lr"], []).append(r)
    chosen, keys = [], {}
    for cell, lrs in by.items():
        keys[cell] = {lr: _validation_key(runs) for lr, runs in lrs.items()}
        best = min(keys[cell], key=lambda lr: keys[cell][lr])
        chosen += lrs[best]
    return chosen, keys


def _to_reach(run: dict, target: float, unit: str) -> float | None:
    """The first epoch (or step) at which the run's test metric is at or below `target` (None: never)."""
    return next((c[unit] for c in run["curve"] if c["metric"] <= target), None)


def _mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan


def report(all_results: list[dict]) -> str:
    results, keys = select(all_results)
    tasks = list(dict.fromkeys(r["task"] for r in results))
    sections = []
    summary = []
    for name in tasks:
        spec = TASKS[name.split("@")[0]]
        digits = 2 if "%" in spec.metric else 4
        runs = [r for r in results if r["task"] == name]
        by = {}
        for r in runs:
            by.setdefault(r["method"], {})[r["seed"]] = r
        wsd = by.get(WSD, {})
        rows = []
        for method, seeds in by.items():
            mean, se = _mean_se([r["final"] for r in seeds.values()])
            run_lr = next(iter(seeds.values()))["run_lr"]
            tried = keys[(name, method)]
            lr_cell = f"{run_lr / spec.lr:.3g}" + (
                " (of " + ", ".join(f"{lr / spec.lr:.3g}" for lr in sorted(tried)) + ")" if len(tried) > 1 else ""
            )
            val = ", ".join(
                f"{tried[lr][0]:.{digits}f}" if math.isfinite(tried[lr][0]) else "diverged" for lr in sorted(tried)
            )
            row = [method, lr_cell, val, f"{mean:.{digits}f} ± {se:.{digits}f}"]
            common = sorted(set(seeds) & set(wsd))
            if method != WSD and common:
                diffs = [seeds[s]["final"] - wsd[s]["final"] for s in common]
                d, dse = _mean_se(diffs)
                better = sum(x < 0 for x in diffs)
                worse = sum(x > 0 for x in diffs)
                verdict = "better" if d + 2 * dse < 0 else "worse" if d - 2 * dse > 0 else "tie"
                row += [
                    f"{d:+.{digits}f} ± {dse:.{digits}f}",
                    f"{better}/{len(common) - better - worse}/{worse}",
                    verdict,
                ]
                if method in (AUTODROP, NO_COOLDOWN):
                    summary.append((name, method, d, dse, verdict, digits))
            else:
                row += ["", "", ""]
            drops = [sum(m["dropped"] for m in r["autodrop"]) for r in seeds.values()] if "AutoDrop" in method else []
            row.append(f"{np.mean(drops):.1f}" if drops else "")
            reach = []
            if "AutoDrop" in method and common:
                for s in common:
                    t = _to_reach(seeds[s], wsd[s]["final"], spec.unit)
                    reach.append(t if t is not None else math.inf)
            row.append(
                (
                    f"{np.median(reach):g} of {runs[0]['curve'][-1][spec.unit]:g}"
                    if np.isfinite(np.median(reach))
                    else "not reached"
                )
                if reach
                else ""
            )
            rows.append(row)
        metric = spec.metric
        sections.append(
            f"### {name}\n\n"
            + markdown_table(
                [
                    f"method ({metric})",
                    "lr chosen (x base lr)",
                    "validation at each lr",
                    "final, mean ± s.e.",
                    "minus WSD, paired mean ± s.e.",
                    "seeds better/equal/worse than WSD",
                    "verdict (2 s.e.)",
                    "saturation drops per run",
                    f"{spec.unit}s to WSD's final (median)",
                ],
                rows,
            )
        )
    lines = [f"| {t} | {m} | {d:+.{n}f} ± {se:.{n}f} | {v} |" for t, m, d, se, v, n in summary]
    head = "| task @ length | AutoDrop row | minus WSD (paired) | verdict |\n|---|---|---|---|\n"
    return (
        "## Summary: AutoDrop against WSD\n\n"
        + head
        + "\n".join(lines)
        + "\n\n## Every method\n\n"
        + "\n\n".join(sections)
    )


def plot(study: Study, results: list[dict], task: str) -> str | None:
    from .common import setup_matplotlib

    setup_matplotlib()
    import matplotlib.pyplot as plt

    runs = {r["method"]: r for r in select(results)[0] if r["task"] == task and r["seed"] == 0}
    if AUTODROP not in runs or WSD not in runs:
        return None
    unit = TASKS[task.split("@")[0]].unit
    fig, axes = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for method, color in ((WSD, "tab:orange"), (AUTODROP, "tab:blue"), ("constant lr", "tab:gray")):
        if method not in runs:
            continue
        curve = runs[method]["curve"]
        epochs = [c[unit] for c in curve]
        axes[0].plot(epochs, [c["lr"] for c in curve], color=color, label=method)
        axes[1].plot(epochs, [c["metric"] for c in curve], color=color, label=method)
    axes[0].set_ylabel(f"lr (at each test, per {unit})")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("test metric")
    axes[1].set_yscale("log")
    axes[1].set_xlabel(unit)
    axes[0].legend()
    axes[0].set_title(f"{task}: AutoDrop beside WSD (seed 0)")
    return study.save_figure(fig, f"peers_{task.split('@')[0]}.png")


def _fraction(text: str) -> float:
    num, _, den = text.partition("/")
    return float(num) / float(den or 1)


def _rerun(study, jobs, runs_path, progress) -> tuple[list[dict], dict]:
    """Train the jobs of the `--rerun` methods again and take every other job's run from the saved runs.

    The methods left alone are deterministic and do not depend on AutoDrop's code, so their saved runs are
    what a full run would train again, provided training reproduces on this machine: one kept job is
    trained again to check it, and a difference refuses the merge. The provenance names both commands.
    """
    names = set(study.args.rerun)
    known = {m.name for m in methods()}
    if names - known:
        raise SystemExit(f"--rerun: unknown method(s) {sorted(names - known)}; the methods are {sorted(known)}")

    def key(job) -> tuple:
        t, m, s, lr = job
        return (t.name, m.name, s, f"{lr:.6g}")  # the saved runs hold their lr to 6 digits

    saved, old = load_runs(runs_path)
    by_key = {(r["task"], r["method"], r["seed"], f"{r['lr']:.6g}"): r for r in saved}
    keep, fresh = {}, []
    for job in jobs:
        if job[1].name in names:
            fresh.append(job)
        elif key(job) in by_key:
            keep[key(job)] = by_key[key(job)]
        else:
            raise SystemExit(f"--rerun: {runs_path} has no run for {key(job)}; run the study in full")
    # The kept runs stand for what this machine would train only if training reproduces here (another CPU or
    # library build can change the last bits, which a long run amplifies): the first kept job is trained again
    # beside the fresh ones and must come out as saved.
    probe = next(job for job in jobs if job[1].name not in names)
    *trained, again = run_all([*fresh, probe], study.args.workers, progress)
    saved_probe = keep[key(probe)]
    if f"{again['final']:.6g}" != f"{saved_probe['final']:.6g}":
        raise SystemExit(
            f"--rerun: the saved runs do not reproduce here ({probe[0].name}, {probe[1].name}, seed {probe[2]}: "
            f"final {again['final']:.6g}, saved {saved_probe['final']:.6g}); run the study in full"
        )
    done = dict(zip(map(key, fresh), trained))
    new = study.provenance()
    provenance = {
        **new,
        "command": f"{old['command']}` ({old['minutes']:.1f} min) and then, for the rows of "
        f"{', '.join(sorted(names))}, `{new['command']}",
        "minutes": old["minutes"] + new["minutes"],
    }
    return [keep.get(k) or done[k] for k in map(key, jobs)], provenance


def main(argv=None) -> str:
    def extra(parser):
        parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: " + ", ".join(TASKS))
        parser.add_argument("--cuts", default=",".join(map(str, CUTS)), help="run lengths as fractions of the full one")
        parser.add_argument(
            "--lr-grid",
            default="1/3,1,3",
            help="lr multipliers every method is tried at (schedule-free: its own range); '1': the base lr only",
        )
        parser.add_argument(
            "--rerun",
            action="append",
            default=[],
            metavar="METHOD",
            help="train only this method's runs again (repeatable; e.g. 'AutoDrop (defaults)' after a change to "
            "AutoDrop) and keep every other run of the saved runs file in --out",
        )

    study = Study("experiments.peer_study", __doc__.splitlines()[0], argv=argv, saves_runs=True, extra_args=extra)
    seeds = list(range(study.args.seeds or (1 if study.quick else 5)))
    cuts = [float(c) for c in study.args.cuts.split(",")]
    lr_grid = tuple(_fraction(g) for g in study.args.lr_grid.split(","))
    jobs = []
    for name in study.args.tasks.split(","):
        task = TASKS[name]
        if study.quick:
            task, cuts = (
                (
                    dataclasses.replace(task, max_steps=40, eval_steps=10)
                    if task.max_steps
                    else dataclasses.replace(task, epochs=4)
                ),
                [1.0],
            )
        for fraction in cuts:
            t = cut(task, fraction)
            jobs += [(t, m, s, t.lr * g) for m in methods() for g in grid(t, m, lr_grid) for s in seeds]
    runs_path = study.path("peers_runs.json.gz")
    if study.report_only:
        results, provenance = load_runs(runs_path)
    else:

        def progress(r):
            print(
                f"[{r['task']}] {r['method']} seed={r['seed']}: final {r['final']:.3f} {r['wall_s']:.0f}s",
                file=sys.stderr,
            )

        if study.args.rerun:
            results, provenance = _rerun(study, jobs, runs_path, progress)
        else:
            results = run_all(jobs, workers=study.args.workers, progress=progress)
            provenance = study.provenance()
        save_runs(runs_path, results, provenance)
    figures = [
        plot(study, results, t)
        for t in dict.fromkeys(r["task"] for r in results)
        if t == cut(TASKS[t.split("@")[0]], 1.0).name or study.quick
    ]
    body = report(results) + "".join(f"\n\n![{f}]({f})" for f in figures if f)
    return study.write_report(
        "peers.md",
        "AutoDrop against WSD, schedule-free, cosine, linear and the constant lr",
        __doc__.split("\n\n", 2)[2].split("Writes")[0].strip() + "\n\n" + body,
        provenance=provenance if study.report_only or study.args.rerun else None,
        rewritten=study.report_only,
    )


if __name__ == "__main__":
    print(main(sys.argv[1:]))
