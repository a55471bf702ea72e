"""The demo is the project's main job: it must run offline and show what its embedded defaults do (on its augmented
task: no saturation drop, the end-of-run decay)."""

import json
import subprocess
import sys

import pytest

from hf_autodrop.demo import DEFAULTS, main


def test_default_demo_cools_down_and_writes_results(tmp_path, capsys):
    record = main(["--output-dir", str(tmp_path), "--no-baseline"])
    # The parameters never settle at this lr: the lr changes only in the run's final fifth, from the
    # base lr to its floor (1e-3 x the base lr).
    cooldown = record["autodrop"]["cooldown"]
    assert not record["autodrop"]["drops"]
    assert cooldown["from_lr"] == DEFAULTS["lr"] and cooldown["to_lr"] == pytest.approx(1e-3 * DEFAULTS["lr"])
    assert 0.8 * DEFAULTS["epochs"] - 1 <= cooldown["from_epoch"] <= 0.8 * DEFAULTS["epochs"] + 1
    lrs = [e["learning_rate"] for e in record["autodrop"]["epochs"]]
    assert lrs[-1] < lrs[-5] < lrs[-10] < DEFAULTS["lr"] == lrs[0]
    assert record["autodrop"]["final_test_error"] < 0.05
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["autodrop"]["epochs"]) == DEFAULTS["epochs"]
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "drop  epoch" in out and "test error: final" in out and "cooldown: from epoch" in out


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "hf_autodrop.demo", "--help"], capture_output=True, text=True, check=True
    )
    assert "--drop-factor" in result.stdout and "--no-baseline" in result.stdout


def test_console_script_target_exits_zero(tmp_path, monkeypatch):
    """pyproject's hf-autodrop-demo target returns None: the script wrapper's sys.exit(target()) then exits 0."""
    import importlib
    import re
    from pathlib import Path

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()  # tomllib needs Python 3.11
    module, name = re.search(r'^hf-autodrop-demo = "([\w.]+):(\w+)"$', pyproject, re.M).groups()
    target = getattr(importlib.import_module(module), name)
    monkeypatch.setattr(
        sys, "argv", ["hf-autodrop-demo", "--epochs", "2", "--no-baseline", "--output-dir", str(tmp_path)]
    )
    assert target() is None
    assert (tmp_path / "results.json").is_file()
