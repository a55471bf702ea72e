"""The run behind every recipe: parse, check, load, train with AutoDrop or the baseline, report, publish.

`main(recipe)` is what each recipe file calls. It uses hf_autodrop's public API the way any user
would: `AutoDropConfig` is parsed from the command line like the `TrainingArguments`, and
`hf_autodrop.callback.install` adds `AutoDropCallback` to the `Trainer`. With `--do_train false` it
scores `--model_name_or_path` on the test split instead (`evaluate_only`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

from . import publish
from .args import Args, parse_args
from .data import collate, load_eval_split, load_splits
from .model import ImageClassifier, ModelEma, create_model, load_checkpoint, make_mixup
from .recipe import Recipe
from .results import autodrop_drops, command_line, hardware, multistep_drops, plot_curves, summarize, versions
from .trainer import ErrorMetrics, top5_indices, trainer_class

logger = logging.getLogger("hf_autodrop.recipes")


def _resume_path(training_args) -> str | None:
    value = training_args.resume_from_checkpoint
    if value in (None, "", "False", "false"):
        return None
    if value in ("True", "true", "last"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(training_args.output_dir)
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {value}: no checkpoint-* folder in {training_args.output_dir}")
        return last
    return value


def _setup_logging(training_args) -> None:
    import transformers

    # The main process logs AutoDrop's drops (INFO); `--log_level` also sets the transformers verbosity.
    if training_args.log_level != "passive" or not training_args.should_log:
        log_level = training_args.get_process_log_level()
        transformers.utils.logging.set_verbosity(log_level)
    else:
        log_level = logging.INFO
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=log_level)
    for name in ("hf_autodrop", "hf_autodrop.recipes"):
        logging.getLogger(name).setLevel(log_level)


def _dataset_pretty(recipe: Recipe, args: Args) -> str:
    if args.data.dataset_name == recipe.dataset_name:
        return recipe.dataset_pretty
    return args.data.dataset_name or Path(args.data.data_dir).name


def run(recipe: Recipe, argv: list[str] | None = None) -> dict:
    """Train one recipe from command-line arguments; return the results written to `results.json`."""
    from transformers import set_seed

    from hf_autodrop import AutoDropCallback
    from hf_autodrop.callback import install

    started = time.time()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(recipe, argv)
    data_args, model_args, sched_args, augment, autodrop_cfg, training_args = (
        args.data,
        args.model,
        args.schedule,
        args.augment,
        args.autodrop,
        args.training,
    )
    _setup_logging(training_args)
    if training_args.dataloader_num_workers == 0:
        training_args.dataloader_persistent_workers = False  # torch refuses persistent workers without workers
    if not training_args.do_train:
        return evaluate_only(recipe, args, argv)

    # Everything a push needs is checked before the first step; the recipe uploads the timm folder itself
    # at the end (the Trainer's own push would upload its format, not timm's).
    push, hub_token = bool(training_args.push_to_hub), training_args.hub_token
    training_args.push_to_hub = False
    hub_model_id = None
    if push and training_args.process_index == 0:
        data_name = (data_args.dataset_name or Path(data_args.data_dir).name).split("/")[-1]
        default_name = f"{model_args.model_name}-{data_name}-{sched_args.schedule}"
        hub_model_id, hub_token = publish.prepare_push(
            training_args.hub_model_id, hub_token, training_args.hub_private_repo, default_name
        )
        logger.info("Will push the model folder to %s", hub_model_id)

    # The Trainer's label smoother needs a transformers model; the recipe's model smooths its own loss.
    label_smoothing, training_args.label_smoothing_factor = training_args.label_smoothing_factor, 0.0

    set_seed(training_args.seed)
    splits = load_splits(recipe.kind, data_args, training_args.seed, recipe.crop_pct, augment)
    model = create_model(model_args, splits.num_classes)
    wrapped = ImageClassifier(
        model,
        data_args.image_mean,
        data_args.image_std,
        channels_last=model_args.channels_last,
        label_smoothing=label_smoothing,
        mixup=make_mixup(augment.mixup, augment.cutmix, augment.mixup_prob, label_smoothing, splits.num_classes),
        random_erasing=augment.random_erasing,
    )

    total_batch = training_args.per_device_train_batch_size * training_args.world_size
    total_batch *= training_args.gradient_accumulation_steps
    if total_batch != recipe.batch_size:
        logger.warning(
            "Total batch size %d differs from the paper's %d: set --per_device_train_batch_size to "
            "%d / number of processes to match it (or scale --learning_rate).",
            total_batch,
            recipe.batch_size,
            recipe.batch_size,
        )

    steps_per_epoch = None
    if splits.streaming:
        # No length, so the Trainer needs max_steps; one epoch is one pass over num_train_examples.
        if splits.num_train_examples is None:
            raise ValueError("streaming without a known training-set size: pass --num_train_examples")
        steps_per_epoch = max(1, math.ceil(splits.num_train_examples / total_batch))
        if training_args.max_steps <= 0:
            training_args.max_steps = int(math.ceil(training_args.num_train_epochs * steps_per_epoch))
        training_args.accelerator_config.dispatch_batches = False  # each process reads its own shards

    multistep = sched_args.schedule == "multistep"
    milestones = list(sched_args.milestones) if multistep else None
    RecipeTrainer, LoopClock = trainer_class()
    trainer = RecipeTrainer(
        model=wrapped,
        args=training_args,
        train_dataset=splits.train,
        eval_dataset=splits.eval,
        data_collator=collate,
        compute_metrics=ErrorMetrics(),
        preprocess_logits_for_metrics=top5_indices,
        milestones=milestones,
        drop_factor=autodrop_cfg.drop_factor,
        steps_per_epoch=steps_per_epoch,
        weight_decay_all=sched_args.weight_decay_all,
    )
    monitored = not multistep or sched_args.monitor_angles
    callback = None
    if monitored:
        config = autodrop_cfg.replace(dry_run=True) if multistep else autodrop_cfg
        if steps_per_epoch is not None and config.interval_steps is None:
            config = config.replace(interval_steps=steps_per_epoch)
        callback = install(trainer, callback=AutoDropCallback(config))
    clock = LoopClock()
    trainer.add_callback(clock)
    ema = None
    if augment.model_ema:
        ema = ModelEma(wrapped.model, augment.model_ema_decay)
        trainer.add_callback(ema.callback())

    resume = _resume_path(training_args)
    if ema is not None and resume is not None and not ema.load(resume):
        logger.warning("No %s in %s: the EMA restarts from the resumed weights", ModelEma.FILE, resume)
    train_output = trainer.train(resume_from_checkpoint=resume)
    last_eval = next((h for h in reversed(trainer.state.log_history) if "eval_top1_error" in h), None)
    if last_eval is None or last_eval.get("step") != trainer.state.global_step:
        trainer.evaluate()
    ema_scores = _evaluate_ema(trainer, wrapped, ema, augment) if ema is not None else None
    train_end = time.time()

    is_paper_dataset = data_args.dataset_name == recipe.dataset_name
    method = (
        f"AutoDrop (rho = {autodrop_cfg.drop_factor:g})"
        if not multistep
        else f"Baseline, multistep x{autodrop_cfg.drop_factor:g} at epochs {', '.join(map(str, milestones))}"
    )
    paper_key = f"{sched_args.schedule}-{autodrop_cfg.drop_factor:g}"
    lr0 = training_args.learning_rate
    if multistep:
        drops = multistep_drops(
            trainer.milestone_steps, trainer.steps_per_epoch, trainer.state.global_step, lr0, autodrop_cfg.drop_factor
        )
    else:
        drops = autodrop_drops(trainer.state.log_history, lr0)
    results = {
        "recipe": recipe.name,
        "title": recipe.title
        if is_paper_dataset
        else f"{recipe.title.split(' on ')[0]} on {_dataset_pretty(recipe, args)}",
        "model_name": model_args.model_name if not model_args.model_name_or_path else model.default_cfg["architecture"],
        "dataset_name": data_args.dataset_name,
        "dataset_pretty": _dataset_pretty(recipe, args),
        "is_paper_dataset": is_paper_dataset,
        "eval_split": data_args.eval_split,
        "schedule": sched_args.schedule,
        "drop_factor": autodrop_cfg.drop_factor,
        "method": method,
        "seed": training_args.seed,
        "num_classes": splits.num_classes,
        "label_names": splits.label_names,
        "image_size": splits.image_size,
        "mean": list(data_args.image_mean),
        "std": list(data_args.image_std),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_train_examples": splits.num_train_examples,
        "epochs": trainer.state.epoch,
        "global_step": trainer.state.global_step,
        "total_batch_size": total_batch,
        "paper": {"key": paper_key, "value": recipe.paper.get(paper_key), "table": recipe.paper}
        if is_paper_dataset
        else {"key": paper_key, "value": None, "table": {}},
        "command": command_line(recipe, argv, training_args),
        "wall_time_s": train_end - started,
        "train_runtime_s": train_output.metrics.get("train_runtime"),
        "train_loop_began_at": clock.began_at,
        "train_loop_ended_at": clock.ended_at,
        "versions": versions(),
        "hardware": hardware(training_args),
        "ema": ema_scores,
        "config": {
            "recipe": dataclasses.asdict(recipe),
            "data": dataclasses.asdict(data_args),
            "model": dataclasses.asdict(model_args),
            "schedule": {**dataclasses.asdict(sched_args), "milestones": milestones},
            "augment": {**dataclasses.asdict(augment), "label_smoothing": label_smoothing},
            "autodrop": autodrop_cfg.to_dict() if not multistep else None,
            "angle_monitor": callback.config.to_dict() if (callback is not None and multistep) else None,
            "training": {**json.loads(training_args.to_json_string()), "label_smoothing_factor": label_smoothing},
        },
    }
    measurements = callback.measurements if callback is not None else None
    results.update(summarize(trainer.state.log_history, drops, lr0, monitored, measurements))
    if callback is not None and not multistep:
        # This process's measurements (those before a resume restored from the checkpoint), every group's lr.
        results["autodrop_drops"] = [
            {"interval": m["interval"], "epoch": m["epoch"], "step": m["step"], "lrs": list(m["lrs"])}
            for m in callback.measurements
            if m["dropped"]
        ]

    if trainer.is_world_process_zero():
        write_outputs(
            trainer,
            results,
            splits,
            data_args,
            ema=ema if augment.publish_ema else None,
            push=push,
            hub_model_id=hub_model_id,
            hub_token=hub_token,
            private=training_args.hub_private_repo,
        )
    return results


def _evaluate_ema(trainer, wrapped: ImageClassifier, ema: ModelEma, augment) -> dict:
    """Score the EMA weights on the test split (the model's own weights are put back afterwards)."""
    own = {k: v.detach().clone() for k, v in wrapped.model.state_dict().items()}
    wrapped.model.load_state_dict(ema.ema.module.state_dict())
    try:
        metrics = trainer.evaluate(metric_key_prefix="eval_ema")
    finally:
        wrapped.model.load_state_dict(own)
    return {
        "decay": augment.model_ema_decay,
        "top1_error": metrics["eval_ema_top1_error"],
        "top5_error": metrics.get("eval_ema_top5_error"),
        "published": augment.publish_ema,
    }


def write_outputs(
    trainer,
    results: dict,
    splits,
    data_args,
    *,
    ema: ModelEma | None,
    push: bool,
    hub_model_id: str | None,
    hub_token: str | None,
    private: bool | None,
) -> Path:
    """results.json, the curve, and the timm model folder with its card (pushed when asked)."""
    out = Path(trainer.args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    curve = plot_curves(results, out / "training_curve.png")
    folder = out / "model"
    model = ema.ema.module if ema is not None else trainer.accelerator.unwrap_model(trainer.model).model
    if ema is not None:  # the published weights' scores are the EMA's
        results = {
            **results,
            "final_test_error": results["ema"]["top1_error"],
            "final_top5_error": results["ema"]["top5_error"],
            "model_error": results.get("final_test_error"),
        }
    model.to(memory_format=torch.contiguous_format)  # training is over; safetensors wants plain tensors
    results["model_folder"] = str(folder)
    results["hub_model_id"] = hub_model_id if push else None
    publish.write_model_folder(
        model,
        folder,
        results,
        curve_path=curve,
        repo_id=hub_model_id,
        label_names=splits.label_names,
        data_config={
            "input_size": (3, splits.image_size, splits.image_size),
            "mean": tuple(data_args.image_mean),
            "std": tuple(data_args.image_std),
            "crop_pct": results["config"]["recipe"]["crop_pct"],
            "interpolation": "bilinear",
        },
    )
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if push:
        url = publish.push_folder(
            folder,
            hub_model_id,
            token=hub_token,
            private=private,
            commit_message=f"{results['title']}: {results['method']}, seed {results['seed']}",
        )
        logger.info("Pushed %s to %s", folder, url)
    return out


def evaluate_only(recipe: Recipe, args: Args, argv: list[str]) -> dict:
    """Score `--model_name_or_path` (a timm folder or Hub repo) on the test split: top-1 and top-5 error.

    The preprocessing is the checkpoint's own (`config.json`: input size, crop_pct, mean, std). Writes
    `eval_results.json` into `--output_dir`; with `--update_card` on a local folder, also the scores
    into its card's `model-index`.
    """
    data_args, training_args = args.data, args.training
    model = load_checkpoint(args.model.model_name_or_path)
    cfg = model.pretrained_cfg
    data_args.image_size = int(cfg["input_size"][-1])
    test, label_names, num_classes = load_eval_split(recipe.kind, data_args, float(cfg.get("crop_pct") or 1.0))
    if num_classes > model.num_classes:
        raise ValueError(
            f"{args.model.model_name_or_path} has {model.num_classes} classes, but --label_column "
            f"{data_args.label_column!r} of {data_args.dataset_name} has {num_classes}: not the data set it was trained on"
        )
    wrapped = ImageClassifier(model, cfg["mean"], cfg["std"], channels_last=args.model.channels_last)
    training_args.push_to_hub = False
    RecipeTrainer, _ = trainer_class()
    trainer = RecipeTrainer(
        model=wrapped,
        args=training_args,
        eval_dataset=test,
        data_collator=collate,
        compute_metrics=ErrorMetrics(),
        preprocess_logits_for_metrics=top5_indices,
    )
    metrics = trainer.evaluate()
    results = {
        "model_name_or_path": args.model.model_name_or_path,
        "architecture": cfg.get("architecture"),
        "dataset_name": data_args.dataset_name,
        "eval_split": data_args.eval_split,
        "num_examples": len(test),
        "num_classes": model.num_classes,
        "top1_error": metrics["eval_top1_error"],
        "top5_error": metrics["eval_top5_error"],
        "top1_accuracy": 100.0 - metrics["eval_top1_error"],
        "top5_accuracy": 100.0 - metrics["eval_top5_error"],
        "command": command_line(recipe, argv, training_args),
        "versions": versions(),
        "hardware": hardware(training_args),
    }
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        if args.model.update_card:  # a local folder (checked with the arguments)
            folder = Path(args.model.model_name_or_path.removeprefix("local-dir:"))
            publish.update_card_scores(
                folder, results, data_args.dataset_name, _dataset_pretty(recipe, args), data_args.eval_split
            )
        logger.warning(
            "%s on %s/%s (%d images): top-1 error %.2f%%, top-5 error %.2f%%",
            args.model.model_name_or_path,
            data_args.dataset_name,
            data_args.eval_split,
            len(test),
            results["top1_error"],
            results["top5_error"],
        )
    return results


def main(recipe: Recipe, argv: list[str] | None = None) -> dict:
    results = run(recipe, argv)
    if results.get("final_test_error") is not None:
        logger.warning(
            "%s, %s: final test error %.2f%%, best %.2f%% at epoch %s (paper: %s)",
            recipe.title,
            results["method"],
            results["final_test_error"],
            results["best_test_error"],
            results["best_epoch"],
            results["paper"]["value"],
        )
    return results
