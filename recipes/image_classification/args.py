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
        metadata={"help": "Training crop and eval centre crop (CIFAR: resize to it; None: the images' own size)."},
    )
    image_mean: list[float] | None = field(default=None, metadata={"help": "Per-channel mean of the normalisation."})
    image_std: list[float] | None = field(default=None, metadata={"help": "Per-channel std of the normalisation."})


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
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Weights to start from, or to score with --do_train false: a timm folder, "
            "local-dir:<folder> or hf-hub:<repo> (its architecture replaces --model_name)."
        },
    )
    update_card: bool = field(
        default=False,
        metadata={"help": "--do_train false on a local folder: write the scores into its card's model-index."},
    )


@dataclass
class AugmentArguments:
    """timm's training aids; all off by default, so the paper's recipe is unchanged."""

    _argument_group_name = "augmentation (timm)"

    mixup: float = field(default=0.0, metadata={"help": "Mixup alpha (timm.data.Mixup); 0: off. Costs ~nothing."})
    cutmix: float = field(default=0.0, metadata={"help": "CutMix alpha (timm.data.Mixup); 0: off."})
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability of mixing a batch (mixup or cutmix)."})
    rand_augment: str | None = field(
        default=None,
        metadata={"help": "timm RandAugment config, e.g. rand-m9-mstd0.5 (CPU cost per image; see README)."},
    )
    random_erasing: float = field(
        default=0.0, metadata={"help": "Random-erasing probability (timm.data.RandomErasing, on the device)."}
    )
    model_ema: bool = field(
        default=False, metadata={"help": "Keep an EMA of the weights (timm.utils.ModelEmaV3); scored at the end."}
    )
    model_ema_decay: float = field(default=0.9998, metadata={"help": "EMA decay per optimizer step."})
    publish_ema: bool = field(default=False, metadata={"help": "Publish the EMA weights instead of the model's."})


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


# One-line help for AutoDropConfig's fields (their full documentation is the class's docstring).
AUTODROP_HELP = {
    "drop_factor": "rho: the lr is multiplied by this at each drop (both schedules).",
    "min_lr": "No drop takes the lr below this floor.",
    "threshold": "theta_0: the saturation test's initial tolerance.",
    "max_threshold": "theta_max: the tolerance grows towards this after each drop.",
    "detector": "Saturation test: paper (the paper's |delta omega|, the recipes' default), growth (the library's "
    "default: the distance from the last drop's point stops growing) or trend (a line through omega).",
    "growth_threshold": "growth: saturated when the distance grows slower than t to this power.",
    "growth_min_samples": "growth: the fewest measurements in its window [t/2, t].",
    "growth_min_phase": "growth: after a drop, wait at least this multiple of the previous phase.",
    "trend_window": "trend: intervals in the fitted window.",
    "trend_z": "trend: standard errors allowed in the slope.",
    "drop_delay": "n_d: intervals of weight averaging between saturation and the drop.",
    "drop_delay_fraction": "growth without drop_delay: average over this fraction of the time since the last drop.",
    "interval_steps": "Measure every N optimizer steps (None: once per epoch, or AutoDrop's choice for short runs).",
    "average_buffers": "Average BN statistics with the weights during the delay.",
    "dry_run": "Measure and log only; never change the lr.",
    "stop_when_exhausted": "Stop training once every lr is at its floor.",
    "offload_to_cpu": "Keep AutoDrop's snapshots in CPU memory.",
}


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
            if dataclass_type.__name__ == "AutoDropConfig" and action.dest in AUTODROP_HELP:
                action.help = AUTODROP_HELP[action.dest]
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
            AugmentArguments,
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
        image_mean=list(recipe.mean),
        image_std=list(recipe.std),
        model_name=recipe.model_name,
        model_kwargs=json.dumps(recipe.model_kwargs),
        milestones=list(recipe.milestones),
        # AutoDrop: the paper's settings: its test (the library's default is the growth test; --detector
        # growth selects it), theta_0 0.01, theta_max 1.0 (the config's defaults), n_d 20.
        detector="paper",
        drop_delay=20,
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
        hub_strategy="end",  # the recipe uploads one timm folder when training ends, not the Trainer's checkpoints
        do_train=True,  # --do_train false scores --model_name_or_path instead
    )
    _group_options(parser, AutoDropConfig, "AutoDrop", "When and how far the lr drops (hf_autodrop.AutoDropConfig).")
    _group_options(
        parser, TrainingArguments, "Trainer", "Every transformers.TrainingArguments option, with the recipe's defaults."
    )
    parser.usage = "%(prog)s [--option value ...]   (the recipe's options first, then AutoDrop's and the Trainer's)"
    # The real default of --output_dir depends on other options; parse_args fills it in.
    parser.set_defaults(output_dir=f"out/{recipe.name}/<schedule>-rho<drop_factor>-seed<seed>")
    return parser


def _argv_has(argv: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def parse_args(recipe: Recipe, argv: list[str] | None = None):
    """`Args`: the six argument dataclasses, with the recipe's defaults in every unset option."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(recipe)
    parsed = Args(*parser.parse_args_into_dataclasses(argv))
    if not _argv_has(argv, "output_dir"):
        default = default_output_dir(
            recipe, parsed.schedule.schedule, parsed.autodrop.drop_factor, parsed.training.seed
        )
        parser.set_defaults(output_dir=default)
        parsed = Args(*parser.parse_args_into_dataclasses(argv))
    # --model_kwargs adds to (or overrides) the recipe's own keyword arguments.
    model_kwargs = json.loads(parsed.model.model_kwargs or "{}")
    if not isinstance(model_kwargs, dict):
        raise ValueError(f"--model_kwargs must be a JSON object, got {parsed.model.model_kwargs!r}")
    parsed.model.model_kwargs = json.dumps({**recipe.model_kwargs, **model_kwargs})
    for name in ("image_mean", "image_std"):
        if len(getattr(parsed.data, name)) != 3:
            raise ValueError(f"--{name} needs 3 values (R G B), got {getattr(parsed.data, name)}")
    aug = parsed.augment
    if min(aug.mixup, aug.cutmix, aug.random_erasing) < 0 or not 0 <= aug.random_erasing <= 1:
        raise ValueError("--mixup and --cutmix must be >= 0 and --random_erasing in [0, 1]")
    if getattr(parsed.training, "use_liger_kernel", False):
        raise ValueError("--use_liger_kernel patches transformers language models; it does not apply to timm models")
    if aug.publish_ema and not aug.model_ema:
        raise ValueError("--publish_ema needs --model_ema")
    if not parsed.training.do_train and not parsed.model.model_name_or_path:
        raise ValueError("--do_train false scores a trained model: pass --model_name_or_path <folder or hf-hub:repo>")
    if not parsed.training.do_train and parsed.data.streaming:
        raise ValueError("--do_train false reads the test split as a data set: drop --streaming")
    strategy = str(getattr(parsed.training.hub_strategy, "value", parsed.training.hub_strategy))
    if parsed.training.push_to_hub and strategy != "end":
        raise ValueError(
            f"--hub_strategy {strategy}: the recipe publishes one timm model folder (weights, card, Hub custom code) "
            "when training ends, which is --hub_strategy end (the default). The other strategies upload the "
            "Trainer's checkpoints, which timm and the card cannot load; drop --hub_strategy, and upload a "
            "checkpoint folder yourself if you need one: hf upload <repo> <output_dir>/checkpoint-<step>"
        )
    if parsed.model.update_card:
        folder = (parsed.model.model_name_or_path or "").removeprefix("local-dir:")
        if parsed.training.do_train or not os.path.isdir(folder):
            raise ValueError(
                "--update_card writes the scores of --do_train false into a local model folder's card: pass "
                "--do_train false --model_name_or_path <folder> (download a Hub repo first)"
            )
    return parsed


@dataclass
class Args:
    """The parsed command line, one dataclass per group."""

    data: DataArguments
    model: ModelArguments
    schedule: ScheduleArguments
    augment: AugmentArguments
    autodrop: object  # hf_autodrop.AutoDropConfig
    training: object  # transformers.TrainingArguments
