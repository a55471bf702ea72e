"""Publishing: the timm model folder, its model card, and the upload to the Hub.

`write_model_folder` writes a folder that loads three ways, and `push_folder` uploads it as it is:

- with transformers and timm alone, no hf_autodrop: `AutoModelForImageClassification.from_pretrained(
  <repo or folder>, trust_remote_code=True)` or `pipeline("image-classification", model=..., trust_remote_code=True)`:
  the folder carries its architecture as Hub custom code (`config.json`'s `auto_map` ->
  `modeling_hf_autodrop.py`, which imports `hf_autodrop_models.py`, a verbatim copy of `hf_autodrop/models.py`);
- with timm: `timm.create_model("hf-hub:<repo>" or "local-dir:<folder>", pretrained=True)`, after
  `import hf_autodrop.models` for the CIFAR architectures (timm's own `resnet18` needs nothing);
- with transformers' own `TimmWrapper` (no `trust_remote_code`), after `import hf_autodrop.models`.

The files:

- `config.json` + `model.safetensors`: timm's own export (`timm.models.save_for_hf`), plus `auto_map`,
  and without `num_classes` in `model_args` (timm records it there; timm reads the root `num_classes`
  anyway, and transformers' `TimmWrapper` passes `num_classes=` itself and then `**model_args`, which
  raised `TypeError: got multiple values for keyword argument 'num_classes'`);
- `modeling_hf_autodrop.py` + `hf_autodrop_models.py`: the custom code (torch, timm and transformers only);
- `README.md`: the model card, rendered with `huggingface_hub.ModelCard.from_template` from the Jinja
  template `model_cards/model_card.md` (at the repository's root), whose YAML metadata carries a `model-index`;
- `training_curve.png` and `results.json` from the run.

The upload is `huggingface_hub.HfApi.upload_folder` of that folder. `timm.models.push_to_hf_hub` does
not fit: it writes a fresh temporary folder (weights, config and, only where the repo has none, its own
short card) and uploads that, so the card, the custom code, the curve and `results.json` would be left out.

This lives with the recipes, not in the library: the library trains, the recipes publish.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import shutil
from pathlib import Path

logger = logging.getLogger("hf_autodrop.recipes")

__all__ = [
    "DEFAULT_TEMPLATE",
    "card_data_for",
    "prepare_push",
    "push_folder",
    "render_model_card",
    "save_timm_folder",
    "update_card_scores",
    "write_model_folder",
]

# The model cards' Jinja template, in model_cards/ at the repository's root (with the rendered card of each recipe).
MODEL_CARDS = Path(__file__).resolve().parents[2] / "model_cards"
DEFAULT_TEMPLATE = MODEL_CARDS / "model_card.md"
# The Hub custom code each folder carries: the transformers entry point, and the architectures' file.
HUB_CODE = Path(__file__).resolve().parent / "hub_code" / "modeling_hf_autodrop.py"
ARCHITECTURES_FILE = "hf_autodrop_models.py"
AUTO_MAP = {"AutoModelForImageClassification": "modeling_hf_autodrop.AutoDropTimmForImageClassification"}
# What each way of loading needs. hf_autodrop is not on PyPI: it installs from a clone of its repository.
INSTALL_TRANSFORMERS = "pip install transformers timm"
INSTALL = 'pip install -e ".[recipes]"'

CITATION = """@misc{autodrop,
  title  = {AutoDrop: Training Deep Learning Models with Automatic Learning Rate Drop},
  note   = {Under double-blind review},
}"""


def save_timm_folder(
    model, folder: str | Path, *, label_names: list[str] | None = None, data_config: dict | None = None
) -> Path:
    """Write timm's `config.json` + `model.safetensors` for `model` into `folder` (created if needed).

    `label_names` (class index -> name) and `data_config` (the preprocessing: `input_size`, `mean`,
    `std`, `crop_pct`, `interpolation`) are stored in `config.json`, where timm's data config (and
    transformers' `TimmWrapperImageProcessor`) finds them. The folder also gets its Hub custom code
    (`auto_map` + `modeling_hf_autodrop.py` + `hf_autodrop_models.py`), so that transformers loads it
    without hf_autodrop.
    """
    from timm.models import save_for_hf

    import hf_autodrop.models

    folder = Path(folder)
    model_config = {"auto_map": dict(AUTO_MAP)}
    if label_names:
        model_config["label_names"] = list(label_names)
    save_for_hf(model, str(folder), model_config=model_config, data_config=data_config, safe_serialization=True)
    path = folder / "config.json"
    config = json.loads(path.read_text())
    # timm records num_classes in model_args too; TimmWrapper would pass it twice (see the module's docstring).
    if isinstance(config.get("model_args"), dict):
        config["model_args"].pop("num_classes", None)
    path.write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(HUB_CODE, folder / HUB_CODE.name)
    shutil.copyfile(hf_autodrop.models.__file__, folder / ARCHITECTURES_FILE)
    return folder


def needs_registration(model_name: str) -> bool:
    """Whether loading `model_name` needs `import hf_autodrop.models` (one of the CIFAR architectures it registers)."""
    import hf_autodrop.models

    return model_name in hf_autodrop.models.__all__


NOT_TRAINED = "not trained yet"


def _fmt(value, digits: int = 2, missing: str = "n/a") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    if isinstance(value, (list, tuple)):
        mean, std = value
        return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{value:.{digits}f}"


def _method_name(key: str) -> str:
    schedule, rho = key.rsplit("-", 1)
    return f"{'AutoDrop' if schedule == 'autodrop' else 'Baseline (multistep)'}, rho = {rho}"


def eval_results(scores: dict, dataset_name: str, dataset_pretty: str, split: str | None, num_classes: int) -> list:
    """`EvalResult`s (top-1 accuracy and error, top-5 accuracy) from `{"top1_error", "top5_error"}` in percent."""
    from huggingface_hub import EvalResult

    common = dict(
        task_type="image-classification",
        task_name="Image Classification",
        dataset_type=dataset_name,
        dataset_name=dataset_pretty,
        dataset_split=split,
    )
    out = []
    top1 = scores.get("top1_error")
    if top1 is not None:
        out.append(
            EvalResult(
                metric_type="accuracy", metric_name="Top-1 accuracy (%)", metric_value=round(100.0 - top1, 2), **common
            )
        )
        out.append(
            EvalResult(metric_type="error", metric_name="Top-1 error (%)", metric_value=round(top1, 2), **common)
        )
    top5 = scores.get("top5_error")
    if top5 is not None and num_classes > 5:
        out.append(
            EvalResult(
                metric_type="accuracy",
                metric_name="Top-5 accuracy (%)",
                metric_config="top5",
                metric_value=round(100.0 - top5, 2),
                **common,
            )
        )
    return out


def card_data_for(results: dict, repo_id: str | None = None):
    """`ModelCardData` with the `model-index` results (top-1 accuracy and error, top-5 accuracy)."""
    from huggingface_hub import ModelCardData

    evals = eval_results(
        {"top1_error": results.get("final_test_error"), "top5_error": results.get("final_top5_error")},
        results["dataset_name"],
        results["dataset_pretty"],
        results.get("eval_split"),
        results.get("num_classes", 0),
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
    `dataset_name`, `dataset_pretty`, `is_paper_dataset`, `eval_split`, `num_classes`, `label_names`,
    `image_size`, `mean`, `std`, `final_test_error`, `best_test_error`, `best_epoch`,
    `final_top5_error`, `drops`, `paper` (`{"key", "value", "table"}`), `command`, `wall_time_s`,
    `versions`, `hardware`, `config`, `num_parameters`, `epochs`, `total_batch_size`, `ema`.
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
    config = results.get("config") or {}
    training = config.get("training") or {}
    model_ref = repo_id or str(folder or "<folder>")
    load_name = f"hf-hub:{repo_id}" if repo_id else f"local-dir:{folder or '<folder>'}"
    trained = results.get("final_test_error") is not None
    names = results.get("label_names") or []
    classes = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    return ModelCard.from_template(
        card_data_for(results, repo_id),
        template_path=str(template_path),
        title=results["title"],
        method=results["method"],
        repo_id=repo_id,
        model_ref=model_ref,
        load_name=load_name,
        install=INSTALL,
        install_transformers=INSTALL_TRANSFORMERS,
        trained=trained,
        expected_hours=(config.get("recipe") or {}).get("expected_hours"),
        register=needs_registration(results["model_name"]),
        recipe_file=f"recipes/{results['recipe']}.py",
        model_name=results["model_name"],
        dataset_name=results["dataset_name"],
        dataset_pretty=results["dataset_pretty"],
        is_paper_dataset=results.get("is_paper_dataset", True),
        eval_split=results.get("eval_split"),
        num_classes=results.get("num_classes"),
        classes=classes,
        image_size=results.get("image_size"),
        mean=", ".join(f"{m:.4f}" for m in results.get("mean") or []),
        std=", ".join(f"{m:.4f}" for m in results.get("std") or []),
        seed=results["seed"],
        drop_factor=results.get("drop_factor"),
        final_error=_fmt(results.get("final_test_error"), missing=NOT_TRAINED),
        best_error=_fmt(results.get("best_test_error"), missing=NOT_TRAINED),
        best_epoch=_fmt(results.get("best_epoch"), 0, missing="-"),
        top5_error=_fmt(results.get("final_top5_error"), missing=NOT_TRAINED)
        if results.get("num_classes", 0) > 5
        else None,
        ema=results.get("ema"),
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
        augment=config.get("augment") or {},
        label_smoothing=training.get("label_smoothing_factor") or (config.get("augment") or {}).get("label_smoothing"),
        autodrop=config.get("autodrop"),
        milestones=(config.get("schedule") or {}).get("milestones"),
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


def update_card_scores(folder: str | Path, scores: dict, dataset_name: str, dataset_pretty: str, split: str) -> Path:
    """Replace the `model-index` results of `folder/README.md` for (`dataset_name`, `split`) with `scores`.

    The other data sets' and splits' results stay; the card's text is unchanged.
    """
    from huggingface_hub import ModelCard

    path = Path(folder) / "README.md"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --update_card needs a model folder with a card")
    card = ModelCard.load(path)
    num_classes = scores.get("num_classes", 0)
    kept = [r for r in (card.data.eval_results or []) if (r.dataset_type, r.dataset_split) != (dataset_name, split)]
    card.data.eval_results = kept + eval_results(scores, dataset_name, dataset_pretty, split, num_classes)
    if not card.data.model_name:
        card.data.model_name = Path(folder).resolve().name
    card.save(path)
    return path


# ---------------------------------------------------------------------------------------------- the Hub
def prepare_push(hub_model_id: str | None, token: str | None, private: bool | None, default_name: str):
    """Check everything a push needs, before any training: a token, who it is, and the repo (created if needed).

    A `hub_model_id` without an owner (or none at all: `default_name`) goes to the token's user.
    Returns `(repo_id, token)`; raises with the reason (and says that nothing was trained) otherwise.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    token = token or get_token()
    if not token:
        raise ValueError(
            "--push_to_hub needs a Hugging Face token with write access, and none was found: run `hf auth login`, "
            "set HF_TOKEN, or pass --hub_token. Nothing was trained."
        )
    api = HfApi(token=token, library_name="hf_autodrop")
    try:
        user = api.whoami()["name"]
    except Exception as err:  # noqa: BLE001 - offline, refused, expired: all stop here with the reason
        raise RuntimeError(
            f"--push_to_hub: the Hub did not accept the token or could not be reached ({type(err).__name__}: {err}). "
            "Nothing was trained."
        ) from err
    repo_id = hub_model_id or default_name
    if "/" not in repo_id:
        repo_id = f"{user}/{repo_id}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"--hub_model_id {repo_id!r} is not a valid repo id: {err}. Nothing was trained.") from err
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
    except Exception as err:  # noqa: BLE001
        raise RuntimeError(
            f"--push_to_hub: cannot create or write to the model repo {repo_id} as {user} "
            f"({type(err).__name__}: {err}). Nothing was trained."
        ) from err
    return repo_id, token


def upload_command(folder: str | Path, repo_id: str) -> str:
    """The shell command that uploads `folder` to `repo_id` by hand."""
    return f"hf upload {shlex.quote(repo_id)} {shlex.quote(str(folder))} . --repo-type model"


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload AutoDrop recipe checkpoint",
) -> str:
    """Create the model repo if needed and upload `folder` to it; returns the commit URL.

    If the upload fails, the folder stays as it is and the error says which command uploads it by hand.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token, library_name="hf_autodrop")
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model"
        )
    except Exception as err:  # noqa: BLE001
        raise RuntimeError(
            f"Uploading {folder} to {repo_id} failed ({type(err).__name__}: {err}). Every file is kept; upload "
            f"them by hand with:\n    {upload_command(folder, repo_id)}"
        ) from err
    return str(getattr(commit, "commit_url", commit))
