"""The interval study's quick mode: the grid, the bar, the replay on recorded trajectories, Theorem 1's table."""

import gzip
import json
import math

import pytest

from experiments import interval_study
from experiments.nqm import NOISE_MODELS, paper_curvature, steady_state_angle
from hf_autodrop import AutoDropConfig


def test_grid_intervals_merge_and_name_the_automatic_one():
    assert interval_study.grid_intervals(20000) == [("I/4", 16), ("I/2", 33), ("I", 66), ("2I", 132), ("4I", 264)]
    # A short run's intervals round to 1: the labels that share one run are named together.
    assert interval_study.grid_intervals(640) == [("I/4 = I/2", 1), ("I", 2), ("2I", 4), ("4I", 8)]


def test_theorem_1_at_one_step_and_the_exponent_link():
    a = paper_curvature()
    for noise in ("identity", "inverse_curvature"):
        v = NOISE_MODELS[noise](a)
        omega, exponent = interval_study.stationary_omega_and_exponent(0.06, a, v, 1)
        assert omega == pytest.approx(steady_state_angle(0.06, a, v), abs=1e-9)
        # cos(omega) = S(2k) / (2 S(k)) - 1 = 2^(exponent - 1) - 1, at any interval k.
        for k in (1, 16, 1024):
            omega, exponent = interval_study.stationary_omega_and_exponent(0.06, a, v, k)
            assert math.cos(math.radians(omega)) == pytest.approx(2 ** (exponent - 1) - 1, abs=1e-9)
        # Short intervals see noise (about 90 degrees, exponent near 1), long ones a settled point (120, 0).
        assert interval_study.stationary_omega_and_exponent(0.06, a, v, 4096)[0] > 119.0


def test_quick_study(tmp_path):
    report = open(
        interval_study.main(
            ["--quick", "--tasks", "digits,nqm", "--parts", "grid,full,theory,trace", "--out", str(tmp_path)]
        )
    ).read()
    for section in ("## 1. The interval grid", "### nqm-identity", "## 1b.", "## 2b. Full length", "## 4. Theorem 1"):
        assert section in report
    assert "--quick" in report
    with gzip.open(tmp_path / "interval_runs.json.gz", "rt") as f:
        runs = json.load(f)["runs"]
    traces = [r for r in runs if r["method"] == "trace"]
    assert traces and all(m["distance_sq"] > 0 for m in traces[0]["autodrop"])
    # The trace never fires (a dry run that records D after every step), so it is the constant-lr trajectory.
    assert not any(m["triggered"] for m in traces[0]["autodrop"])
    grid = {r["method"] for r in runs if r["task"] == "nqm-identity" and r["method"].startswith(interval_study.DEFAULT)}
    assert len(grid) == len(interval_study.grid_intervals(interval_study.NQM_QUICK_STEPS))
    # The automatic interval row sets nothing: the study asks the config, like the callback.
    auto = AutoDropConfig().auto_interval_steps(interval_study.NQM_QUICK_STEPS)
    assert any(f", I = {auto} steps" in name for name in grid)
    # The report is rewritten from the saved runs without training (floats are saved to 6 significant digits,
    # so the last digit of a ratio may move): the same rows, the same first drops and verdicts.
    rewritten = open(interval_study.main(["--quick", "--out", str(tmp_path), "--report-only"])).read()

    def rows(text):
        lines = text.split("## 1. The interval grid")[1].split("## 2b")[0].splitlines()
        return [
            [c for i, c in enumerate(line.split("|")) if i in (1, 2, 7, 9, 10)]
            for line in lines
            if line.startswith("|")
        ]

    assert rows(rewritten) == rows(report)
