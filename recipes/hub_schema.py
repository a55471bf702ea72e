"""The Hub schemas of the recipes' data sets, and synthetic data sets in exactly those schemas.

Checked against the Hub's dataset cards (`dataset_info` / `dataset_infos.json` and the viewers):
- `uoft-cs/cifar10`: splits `train` (50,000) and `test` (10,000); columns `img` (Image, 32x32 PNG)
  and `label` (ClassLabel, 10 names).
- `uoft-cs/cifar100`: splits `train` and `test`; columns `img`, `fine_label` (ClassLabel, 100 names;
  the Hub's list spells class 26 "cra") and `coarse_label` (ClassLabel, 20 names).
- `ILSVRC/imagenet-1k` (gated): splits `train` (1,281,167), `validation` (50,000) and `test`
  (100,000, label -1); columns `image` (Image, JPEG of any size, some grayscale or CMYK) and `label`
  (ClassLabel, 1000 names "tench, Tinca tinca", ...).

The synthetic copies (random pixels) feed the offline tests and the benchmarks: they are written
with `DatasetDict.save_to_disk` (what `--data_dir` reads) or in the Hub's parquet layout
(`data/<split>-00000-of-00001.parquet` and a README.md whose YAML gives the configs, features
and split sizes; `load_dataset(folder)` reads it, streaming too).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_FINE_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch cra crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
CIFAR100_COARSE_NAMES = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2"
).split()

SPLITS = {
    "uoft-cs/cifar10": ("train", "test"),
    "uoft-cs/cifar100": ("train", "test"),
    "ILSVRC/imagenet-1k": ("train", "validation"),
}


def imagenet_names() -> list[str]:
    """1000 ImageNet-1k class names in index order: timm's descriptions ("tench, Tinca tinca", ...).

    Two descriptions occur twice ("crane", "maillot"); `ClassLabel` needs unique names, so those
    carry their synset id as well.
    """
    from collections import Counter

    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(1000)]
    counts = Counter(names)
    return [f"{n} ({info.index_to_label_name(i)})" if counts[n] > 1 else n for i, n in enumerate(names)]


def features(dataset_name: str):
    """The `datasets.Features` of a Hub data set the recipes use."""
    import datasets

    if dataset_name == "uoft-cs/cifar10":
        return datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR10_NAMES)})
    if dataset_name == "uoft-cs/cifar100":
        return datasets.Features(
            {
                "img": datasets.Image(),
                "fine_label": datasets.ClassLabel(names=CIFAR100_FINE_NAMES),
                "coarse_label": datasets.ClassLabel(names=CIFAR100_COARSE_NAMES),
            }
        )
    if dataset_name == "ILSVRC/imagenet-1k":
        return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=imagenet_names())})
    raise ValueError(f"no schema for {dataset_name!r}; known: {sorted(SPLITS)}")


def synthetic_split(dataset_name: str, n: int, seed: int = 0, image_size: tuple[int, int] | None = None):
    """`n` random images in the schema of `dataset_name` (ImageNet: JPEGs of varied sizes, some grayscale)."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    feats = features(dataset_name)
    if dataset_name.startswith("uoft-cs/"):
        h, w = image_size or (32, 32)
        columns = {"img": [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(n)]}
        for name, feat in feats.items():
            if name != "img":
                columns[name] = rng.integers(0, feat.num_classes, n).tolist()
        return datasets.Dataset.from_dict(columns, features=feats)  # PIL images are stored as PNG, as on the Hub
    images = []
    for i in range(n):
        h, w = image_size or (int(rng.integers(40, 80)), int(rng.integers(40, 80)))
        # Smooth colour fields plus mild noise: JPEGs of about a photo's size (pure noise would be 3-4x larger).
        coarse = Image.fromarray(rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8))
        pixels = np.asarray(coarse.resize((w, h), Image.BILINEAR), dtype=np.int16)
        pixels = pixels + rng.integers(-12, 13, pixels.shape, dtype=np.int16)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        if i % 5 == 4:
            image = image.convert("L")  # the real set has grayscale JPEGs
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)  # stored as JPEG bytes, as on the Hub
        images.append({"bytes": buf.getvalue(), "path": None})
    columns = {"image": images, "label": rng.integers(0, 1000, n).tolist()}
    return datasets.Dataset.from_dict(columns, features=feats)


def write_synthetic(
    dataset_name: str,
    path: str | Path,
    n_train: int,
    n_eval: int,
    *,
    layout: str = "save_to_disk",
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a synthetic copy of `dataset_name` to `path` in `layout` "save_to_disk" or "parquet" (the Hub's)."""
    import datasets

    train_split, eval_split = SPLITS[dataset_name]
    dd = datasets.DatasetDict(
        {
            train_split: synthetic_split(dataset_name, n_train, seed, image_size),
            eval_split: synthetic_split(dataset_name, n_eval, seed + 1, image_size),
        }
    )
    path = Path(path)
    if layout == "save_to_disk":
        dd.save_to_disk(str(path))
    elif layout == "parquet":
        from datasets.info import DatasetInfo, DatasetInfosDict
        from datasets.splits import SplitDict, SplitInfo
        from huggingface_hub import DatasetCard, DatasetCardData

        (path / "data").mkdir(parents=True, exist_ok=True)
        splits = SplitDict()
        for split, ds in dd.items():
            ds.to_parquet(str(path / "data" / f"{split}-00000-of-00001.parquet"))
            splits.add(SplitInfo(split, num_examples=len(ds)))
        # The Hub's README: which files make which split, and the features and split sizes (`dataset_info`).
        card = DatasetCardData(
            configs=[
                {"config_name": "default", "data_files": [{"split": split, "path": f"data/{split}-*"} for split in dd]}
            ]
        )
        DatasetInfosDict({"default": DatasetInfo(features=features(dataset_name), splits=splits)}).to_dataset_card_data(
            card
        )
        DatasetCard(f"---\n{card}\n---\n").save(path / "README.md")
    else:
        raise ValueError(f"layout must be 'save_to_disk' or 'parquet', got {layout!r}")
    return path
