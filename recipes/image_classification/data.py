"""Data: the Hub splits through `datasets`, with lazy batched transforms that return uint8 images.

Images leave the dataloader as uint8 NCHW tensors and are normalised on the device (`model.py`), so
the workers move 4x fewer bytes. CIFAR images are decoded by torchvision from the undecoded PNG
bytes (about 2.5x faster than PIL for 32x32 images, see bench/data_pipeline.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .args import DataArguments


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
    """Batched: decode, (train) pad-4 random crop + flip; uint8 NCHW out, normalised later on the device."""

    undecoded = True  # reads the image column as `Image(decode=False)`: decoded here, by torchvision

    def __init__(self, image_column: str, label_column: str, train: bool):
        self.image_column, self.label_column, self.train = image_column, label_column, train

    def __call__(self, batch: dict) -> dict:
        x = torch.stack([decode_rgb(item) for item in batch[self.image_column]])
        if self.train:
            x = random_crop_flip(x)
        return {"pixel_values": x, "labels": torch.as_tensor(batch[self.label_column])}


class ImageNetTransform:
    """Batched: (train) random-resized crop + flip, (eval) resize to size / crop_pct + centre crop; uint8 out."""

    undecoded = False

    def __init__(self, image_column: str, label_column: str, train: bool, size: int = 224, crop_pct: float = 0.875):
        from torchvision.transforms import v2

        self.image_column, self.label_column = image_column, label_column
        if train:
            ops = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        else:
            ops = [v2.Resize(round(size / crop_pct), antialias=True), v2.CenterCrop(size)]
        self.transform = v2.Compose([*ops, v2.PILToTensor()])

    def __call__(self, batch: dict) -> dict:
        x = torch.stack([self.transform(im.convert("RGB")) for im in batch[self.image_column]])
        return {"pixel_values": x, "labels": torch.as_tensor(batch[self.label_column])}


def make_transform(kind: str, data_args: DataArguments, train: bool, crop_pct: float = 0.875):
    """The recipe's augmentation (`kind`, the one place it is looked at) for training or evaluation."""
    if kind == "cifar":
        return CifarTransform(data_args.image_column, data_args.label_column, train)
    return ImageNetTransform(data_args.image_column, data_args.label_column, train, data_args.image_size, crop_pct)


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


def _load_split(data_args: DataArguments, split: str):
    import datasets

    if data_args.data_dir:
        path = Path(data_args.data_dir)
        if (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))[split]
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


def load_splits(kind: str, data_args: DataArguments, seed: int, num_classes: int, crop_pct: float = 1.0) -> Splits:
    """The train and test splits with lazy (per-batch, in dataloader workers) transforms."""
    import datasets

    train = _load_split(data_args, data_args.train_split)
    test = _load_split(data_args, data_args.eval_split)
    train_tf = make_transform(kind, data_args, True, crop_pct)
    test_tf = make_transform(kind, data_args, False, crop_pct)

    if train_tf.undecoded:  # decoded by the transform (torchvision), not by `datasets` (PIL)
        train = train.cast_column(data_args.image_column, datasets.Image(decode=False))
        test = test.cast_column(data_args.image_column, datasets.Image(decode=False))
    feature = (train.features or {}).get(data_args.label_column)
    label_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    num_classes = len(label_names) if label_names else num_classes

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
        return Splits(train, test, label_names, num_classes, num_train, streaming=True)

    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples is not None:
        test = test.select(range(min(data_args.max_eval_samples, len(test))))
    return Splits(train.with_transform(train_tf), test.with_transform(test_tf), label_names, num_classes, len(train))
