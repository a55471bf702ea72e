"""Smoke test of the built wheel, installed non-editable in a clean venv: `make wheel-check` runs it
from a temporary directory, so that nothing of the checkout can stand in for the installed package.

Checks that the wheel holds the library and nothing else, that every module imports (modules that
need an extra not installed here are reported, not failed), that the core and the callback work, and
that the demo runs end to end through its console script and shows a drop.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import pkgutil
import subprocess
import sys
import tempfile

import torch

import hf_autodrop

# Third-party packages of the optional extras a module may need; anything else missing is a packaging bug.
OPTIONAL = {"timm", "huggingface_hub", "jinja2", "safetensors", "datasets", "torchvision", "deepspeed"}


def check_location() -> None:
    where = os.path.realpath(hf_autodrop.__file__)
    assert os.path.realpath(sys.prefix) in where and "site-packages" in where, f"imported from {where}"
    files = importlib.metadata.files("hf_autodrop")
    top = {f.parts[0] for f in files if not f.parts[0].endswith(".dist-info") and f.parts[0] != ".."}
    assert top == {"hf_autodrop"}, f"the wheel installs more than the library: {sorted(top)}"
    print(f"installed: hf_autodrop {hf_autodrop.__version__} at {os.path.dirname(where)}")


def check_modules() -> None:
    for module in pkgutil.walk_packages(hf_autodrop.__path__, "hf_autodrop."):
        try:
            importlib.import_module(module.name)
        except ModuleNotFoundError as err:
            if err.name is None or err.name.split(".")[0] not in OPTIONAL:
                raise
            print(f"  {module.name}: needs {err.name} (an optional extra), not installed here")
        else:
            print(f"  {module.name}: imports")


def check_core_and_callback() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    autodrop = hf_autodrop.AutoDrop(
        model, optimizer, detector="paper", threshold=180.0, max_threshold=180.0, drop_delay=1
    )
    for _ in range(4):
        for _ in range(5):
            optimizer.zero_grad()
            model(torch.randn(16, 8)).pow(2).mean().backward()
            optimizer.step()
        m = autodrop.step()
    assert autodrop.num_drops == 1 and optimizer.param_groups[0]["lr"] == 0.1 * autodrop.config.drop_factor, m
    assert hf_autodrop.AutoDropCallback().config == hf_autodrop.AutoDropConfig()
    print("core AutoDrop and AutoDropCallback: ok")


def check_demo() -> None:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        script = os.path.join(os.path.dirname(sys.executable), "hf-autodrop-demo")
        subprocess.run([script, "--no-baseline", "--output-dir", out], check=True, env=env, cwd=out)
        record = json.load(open(os.path.join(out, "results.json")))
        # The demo's defaults: no saturation in its short run, the lr decays to its floor over the last fifth.
        cooldown = record["autodrop"]["cooldown"]
        assert cooldown and cooldown["to_lr"] < 0.01 * cooldown["from_lr"], f"the demo showed no decay: {cooldown}"
        with open(os.path.join(out, "curves.png"), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    print("demo through the console script: ok")


if __name__ == "__main__":
    check_location()
    check_modules()
    check_core_and_callback()
    check_demo()
    print("wheel smoke test passed")
