#!/usr/bin/env python
"""Is the input pipeline the bottleneck? Images/s of the recipes' data pipeline alone vs. their training step.

Measured side by side in one run, on this machine, for the CIFAR-10 ResNet-18 and ImageNet ResNet-18
recipes:
- pipeline: the recipe's own `datasets` loading + lazy batched transforms + collate, through a
  `DataLoader` with N workers (decoding and augmentation included, nothing else), after warm-up;
- step: forward + backward + SGD step of the recipe's full-size model on a batch already in memory
  (channels_last; bf16 autocast on a GPU), after warm-up.
The ratio pipeline/step must stay well above 1 with the workers the training run uses; the last
column extrapolates it linearly in the number of workers (decoding is embarrassingly parallel).

Data: synthetic images in the Hub's schemas (`recipes/hub_schema.py`): CIFAR 32x32 PNGs; ImageNet
500x375 JPEGs of about 55 kB (real ImageNet JPEGs average about 110 kB, so decoding here is somewhat
cheaper), or `--data_dir` with a local copy of the real data.

`--costs` measures instead, side by side on one CIFAR batch of 128 (one thread, milliseconds per
batch, and the ratio to the recipe's choice), what the pipeline's choices and timm's training aids
cost: PNG decoding by torchvision (the recipe's) vs PIL; the recipe's batched pad-4 crop + flip vs
torchvision v2's per-image `RandomCrop` + `RandomHorizontalFlip`; RandAugment (CPU, per batch); the
ImageNet-style training transform, timm's `create_transform` (the recipe's) vs torchvision v2's;
and on the device, relative to one training step of the full-size ResNet-18: random erasing,
mixup/cutmix and one EMA update.

Usage:
    python bench/data_pipeline.py                                  # both recipes, workers 0 and 2
    python bench/data_pipeline.py --workers 0,4,8 --device cuda    # on a GPU machine
    python bench/data_pipeline.py --costs                          # the choices' and the aids' costs
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "recipes"))

import hub_schema  # noqa: E402
from image_classification import data as icd  # noqa: E402
from image_classification import model as icm  # noqa: E402
from image_classification.args import parse_args  # noqa: E402


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RECIPE


def pipeline_rate(dataset, batch_size: int, workers: int, batches: int) -> float:
    """Images/s delivered by a DataLoader over `dataset` (worker start-up and 2 warm-up batches excluded)."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=icd.collate, drop_last=True
    )
    it = iter(loader)
    for _ in range(2):
        next(it)
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += batch["pixel_values"].shape[0]
    return n / (time.perf_counter() - start)


def step_rate(recipe, batch_size: int, size: int, steps: int, device: torch.device) -> float:
    """Images/s of forward + backward + SGD step of the recipe's full-size model on an in-memory batch."""
    torch.manual_seed(0)
    model_args = parse_args(recipe, []).model  # the recipe's defaults
    model = icm.create_model(model_args, recipe.num_classes)
    wrapped = icm.ImageClassifier(model, recipe.mean, recipe.std, channels_last=True).to(device).train()
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, recipe.num_classes, (batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss = wrapped(x, y)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def _ms(fn, repeats: int) -> float:
    """Median wall time of `fn()` in milliseconds over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * sorted(times)[len(times) // 2]


def costs(device: torch.device, repeats: int = 5) -> list[dict]:
    """Milliseconds per CIFAR batch of 128 for each choice and aid, measured side by side."""
    import numpy as np
    from PIL import Image
    from timm.data import Mixup
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.random_erasing import RandomErasing
    from timm.utils import ModelEmaV3
    from torchvision.transforms import v2

    recipe = load_recipe("cifar10_resnet18")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the data pipeline runs one thread per DataLoader worker
    cells = list(hub_schema.synthetic_split(recipe.dataset_name, 128).cast_column("img", _undecoded())["img"])
    batch = torch.stack([icd.decode_rgb(c) for c in cells])
    per_image = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    ra = rand_augment_transform("rand-m9-mstd0.5", {"translate_const": 14, "img_mean": (125, 123, 114)})
    cpu = {
        "decode: torchvision (recipe)": _ms(lambda: [icd.decode_rgb(c) for c in cells], repeats),
        "decode: PIL": _ms(
            lambda: [np.asarray(Image.open(__import__("io").BytesIO(c["bytes"])).convert("RGB")) for c in cells],
            repeats,
        ),
        "crop+flip: batched (recipe)": _ms(lambda: icd.random_crop_flip(batch), repeats),
        "crop+flip: torchvision v2 per image": _ms(lambda: torch.stack([per_image(im) for im in batch]), repeats),
        "RandAugment rand-m9-mstd0.5": _ms(
            lambda: [ra(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in batch], repeats
        ),
    }
    # ImageNet-style training transform on 128 photo-sized JPEGs: timm's (the recipe's) vs torchvision v2's.
    photos = [
        im.convert("RGB")
        for im in hub_schema.synthetic_split("ILSVRC/imagenet-1k", 128, image_size=(375, 500))["image"]
    ]
    timm_tf = icd.ImageNetTransform("image", "label", True).transform
    v2_tf = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(), v2.PILToTensor()])
    cpu["ImageNet train transform: timm create_transform (recipe)"] = _ms(lambda: [timm_tf(p) for p in photos], repeats)
    cpu["ImageNet train transform: torchvision v2"] = _ms(lambda: [v2_tf(p) for p in photos], repeats)
    torch.set_num_threads(threads)
    rows = [{"what": k, "where": "CPU, 1 thread", "ms": v} for k, v in cpu.items()]

    # On the device, next to one training step of the full-size model (batch 128).
    model_args = parse_args(recipe, []).model
    model = icm.create_model(model_args, recipe.num_classes).to(device)
    wrapped = icm.ImageClassifier(model, recipe.mean, recipe.std, channels_last=True).to(device).train()
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.01, momentum=0.9)
    x = batch.to(device)
    y = torch.randint(0, 10, (128,), device=device)
    xf = (x.float() - wrapped.mean) / wrapped.std
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        wrapped(x, y)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()

    erase = RandomErasing(0.25, mode="pixel", device=str(device))
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=10)
    ema = ModelEmaV3(model, decay=0.9998)

    def timed(fn):
        def run():
            fn()
            sync()

        return run

    step_ms = _ms(step, repeats)
    rows.append({"what": "training step, ResNet-18 (reference)", "where": str(device), "ms": step_ms})
    rows.append(
        {"what": "random erasing p=0.25", "where": str(device), "ms": _ms(timed(lambda: erase(xf.clone())), repeats)}
    )
    rows.append(
        {"what": "mixup 0.8 / cutmix 1.0", "where": str(device), "ms": _ms(timed(lambda: mix(xf.clone(), y)), repeats)}
    )
    rows.append(
        {"what": "EMA update (ModelEmaV3)", "where": str(device), "ms": _ms(timed(lambda: ema.update(model)), repeats)}
    )
    print("| what | where | ms per batch of 128 | vs |")
    print("| --- | --- | --- | --- |")
    base = {"decode": cpu["decode: torchvision (recipe)"], "crop": cpu["crop+flip: batched (recipe)"]}
    for r in rows:
        if r["what"].startswith("decode"):
            ref, name = base["decode"], "torchvision decode"
        elif r["what"].startswith(("crop", "RandAugment")):
            ref, name = base["crop"], "batched crop+flip"
        elif r["what"].startswith("ImageNet"):
            ref, name = cpu["ImageNet train transform: timm create_transform (recipe)"], "timm transform"
        else:
            ref, name = step_ms, "training step"
        r["ratio"] = r["ms"] / ref
        print(f"| {r['what']} | {r['where']} | {r['ms']:,.2f} | {r['ratio']:.2f}x {name} |")
    return rows


def _undecoded():
    import datasets

    return datasets.Image(decode=False)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default="cifar10_resnet18,imagenet_resnet18")
    parser.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--batches", type=int, default=20, help="timed batches of the pipeline")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 2 CPU, 20 GPU)")
    parser.add_argument(
        "--step_batch",
        type=int,
        default=None,
        help="training batch (default: the recipe's on a GPU; 32 CIFAR / 8 ImageNet on a CPU)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data_dir", default=None, help="a local copy of the real data set (save_to_disk)")
    parser.add_argument("--images", type=int, default=None, help="synthetic images (default 4096 CIFAR, 1024 ImageNet)")
    parser.add_argument("--costs", action="store_true", help="the pipeline's choices and timm's aids, per batch")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    workers = [int(w) for w in args.workers.split(",")]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"# {platform.node() or 'host'}: {cores} CPU cores, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    )
    print(
        "# command: python " + " ".join([os.path.relpath(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])])
    )
    if args.costs:
        return costs(device)

    rows = []
    for name in args.recipes.split(","):
        recipe = load_recipe(name)
        cifar = recipe.kind == "cifar"
        size = 32 if cifar else 224
        if args.data_dir:
            import datasets

            train = datasets.load_from_disk(args.data_dir)[recipe.train_split]
        else:
            n = args.images or (4096 if cifar else 1024)
            train = hub_schema.synthetic_split(recipe.dataset_name, n, image_size=None if cifar else (375, 500))
        data_args = parse_args(recipe, []).data  # the recipe's defaults
        dataset = train.with_transform(icd.make_transform(recipe.kind, data_args, True, recipe.crop_pct))
        pipe_batch = recipe.batch_size if cifar else 64
        batches = min(args.batches, len(train) // pipe_batch - 3)
        step_batch = args.step_batch or (recipe.batch_size if device.type == "cuda" else (32 if cifar else 8))
        steps = args.steps or (20 if device.type == "cuda" else 2)
        train_rate = step_rate(recipe, step_batch, size, steps, device)
        for w in workers:
            rate = pipeline_rate(dataset, pipe_batch, w, batches)
            per_worker = rate / max(w, 1)
            rows.append(
                {
                    "recipe": name,
                    "workers": w,
                    "pipeline": rate,
                    "step": train_rate,
                    "step_batch": step_batch,
                    "ratio": rate / train_rate,
                    "per_worker": per_worker,
                }
            )

    header = "| recipe | workers | pipeline img/s | train step img/s (batch) | pipeline / step | img/s per worker |"
    print(header)
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['recipe']} | {r['workers']} | {r['pipeline']:,.0f} | {r['step']:,.1f} ({r['step_batch']}) | "
            f"{r['ratio']:,.1f} | {r['per_worker']:,.0f} |"
        )
    return rows


if __name__ == "__main__":
    main()
