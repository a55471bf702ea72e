"""The harness the real-data studies share: one `Trainer` run per (method, seed, lr), tables and plots.

A study is a `TaskSpec` (data, model, optimizer, run length, when to measure) and a list of `Method`s
(how the lr is scheduled). `run_one` trains one combination with the Hugging Face `Trainer` and records
the test metric after every epoch (or every `eval_steps` steps), the validation passes the method
needed, the wall time, and every AutoDrop measurement. The constant-lr runs also carry AutoDrop in
`dry_run` mode with the paper's defaults: until a first drop the trajectory of a real AutoDrop run is
the constant-lr trajectory, so the dry run shows exactly when the paper's rule first fires.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

import numpy as np
import torch

from .common import Study, fmt, markdown_table, mean_std

__all__ = ["Method", "TaskSpec", "run_one", "run_all", "PAPER_AUTODROP", "standard_methods"]

# WSD's cooldown share (transformers' warmup_stable_decay, decay_type "1-sqrt"): the peers' standard.
WSD_FRACTION = 0.2

# The paper's AutoDrop settings (its test, theta_0, theta_max, n_d); the drop factor varies per row.
PAPER_AUTODROP = dict(detector="paper", threshold=0.01, max_threshold=1.0, drop_delay=20)


@dataclass(frozen=True)
class Method:
    """How the lr is scheduled in one row of the comparison.

    kind: "constant", "multistep" (drop by `factor` at 30/60/80% of the run, the paper's baselines),
    "cosine", "linear", "wsd" (the Trainer's `warmup_stable_decay`: constant, then 1 - sqrt to 0 over the
    run's last 20 %), "plateau" (the Trainer's `reduce_lr_on_plateau` with its defaults, on the validation
    loss), "schedulefree" (schedulefree's SGD/AdamW with 5% warm-up) or "autodrop" (`AutoDropCallback`
    with `autodrop` fields on a constant lr). `lr_scale` multiplies the task's (or the sweep's) lr.
    """

    name: str
    kind: str
    autodrop: dict = field(default_factory=dict)
    factor: float = 0.2
    lr_scale: float = 1.0


@dataclass(frozen=True)
class TaskSpec:
    """One task: its data and model (by name, so worker processes can rebuild them) and its run."""

    name: str
    metric: str  # the test metric's name in tables; lower is better
    optimizer: str  # "sgd" (momentum 0.9) or "adamw"
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int | None = None  # per-epoch runs
    max_steps: int | None = None  # step-based runs
    eval_steps: int | None = None  # test (and plateau validation) every N steps; None = every epoch
    interval_steps: int | None = None  # AutoDrop interval; None = one epoch
    max_grad_norm: float = 0.0

    @property
    def unit(self) -> str:
        return "epoch" if self.eval_steps is None else "step"


# ---------------------------------------------------------------------------------- one run
def _data_and_model(task: TaskSpec):
    from . import tasks

    if task.name.startswith("digits_bn"):
        train, val, test = tasks.digits_splits()
        return train, val, test, tasks.DigitsBNCNN, _digits_metric
    if task.name.startswith("digits"):
        train, val, test = tasks.digits_splits()
        return train, val, test, tasks.DigitsCNN, _digits_metric
    if task.name.startswith("gpt2"):
        train, val, test = tasks.gpt2_splits()
        return train, val, test, tasks.TinyGPT2, _charlm_metric
    if task.name.startswith("charlm"):
        train, val, test = tasks.charlm_splits()
        return train, val, test, tasks.CharTransformer, _charlm_metric
    if task.name.startswith("friedman"):
        train, val, test = tasks.friedman_splits()
        return train, val, test, tasks.FriedmanMLP, _mse_metric
    raise ValueError(f"unknown task {task.name!r}")


def _mse_metric(model, data) -> tuple[float, float]:
    """(test mean squared error, the same): the metric is the loss."""
    mse = float(model(**data.tensors)["loss"])
    return mse, mse


def _digits_metric(model, data) -> tuple[float, float]:
    """(test error in %, test cross-entropy in nats)."""
    out = model(**data.tensors)
    return 100.0 * float((out["logits"].argmax(-1) != data.tensors["labels"]).float().mean()), float(out["loss"])


def _charlm_metric(model, data) -> tuple[float, float]:
    """(test loss in bits per character, the same in nats)."""
    from .tasks import NATS_TO_BITS

    nats = float(np.mean([float(model(**data[i : i + 64])["loss"]) for i in range(0, len(data), 64)]))
    return nats * NATS_TO_BITS, nats


def _make_optimizer(task: TaskSpec, method: Method, model, lr: float, total_steps: int):
    params = model.parameters()
    warmup = max(1, int(0.05 * total_steps))
    if method.kind == "schedulefree":
        import schedulefree

        if task.optimizer == "sgd":
            return schedulefree.SGDScheduleFree(
                params, lr=lr, momentum=0.9, weight_decay=task.weight_decay, warmup_steps=warmup
            )
        return schedulefree.AdamWScheduleFree(params, lr=lr, weight_decay=task.weight_decay, warmup_steps=warmup)
    if task.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=task.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=task.weight_decay)


def _multistep(optimizer, total_steps: int, steps_per_unit: int, factor: float):
    """Drops by `factor` at 30%, 60% and 80% of the run, on unit (epoch) boundaries."""
    units = total_steps // steps_per_unit
    milestones = [round(f * units) * steps_per_unit for f in (0.3, 0.6, 0.8)]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor ** sum(step >= m for m in milestones))


def run_one(task: TaskSpec, method: Method, seed: int, lr: float | None = None) -> dict:
    """Train one (task, method, seed, lr) with the `Trainer`; returns a JSON-friendly record."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from hf_autodrop import AutoDropCallback, AutoDropConfig

    lr = task.lr if lr is None else lr
    run_lr = lr * method.lr_scale
    train, val, test, model_cls, metric_fn = _data_and_model(task)
    steps_per_epoch = math.ceil(len(train) / task.batch_size)
    total = task.max_steps if task.max_steps else task.epochs * steps_per_epoch
    steps_per_unit = steps_per_epoch if task.eval_steps is None else task.eval_steps
    torch.manual_seed(seed)
    model = model_cls()
    optimizer = _make_optimizer(task, method, model, run_lr, total)
    scheduler = _multistep(optimizer, total, steps_per_unit, method.factor) if method.kind == "multistep" else None
    schedule_type = {
        "cosine": "cosine",
        "linear": "linear",
        "wsd": "warmup_stable_decay",
        "plateau": "reduce_lr_on_plateau",
    }.get(method.kind, "constant")
    # WSD as the peers issue defines it: no warm-up, 1 - sqrt over the last 20 % of the steps, to 0.
    schedule_kwargs = (
        {"num_decay_steps": round(WSD_FRACTION * total), "decay_type": "1-sqrt"} if method.kind == "wsd" else {}
    )

    curve: list[dict] = []
    eval_time = [0.0]

    class TestCurve(TrainerCallback):
        """The test metric at every measuring point, after AutoDrop has acted (it is added last)."""

        def _record(self, state, optimizer, model):
            start = time.perf_counter()
            model.eval()
            if hasattr(optimizer, "eval"):
                optimizer.eval()  # schedule-free: evaluate at the averaged point
            with torch.no_grad():
                value, loss = metric_fn(model, test)
                val_value, val_loss = metric_fn(model, val)
            if hasattr(optimizer, "train"):
                optimizer.train()
            model.train()
            curve.append(
                {
                    "step": state.global_step,
                    "epoch": state.epoch,
                    "metric": value,
                    "loss": loss,
                    "val_metric": val_value,
                    "val_loss": val_loss,
                    "lr": float(optimizer.param_groups[0]["lr"]),
                }
            )
            eval_time[0] += time.perf_counter() - start

        def on_epoch_end(self, args, state, control, optimizer=None, model=None, **kwargs):
            if task.eval_steps is None:
                self._record(state, optimizer, model)

        def on_step_end(self, args, state, control, optimizer=None, model=None, **kwargs):
            if task.eval_steps is not None and state.global_step % task.eval_steps == 0:
                self._record(state, optimizer, model)

    log_lines: list[str] = []

    class KeepLog(logging.Handler):
        def emit(self, record):
            log_lines.append(record.getMessage())

    keep_log = KeepLog(logging.INFO)
    hf_logger = logging.getLogger("hf_autodrop")
    hf_logger.addHandler(keep_log)
    old_level = hf_logger.level
    hf_logger.setLevel(logging.INFO)

    callbacks: list = []
    autodrop_cb = None
    if method.kind == "autodrop":
        autodrop_cb = AutoDropCallback(AutoDropConfig(**{"interval_steps": task.interval_steps, **method.autodrop}))
    elif method.kind == "constant":
        autodrop_cb = AutoDropCallback(
            AutoDropConfig(
                **{"interval_steps": task.interval_steps, **PAPER_AUTODROP, **method.autodrop, "dry_run": True}
            )
        )
    if autodrop_cb is not None:
        callbacks.append(autodrop_cb)
    callbacks.append(TestCurve())

    with tempfile.TemporaryDirectory() as out:
        plateau = method.kind == "plateau"
        args = TrainingArguments(
            output_dir=out,
            num_train_epochs=task.epochs or 1,
            max_steps=task.max_steps or -1,
            per_device_train_batch_size=task.batch_size,
            per_device_eval_batch_size=256,
            learning_rate=run_lr,
            weight_decay=task.weight_decay,
            lr_scheduler_type=schedule_type,
            lr_scheduler_kwargs=schedule_kwargs,
            max_grad_norm=task.max_grad_norm,
            eval_strategy=("epoch" if task.eval_steps is None else "steps") if plateau else "no",
            eval_steps=task.eval_steps if plateau else None,
            prediction_loss_only=True,
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=seed,
            data_seed=seed,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=val if plateau else None,
            callbacks=callbacks,
            optimizers=(optimizer, scheduler),
        )
        trainer.remove_callback(PrinterCallback)  # the studies print their own progress
        start = time.perf_counter()
        try:
            trainer.train()
        finally:
            hf_logger.removeHandler(keep_log)
            hf_logger.setLevel(old_level)
        wall = time.perf_counter() - start - eval_time[0]
        val_passes = sum("eval_loss" in h for h in trainer.state.log_history)

    metrics = [c["metric"] for c in curve]
    best = int(np.argmin(metrics))
    keep = (
        "interval",
        "step",
        "epoch",
        "angle",
        "angle_change",
        "statistic",
        "tolerance",
        "triggered",
        "dropped",
        "num_drops",
        "lr_scale",
        "window",
        "since_anchor",
        "distance_sq",
    )
    measurements = [{k: m.get(k) for k in keep} for m in autodrop_cb.measurements] if autodrop_cb else []
    return {
        "task": task.name,
        "method": method.name,
        "kind": method.kind,
        "seed": seed,
        "lr": lr,
        "run_lr": run_lr,
        "curve": curve,
        "final": metrics[-1],
        "best": metrics[best],
        "final_loss": curve[-1]["loss"],
        "final_val": curve[-1]["val_metric"],
        "final_val_loss": curve[-1]["val_loss"],
        "to_best": curve[best]["epoch"] if task.eval_steps is None else curve[best]["step"],
        "val_passes": val_passes,
        "wall_s": wall,
        "autodrop": measurements,
        "log": log_lines,  # hf_autodrop's INFO and WARNING lines (the interval it chose, every drop)
        "dry_run": method.kind == "constant",
        "derived": False,
    }


# ---------------------------------------------------------------------------------- many runs
def _init_worker() -> None:
    torch.set_num_threads(1)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _run_job(job) -> dict:
    task, method, seed, lr = job
    return run_one(task, method, seed, lr)


def _pool_map(jobs: list, workers: int, progress: Callable[[dict], None] | None) -> list[dict]:
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(_run_job(job))
            if progress:
                progress(results[-1])
        return results
    with ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=get_context("spawn"), initializer=_init_worker
    ) as pool:
        futures = [pool.submit(_run_job, job) for job in jobs]
        results = []
        for fut in futures:
            results.append(fut.result())
            if progress:
                progress(results[-1])
        return results


def _dry_fields(method: Method) -> dict:
    """The AutoDrop fields of a constant-lr row's dry run, or of an AutoDrop row, without the drop factor."""
    fields = {**PAPER_AUTODROP, **method.autodrop} if method.kind == "constant" else dict(method.autodrop)
    fields.pop("drop_factor", None)
    return fields


def run_all(
    jobs: Sequence[tuple[TaskSpec, Method, int, float | None]],
    workers: int = 1,
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run every job (in `workers` processes with one torch thread each); results in job order.

    An AutoDrop job is not trained again when the constant-lr job of the same task, seed and lr ran a
    dry run with the same settings (the drop factor aside) that never reached a drop: AutoDrop changes
    nothing before its first drop, and the first trigger and drop do not depend on the drop factor,
    so that run is the constant-lr run, bit for bit (`tests/test_experiments_trainer.py` checks this).
    Its record is the constant run's, marked `"derived": True`.
    """
    _init_worker()
    jobs = [(t, m, s, t.lr if lr is None else lr) for t, m, s, lr in jobs]
    constants = {(t.name, s, lr): m for t, m, s, lr in jobs if m.kind == "constant"}

    def derivable(job) -> bool:
        t, m, s, lr = job
        base = constants.get((t.name, s, lr))
        return m.kind == "autodrop" and base is not None and _dry_fields(base) == _dry_fields(m)

    first = [j for j in jobs if not derivable(j)]
    done = dict(zip(map(_key, first), _pool_map(first, workers, progress)))
    second = []
    for job in jobs:
        if _key(job) in done:
            continue
        t, m, s, lr = job
        base = done[_key((t, constants[(t.name, s, lr)], s, lr))]
        if any(x["dropped"] for x in base["autodrop"]):
            second.append(job)
        else:
            done[_key(job)] = {**base, "method": m.name, "kind": m.kind, "dry_run": False, "derived": True}
            if progress:
                progress(done[_key(job)])
    done.update(zip(map(_key, second), _pool_map(second, workers, progress)))
    return [done[_key(j)] for j in jobs]


def _key(job) -> tuple:
    t, m, s, lr = job
    return (t.name, m.name, s, lr)


# ---------------------------------------------------------------------------------- methods
def standard_methods(
    tuned: dict | None = None, overrides: dict | None = None, schedulefree_lr_scale: float = 1.0
) -> list[Method]:
    """The comparison of issue 5: the usual schedules and AutoDrop with drop factors 0.1, 0.2, 0.5.

    `overrides` (the `--autodrop` command-line option) replace AutoDrop fields in every AutoDrop row
    and in the constant-lr dry run; `tuned` adds one AutoDrop row with those fields (not a default).
    Schedule-free runs at `schedulefree_lr_scale` x the lr (its README: 10x-50x for SGD, 1x-10x for AdamW).
    """
    overrides = overrides or {}
    sf_name = "schedule-free" + (f" (lr x{schedulefree_lr_scale:g})" if schedulefree_lr_scale != 1 else "")
    methods = [
        Method("constant lr", "constant", autodrop=dict(overrides)),
        Method("multistep x0.2 at 30/60/80%", "multistep"),
        Method("cosine", "cosine"),
        Method("reduce_lr_on_plateau", "plateau"),
        Method(sf_name, "schedulefree", lr_scale=schedulefree_lr_scale),
    ]
    origin = "paper defaults" + (" + --autodrop overrides" if overrides else "")
    for rho in (0.1, 0.2, 0.5):
        methods.append(
            Method(
                f"AutoDrop rho={rho} ({origin})",
                "autodrop",
                autodrop={**PAPER_AUTODROP, "drop_factor": rho, **overrides},
            )
        )
    if tuned:
        short = {"drop_factor": "rho", "threshold": "theta_0", "max_threshold": "theta_max", "drop_delay": "n_d"}
        label = ", ".join(
            f"{short.get(k, k)}={v:g}" if isinstance(v, float) else f"{short.get(k, k)}={v}" for k, v in tuned.items()
        )
        methods.append(Method(f"AutoDrop {label} (tuned here)", "autodrop", autodrop={**PAPER_AUTODROP, **tuned}))
    return methods


# ---------------------------------------------------------------------------------- reports
def _group(results: list[dict]) -> dict[tuple[str, float], list[dict]]:
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["lr"]), []).append(r)
    return groups


def comparison_table(task: TaskSpec, results: list[dict], digits: int = 2) -> str:
    unit = task.unit
    rows = []
    for (name, _lr), runs in _group(results).items():
        drops = [sum(m["dropped"] for m in r["autodrop"]) for r in runs]
        is_autodrop = runs[0]["kind"] == "autodrop"
        rows.append(
            [
                name,
                mean_std([r["final"] for r in runs], digits),
                mean_std([r["best"] for r in runs], digits),
                *([mean_std([r["final_loss"] for r in runs], 3)] if "loss" not in task.metric else []),
                mean_std([r["to_best"] for r in runs], 1),
                mean_std([r["val_passes"] for r in runs], 0),
                f"{np.mean([r['wall_s'] for r in runs]):.1f}",
                mean_std(drops, 1) if is_autodrop else "",
            ]
        )
    return markdown_table(
        [
            "method",
            f"final {task.metric}",
            f"best {task.metric}",
            *(["final test loss (nats)"] if "loss" not in task.metric else []),
            f"{unit}s to best",
            "validation passes",
            "wall time per run (s)",
            "drops",
        ],
        rows,
    )


def firing_table(task: TaskSpec, results: list[dict]) -> str:
    """Per AutoDrop row (and the constant-lr dry run): did the rule fire, when, and the angle signal."""
    unit = task.unit
    rows = []
    for (name, _lr), runs in _group(results).items():
        if not runs[0]["autodrop"]:
            continue
        fired, first_trigger, first_drop = 0, [], []
        for r in runs:
            trig = [m for m in r["autodrop"] if m["triggered"]]
            drop = [m for m in r["autodrop"] if m["dropped"]]
            fired += bool(trig)
            first_trigger.append(trig[0][unit] if trig else math.nan)
            first_drop.append(drop[0][unit] if drop else math.nan)
        changes = np.array([m["angle_change"] for r in runs for m in r["autodrop"]], dtype=float)
        changes = changes[np.isfinite(changes)]
        angles = np.array([m["angle"] for r in runs for m in r["autodrop"]], dtype=float)
        label = name + (" (dry run of the AutoDrop rows' settings)" if runs[0]["dry_run"] else "")
        rows.append(
            [
                label,
                f"{fired}/{len(runs)}",
                mean_std(first_trigger, 1) if fired else "never",
                mean_std(first_drop, 1) if any(np.isfinite(first_drop)) else "never",
                *(f"{q:.3g}" for q in (np.percentile(changes, [0, 5, 50, 95]) if changes.size else [math.nan] * 4)),
                f"{np.nanmin(angles):.1f}-{np.nanmax(angles):.1f}" if np.isfinite(angles).any() else "n/a",
            ]
        )
    return markdown_table(
        [
            "AutoDrop run",
            "runs that triggered",
            f"first trigger ({unit})",
            f"first drop ({unit})",
            "min abs(dw)",
            "5% abs(dw)",
            "median abs(dw)",
            "95% abs(dw)",
            "angle range (deg)",
        ],
        rows,
    )


def angle_trend(results: list[dict]) -> dict[str, float]:
    """Median |d omega| and mean omega over the first and last third of the constant-lr dry runs."""
    runs = [r for r in results if r["dry_run"] and r["autodrop"]]
    out: dict[str, float] = {}
    for part, sl in (("first", slice(None, 1)), ("last", slice(2, None))):
        ch, ang = [], []
        for r in runs:
            ms = r["autodrop"]
            n = len(ms)
            thirds = [ms[: n // 3], ms[n // 3 : 2 * n // 3], ms[2 * n // 3 :]][sl]
            for m in (m for t in thirds for m in t):
                if math.isfinite(m["angle_change"]):
                    ch.append(m["angle_change"])
                if math.isfinite(m["angle"]):
                    ang.append(m["angle"])
        out[f"{part}_change"] = float(np.median(ch)) if ch else math.nan
        out[f"{part}_angle"] = float(np.mean(ang)) if ang else math.nan
    return out


def sweep_table(task: TaskSpec, results: list[dict], digits: int = 2) -> str:
    methods = list(dict.fromkeys(r["method"] for r in results))
    lrs = sorted({r["lr"] for r in results}, reverse=True)
    groups = _group(results)
    rows = [
        [fmt(lr)] + [mean_std([r["final"] for r in groups.get((m, lr), [])], digits) for m in methods] for lr in lrs
    ]
    return markdown_table(["initial lr"] + methods, rows)


def plot_curves(study: Study, task: TaskSpec, results: list[dict], name: str, seed: int = 0) -> str:
    """Test metric, lr, AutoDrop's angle and test loss of one seed, for every method trained (not derived)."""
    import matplotlib.pyplot as plt

    runs = [r for r in results if r["lr"] == task.lr and r["seed"] == seed and not r.get("derived")]
    fig, axes = plt.subplots(2, 2, figsize=(14, 8))
    (ax_metric, ax_lr), (ax_angle, ax_loss) = axes
    for r in runs:
        x = [c[task.unit] for c in r["curve"]]
        ax_metric.plot(x, [c["metric"] for c in r["curve"]], lw=1, label=r["method"])
        ax_lr.semilogy(x, [c["lr"] for c in r["curve"]], lw=1, label=r["method"])
        ax_loss.semilogy(x, [c["loss"] for c in r["curve"]], lw=1, label=r["method"])
        ms = [m for m in r["autodrop"] if m["angle"] is not None and math.isfinite(m["angle"])]
        if ms:
            ax_angle.plot(
                [m[task.unit] for m in ms],
                [m["angle"] for m in ms],
                lw=1,
                label=r["method"] + (" (dry run)" if r["dry_run"] else ""),
            )
            for m in r["autodrop"]:
                if m["dropped"] and not r["dry_run"]:
                    ax_angle.axvline(m[task.unit], color="r", lw=0.5, alpha=0.6)
    values = [c["metric"] for r in runs for c in r["curve"]]
    ax_metric.set(
        title=f"{task.name}: {task.metric}, seed {seed}",
        xlabel=task.unit,
        ylim=(min(values) * 0.95, np.percentile(values, 80)),
    )
    ax_lr.set(title="learning rate (param group 0)", xlabel=task.unit)
    ax_angle.set(title="AutoDrop's omega_t, degrees (red: drops)", xlabel=task.unit)
    ax_loss.set(title="test loss (nats)", xlabel=task.unit)
    ax_lr.legend(fontsize=7, loc="lower left")
    ax_angle.legend(fontsize=7)
    fig.text(
        0.5,
        0.005,
        "AutoDrop rows that never dropped are the constant-lr curve and are not drawn again.",
        ha="center",
        fontsize=8,
    )
    return study.save_figure(fig, name)


def plot_to_best(study: Study, task: TaskSpec, results: list[dict], name: str) -> str:
    """The Figure 7 analogue: mean (and std) of the epochs/steps each method needed to reach its best."""
    import matplotlib.pyplot as plt

    groups = [(n, runs) for (n, lr), runs in _group(results).items() if lr == task.lr]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(groups) + 1.5))
    means = [np.mean([r["to_best"] for r in runs]) for _, runs in groups]
    stds = [np.std([r["to_best"] for r in runs]) for _, runs in groups]
    ax.barh(range(len(groups)), means, xerr=stds, color="tab:blue", alpha=0.7)
    ax.set_yticks(range(len(groups)), [n for n, _ in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel=f"{task.unit}s to the best {task.metric} (mean ± std over seeds)", title=task.name)
    return study.save_figure(fig, name)


def save_runs(path: str, results: list[dict], provenance: dict) -> None:
    """Every run's record (curves and AutoDrop measurements) and what produced them, floats to 6 digits."""
    import json

    def squeeze(x):
        if isinstance(x, float):
            return float(f"{x:.6g}") if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: squeeze(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [squeeze(v) for v in x]
        return x

    with gzip.open(path, "wt") as f:
        json.dump({"provenance": provenance, "runs": squeeze(results)}, f, separators=(",", ":"))


def load_runs(path: str) -> tuple[list[dict], dict]:
    """The runs and provenance `save_runs` wrote (NaN angles come back as None, read as NaN)."""
    import json

    with gzip.open(path, "rt") as f:
        data = json.load(f)
    for r in data["runs"]:
        for m in r["autodrop"]:
            for k in ("angle", "angle_change", "statistic", "distance_sq"):
                if m.get(k, 0.0) is None:
                    m[k] = math.nan
    return data["runs"], data["provenance"]


def paired_table(task: TaskSpec, results: list[dict], digits: int = 2) -> str:
    """Each AutoDrop row against each other method, seed by seed, on the final test metric.

    Verdict: "wins" when the mean difference (AutoDrop - other) is below -2 standard errors,
    "loses" when above +2, "ties" otherwise (lower is better).
    """
    groups = {name: {r["seed"]: r for r in runs} for (name, lr), runs in _group(results).items() if lr == task.lr}
    # AutoDrop rows that never dropped are the constant-lr row; show one of them (rho=0.2) and every row that dropped.
    autodrop = [
        n
        for n, runs in groups.items()
        if next(iter(runs.values()))["kind"] == "autodrop"
        and ("rho=0.2 (" in n or any(m["dropped"] for r in runs.values() for m in r["autodrop"]))
    ]
    ad_all = [n for n, runs in groups.items() if next(iter(runs.values()))["kind"] == "autodrop"]
    others = [n for n in groups if n not in ad_all]
    rows = []
    for a in autodrop:
        for o in others:
            seeds = sorted(set(groups[a]) & set(groups[o]))
            d = np.array([groups[a][s]["final"] - groups[o][s]["final"] for s in seeds])
            se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.inf
            verdict = "wins" if d.mean() < -2 * se else "loses" if d.mean() > 2 * se else "ties"
            rows.append(
                [
                    a,
                    o,
                    f"{d.mean():+.{digits}f} ± {se:.{digits}f}",
                    f"{(d < 0).sum()}/{(d == 0).sum()}/{(d > 0).sum()}",
                    verdict,
                ]
            )
    return markdown_table(
        [
            "AutoDrop row",
            "against",
            f"mean final {task.metric} difference ± s.e.",
            "seeds better/equal/worse",
            "verdict",
        ],
        rows,
    )


def main_for(
    study: Study,
    task: TaskSpec,
    sweep_lrs: Sequence[float] = (),
    tuned: dict | None = None,
    setup: str = "",
    digits: int = 2,
    schedulefree_lr_scale: float = 1.0,
) -> str:
    """Run one real-data study (the comparison, the lr sweep, the firing report) and write its report."""
    import sys

    from .common import setup_matplotlib

    setup_matplotlib()
    seeds = list(range(study.args.seeds or (1 if study.quick else 5)))
    methods = standard_methods(tuned=tuned, overrides=study.overrides, schedulefree_lr_scale=schedulefree_lr_scale)
    jobs = [(task, m, s, task.lr) for m in methods for s in seeds]
    by_name = {m.name: m for m in methods}
    sweep_methods = [
        by_name[n]
        for n in by_name
        if n.startswith(("constant", "multistep", "cosine", "schedule-free")) or "rho=0.2" in n or "tuned" in n
    ]
    jobs += [(task, m, s, lr) for lr in sweep_lrs if lr != task.lr for m in sweep_methods for s in seeds]

    def progress(r: dict) -> None:
        tag = " (derived from the dry run)" if r.get("derived") else f" {r['wall_s']:.0f}s"
        print(
            f"[{task.name}] {r['method']} lr={r['lr']} seed={r['seed']}: final {r['final']:.3f}{tag}",
            file=sys.stderr,
            flush=True,
        )

    runs_path = study.path(f"{task.name}_runs.json.gz")
    if study.report_only:
        results, provenance = load_runs(runs_path)
    else:
        results = run_all(jobs, workers=study.args.workers, progress=progress)
        provenance = study.provenance()
        save_runs(runs_path, results, provenance)
    main = [r for r in results if r["lr"] == task.lr]
    curves = plot_curves(study, task, main, f"{task.name}_curves.png")
    to_best = plot_to_best(study, task, main, f"{task.name}_to_best.png")
    derived = sum(r.get("derived", False) for r in results)
    trend = angle_trend(main)
    sections = [
        "## Setup\n\n" + setup + f"\n\nSeeds: {seeds} (the seed sets the initialisation and the data order; the "
        "data split is fixed). The test metric is measured after every "
        f"{'epoch' if task.eval_steps is None else f'{task.eval_steps} steps'} for every method (after AutoDrop "
        "has acted; schedule-free is measured at its averaged point); 'best' is the minimum over those points, "
        "which needs a validation pass at each of them, 'final' needs none. 'Validation passes' counts the "
        "passes the method itself needs to set its lr (only `reduce_lr_on_plateau`, on the validation split). "
        "Wall time is the training time per run without the test measurements; other jobs shared the machine's "
        "2 cores and the load changed during the study, so wall times carry tens of percent of noise."
        + (
            f" {derived} AutoDrop run(s) were not trained again: the constant-lr run of the same seed carries "
            "AutoDrop in dry-run mode with the same settings, and it never reached a drop, so the real AutoDrop run "
            "is that run bit for bit (AutoDrop changes nothing before its first drop, and the first trigger does "
            "not depend on the drop factor; a test checks this identity)."
            if derived
            else ""
        ),
        f"## Comparison at lr {task.lr}\n\n" + comparison_table(task, main, digits) + f"\n\n![curves]({curves})\n\n"
        "### AutoDrop against each method, seed by seed\n\n" + paired_table(task, main, digits),
        f"## Figure 7 analogue: {task.unit}s to the best {task.metric}\n\n![to best]({to_best})",
    ]
    if sweep_lrs:
        sections.append(
            f"## Table 2 analogue: initial learning rate sweep\n\nFinal {task.metric}, mean ± std over "
            f"{len(seeds)} seeds.\n\n"
            + sweep_table(
                task,
                [r for r in results if r["kind"] != "plateau" and any(r["method"] == m.name for m in sweep_methods)],
                digits,
            )
        )
    sections.append(
        "## Does AutoDrop with the paper's defaults fire? (issue 5 item 5)\n\n"
        f"theta_0 = 0.01 deg, theta_max = 1 deg, n_d = 20, one interval per "
        f"{'epoch' if task.interval_steps is None else f'{task.interval_steps} optimizer steps'}; dw = omega_t - "
        "omega_(t-1) in degrees, over every interval of every seed at the main lr. The constant-lr row is the "
        "dry run (measured, nothing changed).\n\n"
        + firing_table(task, main)
        + f"\n\nOn the constant-lr dry runs the median abs(dw) is {trend['first_change']:.3g} deg in the first third "
        f"of the run and {trend['last_change']:.3g} deg in the last third; the mean angle goes from "
        f"{trend['first_angle']:.1f} to {trend['last_angle']:.1f} deg."
    )
    return study.write_report(
        f"{task.name}.md",
        f"{task.name}: AutoDrop against the usual schedules",
        "\n\n".join(sections),
        provenance=provenance if study.report_only else None,
    )
