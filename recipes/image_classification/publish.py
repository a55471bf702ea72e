"""Publishing: the timm model folder, its model card, and the upload to the Hub.

`write_model_folder` writes everything `timm.create_model("local-dir:<folder>", pretrained=True)` and
the Hub need, and `push_folder` uploads the same folder, after which anyone can load it with
`timm.create_model("hf-hub:<repo>", pretrained=True)` (with `hf_autodrop.models` imported where the
architecture is one of its CIFAR models):

- `config.json` + `model.safetensors`: timm's own export (`timm.models.save_for_hf`);
- `README.md`: the model card, rendered with `huggingface_hub.ModelCard.from_template` from the Jinja
  template `model_card.md` beside this module, whose YAML metadata carries a `model-index`;
- `training_curve.png` and `results.json` from the run.

This lives with the recipes, not in the library: the library trains, the recipes publish.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch

from .args import DataArguments
from .data import Splits
from .recipe import Recipe
from .results import plot_curves

logger = logging.getLogger("hf_autodrop.recipes")

__all__ = [
    "DEFAULT_TEMPLATE",
    "card_data_for",
    "push_folder",
    "render_model_card",
    "save_timm_folder",
    "write_model_folder",
]

# The model card's Jinja template, beside this module.
DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"

CITATION = """@misc{autodrop,
  title  = {AutoDrop: Training Deep Learning Models with Automatic Learning Rate Drop},
  note   = {Under double-blind review},
}"""


def save_timm_folder(
    model, folder: str | Path, *, label_names: list[str] | None = None, data_config: dict | None = None
) -> Path:
    """Write timm's `config.json` + `model.safetensors` for `model` into `folder` (created if needed).

    `label_names` (class index -> name) and `data_config` (the preprocessing: `input_size`, `mean`,
    `std`, `crop_pct`, `interpolation`) are stored in `config.json`, where timm's data config finds them.
    """
    from timm.models import save_for_hf

    folder = Path(folder)
    model_config = {"label_names": list(label_names)} if label_names else None
    save_for_hf(model, str(folder), model_config=model_config, data_config=data_config, safe_serialization=True)
    return folder


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (list, tuple)):
        mean, std = value
        return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{value:.{digits}f}"


def _method_name(key: str) -> str:
    schedule, rho = key.rsplit("-", 1)
    return f"{'AutoDrop' if schedule == 'autodrop' else 'Baseline (multistep)'}, rho = {rho}"


def card_data_for(results: dict, repo_id: str | None = None):
    """`ModelCardData` with the `model-index` results (top-1 accuracy and error, top-5 accuracy)."""
    from huggingface_hub import EvalResult, ModelCardData

    common = dict(
        task_type="image-classification",
        task_name="Image Classification",
        dataset_type=results["dataset_name"],
        dataset_name=results["dataset_pretty"],
        dataset_split=results.get("eval_split"),
    )
    evals = []
    final = results.get("final_test_error")
    if final is not None:
        evals.append(
            EvalResult(
                metric_type="accuracy", metric_name="Top-1 accuracy (%)", metric_value=round(100.0 - final, 2), **common
            )
        )
        evals.append(
            EvalResult(metric_type="error", metric_name="Top-1 error (%)", metric_value=round(final, 2), **common)
        )
    top5 = results.get("final_top5_error")
    if top5 is not None and results.get("num_classes", 0) > 5:
        evals.append(
            EvalResult(
                metric_type="accuracy",
                metric_name="Top-5 accuracy (%)",
                metric_config="top5",
                metric_value=round(100.0 - top5, 2),
                **common,
            )
        )
    name = repo_id.split("/")[-1] if repo_id else f"{results['model_name']}.{results['recipe']}-{results['schedule']}"
    return ModelCardData(
        model_name=name,
        library_name="timm",
        license="apache-2.0",
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "hf_autodrop", "autodrop", results["schedule"]],
        datasets=[results["dataset_name"]],
        metrics=["accuracy"],
        eval_results=evals or None,
    )


def render_model_card(
    results: dict, template_path: str | Path | None = None, repo_id: str | None = None, folder: str | Path | None = None
):
    """Render the model card for one run.

    Reads from `results`: `recipe`, `title`, `method`, `schedule`, `drop_factor`, `seed`, `model_name`,
    `dataset_name`, `dataset_pretty`, `eval_split`, `final_test_error`, `best_test_error`,
    `best_epoch`, `final_top5_error`, `drops`, `paper` (`{"key", "value", "table"}`), `command`,
    `wall_time_s`, `versions`, `hardware`, `config`, `num_parameters`, `epochs`, `total_batch_size`.
    """
    from huggingface_hub import ModelCard

    template_path = Path(template_path or DEFAULT_TEMPLATE)
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template {template_path} not found; pass template_path=")
    paper = results.get("paper") or {}
    paper_rows = [
        {"method": _method_name(k), "value": _fmt(v), "ours": k == paper.get("key")}
        for k, v in (paper.get("table") or {}).items()
    ]
    training = (results.get("config") or {}).get("training") or {}
    load_name = f"hf-hub:{repo_id}" if repo_id else f"local-dir:{folder or '<folder>'}"
    return ModelCard.from_template(
        card_data_for(results, repo_id),
        template_path=str(template_path),
        title=results["title"],
        method=results["method"],
        repo_id=repo_id,
        load_name=load_name,
        model_name=results["model_name"],
        dataset_name=results["dataset_name"],
        dataset_pretty=results["dataset_pretty"],
        eval_split=results.get("eval_split"),
        seed=results["seed"],
        drop_factor=results.get("drop_factor"),
        final_error=_fmt(results.get("final_test_error")),
        best_error=_fmt(results.get("best_test_error")),
        best_epoch=_fmt(results.get("best_epoch"), 0),
        top5_error=_fmt(results.get("final_top5_error")) if results.get("num_classes", 0) > 5 else None,
        paper_value=_fmt(paper.get("value")),
        paper_rows=paper_rows,
        drops=[
            {
                "epoch": _fmt(d["epoch"], 2),
                "step": d["step"],
                "lr": f"{d['lr']:.3g}",
                "lr_before": f"{d['lr_before']:.3g}",
            }
            for d in results.get("drops", [])
        ],
        command=results.get("command", ""),
        wall_hours=_fmt((results.get("wall_time_s") or 0.0) / 3600.0),
        epochs=_fmt(results.get("epochs"), 0),
        num_parameters=f"{results.get('num_parameters', 0):,}",
        total_batch_size=results.get("total_batch_size"),
        learning_rate=training.get("learning_rate"),
        weight_decay=training.get("weight_decay"),
        optim_args=training.get("optim_args"),
        autodrop=(results.get("config") or {}).get("autodrop"),
        milestones=((results.get("config") or {}).get("schedule") or {}).get("milestones"),
        versions=", ".join(f"{k} {v}" for k, v in (results.get("versions") or {}).items()),
        hardware=results.get("hardware") or {},
        citation=CITATION,
    )


def write_model_folder(
    model,
    folder: str | Path,
    results: dict,
    *,
    curve_path: str | Path | None = None,
    template_path: str | Path | None = None,
    repo_id: str | None = None,
    label_names: list[str] | None = None,
    data_config: dict | None = None,
) -> Path:
    """Write the timm checkpoint, the curve, `results.json` and the card `README.md` into `folder`."""
    folder = save_timm_folder(model, folder, label_names=label_names, data_config=data_config)
    if curve_path is not None:
        shutil.copyfile(curve_path, folder / "training_curve.png")
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    card = render_model_card(results, template_path=template_path, repo_id=repo_id, folder=folder)
    card.save(folder / "README.md")
    return folder


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload AutoDrop recipe checkpoint",
) -> str:
    """Create the model repo if needed and upload `folder` to it; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token, library_name="hf_autodrop")
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model"
    )
    return str(getattr(commit, "commit_url", commit))


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
    out = Path(trainer.args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    curve = plot_curves(results, out / "training_curve.png")
    folder = out / "model"
    model = trainer.accelerator.unwrap_model(trainer.model).model
    model.to(memory_format=torch.contiguous_format)  # training is over; safetensors wants plain tensors
    size = data_args.image_size or 32
    results["model_folder"] = str(folder)
    results["hub_model_id"] = hub_model_id if push else None
    write_model_folder(
        model,
        folder,
        results,
        curve_path=curve,
        repo_id=hub_model_id,
        label_names=splits.label_names,
        data_config={
            "input_size": (3, size, size),
            "mean": recipe.mean,
            "std": recipe.std,
            "crop_pct": recipe.crop_pct,
            "interpolation": "bilinear",
        },
    )
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if push:
        url = push_folder(
            folder,
            hub_model_id,
            token=hub_token,
            private=private,
            commit_message=f"{results['title']}: {results['method']}, seed {results['seed']}",
        )
        logger.info("Pushed %s to %s", folder, url)
    return out
