"""The recipes end to end, offline: tiny data sets in the Hub's exact schemas, both schedules, DDP, Hub publishing.

Every recipe runs its real code path (argument parsing, `datasets` loading, lazy transforms, the
timm model, `Trainer` + AutoDrop or the multistep baseline, results.json, curve, timm folder and
card) for a few optimizer steps on CPU. Models keep the recipe's architecture with smaller widths
(`--model_kwargs`), images keep the schema's size (CIFAR 32x32; ImageNet crops at 32 pixels).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import ModelCard

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
sys.path.insert(0, str(RECIPES))  # the recipes import their shared module as a sibling, as when run as scripts

import aggregate  # noqa: E402
import hub_schema  # noqa: E402
import image_classification as ic  # noqa: E402
from image_classification import data as ic_data  # noqa: E402
from image_classification import model as ic_model  # noqa: E402
from image_classification import trainer as ic_trainer  # noqa: E402

import hf_autodrop.models  # noqa: E402,F401 - the reload checks need the CIFAR names registered

# Narrow versions of each recipe's architecture (same classes, same depth where cheap).
SMALL_MODEL = {
    "cifar10_resnet18": '{"channels": [8, 16, 32, 64]}',
    "cifar10_wrn28_10": '{"widen_factor": 1}',
    "cifar100_resnet34": '{"channels": [8, 16, 32, 64]}',
    "cifar100_wrn40_10": '{"widen_factor": 1, "depth": 16}',
    "imagenet_resnet18": '{"channels": [8, 16, 32, 64], "zero_init_last": false}',
}
N_TRAIN, N_EVAL, BATCH = 16, 8, 4  # 4 optimizer steps per epoch


def _env(**extra: str) -> dict:
    """The environment for a recipe run as a script: this checkout's hf_autodrop, offline."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        **extra,
    }


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hub_data(tmp_path_factory):
    """Synthetic copies of the three Hub data sets, written lazily in the layout asked for."""
    root = tmp_path_factory.mktemp("hub_data")
    made: dict[tuple[str, str], Path] = {}

    def get(dataset_name: str, layout: str = "save_to_disk") -> Path:
        key = (dataset_name, layout)
        if key not in made:
            made[key] = hub_schema.write_synthetic(
                dataset_name, root / f"{dataset_name.replace('/', '--')}-{layout}", N_TRAIN, N_EVAL, layout=layout
            )
        return made[key]

    return get


def tiny_args(name: str, data_dir: Path, out: Path, *extra: str) -> list[str]:
    args = [
        "--data_dir",
        str(data_dir),
        "--output_dir",
        str(out),
        "--use_cpu",
        "--per_device_train_batch_size",
        str(BATCH),
        "--per_device_eval_batch_size",
        str(N_EVAL),
        "--dataloader_num_workers",
        "0",  # (the recipe then turns its default persistent workers off)
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--model_kwargs",
        SMALL_MODEL[name],
    ]
    if name.startswith("imagenet"):
        args += ["--image_size", "32"]
    return args + list(extra)


# AutoDrop that must drop at the third interval (the first check), one interval per optimizer step.
AUTODROP_NOW = [
    "--max_steps",
    "3",
    "--interval_steps",
    "1",
    "--drop_delay",
    "0",
    "--threshold",
    "180",
    "--max_threshold",
    "180",
]
# The baseline with its first drop after epoch 1 = optimizer step 4.
MULTISTEP_NOW = ["--schedule", "multistep", "--milestones", "1", "--max_steps", "5"]


def reloaded_error(folder: Path, data_dir: Path, split: str, image_column: str, label_column: str) -> float:
    """Top-1 error (%) of the published folder, reloaded through timm and scored with timm's own transforms."""
    import datasets

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    test = datasets.load_from_disk(str(data_dir))[split]
    x = torch.stack([transform(im.convert("RGB")) for im in test[image_column]])
    with torch.no_grad():
        pred = model(x).argmax(-1)
    return 100.0 * (1.0 - (pred == torch.as_tensor(test[label_column])).float().mean().item())


# Run in a fresh interpreter where hf_autodrop cannot be imported at all: the published folder, in the
# Hub's cache layout (as a download leaves it), must load with transformers and timm alone.
LOAD_WITHOUT_HF_AUTODROP = """
import json, sys
sys.modules["hf_autodrop"] = None  # `import hf_autodrop` (and hf_autodrop.models) now raises ImportError
import numpy as np, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

repo_id, images_path, out = sys.argv[1:]
data = np.load(images_path)
images = [Image.fromarray(data[f"arr_{i}"]) for i in range(len(data.files))]
model = AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=True).eval()
x = AutoImageProcessor.from_pretrained(repo_id)(images, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    logits = model(x).logits
classify = pipeline("image-classification", model=repo_id, trust_remote_code=True)
top = [classify(im, top_k=1)[0]["label"] for im in images]
import timm  # the folder's custom code registered its architecture: the timm way works here too
timm_model = timm.create_model("hf-hub:" + repo_id, pretrained=True).eval()
with torch.no_grad():
    timm_logits = timm_model(x)
assert not [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "hf_autodrop"]
json.dump({"logits": logits.tolist(), "timm_logits": timm_logits.tolist(), "top": top,
           "id2label": {int(k): v for k, v in model.config.id2label.items()}}, open(out, "w"))
"""


def as_hub_cache(folder: Path, cache: Path, repo_id: str) -> None:
    """`folder` as `huggingface_hub` stores a downloaded repo (refs/main -> snapshots/<commit>/), for offline loads."""
    import shutil

    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def check_loads_everywhere(folder: Path, data_dir: Path, split: str, image_column: str, tmp_path: Path) -> None:
    """The folder loads four ways, with equal logits: timm + hf_autodrop.models, transformers' TimmWrapper
    (hf_autodrop.models imported), and, in a process without hf_autodrop, the Hub custom code
    (`AutoModelForImageClassification` and `pipeline`, `trust_remote_code=True`) and timm's `hf-hub:`."""
    import datasets
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    images = [np.asarray(im.convert("RGB")) for im in datasets.load_from_disk(str(data_dir))[split][image_column]]
    np.savez(tmp_path / "images.npz", *images)  # ImageNet's images differ in size
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    from PIL import Image

    x = torch.stack([transform(Image.fromarray(a)) for a in images])
    with torch.no_grad():
        reference = model(x)
    # transformers' own TimmWrapper (no custom code): config.json must not pass num_classes twice.
    wrapper = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    assert type(wrapper).__name__ == "TimmWrapperForImageClassification"
    assert torch.equal(
        AutoImageProcessor.from_pretrained(str(folder))(list(map(Image.fromarray, images)), return_tensors="pt")[
            "pixel_values"
        ],
        x,
    )
    with torch.no_grad():
        torch.testing.assert_close(wrapper(x).logits, reference, rtol=0, atol=1e-5)

    cache, repo_id = tmp_path / "hub_cache", "someone/published"
    as_hub_cache(folder, cache, repo_id)
    env = _env(HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    out = tmp_path / "loaded.json"
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_HF_AUTODROP, repo_id, str(tmp_path / "images.npz"), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    loaded = json.loads(out.read_text())
    torch.testing.assert_close(torch.tensor(loaded["logits"]), reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(loaded["timm_logits"]), reference, rtol=0, atol=1e-5)
    names = model.pretrained_cfg["label_names"]
    assert {int(k): v for k, v in loaded["id2label"].items()} == dict(enumerate(names))
    assert loaded["top"] == [names[i] for i in reference.argmax(-1).tolist()]


def check_outputs(out: Path, recipe, results: dict, data_dir: Path, args: list[str], *, lr0: float, drop_step: int):
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["final_test_error"] == results["final_test_error"]
    for key in (
        "config",
        "seed",
        "final_test_error",
        "best_test_error",
        "best_epoch",
        "drop_epochs",
        "drop_lrs",
        "wall_time_s",
        "versions",
        "hardware",
        "command",
        "paper",
    ):
        assert key in on_disk, key
    assert on_disk["versions"]["timm"] == timm.__version__ and on_disk["hardware"]["device"] == "cpu"
    assert on_disk["best_test_error"] <= on_disk["final_test_error"]
    assert on_disk["command"] == f"python recipes/{recipe.name}.py {shlex.join(args)}"
    # The lr dropped once, by drop_factor, at the optimizer step the schedule says.
    rho = on_disk["drop_factor"]
    assert [d["step"] for d in on_disk["drops"]] == [drop_step]
    assert on_disk["drop_lrs"][0] == pytest.approx(lr0 * rho, rel=1e-12)
    assert on_disk["config"]["training"]["learning_rate"] == lr0

    png = (out / "training_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000

    folder = out / "model"
    assert {
        "config.json",
        "model.safetensors",
        "README.md",
        "training_curve.png",
        "results.json",
        "modeling_hf_autodrop.py",
        "hf_autodrop_models.py",
    } <= {p.name for p in folder.iterdir()}
    card = ModelCard.load(folder / "README.md")
    top1 = next(r for r in card.data.eval_results if r.metric_type == "accuracy" and r.metric_config is None)
    assert top1.metric_value == round(100.0 - on_disk["final_test_error"], 2)
    assert top1.dataset_type == recipe.dataset_name and top1.task_type == "image-classification"
    assert card.data.library_name == "timm" and recipe.dataset_name in card.data.datasets
    assert on_disk["command"] in card.text and "How to reproduce" in card.text
    # Only the CIFAR architectures need hf_autodrop.models to load; timm's resnet18 does not.
    assert ("import hf_autodrop.models" in card.text) == recipe.model_name.endswith("_cifar")
    paper = recipe.paper[on_disk["paper"]["key"]]
    assert f"{paper[0]:.2f}" in card.text  # the paper's number beside ours

    # The published folder is the final model: reloaded through timm, it scores the reported error.
    cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    assert tuple(cfg["mean"]) == tuple(recipe.mean) and tuple(cfg["std"]) == tuple(recipe.std)
    assert cfg["input_size"] == [3, 32, 32]  # the training images' size (CIFAR's; ImageNet's crops here)
    error = reloaded_error(folder, data_dir, recipe.eval_split, recipe.image_column, recipe.label_column)
    assert error == pytest.approx(on_disk["final_test_error"], abs=1e-9)
    return on_disk


RECIPE_DATA = {
    "cifar10_resnet18": "uoft-cs/cifar10",
    "cifar10_wrn28_10": "uoft-cs/cifar10",
    "cifar100_resnet34": "uoft-cs/cifar100",
    "cifar100_wrn40_10": "uoft-cs/cifar100",
    "imagenet_resnet18": "ILSVRC/imagenet-1k",
}


@pytest.mark.parametrize("schedule", ["autodrop", "multistep"])
@pytest.mark.parametrize("name", list(RECIPE_DATA))
def test_recipe_end_to_end(name, schedule, hub_data, tmp_path):
    module = load_recipe(name)
    recipe = module.RECIPE
    assert recipe.dataset_name == RECIPE_DATA[name]
    data_dir = hub_data(recipe.dataset_name)
    out = tmp_path / "run"
    args = tiny_args(name, data_dir, out, *(AUTODROP_NOW if schedule == "autodrop" else MULTISTEP_NOW))
    results = module.main(recipe, args)

    assert results["schedule"] == schedule and results["seed"] == 0
    assert results["drop_factor"] == recipe.drop_factor and results["num_classes"] == recipe.num_classes
    on_disk = check_outputs(
        out, recipe, results, data_dir, args, lr0=recipe.learning_rate, drop_step=3 if schedule == "autodrop" else 4
    )
    if schedule == "autodrop":
        assert on_disk["autodrop_drops"][0]["step"] == 3
        assert on_disk["config"]["autodrop"]["drop_factor"] == recipe.drop_factor
        check_loads_everywhere(out / "model", data_dir, recipe.eval_split, recipe.image_column, tmp_path)
    else:
        assert on_disk["drop_epochs"] == [1.0]
        assert on_disk["config"]["angle_monitor"]["dry_run"] is True  # angles logged, nothing changed by AutoDrop
        assert on_disk["history"]["angle"], "the baseline logs AutoDrop's angles for comparison"
        assert [e["epoch"] for e in on_disk["history"]["eval"]] == [1.0, 1.25]  # each epoch, then the final step
        assert [e["epoch"] for e in on_disk["history"]["train_loss"]][0] == 1.0  # the epoch's mean training loss


def test_paper_defaults_reach_the_trainer(tmp_path):
    """No flags: the recipe's Table 1 settings are what the Trainer and AutoDrop get."""
    recipe = load_recipe("cifar10_wrn28_10").RECIPE
    args = ic.parse_args(recipe, [])
    training, autodrop = args.training, args.autodrop
    assert (training.learning_rate, training.weight_decay, training.num_train_epochs) == (0.1, 5e-4, 200)
    assert training.per_device_train_batch_size == 128 and training.optim == "sgd"
    assert training.optim_args == "momentum=0.9,nesterov=False"
    assert str(training.lr_scheduler_type.value) == "constant" and training.seed == 0 and training.do_train
    assert (autodrop.drop_factor, autodrop.min_lr, autodrop.threshold, autodrop.max_threshold, autodrop.drop_delay) == (
        0.2,
        1e-4,
        0.01,
        1.0,
        20,
    )
    assert args.schedule.schedule == "autodrop" and args.schedule.weight_decay_all
    assert args.schedule.milestones == [60, 120, 160]
    # The recipe's data and model are the parsed values (applied once, as the parser's defaults).
    assert (args.data.dataset_name, args.data.image_column, args.data.label_column) == (
        "uoft-cs/cifar10",
        "img",
        "label",
    )
    assert (args.data.train_split, args.data.eval_split, args.data.image_size) == ("train", "test", None)
    assert tuple(args.data.image_mean) == recipe.mean and args.model.model_name == "wrn28_10_cifar"
    aug = args.augment
    assert (aug.mixup, aug.cutmix, aug.model_ema, aug.rand_augment, aug.random_erasing) == (0, 0, False, None, 0)
    assert training.output_dir == "out/cifar10_wrn28_10/autodrop-rho0.2-seed0"
    args = ic.parse_args(recipe, ["--schedule", "multistep", "--seed", "3", "--drop_factor", "0.5"])
    assert args.training.output_dir == "out/cifar10_wrn28_10/multistep-rho0.5-seed3"
    assert args.autodrop.drop_factor == 0.5
    imagenet = load_recipe("imagenet_resnet18").RECIPE
    args = ic.parse_args(imagenet, ["--model_kwargs", '{"channels": [8, 16, 32, 64]}'])
    assert json.loads(args.model.model_kwargs) == {"zero_init_last": False, "channels": [8, 16, 32, 64]}
    assert args.data.image_size == 224 and args.data.eval_split == "validation"
    with pytest.raises(ValueError, match="drop_factor"):
        ic.parse_args(recipe, ["--drop_factor", "1.5"])
    with pytest.raises(ValueError, match="model_name_or_path"):
        ic.parse_args(recipe, ["--do_train", "false"])
    with pytest.raises(ValueError, match="3 values"):
        ic.parse_args(recipe, ["--image_mean", "0.5", "0.5"])
    with pytest.raises(ValueError, match="publish_ema needs --model_ema"):
        ic.parse_args(recipe, ["--publish_ema"])
    with pytest.raises(ValueError, match="--hub_strategy checkpoint: the recipe publishes one timm model folder"):
        ic.parse_args(recipe, ["--push_to_hub", "--hub_strategy", "checkpoint"])
    assert ic.parse_args(recipe, ["--hub_strategy", "checkpoint"]).training.hub_strategy == "checkpoint"  # no push
    with pytest.raises(ValueError, match="--update_card writes the scores"):
        ic.parse_args(recipe, ["--do_train", "false", "--model_name_or_path", "hf-hub:a/b", "--update_card"])


def test_help_shows_the_recipe_options_first_with_their_real_defaults():
    proc = subprocess.run(
        [sys.executable, str(RECIPES / "cifar10_resnet18.py"), "--help"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    groups = ("data", "model", "schedule", "augmentation (timm)", "AutoDrop", "Trainer")
    order = [text.index(f"\n{g}:\n") for g in groups]
    assert order == sorted(order)
    assert "(default: uoft-cs/cifar10)" in text and "(default: resnet18_cifar)" in text
    flat = " ".join(text.split())
    assert "(default: [60, 120, 160])" in flat and "(default: 0.05)" in flat
    assert "out/cifar10_resnet18/<schedule>-rho<drop_factor>-seed<seed>" in "".join(text.split())
    autodrop = text[text.index("\nAutoDrop:\n") : text.index("\nTrainer:\n")]
    assert "rho: the lr is multiplied by this" in autodrop and "(default: 0.2)" in autodrop
    assert "--label_smoothing_factor" in text[text.index("\nTrainer:\n") :]


def test_multistep_schedule_is_torch_multisteplr_per_optimizer_step():
    def lrs_of(sched, opt, n):
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = ic_trainer.multistep_scheduler(opt, [6, 12], 0.2)
    assert isinstance(sched, torch.optim.lr_scheduler.MultiStepLR)
    # Updates 1-6 use 0.1; the updates after step 6 use 0.02, after step 12 0.004.
    assert lrs_of(sched, opt, 14) == pytest.approx([0.1] * 6 + [0.02] * 6 + [0.004] * 2)
    # With a warm-up, the factors multiply: the milestones stay where they are.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = ic_trainer.multistep_scheduler(opt, [6], 0.5, warmup_steps=4)
    assert lrs_of(sched, opt, 8) == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.05, 0.05])
    # The scheduler's checkpoint restores it (resume keeps the schedule).
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    other = ic_trainer.multistep_scheduler(opt2, [6], 0.5, warmup_steps=4)
    other.load_state_dict(sched.state_dict())
    assert other.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_random_crop_flip_is_a_padded_crop_per_image():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int32).reshape(2, 3, 32, 32).to(torch.uint8)
    out = ic_data.random_crop_flip(x.repeat(64, 1, 1, 1))
    assert out.shape == (128, 3, 32, 32) and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x.repeat(64, 1, 1, 1), (4, 4, 4, 4))
    for i in range(0, 128, 17):  # every output is some 32x32 window of the padded image, maybe mirrored
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 32, 32)
        hit = (windows == out[i]).flatten(1).all(1).any() or (windows == out[i].flip(-1)).flatten(1).all(1).any()
        assert hit
    flips = sum(not torch.equal(out[i], x[i % 2]) for i in range(128))
    assert flips > 64  # augmentation happened for most images


def test_streaming_from_the_hub_parquet_layout(hub_data, tmp_path):
    """ImageNet in the Hub's parquet layout, read as a stream: epochs come from the dataset info."""
    module = load_recipe("imagenet_resnet18")
    data_dir = hub_data("ILSVRC/imagenet-1k", layout="parquet")
    out = tmp_path / "run"
    results = module.main(
        module.RECIPE,
        tiny_args(
            "imagenet_resnet18", data_dir, out, "--streaming", "--cache_dir", str(tmp_path / "cache"), *MULTISTEP_NOW
        ),
    )
    assert results["num_train_examples"] == N_TRAIN
    assert [d["step"] for d in results["drops"]] == [4]  # one epoch = 16 images / batch 4
    assert results["final_top5_error"] is not None and (out / "model" / "model.safetensors").is_file()


class FakeHub:
    """Stands in for the Hub's HTTP API (the tests never touch the network); records what would be sent."""

    def __init__(self, user: str = "someone", fail_upload: bool = False):
        self.calls: list[tuple] = []
        self.user, self.fail_upload = user, fail_upload

    def api(self):
        import huggingface_hub

        hub = self

        class FakeApi:
            def __init__(self, token=None, **kwargs):
                hub.calls.append(("init", token))

            def whoami(self):
                hub.calls.append(("whoami",))
                return {"name": hub.user}

            def create_repo(self, repo_id, **kwargs):
                hub.calls.append(("create_repo", repo_id, kwargs.get("exist_ok")))
                return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

            def upload_folder(self, repo_id, folder_path, **kwargs):
                hub.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
                if hub.fail_upload:
                    raise ConnectionError("the network went away")
                return f"https://huggingface.co/{repo_id}/commit/1"

        return FakeApi


def test_push_to_hub_checks_first_then_uploads_the_timm_folder(hub_data, tmp_path, monkeypatch):
    import huggingface_hub

    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", hub.api())
    module = load_recipe("cifar10_resnet18")
    out = tmp_path / "run"
    push = ["--max_steps", "1", "--push_to_hub", "--hub_model_id", "resnet18-cifar10-autodrop", "--hub_token", "secret"]
    module.main(module.RECIPE, tiny_args("cifar10_resnet18", hub_data("uoft-cs/cifar10"), out, *push))
    # whoami and the repo come before training (a name without owner goes to the token's user), the upload after.
    kinds = [c[0] for c in hub.calls]
    assert kinds.index("whoami") < kinds.index("create_repo") < kinds.index("upload_folder")
    assert ("init", "secret") in hub.calls and ("create_repo", "someone/resnet18-cifar10-autodrop", True) in hub.calls
    upload = next(c for c in hub.calls if c[0] == "upload_folder")
    assert upload[1] == "someone/resnet18-cifar10-autodrop"
    assert upload[2] == [
        "README.md",
        "config.json",
        "hf_autodrop_models.py",
        "model.safetensors",
        "modeling_hf_autodrop.py",
        "results.json",
        "training_curve.png",
    ]
    card = ModelCard.load(out / "model" / "README.md")
    assert 'timm.create_model("hf-hub:someone/resnet18-cifar10-autodrop", pretrained=True)' in card.text
    assert card.data.model_name == "resnet18-cifar10-autodrop"
    assert ic.publish.INSTALL in card.text and "import hf_autodrop.models" in card.text
    # The first lines after the metadata say how to load it without hf_autodrop, then the timm way.
    body = card.text.lstrip().splitlines()
    assert body[2].startswith("**Load it with transformers and timm alone** (`pip install transformers timm`")
    assert 'pipeline("image-classification", model="someone/resnet18-cifar10-autodrop", trust_remote_code=True)' in (
        "\n".join(body[:12])
    )
    assert "Not trained yet" not in card.text and "not trained yet" not in card.text
    assert "`recipes/cifar10_resnet18.py`" in card.text
    assert "secret" not in (out / "results.json").read_text()


def test_a_failed_upload_keeps_the_files_and_says_how_to_upload_them(hub_data, tmp_path, monkeypatch):
    import huggingface_hub

    hub = FakeHub(fail_upload=True)
    monkeypatch.setattr(huggingface_hub, "HfApi", hub.api())
    module = load_recipe("cifar10_resnet18")
    out = tmp_path / "run"
    push = ["--max_steps", "1", "--push_to_hub", "--hub_model_id", "team/r18", "--hub_token", "secret"]
    with pytest.raises(RuntimeError, match="network went away") as err:
        module.main(module.RECIPE, tiny_args("cifar10_resnet18", hub_data("uoft-cs/cifar10"), out, *push))
    assert f"hf upload team/r18 {out / 'model'} . --repo-type model" in str(err.value)
    assert (out / "results.json").is_file() and (out / "model" / "model.safetensors").is_file()


def test_push_without_a_token_fails_before_training(hub_data, tmp_path):
    """From the command line, with no token anywhere: a clear error within seconds, nothing trained or written."""
    out = tmp_path / "run"
    env = _env(HF_HOME=str(tmp_path / "hf_home"))  # no stored token
    env.pop("HF_TOKEN", None)
    env.pop("HUGGING_FACE_HUB_TOKEN", None)
    cmd = [
        sys.executable,
        str(RECIPES / "cifar10_resnet18.py"),
        *tiny_args("cifar10_resnet18", hub_data("uoft-cs/cifar10"), out, "--max_steps", "1"),
        "--push_to_hub",
        "--hub_model_id",
        "someone/r18",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "--push_to_hub needs a Hugging Face token" in proc.stderr and "Nothing was trained" in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_two_processes_train_with_ddp_from_the_command_line(hub_data, tmp_path):
    """`torchrun --nproc_per_node 2 recipes/<name>.py`: DDP on CPU (gloo), the same AutoDrop decision."""
    data_dir = hub_data("uoft-cs/cifar10")
    out = tmp_path / "ddp"
    env = _env()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(RECIPES / "cifar10_resnet18.py"),
        *tiny_args("cifar10_resnet18", data_dir, out, *AUTODROP_NOW),
        "--ddp_backend",
        "gloo",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["hardware"]["world_size"] == 2 and results["total_batch_size"] == 2 * BATCH
    # The command that was run: torchrun, with its own options, the script from the repository's root.
    assert results["command"] == (
        "torchrun --standalone --nproc_per_node 2 recipes/cifar10_resnet18.py "
        + shlex.join(tiny_args("cifar10_resnet18", data_dir, out, *AUTODROP_NOW) + ["--ddp_backend", "gloo"])
    )
    assert results["hardware"]["launcher"] == {
        "name": "torchrun",
        "options": ["--standalone", "--nproc_per_node", "2"],
        "num_processes": 2,
        "num_machines": 1,
        "processes_per_machine": 2,
    }
    assert [d["step"] for d in results["drops"]] == [3] and results["epochs"] == 1.5  # 2 steps per epoch
    error = reloaded_error(out / "model", data_dir, "test", "img", "label")
    assert error == pytest.approx(results["final_test_error"], abs=1e-9)


def test_two_processes_through_accelerate_launch_with_the_repository_config(hub_data, tmp_path):
    """`accelerate launch --config_file recipes/accelerate/two_processes.yaml recipes/<name>.py` on 2 CPU processes."""
    data_dir = hub_data("uoft-cs/cifar10")
    out = tmp_path / "accelerate"
    config = "recipes/accelerate/two_processes.yaml"
    args = tiny_args("cifar10_resnet18", data_dir, out, *AUTODROP_NOW) + ["--ddp_backend", "gloo"]
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", config]
    proc = subprocess.run(
        cmd + ["recipes/cifar10_resnet18.py", *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["hardware"]["world_size"] == 2 and results["total_batch_size"] == 2 * BATCH
    assert (
        results["command"] == f"accelerate launch --config_file {config} recipes/cifar10_resnet18.py {shlex.join(args)}"
    )
    assert results["hardware"]["launcher"]["name"] == "accelerate launch"
    assert [d["step"] for d in results["drops"]] == [3] and results["epochs"] == 1.5


def _fake_run(tmp: Path, recipe: str, schedule: str, rho: float, seed: int, error: float) -> dict:
    run = tmp / f"{recipe}-{schedule}-{rho}-{seed}"
    r = {
        "recipe": recipe,
        "title": recipe.upper(),
        "schedule": schedule,
        "drop_factor": rho,
        "seed": seed,
        "final_test_error": error,
        "best_epoch": 150.0 + seed,
        "drop_epochs": [60.0, 120.0],
        "paper": {"value": [4.61, 0.173] if schedule == "autodrop" else [4.87, 0.085]},
        "config": {"training": {"output_dir": str(run)}},
    }
    (run / "model").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(r))
    (run / "model" / "results.json").write_text(json.dumps(r))  # the published copy must not count twice
    return r


def test_aggregate_builds_table1_rows(tmp_path):
    _fake_run(tmp_path, "cifar10_resnet18", "autodrop", 0.2, 0, 4.6)
    _fake_run(tmp_path, "cifar10_resnet18", "autodrop", 0.2, 1, 4.8)
    _fake_run(tmp_path, "cifar10_resnet18", "multistep", 0.2, 0, 5.0)
    _fake_run(tmp_path, "imagenet_resnet18", "autodrop", 0.1, 0, 30.0)
    rows = aggregate.aggregate(aggregate.load_runs(aggregate.find_results([str(tmp_path)])))
    assert [(r["recipe"], r["schedule"]) for r in rows] == [
        ("cifar10_resnet18", "multistep"),
        ("cifar10_resnet18", "autodrop"),
        ("imagenet_resnet18", "autodrop"),
    ]
    auto = rows[1]
    assert auto["seeds"] == [0, 1] and auto["final_test_error_mean"] == pytest.approx(4.7)
    assert auto["final_test_error_std"] == pytest.approx(float(np.std([4.6, 4.8], ddof=1)))
    text = aggregate.main([str(tmp_path), "--output", str(tmp_path / "table.md")])
    assert "| AutoDrop (rho = 0.2) | 4.70 ± 0.14 | 4.61 ± 0.17 | 2 |" in text
    assert "| Baseline (multistep) (rho = 0.2) | 5.00 | 4.87 ± 0.09 | 1 |" in text
    assert (tmp_path / "table.md").read_text() == text


def test_resume_from_a_checkpoint_keeps_the_schedule(hub_data, tmp_path):
    """Stopped after step 2 and resumed with `--resume_from_checkpoint last`: AutoDrop's state comes back
    (restore_callback_states_from_checkpoint is on by default) and it drops at step 3, as without the stop.

    The weights are not bit-identical to the uninterrupted run's: the `Trainer` fetches (and so
    augments) the first batch after a resume before it restores the RNG state.
    """
    module = load_recipe("cifar10_resnet18")
    data_dir = hub_data("uoft-cs/cifar10")
    extra = [*AUTODROP_NOW[2:], "--save_strategy", "steps", "--save_steps", "2"]
    whole = module.main(
        module.RECIPE, tiny_args("cifar10_resnet18", data_dir, tmp_path / "whole", *extra, "--max_steps", "4")
    )
    stopped = tmp_path / "stopped"
    module.main(module.RECIPE, tiny_args("cifar10_resnet18", data_dir, stopped, *extra, "--max_steps", "2"))
    assert (stopped / "checkpoint-2" / "autodrop_state.pt").is_file()
    resumed = module.main(
        module.RECIPE,
        tiny_args(
            "cifar10_resnet18", data_dir, stopped, *extra, "--max_steps", "4", "--resume_from_checkpoint", "last"
        ),
    )
    assert [(d["step"], d["lr"]) for d in resumed["drops"]] == [(d["step"], d["lr"]) for d in whole["drops"]]
    assert [d["step"] for d in resumed["drops"]] == [3]
    # The history spans the whole run: the steps before the stop come from the checkpoint's log_history.
    assert [a["epoch"] for a in resumed["history"]["angle"]] == [a["epoch"] for a in whole["history"]["angle"]]
    assert resumed["history"]["angle"][1]["angle"] == whole["history"]["angle"][1]["angle"]  # before the stop
    assert [e["epoch"] for e in resumed["history"]["train_loss"]] == [1.0]  # the epoch's loss is logged after resume


@pytest.mark.parametrize("schedule", ["autodrop", "multistep"])
def test_a_run_resumed_after_a_drop_still_reports_it(schedule, hub_data, tmp_path):
    """Stopped right after the drop's checkpoint and resumed: results.json, the curve and the card keep the drop."""
    module = load_recipe("cifar10_resnet18")
    data_dir = hub_data("uoft-cs/cifar10")
    if schedule == "autodrop":  # drops at step 3; the checkpoint of step 3 already holds the lower lr
        extra, stop, drop_step = [*AUTODROP_NOW[2:], "--save_strategy", "steps", "--save_steps", "3"], 3, 3
    else:  # drops after epoch 1 = step 4
        extra, stop, drop_step = [*MULTISTEP_NOW[:4], "--save_strategy", "steps", "--save_steps", "4"], 4, 4
    out = tmp_path / "run"
    module.main(module.RECIPE, tiny_args("cifar10_resnet18", data_dir, out, *extra, "--max_steps", str(stop)))
    assert (out / f"checkpoint-{stop}").is_dir()
    resumed = module.main(
        module.RECIPE,
        tiny_args("cifar10_resnet18", data_dir, out, *extra, "--max_steps", "5", "--resume_from_checkpoint", "last"),
    )
    rho, lr0 = module.RECIPE.drop_factor, module.RECIPE.learning_rate
    assert [(d["step"], d["lr_before"]) for d in resumed["drops"]] == [(drop_step, lr0)]
    assert resumed["drops"][0]["lr"] == pytest.approx(lr0 * rho)
    assert resumed["drops"][0]["epoch"] == drop_step / 4  # 4 steps per epoch: the drop's own epoch
    assert [p["lr"] for p in resumed["history"]["lr"]] == pytest.approx([lr0, lr0 * rho, lr0 * rho])
    # The Trainer's own lr log after the resume shows the lower lr.
    assert resumed["history"]["trainer_lr"][-1]["lr"] == pytest.approx(lr0 * rho)
    card = (out / "model" / "README.md").read_text()
    assert "No drop happened" not in card
    assert f"| {drop_step / 4:.2f} | {drop_step} | {lr0:.3g} | {lr0 * rho:.3g} |" in card


def _other_dataset(path: Path, n_train: int = 16, n_eval: int = 8, size: int = 40) -> Path:
    """Not CIFAR: 3 named classes, 40x40 images, other column names and an extra column."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    features = datasets.Features(
        {
            "id": datasets.Value("int64"),
            "picture": datasets.Image(),
            "kind": datasets.ClassLabel(names=["circle", "square", "star"]),
            "note": datasets.Value("string"),
        }
    )

    def split(n, offset):
        return datasets.Dataset.from_dict(
            {
                "id": list(range(offset, offset + n)),
                "picture": [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)],
                "kind": rng.integers(0, 3, n).tolist(),
                "note": ["x"] * n,
            },
            features=features,
        )

    datasets.DatasetDict({"train": split(n_train, 0), "test": split(n_eval, n_train)}).save_to_disk(str(path))
    return path


def test_another_dataset_is_checked_up_front_and_described_as_trained(tmp_path):
    module = load_recipe("cifar10_resnet18")
    data_dir = _other_dataset(tmp_path / "shapes")
    other = ["--dataset_name", "someone/shapes", "--max_steps", "2"]
    # The recipe's columns do not exist there: a clear error naming the ones that do, before any model is built.
    with pytest.raises(
        ValueError, match="--image_column 'img' is not a column .* its columns are: id, picture, kind, note"
    ):
        module.main(module.RECIPE, tiny_args("cifar10_resnet18", data_dir, tmp_path / "bad", *other))
    with pytest.raises(ValueError, match="--label_column 'note' holds .* not class labels"):
        module.main(
            module.RECIPE,
            tiny_args(
                "cifar10_resnet18",
                data_dir,
                tmp_path / "bad",
                *other,
                "--image_column",
                "picture",
                "--label_column",
                "note",
            ),
        )
    with pytest.raises(ValueError, match="split 'validation' not in .*its splits are: train, test"):
        module.main(
            module.RECIPE,
            tiny_args("cifar10_resnet18", data_dir, tmp_path / "bad", *other, "--eval_split", "validation"),
        )
    assert not (tmp_path / "bad").exists()

    out = tmp_path / "run"
    columns = ["--image_column", "picture", "--label_column", "kind"]
    results = module.main(module.RECIPE, tiny_args("cifar10_resnet18", data_dir, out, *other, *columns))
    assert results["num_classes"] == 3 and results["label_names"] == ["circle", "square", "star"]
    assert results["image_size"] == 40 and results["is_paper_dataset"] is False
    assert results["paper"]["value"] is None and results["dataset_pretty"] == "someone/shapes"
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["num_classes"] == 3 and config["label_names"] == ["circle", "square", "star"]
    assert config["pretrained_cfg"]["input_size"] == [3, 40, 40]
    assert tuple(config["pretrained_cfg"]["mean"]) == module.RECIPE.mean  # the normalisation that was used
    card = ModelCard.load(out / "model" / "README.md")
    assert card.data.datasets == ["someone/shapes"] and card.data.eval_results[0].dataset_type == "someone/shapes"
    assert "3 classes: circle, square, star" in card.text and "40x40 pixels" in card.text
    assert "CIFAR-10" not in card.text and "Table 1" not in card.text and "4.61" not in card.text
    assert card.text.splitlines()[1] == "# resnet18_cifar: ResNet-18 on someone/shapes, AutoDrop (rho = 0.2)"
    assert reloaded_error(out / "model", data_dir, "test", "picture", "kind") == pytest.approx(
        results["final_test_error"], abs=1e-9
    )
    # --image_size resizes (here to the recipe's 32), and the folder says so.
    resized = module.main(
        module.RECIPE, tiny_args("cifar10_resnet18", data_dir, tmp_path / "r32", *other, *columns, "--image_size", "32")
    )
    assert resized["image_size"] == 32
    config = json.loads((tmp_path / "r32" / "model" / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]


def test_evaluation_only_scores_a_saved_folder_and_updates_its_card(hub_data, tmp_path):
    module = load_recipe("cifar10_resnet18")
    data_dir = hub_data("uoft-cs/cifar10")
    out = tmp_path / "run"
    trained = module.main(module.RECIPE, tiny_args("cifar10_resnet18", data_dir, out, "--max_steps", "2"))
    folder = out / "model"
    before = (folder / "model.safetensors").read_bytes()
    # The test split again: the reported error, without training (the weights are untouched).
    scored = module.main(
        module.RECIPE,
        tiny_args(
            "cifar10_resnet18", data_dir, tmp_path / "eval", "--do_train", "false", "--model_name_or_path", str(folder)
        ),
    )
    assert scored["top1_error"] == pytest.approx(trained["final_test_error"], abs=1e-9)
    assert scored["top5_error"] == pytest.approx(trained["final_top5_error"], abs=1e-9)
    assert json.loads((tmp_path / "eval" / "eval_results.json").read_text())["num_examples"] == N_EVAL
    assert (folder / "model.safetensors").read_bytes() == before and not (tmp_path / "eval" / "model").exists()
    # The same folder as a Hub repo (`<owner>/<name>`, from a populated Hub cache: no network), on the command line.
    commit = "0" * 40
    repo = tmp_path / "hub_cache" / "models--someone--r18-cifar10"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for f in folder.iterdir():
        (repo / "snapshots" / commit / f.name).write_bytes(f.read_bytes())
    cmd = [
        sys.executable,
        str(RECIPES / "cifar10_resnet18.py"),
        *tiny_args("cifar10_resnet18", data_dir, tmp_path / "eval_hub", "--do_train", "false"),
        "--model_name_or_path",
        "someone/r18-cifar10",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=_env(HF_HUB_CACHE=str(tmp_path / "hub_cache")), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_hub = json.loads((tmp_path / "eval_hub" / "eval_results.json").read_text())
    assert from_hub["top1_error"] == pytest.approx(trained["final_test_error"], abs=1e-9)
    assert from_hub["architecture"] == "resnet18_cifar"
    # Another split, written into the card's model-index beside the test result.
    scored = module.main(
        module.RECIPE,
        tiny_args(
            "cifar10_resnet18",
            data_dir,
            tmp_path / "eval_train",
            "--do_train",
            "false",
            "--model_name_or_path",
            f"local-dir:{folder}",
            "--eval_split",
            "train",
            "--update_card",
        ),
    )
    assert scored["num_examples"] == N_TRAIN
    assert scored["top1_error"] == pytest.approx(reloaded_error(folder, data_dir, "train", "img", "label"), abs=1e-9)
    card = ModelCard.load(folder / "README.md")
    by_split = {(r.dataset_split, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert by_split[("train", "Top-1 error (%)")] == round(scored["top1_error"], 2)
    assert by_split[("test", "Top-1 error (%)")] == round(trained["final_test_error"], 2)


def test_timm_training_aids_run_and_the_ema_is_published(hub_data, tmp_path):
    """Every aid on at once (label smoothing, mixup + cutmix, RandAugment, random erasing, EMA), from the command line.

    Gradient checkpointing too: the Trainer's option reaches timm's `set_grad_checkpointing`.
    """
    module = load_recipe("cifar10_resnet18")
    data_dir = hub_data("uoft-cs/cifar10")
    out = tmp_path / "run"
    aids = [
        "--label_smoothing_factor",
        "0.1",
        "--mixup",
        "0.8",
        "--cutmix",
        "1.0",
        "--rand_augment",
        "rand-m9-mstd0.5",
        "--random_erasing",
        "0.25",
        "--model_ema",
        "--model_ema_decay",
        "0.5",
        "--publish_ema",
        "--gradient_checkpointing",
        "--max_steps",
        "2",
    ]
    results = module.main(module.RECIPE, tiny_args("cifar10_resnet18", data_dir, out, *aids))
    assert results["config"]["training"]["label_smoothing_factor"] == 0.1
    assert results["config"]["augment"]["mixup"] == 0.8 and results["ema"]["decay"] == 0.5
    on_disk = json.loads((out / "results.json").read_text())
    # The folder holds the EMA weights and reports their error; the model's own error is kept beside it.
    assert on_disk["final_test_error"] == results["ema"]["top1_error"] and "model_error" in on_disk
    ema_error = reloaded_error(out / "model", data_dir, "test", "img", "label")
    assert ema_error == pytest.approx(results["ema"]["top1_error"], abs=1e-9)
    card = (out / "model" / "README.md").read_text()
    assert "EMA of the weights (decay 0.5)" in card and "RandAugment `rand-m9-mstd0.5`" in card


def test_the_ema_is_saved_with_each_checkpoint_and_restored_on_resume(hub_data, tmp_path, caplog):
    module = load_recipe("cifar10_resnet18")
    data_dir = hub_data("uoft-cs/cifar10")
    out = tmp_path / "run"
    ema = ["--model_ema", "--model_ema_decay", "0.5", "--save_strategy", "steps", "--save_steps", "1"]
    module.main(module.RECIPE, tiny_args("cifar10_resnet18", data_dir, out, *ema, "--max_steps", "1"))
    saved = out / "checkpoint-1" / "model_ema.safetensors"
    assert saved.is_file()
    from safetensors.torch import load_file

    weights = load_file(str(saved))
    model = timm.create_model("resnet18_cifar", channels=(8, 16, 32, 64))
    assert set(weights) == set(model.state_dict())  # the timm model's own keys
    caplog.set_level("WARNING", logger="hf_autodrop.recipes")
    resumed = module.main(
        module.RECIPE,
        tiny_args("cifar10_resnet18", data_dir, out, *ema, "--max_steps", "2", "--resume_from_checkpoint", "last"),
    )
    assert resumed["ema"]["decay"] == 0.5 and "EMA restarts" not in caplog.text
    (out / "checkpoint-2" / "model_ema.safetensors").unlink()  # a checkpoint without it: said, not silent
    module.main(
        module.RECIPE,
        tiny_args("cifar10_resnet18", data_dir, out, *ema, "--max_steps", "3", "--resume_from_checkpoint", "last"),
    )
    assert "the EMA restarts from the resumed weights" in caplog.text


def test_image_classifier_losses_follow_the_aids():
    torch.manual_seed(0)
    from timm.data import Mixup

    net = timm.create_model("resnet18_cifar", channels=(8, 16, 32, 64), num_classes=4)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 3])
    smooth = ic_model.ImageClassifier(net, (0.5,) * 3, (0.25,) * 3, label_smoothing=0.2)
    smooth.eval()
    logits = smooth(x)["logits"]
    assert smooth(x, y)["loss"].item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    smooth.train()
    net.eval()  # BN in eval mode: the same logits in both wrapper modes
    out = smooth(x, y)
    assert out["loss"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(out["logits"], y, label_smoothing=0.2).item(), rel=1e-5
    )
    mixed = ic_model.ImageClassifier(net, (0.5,) * 3, (0.25,) * 3, mixup=Mixup(mixup_alpha=1.0, num_classes=4))
    mixed.train()
    net.eval()
    out = mixed(x, y)
    plain = torch.nn.functional.cross_entropy(out["logits"], y).item()
    assert out["loss"].item() != pytest.approx(plain)  # soft targets, not the hard labels
    with pytest.raises(ValueError, match="even batch size"):
        mixed(x[:3], y[:3])


def test_the_metrics_come_from_a_local_evaluate_module_without_network(tmp_path):
    """`evaluate.load` of the shipped module, with every socket refused and no offline flags set."""
    script = f"""
import socket
def refuse(*a, **k):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
import numpy as np
import sys
sys.path.insert(0, {str(RECIPES)!r})
from image_classification.trainer import ErrorMetrics
from types import SimpleNamespace
metrics = ErrorMetrics()
preds = np.array([[1, 0, 2, 3, 4], [0, 1, 2, 3, 4], [9, 8, 7, 6, 5], [2, 1, 0, 3, 4]])
print(metrics(SimpleNamespace(predictions=preds, label_ids=np.array([1, 1, 0, 2]))))  # an EvalPrediction's fields
"""
    env = _env(HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(name)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # top-1: the first and last rows are right (2 of 4); top-5: all but the third (3 of 4).
    assert proc.stdout.strip().splitlines()[-1] == "{'top1_error': 50.0, 'top5_error': 25.0}"


def test_the_library_does_not_import_the_recipes():
    """hf_autodrop/ (the installed package) never imports from recipes/, which the wheel does not ship."""
    import ast

    for path in (REPO / "hf_autodrop").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in {"recipes", "image_classification", "hub_schema", "aggregate"}, path
        assert "model_cards" not in path.read_text(), path


def test_model_cards_are_the_recipes_cards_rendered_again(tmp_path, monkeypatch, capsys):
    """model_cards/<recipe>.md is what `python recipes/model_cards.py` renders from the recipe today (CI runs this)."""
    import model_cards

    recipes_with_a_row = sorted(p.stem for p in RECIPES.glob("*.py") if "RECIPE = Recipe(" in p.read_text())
    assert sorted(model_cards.TABLE1) == recipes_with_a_row
    for name in model_cards.TABLE1:
        path = REPO / "model_cards" / f"{name}.md"
        assert path.read_text() == model_cards.render(name), f"{path} is stale: run python recipes/model_cards.py"
    recipe = load_recipe("cifar100_wrn40_10").RECIPE
    card = ModelCard.load(REPO / "model_cards" / "cifar100_wrn40_10.md")
    assert card.data.eval_results is None and card.data.library_name == "timm"
    text = card.text
    assert "**Not trained yet.**" in text and "| this model, final | **not trained yet** |" in text
    mean, std = recipe.paper["autodrop-0.2"]
    assert f"| paper, same method (mean ± std over seeds) | {mean:.2f} ± {std:.2f} |" in text
    assert "55,899,444 parameters" in text and f"lr {recipe.learning_rate}" in text
    assert "python recipes/cifar100_wrn40_10.py --seed 0" in text and "import hf_autodrop.models" in text
    assert "import hf_autodrop.models" not in (REPO / "model_cards" / "imagenet_resnet18.md").read_text()
    # --check (make cards-check) names a stale card and fails; it writes nothing.
    for name in model_cards.TABLE1:
        (tmp_path / f"{name}.md").write_text((REPO / "model_cards" / f"{name}.md").read_text())
    (tmp_path / "cifar10_resnet18.md").write_text("an old card\n")
    monkeypatch.setattr(model_cards, "OUT", tmp_path)
    assert model_cards.main(["--check"]) == 1
    assert "cifar10_resnet18.md: out of date" in capsys.readouterr().err
    assert (tmp_path / "cifar10_resnet18.md").read_text() == "an old card\n"
    assert model_cards.main([]) == 0 and model_cards.main(["--check"]) == 0
