"""`Recipe`: the fixed facts of one row of the paper's Table 1, and what each data set contributes to it.

A recipe file (`recipes/cifar10_resnet18.py`, ...) is one `Recipe(...)` and `main(RECIPE)`; its
values become the command line's defaults (`args.build_parser`), the one place they are applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TRANSFORMS = ("cifar", "imagenet")


@dataclass(frozen=True)
class Recipe:
    """The fixed facts of one experiment of the paper's Table 1 (the command line overrides the defaults).

    `paper` maps a method key (`"multistep-0.2"`, `"autodrop-0.2"`, ...) to the paper's test error in
    percent as `(mean, std)` (std `None` where the paper ran once); it applies only to `dataset_name`.
    """

    name: str
    title: str
    model_name: str
    dataset_name: str
    dataset_pretty: str
    kind: str  # the augmentation: "cifar" (pad-4 crop + flip) or "imagenet" (random-resized crop + flip)
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
    image_size: int | None = None  # None: the images' own size (CIFAR); else the crop size
    crop_pct: float = 1.0  # evaluation: resize to image_size / crop_pct, then centre-crop image_size
    min_lr: float = 1e-4
    model_kwargs: dict = field(default_factory=dict)
    paper: dict = field(default_factory=dict)
    expected_hours: str = ""

    def __post_init__(self):
        if self.kind not in TRANSFORMS:
            raise ValueError(f"Recipe.kind must be one of {TRANSFORMS}, got {self.kind!r}")


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
            image_size=224,
            crop_pct=0.875,
        ),
    }


DATA_SETS = _data_sets()
"""What each data set contributes to a `Recipe`: Hub repo, columns, splits, classes, normalisation, sizes."""

# The paper's CIFAR protocol shared by the four CIFAR rows (lr and Nesterov differ per model).
CIFAR_PROTOCOL = dict(epochs=200, weight_decay=5e-4, batch_size=128, drop_factor=0.2, milestones=(60, 120, 160))
