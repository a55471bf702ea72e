"""The training run behind every recipe: parse, load, train with AutoDrop or the baseline, report, publish.

`main(recipe)` is what each recipe file calls. It uses hf_autodrop's public API the way any user
would: `AutoDropConfig` is parsed from the command line like the `TrainingArguments`, and
`hf_autodrop.callback.install` adds `AutoDropCallback` to the `Trainer`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time

from .args import parse_args
from .data import collate, load_splits
from .model import ImageClassifier, create_model
from .publish import write_outputs
from .recipe import Recipe
from .results import _hardware, _versions, command_line, summarize
from .trainer import _lr_tracker, _trainer_class, error_metrics, top5_indices

logger = logging.getLogger("hf_autodrop.recipes")


def _resume_path(training_args) -> str | None:
    value = training_args.resume_from_checkpoint
    if value in (None, "", "False", "false"):
        return None
    if value in ("True", "true", "last"):
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(training_args.output_dir)
    return value


def run(recipe: Recipe, argv: list[str] | None = None) -> dict:
    """Train one recipe from command-line arguments; return the results written to `results.json`."""
    import transformers
    from transformers import set_seed

    from hf_autodrop import AutoDropCallback
    from hf_autodrop.callback import install

    started = time.time()
    argv = list(sys.argv[1:] if argv is None else argv)
    data_args, model_args, sched_args, autodrop_cfg, training_args = parse_args(recipe, argv)
    # The main process logs AutoDrop's drops (INFO); `--log_level` also sets the transformers verbosity.
    if training_args.log_level != "passive" or not training_args.should_log:
        log_level = training_args.get_process_log_level()
        transformers.utils.logging.set_verbosity(log_level)
    else:
        log_level = logging.INFO
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=log_level)
    for name in ("hf_autodrop", "hf_autodrop.recipes"):
        logging.getLogger(name).setLevel(log_level)

    # The Trainer would push its own (non-timm) format; the recipe pushes the timm folder itself at the end.
    push = bool(training_args.push_to_hub)
    hub_model_id, hub_token = training_args.hub_model_id, training_args.hub_token
    training_args.push_to_hub = False
    if push and not hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id <user-or-org>/<name>")

    if training_args.dataloader_num_workers == 0:
        training_args.dataloader_persistent_workers = False  # torch refuses persistent workers without workers

    set_seed(training_args.seed)
    splits = load_splits(recipe.kind, data_args, training_args.seed, recipe.num_classes, recipe.crop_pct)
    model = create_model(model_args, splits.num_classes)
    wrapped = ImageClassifier(model, recipe.mean, recipe.std, channels_last=model_args.channels_last)

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

    trainer = _trainer_class()(
        model=wrapped,
        args=training_args,
        train_dataset=splits.train,
        eval_dataset=splits.eval,
        data_collator=collate,
        compute_metrics=error_metrics,
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
    tracker = _lr_tracker()
    trainer.add_callback(tracker)

    train_output = trainer.train(resume_from_checkpoint=_resume_path(training_args))
    last_eval = next((h for h in reversed(trainer.state.log_history) if "eval_top1_error" in h), None)
    if last_eval is None or last_eval.get("step") != trainer.state.global_step:
        trainer.evaluate()
    train_end = time.time()

    method = (
        f"AutoDrop (rho = {autodrop_cfg.drop_factor:g})"
        if not multistep
        else f"Baseline, multistep x{autodrop_cfg.drop_factor:g} at epochs {', '.join(map(str, milestones))}"
    )
    paper_key = f"{sched_args.schedule}-{autodrop_cfg.drop_factor:g}"
    results = {
        "recipe": recipe.name,
        "title": recipe.title,
        "model_name": model_args.model_name,
        "dataset_name": data_args.dataset_name,
        "dataset_pretty": recipe.dataset_pretty,
        "eval_split": data_args.eval_split,
        "schedule": sched_args.schedule,
        "drop_factor": autodrop_cfg.drop_factor,
        "method": method,
        "seed": training_args.seed,
        "num_classes": splits.num_classes,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_train_examples": splits.num_train_examples,
        "epochs": trainer.state.epoch,
        "global_step": trainer.state.global_step,
        "total_batch_size": total_batch,
        "paper": {"key": paper_key, "value": recipe.paper.get(paper_key), "table": recipe.paper},
        "command": command_line(recipe, argv, training_args),
        "wall_time_s": train_end - started,
        "train_runtime_s": train_output.metrics.get("train_runtime"),
        "train_loop_began_at": tracker.began_at,
        "train_loop_ended_at": tracker.ended_at,
        "versions": _versions(),
        "hardware": _hardware(training_args),
        "config": {
            "recipe": dataclasses.asdict(recipe),
            "data": dataclasses.asdict(data_args),
            "model": dataclasses.asdict(model_args),
            "schedule": {**dataclasses.asdict(sched_args), "milestones": milestones},
            "autodrop": autodrop_cfg.to_dict() if not multistep else None,
            "angle_monitor": callback.config.to_dict() if (callback is not None and multistep) else None,
            "training": json.loads(training_args.to_json_string()),
        },
    }
    results.update(summarize(trainer.state.log_history, monitored))
    if callback is not None and not multistep:
        results["autodrop_drops"] = [
            {
                "interval": m["interval"],
                "epoch": m["epoch"],
                "step": m["step"],
                "lrs": list(m["lrs"]),
                "threshold": m["threshold"],
            }
            for m in callback.measurements
            if m["dropped"]
        ]

    if trainer.is_world_process_zero():
        write_outputs(
            trainer,
            results,
            splits,
            recipe,
            data_args,
            push=push,
            hub_model_id=hub_model_id,
            hub_token=hub_token,
            private=training_args.hub_private_repo,
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
