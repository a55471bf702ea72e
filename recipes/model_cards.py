#!/usr/bin/env python
"""Render `model_cards/<recipe>.md`: the card each Table-1 recipe publishes, before any run.

Each card comes from the recipe's own configuration (its `Recipe` and the command line's defaults,
`image_classification.parse_args(recipe, [])`), the paper's numbers, and "not trained yet" where a
run's numbers go, through the same template (`model_cards/model_card.md`) and the same
`publish.render_model_card` a run uses. From the repository's root:

    python recipes/model_cards.py           # (re)write model_cards/*.md   (also: make cards)
    python recipes/model_cards.py --check   # exit 1 and name each card that differs (CI)

tests/test_recipes.py renders them again and compares with the checked-in files, so they never
drift from the recipes.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path

RECIPES = Path(__file__).resolve().parent
sys.path.insert(0, str(RECIPES))

import hub_schema  # noqa: E402
from image_classification import parse_args, publish  # noqa: E402

# The rows of the paper's Table 1, in its order.
TABLE1 = ("cifar10_resnet18", "cifar10_wrn28_10", "cifar100_resnet34", "cifar100_wrn40_10", "imagenet_resnet18")
OUT = publish.MODEL_CARDS


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RECIPE


def num_parameters(recipe) -> int:
    import timm
    import torch

    import hf_autodrop.models  # noqa: F401 - the CIFAR architectures

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = timm.create_model(recipe.model_name, num_classes=recipe.num_classes, **recipe.model_kwargs)
    return sum(p.numel() for p in model.parameters())


def planned_results(recipe) -> dict:
    """The fields `publish.render_model_card` reads, for the recipe's default run (AutoDrop, seed 0), untrained."""
    args = parse_args(recipe, [])
    training, autodrop = args.training, args.autodrop
    key = f"autodrop-{autodrop.drop_factor:g}"
    features = hub_schema.features(recipe.dataset_name)
    return {
        "recipe": recipe.name,
        "title": recipe.title,
        "method": f"AutoDrop (rho = {autodrop.drop_factor:g})",
        "schedule": "autodrop",
        "drop_factor": autodrop.drop_factor,
        "seed": training.seed,
        "model_name": recipe.model_name,
        "dataset_name": recipe.dataset_name,
        "dataset_pretty": recipe.dataset_pretty,
        "is_paper_dataset": True,
        "eval_split": recipe.eval_split,
        "num_classes": recipe.num_classes,
        "label_names": list(features[recipe.label_column].names),
        "image_size": recipe.image_size or 32,
        "mean": list(recipe.mean),
        "std": list(recipe.std),
        "num_parameters": num_parameters(recipe),
        "epochs": recipe.epochs,
        "total_batch_size": recipe.batch_size,
        "paper": {"key": key, "value": recipe.paper.get(key), "table": recipe.paper},
        "command": f"python recipes/{recipe.name}.py --seed {training.seed}",
        "drops": [],
        "config": {
            "recipe": dataclasses.asdict(recipe),
            "schedule": {"milestones": list(args.schedule.milestones)},
            "augment": {},
            "autodrop": autodrop.to_dict(),
            "training": {
                "learning_rate": training.learning_rate,
                "weight_decay": training.weight_decay,
                "optim_args": training.optim_args,
            },
        },
    }


def render(name: str) -> str:
    """The text of `model_cards/<name>.md`."""
    recipe = load_recipe(name)
    data = recipe.dataset_name.split("/")[-1]
    repo_id = f"<owner>/{recipe.model_name}-{data}-autodrop"  # the recipe's default --hub_model_id name
    card = publish.render_model_card(planned_results(recipe), repo_id=repo_id)
    return str(card).rstrip("\n") + "\n"


def _shown(path: Path) -> str:
    return str(path.relative_to(RECIPES.parent)) if path.is_relative_to(RECIPES.parent) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="Compare with the checked-in cards; write nothing.")
    args = parser.parse_args(argv)
    stale = []
    for name in TABLE1:
        path, text = OUT / f"{name}.md", render(name)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {_shown(path)}")
    if stale:
        names = ", ".join(_shown(p) for p in stale)
        print(
            f"{names}: out of date with the recipes; run `python recipes/model_cards.py` (make cards)", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
