"""Data: the Hub splits through `datasets`, with lazy batched transforms that return uint8 images.

Images leave the dataloader as uint8 NCHW tensors and are normalised on the device (`model.py`), so
the workers move 4x fewer bytes. CIFAR images are decoded by torchvision from the undecoded PNG
bytes (about 2.5x faster than PIL for 32x32 images) and cropped and flipped per image by
`random_crop_flip` on the whole batch (about 12x faster than torchvision v2's per-image `RandomCrop`
+ `RandomHorizontalFlip`; both measured in bench/data_pipeline.py). ImageNet-style data goes through
`timm.data.create_transform` in its prefetcher mode (uint8 out). The columns are checked up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .args import AugmentArguments, DataArguments


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
    """Batched: decode, resize to `size` if given, (train) pad-4 random crop + flip, optional RandAugment.

    uint8 NCHW out, normalised later on the device. The image column is read undecoded
    (`Image(decode=False)`) and decoded here by torchvision.
    """

    undecoded = True

    def __init__(
        self,
        image_column: str,
        label_column: str,
        train: bool,
        size: int | None = None,
        rand_augment: str | None = None,
        mean=(0.5, 0.5, 0.5),
    ):
        self.image_column, self.label_column, self.train, self.size = image_column, label_column, train, size
        self.rand_augment = None
        if rand_augment and train:
            from timm.data.auto_augment import rand_augment_transform

            fill = tuple(round(255 * m) for m in mean)
            self.rand_augment = rand_augment_transform(
                rand_augment, {"translate_const": int((size or 32) * 0.45), "img_mean": fill}
            )

    def __call__(self, batch: dict) -> dict:
        images = [decode_rgb(item) for item in batch[self.image_column]]
        if self.size is not None:
            from torchvision.transforms.v2 import functional as TF

            images = [
                im if im.shape[-2:] == (self.size, self.size) else TF.resize(im, [self.size, self.size])
                for im in images
            ]
        x = torch.stack(images)
        if self.train:
            x = random_crop_flip(x)
            if self.rand_augment is not None:
                from PIL import Image

                x = torch.stack(
                    [
                        torch.from_numpy(
                            np.array(self.rand_augment(Image.fromarray(im.permute(1, 2, 0).numpy())))
                        ).permute(2, 0, 1)
                        for im in x
                    ]
                )
        return {"pixel_values": x, "labels": torch.as_tensor(batch[self.label_column])}


class ImageNetTransform:
    """Batched: timm's ImageNet transforms in prefetcher mode (uint8 out; normalised on the device).

    Training: random-resized crop + flip (+ RandAugment when asked); evaluation: resize to
    size / crop_pct and centre-crop `size`; bilinear, as timm's default data config.
    """

    undecoded = False

    def __init__(
        self,
        image_column: str,
        label_column: str,
        train: bool,
        size: int = 224,
        crop_pct: float = 0.875,
        rand_augment: str | None = None,
        mean=(0.485, 0.456, 0.406),
    ):
        from timm.data import create_transform

        self.image_column, self.label_column = image_column, label_column
        self.transform = create_transform(
            size,
            is_training=train,
            use_prefetcher=True,  # uint8 tensors out: no ToTensor/Normalize on the CPU
            interpolation="bilinear",
            crop_pct=crop_pct,
            scale=(0.08, 1.0),
            ratio=(3 / 4, 4 / 3),
            color_jitter=None,
            auto_augment=rand_augment if train else None,
            mean=tuple(mean),
        )

    def __call__(self, batch: dict) -> dict:
        x = torch.stack([torch.as_tensor(self.transform(im.convert("RGB"))) for im in batch[self.image_column]])
        return {"pixel_values": x, "labels": torch.as_tensor(batch[self.label_column])}


def make_transform(
    kind: str,
    data_args: DataArguments,
    train: bool,
    crop_pct: float = 0.875,
    augment: AugmentArguments | None = None,
):
    """The recipe's augmentation (`kind`, the one place it is looked at) for training or evaluation."""
    rand_augment = augment.rand_augment if augment is not None else None
    if kind == "cifar":
        return CifarTransform(
            data_args.image_column,
            data_args.label_column,
            train,
            data_args.image_size,
            rand_augment,
            data_args.image_mean,
        )
    return ImageNetTransform(
        data_args.image_column,
        data_args.label_column,
        train,
        data_args.image_size,
        crop_pct,
        rand_augment,
        data_args.image_mean,
    )


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
    image_size: int  # the training images' size (after any resize or crop)
    streaming: bool = False


def _load_split(data_args: DataArguments, split: str):
    import datasets

    where = data_args.data_dir or data_args.dataset_name
    try:
        if data_args.data_dir:
            path = Path(data_args.data_dir)
            if (path / "dataset_dict.json").is_file():
                dd = datasets.load_from_disk(str(path))
                if split not in dd:
                    raise ValueError(f"split {split!r} not in {where}; its splits are: {', '.join(dd)}")
                return dd[split]
            return datasets.load_dataset(
                str(path), split=split, streaming=data_args.streaming, cache_dir=data_args.cache_dir
            )
        return datasets.load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            split=split,
            streaming=data_args.streaming,
            cache_dir=data_args.cache_dir,
        )
    except ValueError as err:
        if "split" in str(err).lower() and split in str(err):
            raise ValueError(f"{err} (choose with --train_split / --eval_split)") from err
        raise


def check_columns(ds, split: str, data_args: DataArguments) -> None:
    """A clear error, naming the available columns, when the image or label column is missing or of the wrong type."""
    import datasets

    features = ds.features
    if features is None:  # a stream without a schema: checked when the first batch is read
        return
    where = data_args.data_dir or data_args.dataset_name
    for option, column in (("image_column", data_args.image_column), ("label_column", data_args.label_column)):
        if column not in features:
            raise ValueError(
                f"--{option} {column!r} is not a column of the {split!r} split of {where}; its columns are: "
                f"{', '.join(features)}. Pass --{option} <one of them>."
            )
    if not isinstance(features[data_args.image_column], datasets.Image):
        raise ValueError(
            f"--image_column {data_args.image_column!r} holds {features[data_args.image_column]}, not images "
            f"(columns: {', '.join(features)})"
        )
    label = features[data_args.label_column]
    if not isinstance(label, datasets.ClassLabel) and not (
        isinstance(label, datasets.Value) and label.dtype.startswith("int")
    ):
        raise ValueError(
            f"--label_column {data_args.label_column!r} holds {label}, not class labels (ClassLabel or integers; "
            f"columns: {', '.join(features)})"
        )


def _classes(train, data_args: DataArguments) -> tuple[list[str] | None, int]:
    """Class names and count from the label column: its ClassLabel, else the largest integer label + 1."""
    import datasets

    feature = (train.features or {}).get(data_args.label_column)
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), feature.num_classes
    if isinstance(train, datasets.IterableDataset):
        raise ValueError(
            f"--label_column {data_args.label_column!r} is not a ClassLabel, and a stream cannot be counted: "
            "cast it to ClassLabel (datasets' `cast_column`) or read the data set without --streaming"
        )
    labels = train.unique(data_args.label_column)
    if min(labels) < 0:
        raise ValueError(f"--label_column {data_args.label_column!r} has negative labels (unlabelled split?)")
    return None, int(max(labels)) + 1


def load_splits(
    kind: str, data_args: DataArguments, seed: int, crop_pct: float = 1.0, augment: AugmentArguments | None = None
) -> Splits:
    """The train and test splits with lazy (per-batch, in dataloader workers) transforms, checked up front."""
    import datasets

    train = _load_split(data_args, data_args.train_split)
    test = _load_split(data_args, data_args.eval_split)
    check_columns(train, data_args.train_split, data_args)
    check_columns(test, data_args.eval_split, data_args)
    label_names, num_classes = _classes(train, data_args)
    train_tf = make_transform(kind, data_args, True, crop_pct, augment)
    test_tf = make_transform(kind, data_args, False, crop_pct, augment)
    if train_tf.undecoded:  # decoded by the transform (torchvision), not by `datasets` (PIL)
        train = train.cast_column(data_args.image_column, datasets.Image(decode=False))
        test = test.cast_column(data_args.image_column, datasets.Image(decode=False))
    image_size = data_args.image_size
    if image_size is None:  # the images' own size, from the first training image
        first = next(iter(train.take(1) if isinstance(train, datasets.IterableDataset) else train.select([0])))
        h, w = decode_rgb(first[data_args.image_column]).shape[-2:]
        if h != w:
            raise ValueError(f"the images are {h}x{w}, not square: pass --image_size to resize them")
        image_size = int(h)

    if isinstance(train, datasets.IterableDataset):
        num_train = data_args.num_train_examples
        if num_train is None and train.info.splits and data_args.train_split in train.info.splits:
            num_train = train.info.splits[data_args.train_split].num_examples
        if data_args.max_train_samples is not None:
            train = train.take(data_args.max_train_samples)
            num_train = min(num_train or data_args.max_train_samples, data_args.max_train_samples)
        if data_args.max_eval_samples is not None:
            test = test.take(data_args.max_eval_samples)
        train = train.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
        train = train.map(train_tf, batched=True, batch_size=64, remove_columns=list(train.column_names or []))
        test = test.map(test_tf, batched=True, batch_size=64, remove_columns=list(test.column_names or []))
        return Splits(train, test, label_names, num_classes, num_train, image_size, streaming=True)

    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples is not None:
        test = test.select(range(min(data_args.max_eval_samples, len(test))))
    return Splits(
        train.with_transform(train_tf), test.with_transform(test_tf), label_names, num_classes, len(train), image_size
    )


def load_eval_split(kind: str, data_args: DataArguments, crop_pct: float):
    """The test split alone, checked and transformed for evaluation (the evaluation-only path)."""
    import datasets

    test = _load_split(data_args, data_args.eval_split)
    check_columns(test, data_args.eval_split, data_args)
    label_names, num_classes = _classes(test, data_args)
    tf = make_transform(kind, data_args, False, crop_pct)
    if tf.undecoded:
        test = test.cast_column(data_args.image_column, datasets.Image(decode=False))
    if data_args.max_eval_samples is not None:
        test = test.select(range(min(data_args.max_eval_samples, len(test))))
    return test.with_transform(tf), label_names, num_classes
