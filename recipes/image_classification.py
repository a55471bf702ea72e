"""The shared training module behind every recipe: timm model + `datasets` data + `Trainer` + AutoDrop.

Each recipe file (`cifar10_resnet18.py`, ...) holds one `Recipe` (the paper's setup for one row of
Table 1) and calls `main(recipe)`. Everything else lives here and uses hf_autodrop's public API the
way any user would: `AutoDropConfig` is parsed from the command line like the `TrainingArguments`,
and `hf_autodrop.callback.install` adds `AutoDropCallback` to the `Trainer`.

Command line: `HfArgumentParser` over `DataArguments`, `ModelArguments`, `ScheduleArguments`,
`AutoDropConfig` and every `TrainingArguments` option, with the recipe's values as defaults.
`--schedule autodrop` (default) lets AutoDrop drop the lr; `--schedule multistep` is the paper's
fixed baseline (x `--drop_factor` at the `--milestones` epochs), with AutoDrop kept in `dry_run`
mode so that the baseline's angles are logged for comparison (`--monitor_angles false` turns it off).

Every run writes into `--output_dir`:
- `results.json`: config, seed, final and best test error, epoch of the best, drops (epoch, step, lr),
  per-epoch history, wall time, versions, hardware, the paper's numbers and the exact command;
- `training_curve.png`: lr, training loss, angle and test error against epochs;
- `model/`: the timm checkpoint (`config.json` + `model.safetensors`), the curve, `results.json` and
  the model card `README.md`; `--push_to_hub --hub_model_id <repo>` uploads that folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("hf_autodrop.recipes")

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_CARD_TEMPLATE = REPO_ROOT / "model_cards" / "image_classification.md"
SCHEDULES = ("autodrop", "multistep")


# ---------------------------------------------------------------------------------------------- recipe
@dataclass(frozen=True)
class Recipe:
    """The fixed facts of one experiment of the paper's Table 1 (the command line overrides the defaults).

    `paper` maps a method key (`"multistep-0.2"`, `"autodrop-0.2"`, ...) to the paper's test error in
    percent as `(mean, std)` (std `None` where the paper ran once).
    """

    name: str
    title: str
    model_name: str
    dataset_name: str
    dataset_pretty: str
    kind: str  # "cifar" (32x32, pad-4 crop + flip) or "imagenet" (random-resized crop 224 + flip)
    num_classes: int
    image_column: str
    label_column: str
    train_split: str
    eval_split: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    epochs: int
    learning_rate: float
    weight_decay: float
    nesterov: bool
    batch_size: int  # the paper's total batch size over all devices
    drop_factor: float
    milestones: tuple[int, ...]  # epochs of the baseline's drops
    min_lr: float = 1e-4
    model_kwargs: dict = field(default_factory=dict)
    paper: dict = field(default_factory=dict)
    expected_hours: str = ""


def _data_sets() -> dict[str, dict]:
    from hf_autodrop.models import (
        CIFAR10_MEAN,
        CIFAR10_STD,
        CIFAR100_MEAN,
        CIFAR100_STD,
        IMAGENET_MEAN,
        IMAGENET_STD,
    )

    cifar = dict(kind="cifar", image_column="img", train_split="train", eval_split="test")
    return {
        "cifar10": dict(
            cifar,
            dataset_name="uoft-cs/cifar10",
            dataset_pretty="CIFAR-10",
            num_classes=10,
            label_column="label",
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
        ),
        "cifar100": dict(
            cifar,
            dataset_name="uoft-cs/cifar100",
            dataset_pretty="CIFAR-100",
            num_classes=100,
            label_column="fine_label",
            mean=CIFAR100_MEAN,
            std=CIFAR100_STD,
        ),
        "imagenet": dict(
            kind="imagenet",
            dataset_name="ILSVRC/imagenet-1k",
            dataset_pretty="ImageNet-1k",
            num_classes=1000,
            image_column="image",
            label_column="label",
            train_split="train",
            eval_split="validation",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        ),
    }


DATA_SETS = _data_sets()
"""What each data set contributes to a `Recipe`: Hub repo, columns, splits, classes, normalisation."""

# The paper's CIFAR protocol shared by the four CIFAR rows (lr and Nesterov differ per model).
CIFAR_PROTOCOL = dict(epochs=200, weight_decay=5e-4, batch_size=128, drop_factor=0.2, milestones=(60, 120, 160))


# ---------------------------------------------------------------------------------------------- arguments
@dataclass
class DataArguments:
    """Where the images come from."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset repo (default: the recipe's)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Local copy: a folder written by `DatasetDict.save_to_disk`, or a folder in the Hub's "
            "layout (parquet files under data/) that `load_dataset(folder)` reads."
        },
    )
    train_split: str | None = field(default=None, metadata={"help": "Training split (default: the recipe's)."})
    eval_split: str | None = field(default=None, metadata={"help": "Test split (default: the recipe's)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: the recipe's)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: the recipe's)."})
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
        metadata={"help": "ImageNet: training crop and eval centre crop (224); eval resizes to size/0.875."},
    )


@dataclass
class ModelArguments:
    """Which timm model."""

    model_name: str | None = field(default=None, metadata={"help": "timm model name (default: the recipe's)."})
    model_kwargs: str | None = field(
        default=None, metadata={"help": "JSON dict passed to timm.create_model, e.g. '{\"widen_factor\": 1}'."}
    )
    channels_last: bool = field(default=True, metadata={"help": "Run the model in channels_last memory format."})


@dataclass
class ScheduleArguments:
    """Which learning-rate schedule (AutoDrop's own options are parsed from `AutoDropConfig`)."""

    schedule: str = field(
        default="autodrop",
        metadata={
            "help": "autodrop: AutoDrop decides when the lr drops; multistep: the paper's fixed baseline.",
            "choices": list(SCHEDULES),
        },
    )
    milestones: str | None = field(
        default=None, metadata={"help": "multistep: comma-separated epochs of the drops (default: the recipe's)."}
    )
    monitor_angles: bool = field(
        default=True, metadata={"help": "multistep: also log AutoDrop's angles (dry_run, nothing changes)."}
    )
    weight_decay_all: bool = field(
        default=True,
        metadata={
            "help": "Decay every parameter (BN and biases too), as the paper's setups do; false uses the "
            "Trainer's default groups (no decay for biases and *norm* parameters)."
        },
    )


def build_parser(recipe: Recipe):
    from transformers import HfArgumentParser, TrainingArguments

    from hf_autodrop import AutoDropConfig

    parser = HfArgumentParser((DataArguments, ModelArguments, ScheduleArguments, AutoDropConfig, TrainingArguments))
    cuda = torch.cuda.is_available()
    parser.set_defaults(
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
    )
    return parser


def _argv_has(argv: list[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in argv)


def parse_args(recipe: Recipe, argv: list[str] | None = None):
    """The five argument dataclasses; the default `--output_dir` is `out/<recipe>/<schedule>-rho<f>-seed<s>`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(recipe)
    data_args, model_args, sched_args, autodrop, training_args = parser.parse_args_into_dataclasses(argv)
    if not _argv_has(argv, "output_dir"):
        default = f"out/{recipe.name}/{sched_args.schedule}-rho{autodrop.drop_factor:g}-seed{training_args.seed}"
        parser.set_defaults(output_dir=default)
        data_args, model_args, sched_args, autodrop, training_args = parser.parse_args_into_dataclasses(argv)
    return data_args, model_args, sched_args, autodrop, training_args


# ---------------------------------------------------------------------------------------------- data
def random_crop_flip(images: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Per-image random crop of the zero-padded batch and random horizontal flip (uint8 NCHW in and out)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    out = torch.empty_like(images)
    tops = torch.randint(0, 2 * pad + 1, (n,)).tolist()
    lefts = torch.randint(0, 2 * pad + 1, (n,)).tolist()
    flips = (torch.rand(n) < 0.5).tolist()
    for i, (top, left, flip) in enumerate(zip(tops, lefts, flips)):
        crop = padded[i, :, top : top + h, left : left + w]
        out[i] = crop.flip(-1) if flip else crop
    return out


def decode_rgb(item) -> torch.Tensor:
    """uint8 CHW RGB from an undecoded `Image` cell (`{"bytes", "path"}`, decoded by libpng/libjpeg) or a PIL image."""
    if isinstance(item, dict):
        from torchvision.io import ImageReadMode, decode_image

        data = item.get("bytes") or Path(item["path"]).read_bytes()
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return torch.from_numpy(np.array(item.convert("RGB"))).permute(2, 0, 1)


class CifarTransform:
    """Batched: decode, (train) pad-4 random crop + flip; uint8 NCHW out, normalised later on the device.

    The image column is read undecoded (`Image(decode=False)`) and decoded here with torchvision,
    about 2.5x faster than going through PIL for 32x32 PNGs (see bench/data_pipeline.py).
    """

    def __init__(self, image_column: str, label_column: str, train: bool):
        self.image_column, self.label_column, self.train = image_column, label_column, train

    def __call__(self, batch: dict) -> dict:
        x = torch.stack([decode_rgb(item) for item in batch[self.image_column]])
        if self.train:
            x = random_crop_flip(x)
        return {"pixel_values": x, "labels": torch.as_tensor(batch[self.label_column])}


class ImageNetTransform:
    """Batched: (train) random-resized crop + flip, (eval) resize to size/0.875 + centre crop; uint8 out."""

    def __init__(self, image_column: str, label_column: str, train: bool, size: int = 224):
        from torchvision.transforms import v2

        self.image_column, self.label_column = image_column, label_column
        if train:
            ops = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            ops = [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
        self.transform = v2.Compose([*ops, v2.PILToTensor()])

    def __call__(self, batch: dict) -> dict:
        x = torch.stack([self.transform(im.convert("RGB")) for im in batch[self.image_column]])
        return {"pixel_values": x, "labels": torch.as_tensor(batch[self.label_column])}


def make_transform(recipe: Recipe, data_args: DataArguments, train: bool):
    image_column = data_args.image_column or recipe.image_column
    label_column = data_args.label_column or recipe.label_column
    if recipe.kind == "cifar":
        return CifarTransform(image_column, label_column, train)
    return ImageNetTransform(image_column, label_column, train, size=data_args.image_size or 224)


def collate(examples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.stack([torch.as_tensor(e["labels"]) for e in examples]),
    }


@dataclass
class Splits:
    train: object
    eval: object
    label_names: list[str] | None
    num_classes: int
    num_train_examples: int | None
    streaming: bool = False


def _load_split(data_args: DataArguments, name: str, split: str):
    import datasets

    if data_args.data_dir:
        path = Path(data_args.data_dir)
        if (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))[split]
        return datasets.load_dataset(
            str(path), split=split, streaming=data_args.streaming, cache_dir=data_args.cache_dir
        )
    return datasets.load_dataset(
        name, data_args.dataset_config_name, split=split, streaming=data_args.streaming, cache_dir=data_args.cache_dir
    )


def load_splits(recipe: Recipe, data_args: DataArguments, seed: int) -> Splits:
    """The train and test splits with lazy (per-batch, in dataloader workers) transforms."""
    import datasets

    name = data_args.dataset_name or recipe.dataset_name
    train_split = data_args.train_split or recipe.train_split
    eval_split = data_args.eval_split or recipe.eval_split
    label_column = data_args.label_column or recipe.label_column
    train = _load_split(data_args, name, train_split)
    test = _load_split(data_args, name, eval_split)

    if recipe.kind == "cifar":  # decoded by the transform (torchvision), not by `datasets` (PIL)
        image_column = data_args.image_column or recipe.image_column
        train = train.cast_column(image_column, datasets.Image(decode=False))
        test = test.cast_column(image_column, datasets.Image(decode=False))
    feature = (train.features or {}).get(label_column)
    label_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    num_classes = len(label_names) if label_names else recipe.num_classes

    if isinstance(train, datasets.IterableDataset):
        num_train = data_args.num_train_examples
        if num_train is None and train.info.splits and train_split in train.info.splits:
            num_train = train.info.splits[train_split].num_examples
        if data_args.max_train_samples is not None:
            train = train.take(data_args.max_train_samples)
            num_train = min(num_train or data_args.max_train_samples, data_args.max_train_samples)
        if data_args.max_eval_samples is not None:
            test = test.take(data_args.max_eval_samples)
        train = train.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
        columns = list(train.column_names or [])
        train = train.map(make_transform(recipe, data_args, True), batched=True, batch_size=64, remove_columns=columns)
        test = test.map(
            make_transform(recipe, data_args, False),
            batched=True,
            batch_size=64,
            remove_columns=list(test.column_names or []),
        )
        return Splits(train, test, label_names, num_classes, num_train, streaming=True)

    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples is not None:
        test = test.select(range(min(data_args.max_eval_samples, len(test))))
    train = train.with_transform(make_transform(recipe, data_args, True))
    test = test.with_transform(make_transform(recipe, data_args, False))
    return Splits(train, test, label_names, num_classes, len(train))


# ---------------------------------------------------------------------------------------------- model
class ImageClassifier(nn.Module):
    """A timm model with the `Trainer`'s interface: `forward(pixel_values, labels)` -> {"loss", "logits"}.

    Images arrive as uint8 and are normalised here, on the device, so the dataloader moves 4x fewer
    bytes. `mean`/`std` are non-persistent buffers: the timm checkpoint is `self.model`'s alone.
    """

    def __init__(self, model: nn.Module, mean, std, channels_last: bool = False):
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def state_dict(self, *args, **kwargs):
        # safetensors (the Trainer's checkpoints) refuses channels_last tensors; loading copies them back.
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v.contiguous()) for k, v in state.items())

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        x = (pixel_values.float() - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits.float(), labels)
        return out


def create_model(recipe: Recipe, model_args: ModelArguments, num_classes: int) -> nn.Module:
    import timm

    import hf_autodrop.models  # noqa: F401 - registers the CIFAR architectures with timm

    kwargs = dict(recipe.model_kwargs)
    if model_args.model_kwargs:
        kwargs.update(json.loads(model_args.model_kwargs))
    return timm.create_model(model_args.model_name or recipe.model_name, num_classes=num_classes, **kwargs)


# ---------------------------------------------------------------------------------------------- metrics
def top5_indices(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keep only the top-5 class indices of each prediction (evaluation never holds all logits)."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.topk(min(5, logits.shape[-1]), dim=-1).indices


def error_metrics(eval_pred) -> dict[str, float]:
    """Top-1 and top-5 test error in percent."""
    topk, labels = np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids)
    top1 = float((topk[:, 0] == labels).mean())
    top5 = float((topk == labels[:, None]).any(axis=1).mean())
    return {"top1_error": 100.0 * (1.0 - top1), "top5_error": 100.0 * (1.0 - top5)}


# ---------------------------------------------------------------------------------------------- schedule
class EpochMilestones:
    """`LambdaLR` factor of the baseline: `drop_factor ** (milestones passed)`, after an optional linear warm-up.

    `step` is the number of optimizer updates done, so the updates of epoch `m + 1` (1-based) are the
    first to use the lower lr of milestone `m`. A class, not a lambda, so `scheduler.pt` keeps it.
    """

    def __init__(self, milestone_steps: list[int], drop_factor: float, warmup_steps: int = 0):
        self.milestone_steps = sorted(int(m) for m in milestone_steps)
        self.drop_factor = float(drop_factor)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        warmup = step / max(1, self.warmup_steps) if step < self.warmup_steps else 1.0
        return warmup * self.drop_factor ** sum(step >= m for m in self.milestone_steps)


def _trainer_class():
    from transformers import Trainer
    from transformers.trainer_utils import has_length

    class RecipeTrainer(Trainer):
        """`Trainer` with the paper's weight decay (every parameter) and the fixed multistep baseline."""

        def __init__(
            self,
            *args,
            milestones: list[int] | None = None,
            drop_factor: float = 0.1,
            steps_per_epoch: int | None = None,
            weight_decay_all: bool = True,
            **kwargs,
        ):
            self.milestones, self.drop_factor = milestones, drop_factor
            self.weight_decay_all = weight_decay_all
            self.steps_per_epoch = steps_per_epoch  # known in advance only when streaming
            super().__init__(*args, **kwargs)

        def get_decay_parameter_names(self, model) -> list[str]:
            if self.weight_decay_all:
                return [n for n, p in model.named_parameters()]
            return super().get_decay_parameter_names(model)

        def get_train_dataloader(self):
            loader = super().get_train_dataloader()
            if has_length(loader):
                # The Trainer's own count of optimizer updates per epoch (the last one may be partial).
                n, ga = len(loader), self.args.gradient_accumulation_steps
                self.steps_per_epoch = max(n // ga + int(n % ga > 0), 1)
            return loader

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.milestones is None:
                return super().create_scheduler(num_training_steps, optimizer)
            if self.lr_scheduler is None:
                if not self.steps_per_epoch:
                    raise ValueError("multistep needs the number of steps per epoch; pass --num_train_examples")
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer,
                    EpochMilestones(
                        [m * self.steps_per_epoch for m in self.milestones],
                        self.drop_factor,
                        self.args.get_warmup_steps(num_training_steps),
                    ),
                )
                self._created_lr_scheduler = True
            return self.lr_scheduler

    return RecipeTrainer


def _lr_tracker():
    from transformers import TrainerCallback

    class LRTracker(TrainerCallback):
        """Writes each epoch's lr (`recipe/lr`) and every lr decrease (`recipe/lr_drop`) into `log_history`.

        `log_history` is saved in every checkpoint, so the record survives a resume. A decrease is seen
        before the next update (or at the end), so the order of the callbacks does not matter (the
        `Trainer` re-adds a restored AutoDrop callback at the end of the list on resume); it is
        recorded with the number of updates done when it took effect.
        """

        def __init__(self):
            self.last = None
            self.began_at = self.ended_at = None  # wall-clock bounds of the training loop (GPU busy fraction)

        def _check(self, state, optimizer) -> float:
            lr = float(optimizer.param_groups[0]["lr"])
            if self.last is not None and lr < self.last * (1 - 1e-9):
                state.log_history.append(
                    {
                        "recipe/lr_drop": lr,
                        "recipe/lr_before": self.last,
                        "epoch": state.epoch,
                        "step": state.global_step,
                    }
                )
            self.last = lr
            return lr

        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            self.began_at = time.time()
            self.last = float(optimizer.param_groups[0]["lr"])

        def on_epoch_begin(self, args, state, control, optimizer=None, **kwargs):
            lr = self._check(state, optimizer)
            state.log_history.append({"recipe/lr": lr, "epoch": state.epoch or 0.0, "step": state.global_step})

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            self._check(state, optimizer)

        def on_train_end(self, args, state, control, optimizer=None, **kwargs):
            lr = self._check(state, optimizer)
            state.log_history.append({"recipe/lr": lr, "epoch": state.epoch, "step": state.global_step})
            self.ended_at = time.time()

    return LRTracker()


# ---------------------------------------------------------------------------------------------- results
def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in (
        "hf_autodrop",
        "torch",
        "torchvision",
        "timm",
        "transformers",
        "accelerate",
        "datasets",
        "huggingface_hub",
        "safetensors",
    ):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            if pkg == "hf_autodrop":
                import hf_autodrop

                out[pkg] = hf_autodrop.__version__
    return out


def _hardware(training_args) -> dict:
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "world_size": training_args.world_size,
        "device": str(training_args.device),
        "mixed_precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "no",
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def command_line(recipe: Recipe, argv: list[str], training_args) -> str:
    """The command that reproduces this run from the repository's root, as one shell line (no token in it)."""
    script = f"recipes/{recipe.name}.py"
    kept, skip = [], False
    for a in argv:
        if skip or a.startswith("--hub_token="):
            skip = False
        elif a == "--hub_token":
            skip = True
        else:
            kept.append(a)
    argv = kept
    if training_args.world_size > 1:
        return f"accelerate launch --num_processes {training_args.world_size} {script} {shlex.join(argv)}".strip()
    return f"python {script} {shlex.join(argv)}".strip()


def summarize(log_history: list[dict], measurements_available: bool) -> dict:
    """Per-epoch history, drops, final and best test error from a `Trainer`'s `log_history`."""
    evals = [h for h in log_history if "eval_top1_error" in h]
    losses = [h for h in log_history if "loss" in h and "epoch" in h]
    angles = [h for h in log_history if "autodrop/angle" in h]
    lrs = [h for h in log_history if "recipe/lr" in h]
    drops = [
        {"epoch": h["epoch"], "step": h["step"], "lr": h["recipe/lr_drop"], "lr_before": h["recipe/lr_before"]}
        for h in log_history
        if "recipe/lr_drop" in h
    ]
    out: dict = {
        "history": {
            "eval": [
                {
                    "epoch": h["epoch"],
                    "step": h.get("step"),
                    "top1_error": h["eval_top1_error"],
                    "top5_error": h.get("eval_top5_error"),
                    "loss": h.get("eval_loss"),
                }
                for h in evals
            ],
            "train_loss": [{"epoch": h["epoch"], "loss": h["loss"]} for h in losses],
            "lr": [{"epoch": h["epoch"], "lr": h["recipe/lr"]} for h in lrs],
            "angle": [
                {
                    "epoch": h["epoch"],
                    "angle": h["autodrop/angle"],
                    "angle_change": h.get("autodrop/angle_change"),
                    "threshold": h.get("autodrop/threshold"),
                    "phase": h.get("autodrop/phase"),
                }
                for h in angles
            ]
            if measurements_available
            else [],
        },
        "drops": drops,
        "drop_epochs": [d["epoch"] for d in drops],
        "drop_lrs": [d["lr"] for d in drops],
    }
    if evals:
        best = min(evals, key=lambda h: h["eval_top1_error"])
        out.update(
            final_test_error=evals[-1]["eval_top1_error"],
            final_top5_error=evals[-1].get("eval_top5_error"),
            best_test_error=best["eval_top1_error"],
            best_epoch=best["epoch"],
        )
    return out


def plot_curves(results: dict, path: Path) -> Path:
    """lr, training loss, angle and test error against epochs, with the drops marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = results["history"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    panels = [
        ("learning rate", hist["lr"], "lr", True),
        ("training loss", hist["train_loss"], "loss", False),
        ("angle (degrees)", hist["angle"], "angle", False),
        ("test error (%)", hist["eval"], "top1_error", False),
    ]
    for ax, (label, rows, key, log) in zip(axes, panels):
        xs = [r["epoch"] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        ys = [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        if key == "lr":
            ax.step(xs, ys, where="post")
        else:
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        if log and ys and min(ys) > 0:
            ax.set_yscale("log")
        for d in results["drops"]:
            ax.axvline(d["epoch"], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        if not ys:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"{results['title']}: {results['method']} (seed {results['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- main
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
    splits = load_splits(recipe, data_args, training_args.seed)
    model = create_model(recipe, model_args, splits.num_classes)
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
    milestones = None
    if multistep:
        milestones = [int(m) for m in (sched_args.milestones or ",".join(map(str, recipe.milestones))).split(",")]

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
        "model_name": model_args.model_name or recipe.model_name,
        "dataset_name": data_args.dataset_name or recipe.dataset_name,
        "dataset_pretty": recipe.dataset_pretty,
        "eval_split": data_args.eval_split or recipe.eval_split,
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


def write_outputs(
    trainer,
    results: dict,
    splits: Splits,
    recipe: Recipe,
    data_args: DataArguments,
    *,
    push: bool,
    hub_model_id: str | None,
    hub_token: str | None,
    private: bool | None,
) -> Path:
    """results.json, the curve, and the timm model folder with its card (pushed when asked)."""
    from hf_autodrop import hub

    out = Path(trainer.args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    curve = plot_curves(results, out / "training_curve.png")
    folder = out / "model"
    model = trainer.accelerator.unwrap_model(trainer.model).model
    model.to(memory_format=torch.contiguous_format)  # training is over; safetensors wants plain tensors
    size = data_args.image_size or (32 if recipe.kind == "cifar" else 224)
    crop_pct = 1.0 if recipe.kind == "cifar" else 0.875
    results["model_folder"] = str(folder)
    results["hub_model_id"] = hub_model_id if push else None
    hub.write_model_folder(
        model,
        folder,
        results,
        curve_path=curve,
        template_path=MODEL_CARD_TEMPLATE,
        repo_id=hub_model_id,
        label_names=splits.label_names,
        data_config={
            "input_size": (3, size, size),
            "mean": recipe.mean,
            "std": recipe.std,
            "crop_pct": crop_pct,
            "interpolation": "bilinear",
        },
    )
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if push:
        url = hub.push_folder(
            folder,
            hub_model_id,
            token=hub_token,
            private=private,
            commit_message=f"{results['title']}: {results['method']}, seed {results['seed']}",
        )
        logger.info("Pushed %s to %s", folder, url)
    return out


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
