"""Without an optional dependency, the callback, the demo and the recipes name the extra to install.

Each case runs in a fresh interpreter where the package cannot be imported (its `sys.modules` entry is
None, which is how Python marks a module it must not import: `import` raises ModuleNotFoundError and
`importlib.util.find_spec` finds nothing), as on a machine without it.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_without(packages, code, cwd=ROOT):
    blocked = "".join(f"sys.modules[{p!r}] = None\n" for p in packages)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", f"import sys\n{blocked}{code}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _error_line(proc):
    assert proc.returncode != 0, proc.stdout
    return proc.stderr.strip().splitlines()[-1]


def test_the_core_runs_without_transformers_and_the_callback_names_the_hf_extra():
    proc = _run_without(
        ["transformers"],
        "import hf_autodrop, torch\n"
        "m = torch.nn.Linear(2, 2)\n"
        "hf_autodrop.AutoDrop(m, torch.optim.SGD(m.parameters(), lr=0.1))\n"
        "from hf_autodrop import AutoDropCallback\n",
    )
    line = _error_line(proc)
    assert line.startswith("hf_autodrop._extras.MissingExtraError: AutoDropCallback needs transformers")
    assert "pip install 'hf_autodrop[hf]'" in line


@pytest.mark.parametrize(("blocked", "named"), [(["sklearn"], "sklearn"), (["transformers"], "transformers")])
def test_the_demo_names_the_demo_extra(tmp_path, blocked, named):
    proc = _run_without(blocked, f"from hf_autodrop.demo import main\nmain(['--output-dir', {str(tmp_path)!r}])\n")
    line = _error_line(proc)
    assert line.startswith(f"hf_autodrop._extras.MissingExtraError: The demo needs {named}")
    assert "pip install 'hf_autodrop[demo]'" in line
    assert not any(tmp_path.iterdir())  # it stopped before training anything


def test_the_recipes_name_every_missing_package_and_the_recipes_extra():
    proc = _run_without(
        ["timm", "datasets"],
        "import runpy\nrunpy.run_path('cifar10_resnet18.py', run_name='__main__')\n",
        cwd=ROOT / "recipes",
    )
    line = _error_line(proc)
    assert line == (
        "ModuleNotFoundError: The recipes cannot run without timm, datasets (not installed): "
        "pip install 'hf_autodrop[recipes]' (or install transformers, accelerate, timm, torchvision, datasets, "
        "numpy yourself)."
    )


def test_an_installed_but_too_old_package_keeps_its_own_error():
    # A transformers without ExportableState (older than the callback needs) is installed: its ImportError
    # says what is wrong; "not installed, pip install hf_autodrop[hf]" would send the user the wrong way.
    proc = _run_without(
        [],
        "import transformers.trainer_callback as tc\ndel tc.ExportableState\nfrom hf_autodrop import AutoDropCallback\n",
    )
    line = _error_line(proc)
    assert line.startswith("ImportError: cannot import name 'ExportableState' from 'transformers.trainer_callback'")
