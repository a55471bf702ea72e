"""The noisy quadratic model against Theorem 1, the real AutoDrop controller driving it, and the study's quick mode."""

import math

import numpy as np
import pytest
import torch

from experiments import nqm_study
from experiments.nqm import (
    NOISE_MODELS,
    block_mean,
    paper_curvature,
    simulate,
    steady_state_angle,
    steady_state_loss,
)
from hf_autodrop import AutoDropConfig

A = paper_curvature()


def test_paper_curvature_is_the_papers_A():
    assert A.shape == (200,)
    assert A[0] == pytest.approx(0.1) and A[-1] == pytest.approx(20.0)


@pytest.mark.parametrize("noise", ["identity", "inverse_curvature"])
def test_steady_state_angle_matches_theorem_1(noise):
    # The bar: within 0.5 degrees of the closed form at one lr (measured: within 0.05).
    v = NOISE_MODELS[noise](A)
    run = simulate(0.01, 12000, A, v, seed=3)
    measured = np.nanmean(run.angles[6000:])
    assert abs(measured - steady_state_angle(0.01, A, v)) < 0.5
    # The stationary loss 1/2 x^T A x matches its closed form too (within 5%).
    assert np.mean(run.losses[6000:]) == pytest.approx(steady_state_loss(0.01, A, v), rel=0.05)


def test_closed_form_levels_follow_property_p2():
    v = np.ones_like(A)
    levels = [steady_state_angle(lr, A, v) for lr in (0.06, 0.03, 0.01, 0.001)]
    assert all(90 < lv < 120 for lv in levels)
    assert levels == sorted(levels, reverse=True)  # a smaller lr saturates lower
    assert steady_state_angle(1e-6, A, v) == pytest.approx(90.0, abs=1e-3)
    with pytest.raises(ValueError, match="diverges"):
        steady_state_angle(0.1, A, v)  # lr * max(a) = 2


def test_simulate_is_reproducible_and_a_constant_schedule_equals_a_float():
    v = np.ones_like(A)
    a1, l1 = simulate(0.03, 300, A, v, seed=1)
    a2, l2 = simulate(lambda t: 0.03, 300, A, v, seed=1)
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_array_equal(a1[1:], a2[1:])
    assert math.isnan(a1[0])  # no previous step at the first iteration
    _, l3 = simulate(0.03, 300, A, v, seed=2)
    assert not np.array_equal(l1, l3)


def test_simulate_follows_an_lr_schedule():
    run = simulate(lambda t: 0.06 if t < 100 else 0.001, 200, A, np.ones_like(A), seed=0)
    assert run.lrs[99] == 0.06 and run.lrs[100] == 0.001


def test_simulate_rejects_bad_input():
    with pytest.raises(ValueError, match="diverges"):
        simulate(0.2, 10, A, np.ones_like(A), seed=0)
    with pytest.raises(ValueError, match="equal length"):
        simulate(0.01, 10, A, np.ones(3), seed=0)
    with pytest.raises(ValueError, match="float"):
        simulate(lambda t: 0.01, 10, A, np.ones_like(A), seed=0, autodrop=AutoDropConfig())


def test_autodrop_controller_sees_the_same_angles_and_drops_to_the_floor():
    v = NOISE_MODELS["identity"](A)
    cfg = AutoDropConfig(
        detector="paper", drop_factor=0.5, min_lr=0.001, threshold=180.0, max_threshold=180.0, drop_delay=2
    )
    run = simulate(0.06, 400, A, v, seed=0, autodrop=cfg)
    assert len(run.measurements) == 400
    # The controller's angle (float32 snapshots) is the float64 per-iteration angle, until the first drop
    # moves the parameters to the average.
    first_drop = run.drops[0]
    ctrl = np.array([m.angle for m in run.measurements[: first_drop - 1]])
    np.testing.assert_allclose(ctrl[1:], run.angles[1 : first_drop - 1], atol=1e-3)
    # Forced triggers: a drop every drop_delay + 3 iterations, halving the lr down to min_lr and staying there.
    assert run.drops[:3] == [5, 10, 15]
    assert run.lrs[5] == pytest.approx(0.03) and run.lrs[10] == pytest.approx(0.015)
    assert run.lrs[-1] == pytest.approx(0.001) and run.lrs.min() == pytest.approx(0.001)


def test_autodrop_interval_steps_sets_iterations_per_interval():
    cfg = AutoDropConfig(drop_factor=0.5, min_lr=0.001, interval_steps=20, drop_delay=0)
    run = simulate(0.06, 200, A, np.ones_like(A), seed=0, autodrop=cfg)
    assert [m.interval for m in run.measurements] == list(range(1, 11))
    assert all(d % 20 == 0 for d in run.drops + run.triggers)


def test_after_step_can_set_the_lr_from_the_loss():
    # torch's ReduceLROnPlateau fed the exact loss: the lr falls once the loss stops improving.
    a_t = torch.from_numpy(A)
    seen = []

    def plateau(t, x, opt, box={}):  # noqa: B006 - one scheduler for this one run
        seen.append(t)
        box.setdefault("s", torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2))
        if (t + 1) % 50 == 0:
            box["s"].step(float(0.5 * (a_t * x * x).sum()))

    run = simulate(0.06, 3000, A, np.ones_like(A), seed=0, after_step=plateau)
    assert seen == list(range(3000))
    assert run.lrs[0] == 0.06 and run.lrs[-1] < 0.006
    with pytest.raises(ValueError, match="after_step"):
        simulate(0.06, 10, A, np.ones_like(A), seed=0, autodrop=AutoDropConfig(), after_step=plateau)


def test_block_mean_ignores_nan():
    ends, means = block_mean(np.array([np.nan, 1.0, 3.0, 5.0, 7.0, 9.0]), 2)
    np.testing.assert_array_equal(ends, [2, 4, 6])
    np.testing.assert_allclose(means, [1.0, 4.0, 8.0])


def test_quick_study_writes_its_report(tmp_path):
    path = nqm_study.main(["--quick", "--out", str(tmp_path)])
    text = open(path).read()
    assert "## Theorem 1" in text and "## Figure 3" in text and "issue 5 item 5" in text
    assert "--quick" in text  # the exact command
    assert (tmp_path / "nqm_figure1.png").stat().st_size > 10_000
    assert (tmp_path / "nqm_figure3.png").stat().st_size > 10_000
    # Every Theorem 1 row of the quick run is within 0.5 degrees of the closed form.
    theorem = text.split("## Theorem 1")[1].split("## Figure 1")[0]
    rows = [line.split("|") for line in theorem.splitlines() if line.startswith("| Sigma = I |")]
    assert len(rows) == 4
    assert all(abs(float(r[5])) < 0.5 for r in rows)


def test_the_shortest_phase_study_tries_each_floor_beside_wsd_and_restores_the_default():
    from experiments import shortest_phase_study
    from hf_autodrop.detectors import cooldown

    chosen = cooldown.SHORTEST_PHASE
    table = shortest_phase_study.main(["--quick"])
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert len(rows) == 4 and all(len(r) == len(shortest_phase_study.MULTIPLES) + 2 for r in rows)
    assert cooldown.SHORTEST_PHASE == chosen
    # Every cell is a finite final loss with its drops per run; the floors change the outcome.
    losses = [[float(cell.split(" (")[0].strip(" |")) for cell in r[1:]] for r in rows]
    assert all(math.isfinite(v) and v > 0 for r in losses for v in r)
    assert any(len(set(r[:-1])) > 1 for r in losses)
