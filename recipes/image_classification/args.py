"""The command line: the recipe's own options, AutoDrop's, then every `TrainingArguments` option.

`build_parser(recipe)` applies the recipe's values as the defaults, once: every option then holds
its real value after parsing, and `--help` shows it. The groups come in the order a newcomer needs
them: data, model, schedule, AutoDrop, then the `Trainer`'s 100+ options.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field

import torch

from .recipe import Recipe

SCHEDULES = ("autodrop", "multistep")


@dataclass
class DataArguments:
    """Where the images come from (defaults: the recipe's data set)."""

    _argument_group_name = "data"

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset repo."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Local copy: a `DatasetDict.save_to_disk` folder, or a folder in the Hub's layout "
            "(parquet files under data/)."
        },
    )
    train_split: str | None = field(default=None, metadata={"help": "Training split."})
    eval_split: str | None = field(default=None, metadata={"help": "Test split."})
    image_column: str | None = field(default=None, metadata={"help": "Image column."})
    label_column: str | None = field(default=None, metadata={"help": "Label column."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where `load_dataset` caches downloads."})
    streaming: bool = field(default=False, metadata={"help": "Stream from the Hub instead of downloading first."})
    shuffle_buffer_size: int = field(default=10_000, metadata={"help": "Shuffle buffer when streaming."})
    num_train_examples: int | None = field(
        default=None, metadata={"help": "Training set size when streaming and the dataset info lacks it."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N test images."})
    image_size: int | None = field(
        default=None,
        metadata={"help": "Training crop and eval centre crop (None: the images' own size)."},
    )


@dataclass
class ModelArguments:
    """Which timm model (defaults: the recipe's)."""

    _argument_group_name = "model"

    model_name: str | None = field(default=None, metadata={"help": "timm model name."})
    model_kwargs: str | None = field(
        default=None,
        metadata={"help": "JSON dict for timm.create_model, merged into the recipe's, e.g. '{\"widen_factor\": 1}'."},
    )
    channels_last: bool = field(default=True, metadata={"help": "Run the model in channels_last memory format."})


@dataclass
class ScheduleArguments:
    """Which learning-rate schedule (AutoDrop's own options follow in their own group)."""

    _argument_group_name = "schedule"

    schedule: str = field(
        default="autodrop",
        metadata={
            "help": "autodrop: AutoDrop decides when the lr drops; multistep: the paper's fixed baseline.",
            "choices": list(SCHEDULES),
        },
    )
    milestones: list[int] | None = field(default=None, metadata={"help": "multistep: the epochs after which it drops."})
    monitor_angles: bool = field(
        default=True, metadata={"help": "multistep: also log AutoDrop's angles (dry_run, nothing changes)."}
    )
    weight_decay_all: bool = field(
        default=True,
        metadata={"help": "Decay every parameter (BN, biases), as the paper; false: the Trainer's default groups."},
    )


def _group_options(parser, dataclass_type, title: str, description: str) -> None:
    """Show `dataclass_type`'s options under their own heading in `--help` (parsing is unchanged).

    `HfArgumentParser` puts a dataclass without `_argument_group_name` among the general options,
    which argparse prints first; the library's `AutoDropConfig` and `TrainingArguments` get their
    group here instead, so that the recipe's own options come first.
    """
    names = {f.name for f in dataclasses.fields(dataclass_type)}
    group = parser.add_argument_group(title, description)
    for action in list(parser._optionals._group_actions):
        if action.dest in names:
            parser._optionals._group_actions.remove(action)
            group._group_actions.append(action)


def default_output_dir(recipe: Recipe, schedule: str, drop_factor: float, seed: int) -> str:
    return f"out/{recipe.name}/{schedule}-rho{drop_factor:g}-seed{seed}"


def build_parser(recipe: Recipe):
    from transformers import HfArgumentParser, TrainingArguments

    from hf_autodrop import AutoDropConfig

    parser = HfArgumentParser(
        (
            DataArguments,
            ModelArguments,
            ScheduleArguments,
            AutoDropConfig,
            TrainingArguments,
        )
    )
    cuda = torch.cuda.is_available()
    parser.set_defaults(
        # Data and model: the recipe's.
        dataset_name=recipe.dataset_name,
        train_split=recipe.train_split,
        eval_split=recipe.eval_split,
        image_column=recipe.image_column,
        label_column=recipe.label_column,
        image_size=recipe.image_size,
        model_name=recipe.model_name,
        model_kwargs=json.dumps(recipe.model_kwargs),
        milestones=list(recipe.milestones),
        # AutoDrop: the paper's settings: its test (the library's default is the noise-adaptive "trend"
        # test; --detector trend selects it), theta_0 0.01, theta_max 1.0, n_d 20 (the config's defaults).
        detector="paper",
        drop_factor=recipe.drop_factor,
        min_lr=recipe.min_lr,
        # Optimisation: SGD with momentum 0.9, constant lr between drops, every parameter decayed.
        optim="sgd",
        optim_args=f"momentum=0.9,nesterov={recipe.nesterov}",
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        lr_scheduler_type="constant",
        num_train_epochs=recipe.epochs,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        # Measure every epoch, keep two checkpoints to resume from (AutoDrop's state included).
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        logging_strategy="epoch",
        restore_callback_states_from_checkpoint=True,
        remove_unused_columns=False,  # the transforms read the raw image column lazily
        dataloader_num_workers=min(8, os.cpu_count() or 1),
        dataloader_persistent_workers=True,
        ddp_find_unused_parameters=False,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        seed=0,
        report_to="none",
    )
    _group_options(parser, AutoDropConfig, "AutoDrop", "When and how far the lr drops (hf_autodrop.AutoDropConfig).")
    _group_options(
        parser, TrainingArguments, "Trainer", "Every transformers.TrainingArguments option, with the recipe's defaults."
    )
    # The real default of --output_dir depends on other options; parse_args fills it in.
    parser.set_defaults(output_dir=f"out/{recipe.name}/<schedule>-rho<drop_factor>-seed<seed>")
    return parser


def _argv_has(argv: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def parse_args(recipe: Recipe, argv: list[str] | None = None):
    """The five argument dataclasses, with the recipe's defaults in every unset option."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(recipe)
    data_args, model_args, sched_args, autodrop, training_args = parser.parse_args_into_dataclasses(argv)
    if not _argv_has(argv, "output_dir"):
        default = default_output_dir(recipe, sched_args.schedule, autodrop.drop_factor, training_args.seed)
        parser.set_defaults(output_dir=default)
        data_args, model_args, sched_args, autodrop, training_args = parser.parse_args_into_dataclasses(argv)
    # --model_kwargs adds to (or overrides) the recipe's own keyword arguments.
    model_args.model_kwargs = json.dumps({**recipe.model_kwargs, **json.loads(model_args.model_kwargs or "{}")})
    return data_args, model_args, sched_args, autodrop, training_args
