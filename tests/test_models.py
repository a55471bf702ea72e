"""The CIFAR architectures registered in timm, and their round trip through timm's folder format."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from timm.models import save_for_hf

import hf_autodrop.models  # registers the architectures

# The integration-facts note: the standard CIFAR architectures, exact.
PAPER_COUNTS = {
    ("resnet18_cifar", 10): 11_173_962,
    ("resnet34_cifar", 100): 21_328_292,
    ("wrn28_10_cifar", 10): 36_479_194,
    ("wrn40_10_cifar", 100): 55_899_444,
}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "classes"), list(PAPER_COUNTS))
def test_parameter_counts_match_the_standard_architectures(name, classes):
    with torch.device("meta"):  # counting needs no memory or init time
        model = timm.create_model(name, num_classes=classes)
    assert n_params(model) == PAPER_COUNTS[(name, classes)]


def test_registered_names_and_default_classes():
    assert set(timm.list_models("*_cifar")) >= {"resnet18_cifar", "resnet34_cifar", "wrn28_10_cifar", "wrn40_10_cifar"}
    with torch.device("meta"):
        assert timm.create_model("resnet18_cifar").num_classes == 10
        assert timm.create_model("wrn40_10_cifar").num_classes == 100
        # num_classes= changes only the classifier: 512 x (100 - 10) weights + 90 biases more.
        assert n_params(timm.create_model("resnet18_cifar", num_classes=100)) == 11_173_962 + 512 * 90 + 90


def test_cifar_stem_keeps_full_resolution():
    model = timm.create_model("resnet18_cifar", channels=(8, 16, 32, 64)).eval()
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    feats = model.forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 64, 4, 4)  # 32 / 8: only the three stage strides
    wrn = timm.create_model("wrn28_10_cifar", widen_factor=1).eval()
    assert wrn.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 64, 8, 8)
    assert [f["reduction"] for f in wrn.feature_info] == [1, 1, 2, 4]


def test_wide_resnet_blocks_are_preactivation_with_projection_shortcuts():
    model = timm.create_model("wrn28_10_cifar", widen_factor=2)
    first, second = model.stages[0].blocks[0], model.stages[0].blocks[1]
    assert first.downsample is not None and first.downsample.conv.kernel_size == (1, 1)  # 16 -> 16k channels (k = 2)
    assert second.downsample is None
    assert len(model.stages) == 3 and all(len(s.blocks) == 4 for s in model.stages)  # (28 - 4) / 6
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m is not model.head.fc)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        timm.create_model("wrn28_10_cifar", depth=27)


def _save(model, folder):
    save_for_hf(
        model,
        str(folder),
        safe_serialization=True,
        model_config={"label_names": [f"class_{i}" for i in range(model.num_classes)]},
        data_config={
            "input_size": (3, 32, 32),
            "mean": hf_autodrop.models.CIFAR10_MEAN,
            "std": hf_autodrop.models.CIFAR10_STD,
            "crop_pct": 1.0,
        },
    )
    return folder


@pytest.mark.parametrize("name", ["resnet18_cifar", "wrn28_10_cifar"])
def test_local_folder_reloads_through_timm(tmp_path, name):
    torch.manual_seed(0)
    kwargs = {"channels": (8, 16, 32, 64)} if name.startswith("resnet") else {"widen_factor": 1}
    model = timm.create_model(name, num_classes=7, **kwargs).eval()
    with torch.no_grad():  # non-trivial BN statistics must survive too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    folder = _save(model, tmp_path / "model")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}

    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(loaded) is type(model) and loaded.num_classes == 7
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == name and config["label_names"][6] == "class_6"
    data = timm.data.resolve_data_config({}, model=loaded)
    assert data["input_size"] == (3, 32, 32) and tuple(data["mean"]) == hf_autodrop.models.CIFAR10_MEAN


def test_hub_id_loads_from_the_hub_cache_offline(tmp_path):
    """`hf-hub:<repo>` resolves through huggingface_hub; a populated cache stands in for the network."""
    model = timm.create_model("resnet18_cifar", channels=(8, 16, 32, 64)).eval()
    folder = _save(model, tmp_path / "model")
    commit = "0" * 40
    repo = tmp_path / "cache" / "models--someone--resnet18-cifar10-autodrop"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    loaded = timm.create_model(
        "hf-hub:someone/resnet18-cifar10-autodrop", pretrained=True, cache_dir=str(tmp_path / "cache")
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
