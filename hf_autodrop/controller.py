"""The AutoDrop state machine: measure the angular velocity, trigger, average, drop."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .angles import angle_from_sums
from .averaging import FlatCopy, OffloadedFlatCopy
from .config import COOLDOWN_MAX_EXPONENT, AutoDropConfig
from .detectors import change_statistic, growth_exponent, growth_window_start, trend_statistic, trend_window_size
from .distributed import local_shards
from .lr import LRGroups

__all__ = ["AutoDrop", "Measurement"]

logger = logging.getLogger("hf_autodrop")

MONITOR, AVERAGING = "monitor", "averaging"
# 2: checksums of the state tensors, the parameters' fingerprint, float64 copies of float64 parameters.
_STATE_FORMAT = 2
_READABLE_FORMATS = (1, 2)
# Inside an averaging window, an interval whose displacement is this many times longer than the one at the
# trigger (a transient spike, e.g. one weight at 1e30 for an interval) is left out of the average.
_ABSURD_NORM_RATIO = 1e3
# The growth test keeps at most about this many (interval, D) pairs of its window; beyond, every other
# one is dropped (the fit over [t/2, t] hardly changes, and the state stays small with tiny intervals).
_MAX_GROWTH_SAMPLES = 1024


@dataclass(frozen=True)
class Measurement:
    """What `AutoDrop.step()` saw and decided at the end of one interval (state after the step).

    Attributes:
        interval: 1-based index of the interval since training started.
        angle: omega_t, the angle in degrees between the last two displacements (NaN when undefined:
            fewer than two displacements since the last reset, a zero displacement, or NaN/Inf).
        angle_change: abs(omega_t - omega_(t-1)) (NaN when either is undefined).
        statistic: the saturation test's statistic at this interval: for `"growth"`, the growth
            exponent of the squared distance from the anchor over the window (2 drift, 1 noise, 0
            settled); `angle_change` for the paper's test; for `"trend"`, the drift of omega over its
            window that the fitted slope allows (one standard error included), in units of omega's
            scatter. NaN while undefined (too few measurements). A trigger needs it below `threshold`
            (as it stood before this interval).
        threshold: the test's tolerance in effect from now on: a growth exponent for `"growth"`,
            degrees for `"paper"`, units of omega's scatter for `"trend"`.
        phase: "monitor" or "averaging".
        lr_scale: param group 0's product of the drop factors applied so far (its lr over its
            initial lr under a constant base schedule).
        dropped: a drop happened at this interval (in a dry run: would have happened).
        num_drops: drops so far, this one included.
        triggered: the angular velocity saturated at this interval and averaging began.
        exhausted: this drop found every param group already at its floor.
        should_stop: `exhausted` and the config asks to stop when exhausted.
        lrs: every param group's current learning rate.
        window: the time scale the decision used, in intervals: the window [t/2, t] of the growth
            test spans t - ceil(t/2) + 1 measurements back from t, the intervals since the start or the
            last drop; the trend test's angles; 2 for the paper's test (one change of omega).
        since_anchor: t, the intervals since the start or the last drop (0 right after a drop).
        distance_sq: D(t) = |x_t - x_a|^2, the squared distance from the anchor (the start or the
            last drop's averaged point); NaN with the omega tests, which do not keep the anchor.
        cooldown: the run's cooldown has begun: its final segment's drop was triggered at or before this
            interval by the run's end (`cooldown_fraction`), not by saturation, or a drop landed inside
            that segment (so none is added).
    """

    interval: int
    angle: float
    angle_change: float
    statistic: float
    threshold: float
    phase: str
    lr_scale: float
    dropped: bool
    num_drops: int
    triggered: bool = False
    exhausted: bool = False
    should_stop: bool = False
    lrs: tuple[float, ...] = ()
    window: int = 0
    since_anchor: int = 0
    distance_sq: float = math.nan
    cooldown: bool = False

    def logs(self) -> dict[str, float]:
        """The `autodrop/*` metrics logged every interval."""
        return {
            "autodrop/angle": self.angle,
            "autodrop/angle_change": self.angle_change,
            "autodrop/statistic": self.statistic,
            "autodrop/threshold": self.threshold,
            "autodrop/lr_scale": self.lr_scale,
            "autodrop/phase": 0.0 if self.phase == MONITOR else 1.0,
            "autodrop/num_drops": float(self.num_drops),
            "autodrop/window": float(self.window),
            "autodrop/since_anchor": float(self.since_anchor),
            "autodrop/distance_sq": self.distance_sq,
            "autodrop/cooldown": 1.0 if self.cooldown else 0.0,
        }


def _split_model(model_or_params) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Trainable parameters and floating-point buffers of a module, or the given tensors."""
    if isinstance(model_or_params, torch.nn.Module):
        params = [p for p in model_or_params.parameters() if p.requires_grad]
        buffers = [b for b in model_or_params.buffers() if b.is_floating_point()]
        _check_parameters(params)
        return params, buffers
    if isinstance(model_or_params, torch.Tensor):
        model_or_params = [model_or_params]
    if not isinstance(model_or_params, Iterable):
        raise TypeError(f"expected an nn.Module or an iterable of tensors, got {type(model_or_params).__name__}")
    params = []
    for p in model_or_params:
        if isinstance(p, dict):
            raise TypeError("pass the model or a list of parameters, not param-group dicts")
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"expected tensors, got {type(p).__name__}")
        if p.requires_grad:
            params.append(p)
    _check_parameters(params)
    return params, []


def _check_parameters(params: list[torch.Tensor]) -> None:
    """Refuse parameters whose angle AutoDrop cannot measure, at construction instead of at the first interval."""
    for i, p in enumerate(params):
        if p.layout != torch.strided:
            raise ValueError(
                f"trainable parameter {i} has layout {p.layout}: AutoDrop supports dense (strided) parameters "
                "only. Keep sparse parameters out of AutoDrop (pass it the dense ones, or freeze them)."
            )
        if p.is_complex() or not p.is_floating_point():
            raise ValueError(
                f"trainable parameter {i} has dtype {p.dtype}: AutoDrop measures angles between real "
                "floating-point displacements. Pass it the real parameters only (e.g. a list without this one), "
                "or store the parameter as torch.view_as_real."
            )


def _check_optimizer_holds(params: list[torch.Tensor], optimizer) -> None:
    """Every trainable parameter must be one the optimizer updates, or AutoDrop measures (and drops) nothing real."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [i for i, p in enumerate(params) if id(p) not in held]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(params)} trainable parameters (indices {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}) are not in the optimizer AutoDrop was given, so AutoDrop "
            "would measure parameters that never move and drop an lr that does not train them. Pass the "
            "optimizer that updates this model's parameters (built after any wrapping or replacement), "
            "or freeze the parameters it does not update (requires_grad=False)."
        )


def _wrapper_chain(optimizer):
    """The optimizer and every optimizer it wraps (`.optimizer`), outermost first."""
    chain = [optimizer]
    while getattr(chain[-1], "optimizer", None) is not None and len(chain) < 8:
        chain.append(chain[-1].optimizer)
    return chain


def parameter_fingerprint(tensors: Iterable[torch.Tensor]) -> list[int]:
    """`[number of elements, checksum of their bits]`: an exact, order-independent fingerprint.

    `word_sum` changes with any single bit of any element, so a state file checked against it cannot be
    resumed onto other parameters (another branch of the run, a checkpoint of another step), and unlike
    float sums it does not depend on the order in which the elements are summed.
    """
    count = total = 0
    for t in tensors:
        count += t.numel()
        total += word_sum(t)
    return [count, total % 2**32]


def word_sum(t: torch.Tensor) -> int:
    """The sum of a tensor's raw bits read as 32-bit words, modulo 2**32: an additive checksum.

    Any single flipped bit changes it; it costs one integer reduction (a few times cheaper than a clone),
    on whatever device the tensor lives.
    """
    flat = t.detach().reshape(-1)
    if flat.numel() == 0:
        return 0
    if flat.element_size() * flat.numel() % 4:  # an odd number of 16-bit (or 8-bit) elements
        flat = flat.view(torch.uint8)
        head = flat[: flat.numel() // 4 * 4]
        return (word_sum(head) + int(flat[head.numel() :].sum(dtype=torch.int64))) % 2**32
    try:
        words = flat.view(torch.int32)
    except RuntimeError:  # a view whose offset is not 4-byte aligned
        words = flat.clone().view(torch.int32)
    # The int32 sum wraps around: exact modulo 2**32 whatever the order of the additions.
    return int(words.sum(dtype=torch.int32)) % 2**32


class AutoDrop:
    """Drops the learning rate when the angular velocity of the parameters saturates.

    Call `step()` at the end of every interval (an epoch, or a fixed number of optimizer updates).
    It measures the angle between the last two parameter displacements and the squared distance from
    the anchor (the parameters at the start or right after the last drop), and when the saturation
    test says the run has stopped making progress (`config.detector`, see `hf_autodrop.detectors`: by default, the distance has
    stopped growing over the latter half of the time since the last drop; or a test on the angle) it
    averages the next n_d snapshots (`config.averaging_intervals`), writes the average into the
    parameters and multiplies every param group's learning rate by `drop_factor`.

    Args:
        model_or_params: an `nn.Module` (its trainable parameters and floating buffers) or an
            iterable of parameters. Frozen parameters (`requires_grad=False`) are ignored.
        optimizer: the optimizer whose learning rates AutoDrop drops.
        scheduler: optional torch `LRScheduler`; AutoDrop scales its `base_lrs` so that its
            next step keeps the drop and its shape (warm-up, ...) is kept, multiplied.
        config: an `AutoDropConfig` or a dict of its fields; keyword `overrides` replace single fields.

    The snapshot x_0 is taken here: build `AutoDrop` when training starts, after the model is
    wrapped or sharded.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> autodrop = AutoDrop(model, opt, drop_delay=2)
        >>> for epoch in range(3):
        ...     for _ in range(10):
        ...         opt.zero_grad()
        ...         model(torch.randn(8, 4)).pow(2).mean().backward()
        ...         opt.step()
        ...     m = autodrop.step()
        >>> m.interval, m.phase in ("monitor", "averaging")
        (3, True)
    """

    def __init__(
        self, model_or_params, optimizer, scheduler=None, config: AutoDropConfig | dict | None = None, **overrides
    ):
        if isinstance(scheduler, AutoDropConfig):
            raise TypeError("the third argument is the scheduler; pass the configuration as config=AutoDropConfig(...)")
        self.config = AutoDropConfig.coerce(config, **overrides)
        self._params, buffers = _split_model(model_or_params)
        if not self._params:
            raise ValueError(
                "AutoDrop found no trainable parameters (requires_grad=True); nothing to measure. "
                "Unfreeze some parameters or leave AutoDrop out."
            )
        self._buffers = buffers if self.config.average_buffers else []
        self._lr = LRGroups(optimizer, scheduler, self.config.min_lr)
        # The elements this process owns (all of them on one process or under DDP) and the reduction.
        self._shards = local_shards(model_or_params, self._params)
        # Engines (FSDP, ZeRO) hand the optimizer flat or partitioned tensors, not the module's parameters;
        # with plain replicated parameters the optimizer must hold them.
        if not self._shards.sharded and not any(
            type(o).__module__.startswith("deepspeed") for o in _wrapper_chain(optimizer)
        ):
            _check_optimizer_holds(self._params, self._lr.optimizer)
            # Counting the optimizer's steps catches a loop that rebuilt its optimizer: the parameters keep
            # moving while the optimizer AutoDrop drops has stopped stepping.
            self._lr.optimizer.register_step_post_hook(self._count_optimizer_step)
        self._optimizer_steps = 0  # optimizer steps during the current interval (counted when watched)
        self._optimizer_stepped = False  # the optimizer stepped during some earlier interval

        params = self._shards.tensors()
        flat = OffloadedFlatCopy if self.config.offload_to_cpu else FlatCopy
        self._snapshot = flat.of(params, self._shards.counted)  # x_(t-1)
        self._displacement = flat(params, self._shards.counted)  # -s_(t-1), valid when self._t >= 2
        self._displacement.zero_()  # read (and ignored) by the first interval's sums
        self._average: FlatCopy | None = None  # running weighted average while averaging
        # x_a, the anchor of the growth test: the parameters at the start or right after the last drop.
        self._anchor: FlatCopy | None = self._snapshot.clone() if self.config.detector == "growth" else None
        self._distances: list[tuple[int, float]] = []  # (s, D(s)) of the growth test's window, oldest first
        self._n_d = 0  # averaging intervals of the current averaging phase
        self._last_phase = 0  # intervals from the previous anchor to the last drop (0 before the first drop)
        self._horizon: float | None = None  # the run's length in intervals, when known (set_horizon)
        self._cooled = False  # the cooldown was triggered, or a drop landed in the final segment
        self._buffer_average: FlatCopy | None = None

        self._interval = 0
        self._t = 0  # intervals since the last reset
        self._k = 0  # averaging count
        self._phase = MONITOR
        self._threshold = float(self.config.threshold)
        self._num_drops = 0
        self._recent: list[float] = []  # the last angles since the reset, oldest first, for the detector
        self._warned_zero = False
        self._trigger_norm_sq = math.nan  # |s|^2 at the trigger: the yardstick for absurd intervals while averaging
        if self.config.offload_to_cpu:
            # The end-of-interval snapshot is copied to CPU memory while the next steps compute; the
            # optimizer must not update the parameters before that copy has read them.
            self._lr.optimizer.register_step_pre_hook(self._before_optimizer_step)

    def _before_optimizer_step(self, *args) -> None:
        self._snapshot.wait_before_overwrite()

    def _count_optimizer_step(self, *args) -> None:
        self._optimizer_steps += 1

    # ------------------------------------------------------------------ the interval step
    @torch.no_grad()
    def step(self) -> Measurement:
        """Measure at the end of an interval, decide, and drop when due. Returns the `Measurement`."""
        cfg = self.config
        params = self._shards.tensors()
        self._check_unchanged(params)
        self._interval += 1
        self._t += 1

        # One fused pass: the snapshot buffer becomes -s_t = x_(t-1) - x_t in place (displacements are
        # kept negated, which changes no angle or norm), the sums are taken, and the buffer that held
        # -s_(t-1) becomes the new snapshot x_t. No third copy is needed.
        displacement, spare = self._snapshot, self._displacement
        # Partial sums over this process's elements; one all-reduce makes them global (none under DDP),
        # so every process takes the same decision below.
        # With the growth test, D(t) = |x_t - x_a|^2 joins the same pass (the new snapshot x_t against the
        # anchor x_a) and the same all-reduce.
        extra = [((spare, self._anchor),) * 2] if self._anchor is not None else []
        sums = self._shards.all_reduce(displacement.advance(params, spare, extra=extra)).tolist()
        self._snapshot, self._displacement = spare, displacement
        dot, norm_sq, prev_norm_sq = sums[:3]
        distance_sq = math.nan
        if self._anchor is not None:
            distance_sq = max(0.0, sums[3])
            if math.isfinite(distance_sq):
                self._distances.append((self._t, distance_sq))
            self._trim_distances()

        finite = math.isfinite(norm_sq)
        self._check_optimizer_stepped(norm_sq)
        angle = angle_from_sums(dot, norm_sq, prev_norm_sq) if self._t >= 2 else math.nan
        change = change_statistic(self._recent[-1], angle) if self._recent else math.nan
        statistic, window = self._statistic(angle, change)
        tolerance = self._tolerance()
        since_anchor = self._t
        self._report_bad_values(finite, norm_sq, prev_norm_sq)

        triggered = dropped = exhausted = False
        if self._phase == MONITOR:
            cooldown = None if not finite or statistic < tolerance else self._cooldown_due(statistic)
            if finite and (statistic < tolerance or cooldown is not None):
                triggered = True
                self._phase, self._k = AVERAGING, 1
                self._trigger_norm_sq = norm_sq
                self._n_d = cfg.averaging_intervals(self._t) if cooldown is None else cooldown[0]
                if cooldown is not None:
                    self._cooled = True
                    logger.info(
                        "AutoDrop: cooldown of the run's final %.3g at interval %d (the run ends after %.6g "
                        "intervals; growth exponent %.3f over the last %d, below %.3g: not drifting): averaging "
                        "for %d interval(s), then dropping",
                        cfg.cooldown_fraction,
                        self._interval,
                        self._horizon,
                        cooldown[1],
                        window,
                        COOLDOWN_MAX_EXPONENT,
                        self._n_d,
                    )
                self._average = self._snapshot.clone()
                if self._buffers:
                    self._buffer_average = FlatCopy.of(self._buffers)
        elif finite and not self._absurd(norm_sq):
            self._k += 1
            weight = 2.0 / (self._k + 1)
            self._average.lerp_(self._snapshot, weight)
            if self._buffer_average is not None:
                self._buffer_average.lerp_from(self._buffers, weight)

        if self._phase == AVERAGING and self._k == self._n_d + 1:
            dropped = True
            exhausted = self._drop(angle)
        else:
            # The paper's test needs the last angle; the trend test next interval's window (the t angles
            # kept so far, counting interval 1's undefined one), or all of them while fewer than trend_window.
            keep = 1 if cfg.detector != "trend" else max(cfg.trend_window, trend_window_size(self._t, cfg.trend_window))
            self._recent = (self._recent + [angle])[-keep:]

        return Measurement(
            interval=self._interval,
            angle=angle,
            angle_change=change,
            statistic=statistic,
            threshold=self._tolerance(),
            phase=self._phase,
            lr_scale=self._lr.scales[0],
            dropped=dropped,
            num_drops=self._num_drops,
            triggered=triggered,
            exhausted=exhausted,
            should_stop=exhausted and cfg.stop_when_exhausted,
            lrs=tuple(self._lr.current_lrs()),
            window=window,
            since_anchor=since_anchor,
            distance_sq=distance_sq,
            cooldown=self._cooled,
        )

    def _check_unchanged(self, params: list[torch.Tensor]) -> None:
        """Clear errors for a training loop that changed what AutoDrop was built on (cheap: no tensor math)."""
        self._lr.check_groups()
        if len(params) != len(self._snapshot.shapes) or any(
            p.shape != shape for p, shape in zip(params, self._snapshot.shapes)
        ):
            changed = [i for i, (p, s) in enumerate(zip(params, self._snapshot.shapes)) if p.shape != s]
            raise RuntimeError(
                f"The trainable parameters changed since AutoDrop was built ({len(self._snapshot.shapes)} -> "
                f"{len(params)} tensors; resized: {changed[:5]}): AutoDrop's snapshots no longer match them. "
                "Resize the model before building AutoDrop, or build a new AutoDrop after resizing."
            )

    def _check_optimizer_stepped(self, norm_sq: float) -> None:
        """Raise when the parameters moved but the optimizer, which stepped in earlier intervals, did not.

        Only a finite displacement is evidence: a parameter that was inf/NaN at either end of the interval
        (a loop that skips non-finite steps, as GradScaler does, and repairs the weight itself) takes the
        non-finite path instead.
        """
        stepped, self._optimizer_steps = self._optimizer_steps, 0
        if self._optimizer_stepped and not stepped and 0 < norm_sq < math.inf:
            raise RuntimeError(
                f"The parameters moved during interval {self._interval} but the optimizer AutoDrop was built "
                "with did not step (it did in earlier intervals): the training loop seems to have rebuilt its "
                "optimizer, and AutoDrop would keep dropping the lr of the old one. Build a new AutoDrop with "
                "the new optimizer (and scheduler)."
            )
        self._optimizer_stepped = self._optimizer_stepped or stepped > 0

    def _absurd(self, norm_sq: float) -> bool:
        """A finite interval whose displacement dwarfs the one at the trigger: left out of the average."""
        if not self._trigger_norm_sq > 0 or norm_sq <= _ABSURD_NORM_RATIO**2 * self._trigger_norm_sq:
            return False
        logger.warning(
            "AutoDrop: the parameters moved %.3g times farther during interval %d than during the interval "
            "that triggered averaging; this interval is left out of the running average (the drop comes one "
            "interval later), like a NaN/Inf one.",
            math.sqrt(norm_sq / self._trigger_norm_sq),
            self._interval,
        )
        return True

    def _trim_distances(self) -> None:
        """Keep the growth test's window [t/2, t] (thinned to at most about `_MAX_GROWTH_SAMPLES`)."""
        start = growth_window_start(self._t)
        if self._distances and self._distances[0][0] < start:
            self._distances = [(s, d) for s, d in self._distances if s >= start]
        if len(self._distances) > 2 * _MAX_GROWTH_SAMPLES:
            self._distances = self._distances[::-1][::2][::-1]  # every other one, the newest kept

    def _statistic(self, angle: float, change: float) -> tuple[float, int]:
        """The detector's statistic at this interval (NaN while it has too few measurements) and the
        window it covers, in intervals."""
        cfg = self.config
        if cfg.detector == "paper":
            return change, 2
        if cfg.detector == "growth":
            window = self._t - growth_window_start(self._t) + 1
            if (
                self._t < max(cfg.first_check, cfg.growth_min_phase * self._last_phase)
                or len(self._distances) < cfg.growth_min_samples
            ):
                return math.nan, window
            return self._phase_exponent(), window
        # Angles exist from the second interval after the reset: t - 1 of them.
        n = trend_window_size(self._t - 1, cfg.trend_window)
        return (trend_statistic((self._recent + [angle])[-n:]) if n else math.nan), n

    # ------------------------------------------------------------------ the cooldown of a run of known length
    def set_horizon(self, intervals: float | None) -> None:
        """Tell AutoDrop how many intervals the run has in all (counting from its start, resumed runs
        included), or None when unknown. With the `"growth"` test this enables the cooldown
        (`AutoDropConfig.cooldown_fraction`): the run's final segment starts at a lower lr. The Trainer
        callback sets it from `max_steps`; a custom loop of N intervals calls `set_horizon(N)`."""
        if intervals is not None and (
            not isinstance(intervals, (int, float)) or isinstance(intervals, bool) or not 0 < intervals < math.inf
        ):
            raise ValueError(f"horizon must be a positive finite number of intervals or None, got {intervals!r}")
        self._horizon = None if intervals is None else float(intervals)

    @property
    def horizon(self) -> float | None:
        """The run's length in intervals as told by `set_horizon` (None: unknown, no cooldown)."""
        return self._horizon

    @property
    def cooldown_start(self) -> int | None:
        """The interval at which the final segment starts (the cooldown's drop lands), or None."""
        f = self.config.cooldown_fraction
        if self._horizon is None or not f or self.config.detector != "growth":
            return None
        return math.ceil((1.0 - f) * self._horizon)

    def _phase_exponent(self) -> float:
        """The growth exponent over the window [t/2, t] of the current phase (NaN: too few samples)."""
        if len(self._distances) < self.config.growth_min_samples:
            return math.nan
        return growth_exponent([s for s, _ in self._distances], [d for _, d in self._distances])

    def _cooldown_due(self, statistic: float) -> tuple[int, float] | None:
        """(the averaging intervals of the cooldown's trigger, the growth exponent it read) when the
        cooldown is due now, else None.

        Due at the first interval from which the usual averaging window would reach the final segment's
        start, when: no cooldown has been triggered and no drop has landed inside the segment; the
        current lr began at least one segment's length before the segment; the drop can land before
        the run's last interval; and the parameters no longer drift (the growth exponent of the current
        phase is below `COOLDOWN_MAX_EXPONENT`). The window ends where the segment starts. `statistic`:
        this interval's growth exponent when the saturation test computed it (NaN: it was not due).
        """
        start = self.cooldown_start
        if start is None or self._cooled:
            return None
        cfg = self.config
        anchor_interval = self._interval - self._t
        if anchor_interval > start - cfg.cooldown_fraction * self._horizon:
            return None
        usual = cfg.averaging_intervals(self._t)
        delay = max(1, min(usual, start - self._interval))
        if self._interval + usual < start or self._interval + delay >= self._horizon:
            return None
        exponent = statistic if math.isfinite(statistic) else self._phase_exponent()
        if not exponent < COOLDOWN_MAX_EXPONENT:
            return None
        return delay, exponent

    def _tolerance(self) -> float:
        """What the statistic must stay below to trigger: the growth threshold, the paper's threshold,
        or the trend test's z grown like the paper's threshold."""
        if self.config.detector == "growth":
            return self.config.growth_threshold
        if self.config.detector == "paper":
            return self._threshold
        return self.config.trend_z * self._threshold / self.config.threshold

    def _drop(self, angle: float) -> bool:
        cfg = self.config
        old_lrs = self._lr.current_lrs()
        old_scale = self._lr.scales[0]
        if not cfg.dry_run:
            params = self._shards.tensors()
            self._average.copy_to(params)
            self._shards.commit(params)
            if self._buffer_average is not None:
                self._buffer_average.copy_to(self._buffers)
        exhausted = self._lr.drop(cfg.drop_factor, apply=not cfg.dry_run)
        self._threshold = min(cfg.max_threshold, self._threshold / cfg.drop_factor)
        self._num_drops += 1
        start = self.cooldown_start
        if start is not None and self._interval >= start:
            self._cooled = True  # a drop landed in the final segment: no cooldown on top of it
        # Reset the angle history: the (averaged) parameters are the new x_0.
        self._last_phase = self._t
        self._phase, self._k, self._t = MONITOR, 0, 0
        self._recent = []
        self._average = self._buffer_average = None
        self._snapshot.copy_from(self._shards.tensors())
        if self._anchor is not None:
            # The (averaged) parameters are the new anchor; the old buffer goes first (memory peak).
            self._anchor = None
            self._anchor = self._snapshot.clone()
            self._distances = []

        if cfg.dry_run:
            logger.info(
                "AutoDrop (dry run): would drop #%d at interval %d: lr scale %.4g -> %.4g, angle %.4f deg",
                self._num_drops,
                self._interval,
                old_scale,
                self._lr.scales[0],
                angle,
            )
        else:
            logger.info(
                "AutoDrop: drop #%d at interval %d: lr %s -> %s, angle %.4f deg%s%s",
                self._num_drops,
                self._interval,
                _fmt(old_lrs),
                _fmt(self._lr.current_lrs()),
                angle,
                "" if cfg.detector == "growth" else f", threshold now {self._threshold:.4g} deg",
                " (every group already at its floor)" if exhausted else "",
            )
        return exhausted

    def _report_bad_values(self, finite: bool, norm_sq: float, prev_norm_sq: float) -> None:
        if not finite:
            logger.warning(
                "AutoDrop: the parameter displacement at interval %d is NaN/Inf (or too large for the float32 "
                "products of the interval sums, elements beyond ~1e19); no trigger or drop at this interval%s, "
                "training goes on.",
                self._interval,
                "; it is left out of the running average" if self._phase == AVERAGING else "",
            )
        elif norm_sq == 0.0 or (self._t >= 2 and prev_norm_sq == 0.0):
            if not self._warned_zero:
                logger.warning(
                    "AutoDrop: the parameters did not move during interval %d (frozen model or lr 0?); "
                    "the angle is undefined and nothing is triggered until they move.",
                    self._interval,
                )
                self._warned_zero = True

    # ------------------------------------------------------------------ introspection
    @property
    def num_drops(self) -> int:
        return self._num_drops

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def threshold(self) -> float:
        return self._threshold

    @property
    def interval(self) -> int:
        return self._interval

    @property
    def rank(self) -> int:
        """This process's rank (0 on one process)."""
        return self._shards.rank

    @property
    def world_size(self) -> int:
        """The number of processes AutoDrop spans (1 on one process)."""
        return self._shards.world_size

    @property
    def lr_scales(self) -> list[float]:
        """Per param group: the product of the drop factors applied so far."""
        return list(self._lr.scales)

    def state_nbytes(self) -> int:
        """Bytes held in tensors by AutoDrop right now."""
        buffers = [self._snapshot, self._displacement, self._anchor, self._average, self._buffer_average]
        return sum(b.nbytes for b in buffers if b is not None)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """Everything needed to resume exactly: scalars and (references to) the state tensors.

        Like an optimizer's `state_dict()`, the tensors are not copied: save it before the next `step()`.
        It also records an additive checksum of every state tensor and a fingerprint of the trainable
        parameters as they are now (`parameter_fingerprint`): `load_state_dict` refuses a damaged file,
        and a state loaded onto other parameters than the ones it was saved with.
        """
        tensors = {
            "snapshot": self._snapshot.state(),
            "displacement": self._displacement.state(),
            "average": None if self._average is None else self._average.state(),
            "buffer_average": None if self._buffer_average is None else self._buffer_average.state(),
            "anchor": None if self._anchor is None else self._anchor.state(),
        }
        return {
            "format": _STATE_FORMAT,
            "config": self.config.to_dict(),
            "interval": self._interval,
            "t": self._t,
            "k": self._k,
            "phase": self._phase,
            "threshold": self._threshold,
            "num_drops": self._num_drops,
            "recent_angles": list(self._recent),
            "averaging_intervals": self._n_d,
            "last_phase": self._last_phase,
            "horizon": self._horizon,
            "cooled": self._cooled,
            "growth_samples": [[s, d] for s, d in self._distances],
            "warned_zero": self._warned_zero,
            "trigger_norm_sq": self._trigger_norm_sq,
            "lr": self._lr.state_dict(),
            # The tensors below hold this process's shard only: they resume on the same rank of the same world.
            "distributed": self._shards.describe(),
            "param_shapes": [list(s) for s in self._snapshot.shapes],
            **tensors,
            "checksums": {k: None if v is None else [word_sum(t) for t in v] for k, v in tensors.items()},
            "fingerprint": parameter_fingerprint(self._shards.tensors()),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`.

        Load the model's (and optimizer's) state first: the saved parameters' fingerprint must match
        the current parameters. Raises `ValueError` when the state belongs to another model or run, is
        damaged, or holds a history the current config cannot continue (see `_reconcile_config`); a
        config that changed in a way the history allows is applied with a warning that lists the changes.
        """
        if not isinstance(state, dict) or state.get("format") not in _READABLE_FORMATS:
            raise ValueError(
                f"not an AutoDrop state (format {state.get('format') if isinstance(state, dict) else type(state).__name__!r}, "
                f"expected one of {_READABLE_FORMATS})"
            )
        try:
            self._load(state)
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise ValueError(
                f"AutoDrop state is damaged ({type(err).__name__}: {err}). Restore the state file from a copy, or "
                "restart AutoDrop's history: build a new AutoDrop without loading this state (with the Trainer, "
                "resume without restore_callback_states_from_checkpoint, or delete the checkpoint's "
                "autodrop_state file)."
            ) from err

    def _load(self, state: dict) -> None:
        saved, here = state.get("distributed", {"rank": 0, "world_size": 1}), self._shards.describe()
        if saved["world_size"] != here["world_size"]:
            raise ValueError(
                f"AutoDrop state was saved by a run of {saved['world_size']} process(es) but this run has "
                f"{here['world_size']}: AutoDrop's snapshots are sharded like the parameters and cannot be "
                f"resharded. Resume with {saved['world_size']} process(es), or start AutoDrop afresh (drop its state)."
            )
        if saved["rank"] != here["rank"]:
            raise ValueError(f"AutoDrop state of rank {saved['rank']} cannot be loaded on rank {here['rank']}")
        shapes = [tuple(s) for s in state["param_shapes"]]
        if shapes != self._snapshot.shapes:
            raise ValueError(
                f"AutoDrop state was saved for {len(shapes)} trainable parameters of shapes {_short(shapes)}, "
                f"but this model has {len(self._snapshot.shapes)} of shapes {_short(self._snapshot.shapes)}. "
                "It belongs to another model (or another set of frozen parameters). Resume with the trainable "
                "parameters it was saved with (the same model, the same parameters frozen), or restart AutoDrop's "
                "history: build a new AutoDrop without loading this state (with the Trainer, resume without "
                "restore_callback_states_from_checkpoint, or delete its autodrop_state file)."
            )
        if state["phase"] not in (MONITOR, AVERAGING):
            raise ValueError(f"AutoDrop state has unknown phase {state['phase']!r}")
        if state["phase"] == AVERAGING and state["average"] is None:
            raise ValueError("AutoDrop state is averaging but holds no average")
        if state["format"] >= 2:
            self._verify(state)
        else:
            logger.warning(
                "AutoDrop: this state was saved by an older hf_autodrop (format 1) without checksums or a "
                "parameter fingerprint; it is loaded unverified."
            )
        saved_config = self._reconcile_config(state)
        self._snapshot.load(state["snapshot"], "snapshot")
        self._displacement.load(state["displacement"], "displacement")
        if self._anchor is not None:
            if state.get("anchor") is None:
                raise ValueError(
                    "AutoDrop state holds no anchor (it was saved with another detector than 'growth'); "
                    "resume with the detector it was saved with, or start AutoDrop afresh."
                )
            self._anchor.load(state["anchor"], "anchor")
        if state["phase"] == AVERAGING:
            self._average = self._snapshot.empty_like()
            self._average.load(state["average"], "average")
            self._buffer_average = None
            if self._buffers and state["buffer_average"] is not None:
                self._buffer_average = FlatCopy(self._buffers)
                self._buffer_average.load(state["buffer_average"], "buffer_average")
        else:
            self._average = self._buffer_average = None
        cfg = self.config
        self._lr.load_state_dict(state["lr"], min_lr="saved" if saved_config.min_lr == cfg.min_lr else cfg.min_lr)
        self._interval = int(state["interval"])
        self._t = int(state["t"])
        self._k = int(state["k"])
        self._phase = state["phase"]
        # A changed threshold keeps the growth the saved drops earned: the same ratio to the starting value.
        self._threshold = float(state["threshold"])
        if (saved_config.threshold, saved_config.max_threshold) != (cfg.threshold, cfg.max_threshold):
            growth = self._threshold / saved_config.threshold
            self._threshold = min(cfg.max_threshold, cfg.threshold * growth)
        self._num_drops = int(state["num_drops"])
        self._recent = [float(a) for a in state["recent_angles"]]
        self._n_d = int(state.get("averaging_intervals", self.config.averaging_intervals(self._t)))
        if cfg.drop_delay is not None and cfg.drop_delay != saved_config.drop_delay:
            self._n_d = cfg.drop_delay  # an explicit new delay applies to the window in progress too
        self._distances = [(int(s), float(d)) for s, d in state.get("growth_samples", [])]
        self._last_phase = int(state.get("last_phase", 0))
        horizon = state.get("horizon")
        self._horizon = None if horizon is None else float(horizon)
        self._cooled = bool(state.get("cooled", False))
        self._warned_zero = bool(state["warned_zero"])
        self._trigger_norm_sq = float(state.get("trigger_norm_sq", math.nan))

    def _verify(self, state: dict) -> None:
        """The checksums of the state tensors, and the fingerprint of the parameters they were saved with."""
        for name, expected in state["checksums"].items():
            tensors = state[name]
            actual = (
                None if tensors is None else [word_sum(t) if isinstance(t, torch.Tensor) else None for t in tensors]
            )
            if actual != expected:
                raise ValueError(
                    f"AutoDrop state tensor '{name}' fails its checksum (saved {expected}, read {actual}): the "
                    "file was damaged after it was written. Restore it from a copy, or resume from an older "
                    "checkpoint."
                )
        fingerprint = parameter_fingerprint(self._shards.tensors())
        if [int(x) for x in state["fingerprint"]] != fingerprint:
            raise ValueError(
                "AutoDrop state was saved with other parameter values than the model holds now (fingerprint "
                f"{list(state['fingerprint'])}, model {fingerprint}): it belongs to another checkpoint or another "
                "branch of this run, or the model's weights were not loaded before AutoDrop's state. Load the "
                "model's weights of the same checkpoint first, and use the AutoDrop state file saved beside them."
            )

    def _reconcile_config(self, state: dict) -> AutoDropConfig:
        """The saved config; refuses changes the saved history cannot honour and warns about the others."""
        # Fields added after a state was saved take their defaults.
        saved = AutoDropConfig(**{**AutoDropConfig().to_dict(), **state["config"]})
        cfg = self.config
        changed = {k: (v, getattr(cfg, k)) for k, v in saved.to_dict().items() if getattr(cfg, k) != v}
        if not changed:
            return saved

        def refuse(reason: str) -> ValueError:
            return ValueError(
                f"AutoDrop cannot resume this state with the changed config {_fmt_changes(changed)}: {reason} "
                "Resume with the saved values, or start AutoDrop's history afresh (a new AutoDrop, without "
                "loading this state)."
            )

        if "detector" in changed:
            raise refuse(
                "the history kept in the state (angles, or the growth test's anchor and distances) belongs to the saved saturation test."
            )
        if cfg.trend_window > saved.trend_window and cfg.detector == "trend":
            raise refuse("the state keeps only the angles the smaller trend_window needs.")
        if "dry_run" in changed and int(state["num_drops"]) > 0:
            raise refuse(
                "the drops made so far were "
                + ("not applied to the lr (dry run)" if saved.dry_run else "applied to the lr")
                + ", so the lr scales would no longer describe the lrs."
            )
        if state["phase"] == AVERAGING and cfg.drop_delay is not None and int(state["k"]) > cfg.drop_delay:
            raise refuse(
                f"the averaging window in progress already holds {int(state['k'])} snapshots, more than "
                f"drop_delay={cfg.drop_delay} allows, so the drop would never come."
            )
        meaning = {
            "drop_factor": "later drops use the new factor; the drops made so far keep theirs",
            "min_lr": "every param group's floor is recomputed from the new min_lr",
            "threshold": "the current threshold keeps the growth of the saved drops, from the new starting value",
            "max_threshold": "the current threshold is capped by the new maximum",
            "trend_window": "the trend test fits fewer angles from the next interval",
            "trend_z": "the trend test's tolerance uses the new z from the next interval",
            "drop_delay": "an averaging window in progress ends after the new delay (None: the one set at its trigger)",
            "drop_delay_fraction": "averaging windows opened from now on use the new fraction",
            "growth_threshold": "the growth test compares its exponent with the new threshold from the next interval",
            "growth_min_samples": "the growth test needs the new number of measurements from the next interval",
            "growth_min_phase": "the wait after a drop uses the new multiple from the next interval",
            "cooldown_fraction": "the final segment starts at the new share of the run (at most one cooldown per run)",
            "interval_steps": "the angles kept so far were measured over the old interval; the test mixes both",
            "average_buffers": "buffers are averaged (or not) from the next trigger on",
            "dry_run": "no drop has happened yet, so nothing to undo",
            "stop_when_exhausted": "no effect on the saved history",
            "offload_to_cpu": "no effect on the saved history",
        }
        logger.warning(
            "AutoDrop: resuming with a changed config (saved -> now): %s. What that means for the saved history: %s.",
            _fmt_changes(changed),
            "; ".join(f"{k}: {meaning.get(k, 'applied from now on')}" for k in changed),
        )
        return saved


def _fmt_changes(changed: dict) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())


def _fmt(lrs: list[float]) -> str:
    """One number when every group shares it (the Trainer's decay/no-decay split), else the list."""
    if len(set(lrs)) == 1:
        return f"{lrs[0]:.4g}"
    return "[" + ", ".join(f"{lr:.4g}" for lr in lrs) + "]"


def _short(shapes: list[tuple]) -> str:
    return str(shapes) if len(shapes) <= 6 else f"{shapes[:3]} ... {shapes[-2:]}"
