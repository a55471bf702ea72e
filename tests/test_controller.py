"""AutoDrop's state machine through its public API, on hand-made parameter trajectories."""

import math

import pytest
import torch

from hf_autodrop import AutoDrop, AutoDropConfig, Measurement

from .helpers import ALWAYS


def _model(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _move(params, steps):
    with torch.no_grad():
        for p, s in zip(params, steps):
            p.add_(s)


class _Zigzag:
    """Displacements that rotate by a fixed angle in a plane, so omega is known exactly."""

    def __init__(self, params, angles_deg):
        self.params, self.angles = params, list(angles_deg)
        self.direction = 0.0

    def interval(self):
        self.direction += math.radians(self.angles.pop(0))
        step = torch.zeros(sum(p.numel() for p in self.params))
        step[0], step[1] = 0.1 * math.cos(self.direction), 0.1 * math.sin(self.direction)
        offset = 0
        with torch.no_grad():
            for p in self.params:
                p.add_(step[offset : offset + p.numel()].view_as(p))
                offset += p.numel()


def _run(angles, **cfg):
    params = _model((4,), (3,))
    opt = torch.optim.SGD(params, lr=1.0)
    ad = AutoDrop(params, opt, **{"detector": "paper", **cfg})
    walk = _Zigzag(params, angles)
    out = []
    for _ in range(len(angles)):
        walk.interval()
        out.append(ad.step())
    return out, params, opt, ad


class TestTrigger:
    def test_first_check_is_at_the_third_interval(self):
        # omega_2 = omega_3 = 30: the change is 0 at interval 3, the first interval with two angles.
        out, *_ = _run([0, 30, 30, 30], threshold=0.5, drop_delay=5)
        assert math.isnan(out[0].angle) and math.isnan(out[0].angle_change)
        assert out[1].angle == pytest.approx(30) and math.isnan(out[1].angle_change)
        assert [m.triggered for m in out] == [False, False, True, False]
        assert [m.phase for m in out] == ["monitor", "monitor", "averaging", "averaging"]

    def test_change_must_be_strictly_below_threshold(self):
        out, *_ = _run([0, 30, 32, 33.6, 34.6], threshold=1.5, max_threshold=2.0, drop_delay=5)
        assert [m.angle_change for m in out[2:]] == pytest.approx([2.0, 1.6, 1.0], abs=1e-3)
        assert [m.triggered for m in out] == [False, False, False, False, True]

    def test_no_trigger_check_while_averaging(self):
        out, *_ = _run([0, 30, 30, 30, 30, 30], threshold=0.5, drop_delay=10)
        assert sum(m.triggered for m in out) == 1


class TestDrop:
    def test_drop_delay_intervals_after_the_trigger(self):
        out, _, opt, _ = _run([0, 30, 30] + [30] * 3, threshold=0.5, drop_delay=3, drop_factor=0.5)
        assert [m.dropped for m in out] == [False] * 5 + [True]
        assert opt.param_groups[0]["lr"] == 0.5
        assert out[-1].lr_scale == 0.5 and out[-1].num_drops == 1 and out[-1].phase == "monitor"

    def test_drop_delay_zero_drops_at_the_trigger_without_moving_parameters(self):
        params = _model((5,))
        opt = torch.optim.SGD(params, lr=1.0)
        ad = AutoDrop(params, opt, detector="paper", threshold=0.5, drop_delay=0)
        walk = _Zigzag(params, [0, 30, 30])
        for _ in range(2):
            walk.interval()
            ad.step()
        walk.interval()
        before = params[0].detach().clone()
        m = ad.step()
        assert m.triggered and m.dropped
        assert torch.equal(params[0], before)

    def test_average_uses_linear_weights_normalised_by_their_sum(self):
        params = _model((3,))
        opt = torch.optim.SGD(params, lr=1.0)
        ad = AutoDrop(params, opt, **ALWAYS, drop_delay=2)
        snapshots = []
        for t in range(5):
            _move(params, [torch.tensor([1.0, 0.5 * (-1) ** t, t * 0.25])])
            snapshots.append(params[0].detach().clone())
            m = ad.step()
        assert m.dropped  # trigger at 3, snapshots 3, 4, 5 weighted 1, 2, 3
        expected = (1 * snapshots[2] + 2 * snapshots[3] + 3 * snapshots[4]) / 6
        torch.testing.assert_close(params[0].detach(), expected)

    def test_threshold_grows_by_one_over_drop_factor_up_to_the_cap(self):
        out, *_ = _run([0] + [30] * 8, threshold=1.0, max_threshold=10.0, drop_delay=0, drop_factor=0.2)
        thresholds = [m.threshold for m in out if m.dropped]
        assert thresholds == pytest.approx([5.0, 10.0, 10.0])

    def test_history_resets_after_a_drop(self):
        out, *_ = _run([0] + [30] * 9, threshold=1.0, drop_delay=0)
        drops = [i for i, m in enumerate(out, 1) if m.dropped]
        # First check at interval 3; after each drop the next check is at the third interval after it.
        assert drops == [3, 6, 9]
        assert math.isnan(out[3].angle) and math.isnan(out[4].angle_change)


class TestLearningRates:
    def test_groups_drop_and_floor_on_their_own(self):
        params = _model((2,), (2,))
        opt = torch.optim.SGD([{"params": params[:1], "lr": 0.1}, {"params": params[1:], "lr": 1e-3}])
        ad = AutoDrop(params, opt, **ALWAYS, drop_delay=0, min_lr=5e-4)
        lrs = []
        for _ in range(9):
            _move(params, [torch.randn(2), torch.randn(2)])
            m = ad.step()
            if m.dropped:
                lrs.append(m.lrs)
        assert lrs == [pytest.approx((0.01, 5e-4)), pytest.approx((1e-3, 5e-4)), pytest.approx((5e-4, 5e-4))]

    def test_default_floor_is_relative_to_each_groups_initial_lr(self):
        params = _model((2,), (2,))
        opt = torch.optim.SGD([{"params": params[:1], "lr": 0.1}, {"params": params[1:], "lr": 0.01}])
        ad = AutoDrop(params, opt, **ALWAYS, drop_delay=0, drop_factor=0.01)
        for _ in range(6):
            _move(params, [torch.randn(2), torch.randn(2)])
            m = ad.step()
        assert m.num_drops == 2 and m.lrs == pytest.approx((1e-4, 1e-5))

    def test_exhausted_drop_still_averages_and_raises_threshold_and_can_stop(self):
        params = _model((2,))
        opt = torch.optim.SGD(params, lr=1e-4)
        ad = AutoDrop(
            params,
            opt,
            detector="paper",
            threshold=0.5,
            max_threshold=180.0,
            drop_delay=1,
            min_lr=1e-4,
            stop_when_exhausted=True,
        )
        walk = _Zigzag(params, [0, 30, 30, 30])
        for _ in range(3):
            walk.interval()
            ad.step()
        walk.interval()
        m = ad.step()
        assert m.dropped and m.exhausted and m.should_stop
        assert m.threshold == pytest.approx(5.0) and opt.param_groups[0]["lr"] == 1e-4

    def test_warmup_schedule_keeps_its_shape_times_the_drops(self):
        params = _model((2,))
        opt = torch.optim.SGD(params, lr=0.1)
        warmup = lambda step: min(1.0, (step + 1) / 4)  # noqa: E731
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup)
        ad = AutoDrop(params, opt, sched, **ALWAYS, drop_delay=0, drop_factor=0.5)
        for _ in range(7):
            _move(params, [torch.randn(2)])
            opt.step()
            sched.step()
            m = ad.step()
            # In effect now, and still after the scheduler's next step.
            assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * warmup(sched.last_epoch) * 0.5**m.num_drops)
            assert sched.get_last_lr()[0] == pytest.approx(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * warmup(sched.last_epoch) * 0.5**m.num_drops)
        assert m.num_drops == 2

    def test_chainable_scheduler_keeps_the_drop(self):
        params = _model((2,))
        opt = torch.optim.SGD(params, lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
        ad = AutoDrop(params, opt, sched, **ALWAYS, drop_delay=0, drop_factor=0.1)
        for _ in range(3):
            _move(params, [torch.randn(2)])
            opt.step()
            sched.step()
            m = ad.step()
        assert m.dropped
        for _ in range(5):
            opt.step()
            sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01)

    def test_sequential_scheduler_children_keep_the_drop(self):
        params = _model((2,))
        opt = torch.optim.SGD(params, lr=0.1)
        sched = torch.optim.lr_scheduler.SequentialLR(
            opt,
            [torch.optim.lr_scheduler.LinearLR(opt, 0.5, total_iters=2), torch.optim.lr_scheduler.ConstantLR(opt, 1.0)],
            milestones=[2],
        )
        ad = AutoDrop(params, opt, sched, **ALWAYS, drop_delay=0, drop_factor=0.1)
        for _ in range(3):
            _move(params, [torch.randn(2)])
            opt.step()
            sched.step()
            m = ad.step()
        assert m.dropped
        for _ in range(4):
            opt.step()
            sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(0.01)

    @pytest.mark.parametrize(
        "make",
        [
            lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o),
            lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=10),
        ],
    )
    def test_schedulers_that_own_the_lr_are_refused(self, make):
        params = _model((2,))
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        with pytest.raises(ValueError, match="would undo or fight"):
            AutoDrop(params, opt, make(opt))

    def test_group_without_lr_is_refused(self):
        from transformers.optimization import Adafactor

        params = _model((4, 4))
        opt = Adafactor(params, lr=None, relative_step=True)
        with pytest.raises(ValueError, match="explicit learning rate"):
            AutoDrop(params, opt)


class TestOddInput:
    def test_frozen_parameters_are_ignored(self):
        model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
        model[0].requires_grad_(False)
        ad = AutoDrop(model, torch.optim.SGD(model.parameters(), lr=0.1))
        trainable_bytes = sum(p.numel() * 4 for p in model[1].parameters())
        assert ad.state_nbytes() == 3 * trainable_bytes  # snapshot, displacement, the growth test's anchor

    def test_no_trainable_parameters_is_an_error(self):
        model = torch.nn.Linear(3, 3).requires_grad_(False)
        with pytest.raises(ValueError, match="no trainable parameters"):
            AutoDrop(model, torch.optim.SGD(model.parameters(), lr=0.1))

    def test_non_finite_parameters_warn_and_never_trigger(self, autodrop_logs):
        params = _model((3,))
        ad = AutoDrop(
            params,
            torch.optim.SGD(params, lr=0.1),
            **ALWAYS,
            drop_delay=0,
        )
        for t in range(6):
            _move(params, [torch.randn(3)])
            if t == 1:
                with torch.no_grad():
                    params[0][0] = float("nan")
            m = ad.step()
            assert not m.triggered and not m.dropped
        assert "NaN/Inf" in autodrop_logs.text
        assert math.isnan(m.angle)

    def test_non_finite_interval_does_not_enter_the_average(self, autodrop_logs):
        params = _model((3,))
        ad = AutoDrop(
            params,
            torch.optim.SGD(params, lr=0.1),
            **ALWAYS,
            drop_delay=2,
        )
        for _ in range(3):
            _move(params, [torch.randn(3)])
            m = ad.step()
        assert m.triggered
        good = params[0].detach().clone()
        with torch.no_grad():
            params[0][1] = float("inf")
        m = ad.step()  # not folded: the drop waits one interval more
        assert not m.dropped and m.phase == "averaging"
        with torch.no_grad():
            params[0].copy_(good)
        # The bad snapshot also spoils the next displacement, so two intervals are left out.
        assert not ad.step().dropped and not ad.step().dropped
        m = ad.step()
        assert m.interval == 7 and m.dropped and torch.isfinite(params[0]).all()

    def test_zero_displacement_warns_once_and_gives_no_information(self, autodrop_logs):
        params = _model((3,))
        ad = AutoDrop(
            params,
            torch.optim.SGD(params, lr=0.0),
            **ALWAYS,
            drop_delay=0,
        )
        for _ in range(5):
            m = ad.step()
            assert math.isnan(m.angle) and not m.triggered
        assert autodrop_logs.text.count("did not move") == 1

    def test_dry_run_changes_nothing_but_reports(self, autodrop_logs):
        params = _model((3,))
        opt = torch.optim.SGD(params, lr=0.1)
        ad = AutoDrop(
            params,
            opt,
            **ALWAYS,
            drop_delay=1,
            dry_run=True,
            drop_factor=0.5,
        )
        for _ in range(4):
            _move(params, [torch.randn(3)])
            before = params[0].detach().clone()
            m = ad.step()
            assert torch.equal(params[0], before)
        assert m.dropped and m.lr_scale == 0.5 and opt.param_groups[0]["lr"] == 0.1
        assert "would drop" in autodrop_logs.text

    def test_drop_is_logged_as_one_info_line(self, autodrop_logs):
        out, *_ = _run([0, 30, 30], threshold=0.5, drop_delay=0, drop_factor=0.1)
        lines = [r.getMessage() for r in autodrop_logs.records if "drop #" in r.getMessage()]
        assert len(lines) == 1
        assert "interval 3" in lines[0] and "lr 1 -> 0.1" in lines[0] and "angle 30.0000 deg" in lines[0]


class TestBuffers:
    def test_float_buffers_are_averaged_integer_buffers_untouched(self):
        model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ad = AutoDrop(model, opt, **ALWAYS, drop_delay=1)
        means = []
        for t in range(4):
            _move(list(model.parameters()), [torch.randn_like(p) for p in model.parameters()])
            model[1].running_mean.fill_(float(t))
            model[1].num_batches_tracked.fill_(10 + t)
            means.append(float(t))
            m = ad.step()
        assert m.dropped  # snapshots of intervals 3 and 4, weights 1 and 2
        assert model[1].running_mean[0].item() == pytest.approx((1 * 2.0 + 2 * 3.0) / 3)
        assert model[1].num_batches_tracked.item() == 13

    def test_buffers_can_be_left_alone(self):
        model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        ad = AutoDrop(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            **ALWAYS,
            drop_delay=1,
            average_buffers=False,
        )
        for t in range(4):
            _move(list(model.parameters()), [torch.randn_like(p) for p in model.parameters()])
            model[1].running_mean.fill_(float(t))
            m = ad.step()
        assert m.dropped and model[1].running_mean[0].item() == 3.0


class TestState:
    @pytest.mark.parametrize("stop_at", [1, 2, 4, 5, 7])  # monitor, first angle, averaging, drop, after
    def test_round_trip_resumes_exactly(self, stop_at):
        def trajectory():
            g = torch.Generator().manual_seed(3)
            return [[torch.randn(4, generator=g), torch.randn(3, generator=g)] for _ in range(10)]

        def build():
            params = _model((4,), (3,))
            opt = torch.optim.SGD(params, lr=0.1)
            return (
                params,
                opt,
                AutoDrop(
                    params, opt, detector="paper", threshold=40.0, max_threshold=80.0, drop_delay=2, drop_factor=0.5
                ),
            )

        params, opt, ad = build()
        straight = []
        for steps in trajectory():
            _move(params, steps)
            straight.append(ad.step())

        params2, opt2, ad2 = build()
        moves = trajectory()
        for steps in moves[:stop_at]:
            _move(params2, steps)
            ad2.step()
        saved = {
            k: [t.clone() for t in v] if isinstance(v, list) and v and isinstance(v[0], torch.Tensor) else v
            for k, v in ad2.state_dict().items()
        }
        saved_params = [p.detach().clone() for p in params2]
        saved_lr = opt2.param_groups[0]["lr"]

        params3, opt3, ad3 = build()
        with torch.no_grad():
            for p, q in zip(params3, saved_params):
                p.copy_(q)
        opt3.param_groups[0]["lr"] = saved_lr
        ad3.load_state_dict(saved)
        resumed = []
        for steps in moves[stop_at:]:
            _move(params3, steps)
            resumed.append(ad3.step())
        assert repr(resumed) == repr(straight[stop_at:])  # repr: exact floats, NaN equal to NaN
        for p, q in zip(params, params3):
            assert torch.equal(p, q)

    def test_state_of_another_model_is_refused(self):
        params = _model((4,), (3,))
        ad = AutoDrop(params, torch.optim.SGD(params, lr=0.1))
        other = _model((4,), (5,))
        ad_other = AutoDrop(other, torch.optim.SGD(other, lr=0.1))
        with pytest.raises(ValueError, match="belongs to another model"):
            ad_other.load_state_dict(ad.state_dict())
        with pytest.raises(ValueError, match="not an AutoDrop state"):
            ad.load_state_dict({"snapshot": []})

    def test_memory_is_two_copies_outside_and_three_inside_averaging(self):
        params = _model((100,), (50,))
        ad = AutoDrop(
            params,
            torch.optim.SGD(params, lr=0.1),
            **ALWAYS,
            drop_delay=2,
        )
        nbytes = 150 * 4
        assert ad.state_nbytes() == 2 * nbytes
        for _ in range(3):
            _move(params, [torch.randn(100), torch.randn(50)])
            m = ad.step()
        assert m.phase == "averaging" and ad.state_nbytes() == 3 * nbytes
        for _ in range(2):
            _move(params, [torch.randn(100), torch.randn(50)])
            m = ad.step()
        assert m.dropped and ad.state_nbytes() == 2 * nbytes


def test_measurement_logs_have_the_spec_keys():
    m = Measurement(
        interval=3,
        angle=80.0,
        angle_change=0.5,
        statistic=0.5,
        tolerance=1.0,
        phase="averaging",
        lr_scale=0.1,
        dropped=False,
        num_drops=1,
        window=5,
        since_anchor=9,
        distance_sq=2.5,
        cooldown=True,
    )
    assert m.logs() == {
        "autodrop/angle": 80.0,
        "autodrop/angle_change": 0.5,
        "autodrop/statistic": 0.5,
        "autodrop/threshold": 1.0,
        "autodrop/lr_scale": 0.1,
        "autodrop/phase": 1.0,
        "autodrop/num_drops": 1.0,
        "autodrop/window": 5.0,
        "autodrop/since_anchor": 9.0,
        "autodrop/distance_sq": 2.5,
        "autodrop/cooldown": 1.0,
    }


def test_config_object_and_overrides():
    params = _model((2,))
    ad = AutoDrop(params, torch.optim.SGD(params, lr=0.1), config=AutoDropConfig(drop_factor=0.5), drop_delay=3)
    assert ad.config == AutoDropConfig(drop_factor=0.5, drop_delay=3)
    # A dict of fields works as in AutoDropCallback (one rule: AutoDropConfig.coerce); a typo or another type does not.
    ad = AutoDrop(params, torch.optim.SGD(params, lr=0.1), config={"drop_factor": 0.5}, drop_delay=3)
    assert ad.config == AutoDropConfig(drop_factor=0.5, drop_delay=3)
    with pytest.raises(TypeError, match="Unknown AutoDropConfig field.*drop_facter"):
        AutoDrop(params, torch.optim.SGD(params, lr=0.1), config={"drop_facter": 0.5})
    with pytest.raises(TypeError, match="config must be an AutoDropConfig or a dict"):
        AutoDrop(params, torch.optim.SGD(params, lr=0.1), config=[("drop_factor", 0.5)])
    with pytest.raises(TypeError, match="config="):
        AutoDrop(params, torch.optim.SGD(params, lr=0.1), AutoDropConfig())
    with pytest.raises(TypeError, match="LRScheduler"):
        AutoDrop(params, torch.optim.SGD(params, lr=0.1), {"drop_factor": 0.5})


def test_fp16_autocast_with_grad_scaler_and_bf16_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    half = torch.nn.Linear(8, 2).to(torch.bfloat16)  # a pure-bf16 module: snapshots are still float32
    params = list(model.parameters()) + list(half.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    ad = AutoDrop(params, opt, **ALWAYS, drop_delay=1)
    assert all(view.dtype == torch.float32 for view in ad.state_dict()["snapshot"])
    for _ in range(4):
        for _ in range(5):
            x = torch.randn(16, 8)
            with torch.autocast("cpu", dtype=torch.float16):
                loss = model(x).square().mean() + half(x.bfloat16()).float().square().mean()
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        m = ad.step()
    assert m.dropped and opt.param_groups[0]["lr"] == pytest.approx(0.005)
    assert all(torch.isfinite(p).all() for p in params)


def test_wrapped_optimizers_are_unwrapped_by_one_rule():
    """accelerate's AcceleratedOptimizer subclasses torch.optim.Optimizer: the lr and the step hook still go to the optimizer inside."""
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    from hf_autodrop.lr import unwrap_optimizer

    model = torch.nn.Linear(4, 2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    model, wrapped = Accelerator(cpu=True).prepare(model, sgd)
    assert isinstance(wrapped, AcceleratedOptimizer) and isinstance(wrapped, torch.optim.Optimizer)
    assert unwrap_optimizer(wrapped) is sgd and unwrap_optimizer(sgd) is sgd
    autodrop = AutoDrop(
        model, wrapped, offload_to_cpu=True, detector="paper", threshold=180.0, max_threshold=180.0, drop_delay=0
    )
    assert len(sgd._optimizer_step_pre_hooks) == 1  # the offloaded snapshot's guard, on the optimizer that steps
    for _ in range(3):
        wrapped.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        wrapped.step()
        autodrop.step()
    assert autodrop.num_drops == 1 and sgd.param_groups[0]["lr"] == pytest.approx(0.1 * autodrop.config.drop_factor)
