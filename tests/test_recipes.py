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


def reloaded_error(folder: Path, recipe, data_dir: Path) -> float:
    """Top-1 error (%) of the published folder, reloaded through timm, on the test split."""
    import datasets

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    cfg = model.pretrained_cfg
    assert tuple(cfg["mean"]) == tuple(recipe.mean) and tuple(cfg["std"]) == tuple(recipe.std)
    test = datasets.load_from_disk(str(data_dir))[recipe.eval_split]
    data_args = ic.parse_args(recipe, ["--image_size", str(cfg["input_size"][-1])])[0]
    batch = ic_data.make_transform(recipe.kind, data_args, False, cfg["crop_pct"])(test[:])
    x = (batch["pixel_values"].float() / 255 - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        cfg["std"]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = model(x).argmax(-1)
    return 100.0 * (1.0 - (pred == batch["labels"]).float().mean().item())


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
    assert {"config.json", "model.safetensors", "README.md", "training_curve.png", "results.json"} <= {
        p.name for p in folder.iterdir()
    }
    card = ModelCard.load(folder / "README.md")
    top1 = next(r for r in card.data.eval_results if r.metric_type == "accuracy" and r.metric_config is None)
    assert top1.metric_value == round(100.0 - on_disk["final_test_error"], 2)
    assert top1.dataset_type == recipe.dataset_name and top1.task_type == "image-classification"
    assert card.data.library_name == "timm" and recipe.dataset_name in card.data.datasets
    assert on_disk["command"] in card.text and "How to reproduce" in card.text
    paper = recipe.paper[on_disk["paper"]["key"]]
    assert f"{paper[0]:.2f}" in card.text  # the paper's number beside ours

    # The published folder is the final model: reloaded through timm, it scores the reported error.
    assert reloaded_error(folder, recipe, data_dir) == pytest.approx(on_disk["final_test_error"], abs=1e-9)
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
    else:
        assert on_disk["drop_epochs"] == [1.0]
        assert on_disk["config"]["angle_monitor"]["dry_run"] is True  # angles logged, nothing changed by AutoDrop
        assert on_disk["history"]["angle"], "the baseline logs AutoDrop's angles for comparison"
        assert [e["epoch"] for e in on_disk["history"]["eval"]] == [1.0, 1.25]  # each epoch, then the final step
        assert [e["epoch"] for e in on_disk["history"]["train_loss"]][0] == 1.0  # the epoch's mean training loss


def test_paper_defaults_reach_the_trainer(tmp_path):
    """No flags: the recipe's Table 1 settings are what the Trainer and AutoDrop get."""
    recipe = load_recipe("cifar10_wrn28_10").RECIPE
    data, model, sched, autodrop, training = ic.parse_args(recipe, [])
    assert (training.learning_rate, training.weight_decay, training.num_train_epochs) == (0.1, 5e-4, 200)
    assert training.per_device_train_batch_size == 128 and training.optim == "sgd"
    assert training.optim_args == "momentum=0.9,nesterov=False"
    assert str(training.lr_scheduler_type.value) == "constant" and training.seed == 0
    assert (autodrop.drop_factor, autodrop.min_lr, autodrop.threshold, autodrop.max_threshold, autodrop.drop_delay) == (
        0.2,
        1e-4,
        0.01,
        1.0,
        20,
    )
    assert sched.schedule == "autodrop" and sched.weight_decay_all
    assert training.output_dir == "out/cifar10_wrn28_10/autodrop-rho0.2-seed0"
    _, _, _, autodrop, training = ic.parse_args(
        recipe, ["--schedule", "multistep", "--seed", "3", "--drop_factor", "0.5"]
    )
    assert training.output_dir == "out/cifar10_wrn28_10/multistep-rho0.5-seed3" and autodrop.drop_factor == 0.5
    with pytest.raises(ValueError, match="drop_factor"):
        ic.parse_args(recipe, ["--drop_factor", "1.5"])


def test_multistep_schedule_is_exact_per_optimizer_step():
    f = ic_trainer.EpochMilestones([60 * 391, 120 * 391, 160 * 391], 0.2)
    assert f(0) == 1.0 and f(60 * 391 - 1) == 1.0
    assert f(60 * 391) == pytest.approx(0.2) and f(120 * 391) == pytest.approx(0.04)
    assert f(200 * 391) == pytest.approx(0.2**3)
    warm = ic_trainer.EpochMilestones([10], 0.1, warmup_steps=4)
    assert [warm(s) for s in (0, 2, 4, 9, 10)] == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.1])
    # The factor is an object, so the scheduler's checkpoint restores it (resume keeps the schedule).
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, ic_trainer.EpochMilestones([3], 0.1))
    state = sched.state_dict()
    other = torch.optim.lr_scheduler.LambdaLR(opt, ic_trainer.EpochMilestones([99], 0.5))
    other.load_state_dict(state)
    assert other.lr_lambdas[0].milestone_steps == [3] and other.lr_lambdas[0].drop_factor == 0.1


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


def test_push_to_hub_uploads_the_timm_folder(hub_data, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:  # stands in for the network; records what would be uploaded
        def __init__(self, token=None, **kwargs):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs.get("exist_ok")))
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return f"https://huggingface.co/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    module = load_recipe("cifar10_resnet18")
    out = tmp_path / "run"
    module.main(
        module.RECIPE,
        tiny_args(
            "cifar10_resnet18",
            hub_data("uoft-cs/cifar10"),
            out,
            "--max_steps",
            "1",
            "--push_to_hub",
            "--hub_model_id",
            "someone/resnet18-cifar10-autodrop",
            "--hub_token",
            "secret",
        ),
    )
    assert ("init", "secret") in calls and ("create_repo", "someone/resnet18-cifar10-autodrop", True) in calls
    upload = next(c for c in calls if c[0] == "upload_folder")
    assert upload[1] == "someone/resnet18-cifar10-autodrop"
    assert upload[2] == ["README.md", "config.json", "model.safetensors", "results.json", "training_curve.png"]
    card = ModelCard.load(out / "model" / "README.md")
    assert 'timm.create_model("hf-hub:someone/resnet18-cifar10-autodrop", pretrained=True)' in card.text
    assert card.data.model_name == "resnet18-cifar10-autodrop"
    assert "secret" not in (out / "results.json").read_text()


def test_two_processes_train_with_ddp_from_the_command_line(hub_data, tmp_path):
    """`torchrun --nproc_per_node 2 recipes/<name>.py`: DDP on CPU (gloo), the same AutoDrop decision."""
    data_dir = hub_data("uoft-cs/cifar10")
    out = tmp_path / "ddp"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
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
    assert results["command"].startswith("accelerate launch --num_processes 2 ")
    assert [d["step"] for d in results["drops"]] == [3] and results["epochs"] == 1.5  # 2 steps per epoch
    recipe = load_recipe("cifar10_resnet18").RECIPE
    assert reloaded_error(out / "model", recipe, data_dir) == pytest.approx(results["final_test_error"], abs=1e-9)


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
