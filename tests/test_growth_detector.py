"""The growth test (the default detector) on synthetic parameter trajectories, through AutoDrop's public API.

Each trajectory is generated once, step by step, in float64 and copied into the parameter before each
`AutoDrop.step()`, so that measuring every k steps reads the same trajectory for every k: what changes
with the interval is only how often AutoDrop looks.
"""

import math

import numpy as np
import pytest
import torch

from hf_autodrop import AutoDrop, AutoDropConfig
from hf_autodrop.detectors import growth_exponent, growth_window_start

from .helpers import wsd_multiplier

DIM = 400


def _ou(steps, seed, relax=40.0, noise=0.3, start=5.0):
    """A point relaxing from `start` (every coordinate) to 0 at rate 1/relax, with stationary noise."""
    rng = np.random.default_rng(seed)
    x = np.full(DIM, start)
    out = np.empty((steps + 1, DIM))
    out[0] = x
    for s in range(1, steps + 1):
        x = x - x / relax + noise * rng.standard_normal(DIM)
        out[s] = x
    return out


def _drift_in_noise(steps, seed, drift=0.02, noise=0.5):
    """A steady drift hidden under a random walk 25x larger per step (omega at one step is about 90 deg)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.zeros((1, DIM)), np.cumsum(drift + noise * rng.standard_normal((steps, DIM)), axis=0)])


def _walk(steps, seed, noise=0.5):
    """A pure random walk (D grows like t for ever: the parameters diffuse, as AdamW's do for a whole run)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.zeros((1, DIM)), np.cumsum(noise * rng.standard_normal((steps, DIM)), axis=0)])


def _run(trajectory, every, known_length=False, **config):
    """Steps AutoDrop every `every` steps of the trajectory (row 0: the start); returns (step, measurement)s.
    `known_length`: AutoDrop is told the run's length (`set_horizon`), as the Trainer callback does."""
    horizon = (len(trajectory) - 1) // every if known_length else None
    return _real_run(trajectory, every, horizon=horizon, **{"dry_run": True, **config})


def _resumed(trajectory, stop, horizon=None):
    """A real AutoDrop (lr changes applied) stepped every 4 steps of the trajectory for `stop` intervals
    (told the run's length `horizon` when given), its state saved and loaded into a fresh AutoDrop on a
    fresh optimizer (which loads the first one's state: the optimizer's own checkpoint carries the dropped
    lr), and that twin stepped to the end. Returns (the saved state, the twin, the twin's measurements)."""
    p = torch.nn.Parameter(torch.from_numpy(trajectory[0]).float())
    ad_opt = torch.optim.SGD([p], lr=0.1)
    ad = AutoDrop([p], ad_opt)
    if horizon is not None:
        ad.set_horizon(horizon)
    for s in range(4, 4 * stop + 1, 4):
        with torch.no_grad():
            p.copy_(torch.from_numpy(trajectory[s]))
        ad.step()
    saved = torch.load(_save(ad.state_dict()), weights_only=True)
    q = torch.nn.Parameter(p.detach().clone())
    opt = torch.optim.SGD([q], lr=0.1)
    twin = AutoDrop([q], opt)
    twin.load_state_dict(saved)
    opt.load_state_dict(ad_opt.state_dict())
    rest = []
    for s in range(4 * stop + 4, len(trajectory), 4):
        with torch.no_grad():
            q.copy_(torch.from_numpy(trajectory[s]))
        rest.append(twin.step())
    return saved, twin, rest


def _first(run, what="triggered"):
    return next((s for s, m in run if getattr(m, what)), None)


class TestExponent:
    def test_power_laws_give_their_exponent_whatever_the_time_unit(self):
        for power in (0.0, 0.5, 1.0, 2.0):
            for unit in (1.0, 7.0, 1000.0):
                times = [unit * s for s in range(10, 21)]
                assert growth_exponent(times, [3.0 * (t**power) for t in times]) == pytest.approx(power, abs=1e-9)

    def test_undefined_cases(self):
        assert math.isnan(growth_exponent([1, 2], [1.0, 2.0]))  # too few samples
        assert math.isnan(growth_exponent([1, 2, 3], [1.0, 0.0, 2.0]))  # did not move
        assert math.isnan(growth_exponent([1, 2, 3], [1.0, math.nan, 2.0]))
        with pytest.raises(ValueError, match="differ in length"):
            growth_exponent([1, 2, 3], [1.0, 2.0])

    def test_window_is_the_latter_half(self):
        assert [growth_window_start(t) for t in (1, 2, 6, 7, 100)] == [1, 1, 3, 4, 50]

    def test_the_tests_running_fit_is_the_exponent_of_its_window_bit_for_bit(self):
        # The test keeps the logs of its samples between intervals; its fit must stay growth_exponent of the
        # window after every trim, the thinning beyond MAX_GROWTH_SAMPLES, a zero distance and a state reload.
        from hf_autodrop.detectors.growth import MAX_GROWTH_SAMPLES, GrowthTest

        rng = np.random.default_rng(0)
        test = GrowthTest(AutoDropConfig())
        for t in range(1, 4 * MAX_GROWTH_SAMPLES + 200):
            d = 0.0 if t == 3000 else float(t ** rng.uniform(0.0, 2.0))
            test.observe(t, math.nan if t == 50 else d)
            assert test.samples[0][0] >= growth_window_start(t)
            expected = growth_exponent(*zip(*test.samples)) if len(test.samples) >= 4 else math.nan
            got = test.exponent()
            assert (math.isnan(got) and math.isnan(expected)) or got == expected, t
            if t % 997 == 0:
                reloaded = GrowthTest(AutoDropConfig())
                reloaded.load_state_dict(test.state_dict())
                assert reloaded.exponent() == got or math.isnan(got)
                test = reloaded
        assert len(test.samples) <= 2 * MAX_GROWTH_SAMPLES


class TestDecisions:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_same_first_trigger_at_four_interval_lengths(self, seed):
        path = _ou(1600, seed)
        firsts = [_first(_run(path, every)) for every in (2, 4, 8, 16)]
        assert all(f is not None for f in firsts), firsts
        # The point relaxes over ~40 steps per e-fold: it has settled after a few hundred steps, and the
        # decision lands there at every interval (within one 16-step interval of each other).
        assert 100 <= min(firsts) and max(firsts) <= 400, firsts
        assert max(firsts) - min(firsts) <= 16 + 8, firsts
        # The statistic is the same property of the trajectory at every interval: the exponent measured at
        # step 800 agrees across interval lengths.
        at_800 = [next(m.statistic for s, m in _run(path[:801], every, drop_delay=10**6)[-1:]) for every in (2, 16)]
        assert at_800[0] == pytest.approx(at_800[1], abs=0.1)

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_drift_under_noise_never_fires(self, seed):
        path = _drift_in_noise(1600, seed)
        for every in (1, 4, 16):
            run = _run(path, every)
            assert _first(run) is None, every
            # Noise dominates early (exponent about 1), the drift late (towards 2): never near 0.
            stats = [m.statistic for _, m in run if math.isfinite(m.statistic)]
            assert min(stats) > 0.6
        # The omega a one-step interval sees is the noise's 90 degrees, flat: the omega trend test fires on it.
        trend = _run(path[:400], 1, detector="trend", drop_delay=1000)
        assert _first(trend) is not None
        angles = [m.angle for _, m in trend if math.isfinite(m.angle)]
        assert abs(np.mean(angles) - 90.0) < 3.0

    @pytest.mark.parametrize("seed", [0, 1])
    def test_stationary_fires_at_the_first_check(self, seed):
        # Already at the stationary point from the start: D stops growing after a few relaxation times.
        path = _ou(1200, seed, relax=5.0, start=0.0)
        for every in (4, 16):
            run = _run(path, every)
            first = _first(run)
            assert first is not None and first <= 2 * 3 * every + 50, (every, first)

    def test_the_studies_replay_takes_the_controllers_decision(self):
        from experiments.interval_study import replay_first_trigger

        for seed, every in [(0, 2), (1, 8), (2, 16)]:
            path = _ou(1600, seed)
            distances = [float(np.sum((row - path[0]) ** 2)) for row in path[1:]]
            assert replay_first_trigger(distances, every) == _first(_run(path, every))
        drift = _drift_in_noise(800, 0)
        assert replay_first_trigger([float(np.sum(row**2)) for row in drift[1:]], 4) is None

    def test_a_frozen_stretch_is_no_saturation(self):
        # An lr of 0 (or a frozen model) holds D still, so the fitted exponent falls to 0 over the window;
        # a zero displacement carries no information, though: no trigger until the parameters move again.
        moving = _drift_in_noise(100, seed=0)
        path = np.concatenate([moving, np.repeat(moving[-1:], 300, axis=0), moving[-1] + _drift_in_noise(100, 1)[1:]])
        run = _run(path, 1)
        frozen = [m for s, m in run if 100 < s <= 400]
        assert min(m.statistic for m in frozen if math.isfinite(m.statistic)) < AutoDropConfig().growth_threshold
        assert not any(m.triggered for m in frozen)

    def test_drop_delay_is_a_share_of_the_time_since_the_anchor(self):
        path = _ou(1600, 0)
        for every in (4, 16):
            run = _run(path, every, drop_delay_fraction=0.5)
            trigger, drop = _first(run), _first(run, "dropped")
            # Averaging lasts half the intervals since the start (at least one): in steps, whatever the interval.
            assert drop - trigger == every * max(1, round(0.5 * trigger / every))

    def test_next_phase_lasts_at_least_as_long_as_the_last(self):
        path = _ou(4000, 3, relax=5.0, start=0.0)
        run = _run(path, 4, growth_min_phase=1.0)
        drops = [s for s, m in run if m.dropped]
        assert len(drops) >= 3
        phases = np.diff([0] + drops)
        triggers = [s for s, m in run if m.triggered]
        # The trigger of phase n comes no earlier than the length of phase n - 1 after its drop.
        for last_drop, last_phase, trigger in zip(drops, phases, triggers[1:]):
            assert trigger - last_drop >= last_phase

    def test_logs_say_the_time_scale(self):
        run = _run(_ou(400, 0), 4)
        s, m = run[39]  # interval 40
        assert m.since_anchor == 40 and m.window == 40 - 20 + 1
        assert m.logs()["autodrop/window"] == 21.0 and m.distance_sq > 0
        assert m.logs()["autodrop/statistic"] == m.statistic


def _real_run(trajectory, every, horizon=None, construct_horizon=None, lr=0.1, **config):
    """A real AutoDrop (lr changes applied) stepped every `every` steps; returns (step, measurement)s."""
    p = torch.nn.Parameter(torch.from_numpy(trajectory[0]).float())
    ad = AutoDrop([p], torch.optim.SGD([p], lr=lr), horizon=construct_horizon, **config)
    if horizon is not None:
        ad.set_horizon(horizon)
    out = []
    for s in range(every, len(trajectory), every):
        with torch.no_grad():
            p.copy_(torch.from_numpy(trajectory[s]))
        out.append((s, ad.step()))
    return out


class TestCooldown:
    """A run of known length decays its lr to the floor over its final `cooldown_fraction`, along 1 - sqrt."""

    @pytest.mark.parametrize("every", [1, 4, 16])
    def test_the_decay_follows_wsd_1_sqrt_and_ends_at_the_floor(self, every):
        path = _walk(1600, 0)  # never saturates: the decay is the only change of the lr
        run = _real_run(path, every, horizon=1600 // every)
        lr_during = [0.1] + [m.lrs[0] for _, m in run[:-1]]  # the lr each interval trained with
        for (step, m), lr in zip(run, lr_during):
            assert not (m.triggered or m.dropped)
            # Once per interval (no optimizer steps to count here), at the value 1 - sqrt takes in its middle.
            assert lr == pytest.approx(0.1 * wsd_multiplier(step - every / 2, 1600), rel=1e-9, abs=1e-12), step
            assert m.cooldown == (step >= 0.8 * 1600)
        assert run[-1][1].lrs[0] == pytest.approx(1e-4)  # the floor (1e-3 x the initial lr) after the last step
        assert run[-1][1].logs()["autodrop/cooldown"] == 1.0 and run[0][1].logs()["autodrop/cooldown"] == 0.0

    @pytest.mark.parametrize("every", [1, 4, 16])
    @pytest.mark.parametrize("warmup", [False, True])
    def test_inside_the_decay_every_optimizer_step_follows_wsd(self, every, warmup):
        # A custom loop stepping its optimizer (and a LambdaLR warm-up) between AutoDrop's intervals: each
        # step trains with 1 - sqrt at its start, exactly as transformers' warmup_stable_decay at that step.
        g = torch.Generator().manual_seed(every)
        p = torch.nn.Parameter(torch.zeros(8))
        opt = torch.optim.SGD([p], lr=0.1)
        ramp = (lambda s: min(1.0, (s + 1) / 10)) if warmup else (lambda s: 1.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, ramp)
        total = 480
        ad = AutoDrop([p], opt, sched, growth_threshold=1e-9, horizon=total // every)
        used = []
        for s in range(total):
            p.grad = 0.1 * torch.randn(8, generator=g) - 1.0  # a steady drift: the distance keeps growing
            used.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            if (s + 1) % every == 0:
                m = ad.step()
                assert not (m.triggered or m.dropped)
        for s, lr in enumerate(used):
            assert lr == pytest.approx(0.1 * ramp(s) * wsd_multiplier(s, total), rel=1e-9, abs=1e-12), s
        assert sched.get_last_lr()[0] == opt.param_groups[0]["lr"]  # the scheduler reports the lr in force

    def test_the_decay_starts_from_the_lr_in_force_and_respects_each_floor(self):
        path = _walk(800, 1)
        run = _real_run(path, 4, horizon=200, lr=0.1, min_lr=0.02)
        assert run[-1][1].lrs[0] == pytest.approx(0.02)
        assert min(m.lrs[0] for _, m in run) == pytest.approx(0.02)

    def test_the_horizon_at_construction_equals_set_horizon(self):
        path = _walk(800, 2)
        told = _real_run(path, 4, horizon=200)
        built = _real_run(path, 4, construct_horizon=200)
        assert repr(told) == repr(built)
        p = torch.nn.Parameter(torch.zeros(2))
        with pytest.raises(ValueError, match="horizon"):
            AutoDrop([p], torch.optim.SGD([p], lr=0.1), horizon=-1)

    def test_a_settling_run_keeps_its_saturation_drops_before_the_segment(self):
        # The saturation test drops where the run settles; the decay takes over in the final fifth only.
        path = _ou(2400, 0)  # relaxes for ~200 steps, then sits in its noise: phases longer than a fifth of the run
        free = _real_run(path, 4)
        free_drops = [s for s, m in free if m.dropped]
        assert len(free_drops) >= 3
        for steps in (560, 900):  # every phase of the free run is longer than a fifth of these
            known = _real_run(path[: steps + 1], 4, horizon=steps // 4)
            drops = [s for s, m in known if m.dropped]
            start = 4 * (math.floor(0.8 * steps / 4 - 0.5) + 1)  # the first interval whose end sets a decayed lr
            before = [d for d in free_drops if d < start]
            assert before and [d for d in drops if d < start] == before, steps
            assert all(d <= start for d in drops), steps  # inside the segment only an open window's, at its start

    def test_no_drop_judged_on_less_than_the_final_segment(self):
        # A run that sits still from the start: without a length the test drops within a few dozen steps;
        # with one, no phase (from the start or a drop to the next trigger) is shorter than a fifth of the run.
        path = _ou(2400, 5, relax=5.0, start=0.0)
        free = [s for s, m in _real_run(path, 4) if m.triggered]
        steps = 2400
        shortest = 0.2 * steps  # in steps
        assert free[0] < shortest
        run = _real_run(path, 4, horizon=steps // 4)
        triggers = [s for s, m in run if m.triggered]
        drops = [s for s, m in run if m.dropped]
        assert len([d for d in drops if d < 0.8 * steps]) >= 2
        for anchor, trigger in zip([0] + drops, triggers):
            assert trigger - anchor >= shortest
        # The first trigger is the first interval from there on whose statistic is below the tolerance.
        due = [s for s, m in run if s >= shortest and m.statistic < m.tolerance]
        assert triggers[0] == due[0]

    def test_an_averaging_window_open_at_the_segment_drops_there(self):
        path = _ou(2400, 0)
        free = _real_run(path, 4)
        triggers = [s for s, m in free if m.triggered]
        drops = [s for s, m in free if m.dropped]
        # The first window of several intervals; the run's final fifth begins in its middle.
        trigger, drop = next((t, d) for t, d in zip(triggers, drops) if d - t >= 24)
        steps = 4 * math.ceil((trigger + drop) / 2 / 0.8 / 4)
        assert trigger >= 0.2 * steps  # the phase is long enough to be judged
        run = _real_run(path[: steps + 1], 4, horizon=steps // 4)
        start = 4 * (math.floor(0.8 * steps / 4 - 0.5) + 1)  # the first interval whose end sets a decayed lr
        assert trigger < start < drop
        assert [s for s, m in run if m.triggered] == [t for t in triggers if t < start]
        assert [s for s, m in run if m.dropped] == [d for d in drops if d < start] + [start]

    def test_off_without_a_length_with_zero_fraction_and_for_the_omega_tests(self):
        path = _walk(800, 2)
        assert all(m.lrs[0] == 0.1 for _, m in _real_run(path, 4, horizon=200, cooldown_fraction=0.0))
        assert all(m.lrs[0] == 0.1 for _, m in _real_run(path, 4))
        p = torch.nn.Parameter(torch.zeros(4))
        for detector in ("paper", "trend"):
            ad = AutoDrop([p], torch.optim.SGD([p], lr=0.1), detector=detector)
            ad.set_horizon(100)
            assert ad.horizon == 100 and ad.cooldown_start is None
        ad = AutoDrop([p], torch.optim.SGD([p], lr=0.1))
        assert ad.cooldown_start is None
        ad.set_horizon(100)
        assert ad.cooldown_start == 80
        for bad in (0, -3, "100", math.nan, math.inf, True):
            with pytest.raises(ValueError, match="horizon"):
                ad.set_horizon(bad)
        for bad in (-0.1, 0.5, math.inf):
            with pytest.raises(ValueError, match="cooldown_fraction"):
                AutoDropConfig(cooldown_fraction=bad)

    @pytest.mark.parametrize("stop", [130, 160, 170, 199])  # before the segment, at its start, inside, last
    def test_resume_from_inside_the_decay_is_exact(self, stop):
        path = _walk(800, 3)
        straight = _real_run(path, 4, horizon=200)
        assert [m.cooldown for _, m in straight].index(True) == 159  # interval 160 sets the first decayed lr
        _, twin, rest = _resumed(path, stop, horizon=200)
        assert twin.horizon == 200  # the twin was not told the length: the state carries it
        assert repr(rest) == repr([m for _, m in straight[stop:]])


class TestStateAndMemory:
    def test_three_float32_copies_and_none_for_the_omega_tests(self):
        p = torch.nn.Parameter(torch.zeros(1000))
        opt = torch.optim.SGD([p], lr=0.1)
        assert AutoDrop([p], opt).state_nbytes() == 3 * 4000
        assert AutoDrop([p], opt, detector="paper").state_nbytes() == 2 * 4000
        assert math.isnan(AutoDrop([p], opt, detector="trend").step().distance_sq)

    @pytest.mark.parametrize("where", ["monitoring", "averaging", "after the first drop"])
    def test_state_round_trip(self, where):
        path = _ou(1200, 4, relax=10.0)
        straight = _run(path, 4, dry_run=False)
        trigger = next(i for i, (_, m) in enumerate(straight) if m.triggered)
        drop = next(i for i, (_, m) in enumerate(straight) if m.dropped)
        assert drop - trigger >= 2
        stop = {"monitoring": trigger - 1, "averaging": trigger + 1, "after the first drop": drop + 3}[where]

        saved, _, rest = _resumed(path, stop)
        assert saved["growth_samples"] and (saved["anchor"] is not None)
        assert repr(rest) == repr([m for _, m in straight[stop:]])

    def test_state_of_another_detector_is_refused(self):
        p = torch.nn.Parameter(torch.zeros(8))
        paper = AutoDrop([p], torch.optim.SGD([p], lr=0.1), detector="paper")
        growth = AutoDrop([p], torch.optim.SGD([p], lr=0.1))
        with pytest.raises(ValueError, match="detector 'paper' -> 'growth'.*anchor"):
            growth.load_state_dict(paper.state_dict())

    def test_config_validation(self):
        for field, value in [
            ("growth_threshold", 0.0),
            ("growth_min_samples", 2),
            ("growth_min_phase", -1.0),
            ("drop_delay_fraction", 0.0),
        ]:
            with pytest.raises(ValueError, match=field):
                AutoDropConfig(**{field: value})
        assert AutoDropConfig().averaging_intervals(40) == 10
        assert AutoDropConfig(drop_delay=3).averaging_intervals(40) == 3
        assert AutoDropConfig(detector="paper").averaging_intervals(40) == 20


def _save(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer
