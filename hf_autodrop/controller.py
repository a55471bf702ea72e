"""The AutoDrop state machine: measure the parameters every interval, trigger, average, drop.

The phase machine only: what a test of saturation is lives in `hf_autodrop.detectors` (one file each),
the end of a run of known length in `detectors/cooldown.py`, saving and restoring in `state.py`, the
checks of the inputs in `_inputs.py`, the lr application in `lr.py`.
"""

from __future__ import annotations

import logging
import math

import torch

from . import state as _state_io
from ._inputs import check_optimizer_holds, split_model, wrapper_chain
from .angles import angle_from_sums
from .averaging import FlatCopy, OffloadedFlatCopy
from .config import AutoDropConfig
from .detectors import Cooldown, change_statistic, make_test
from .distributed import local_shards
from .lr import LRGroups
from .measurement import AVERAGING, MONITOR, Measurement
from .state import PhaseState, parameter_fingerprint, word_sum

__all__ = ["AutoDrop", "Measurement", "parameter_fingerprint", "word_sum"]

logger = logging.getLogger("hf_autodrop")

# Inside an averaging window, an interval whose displacement is this many times longer than the one at the
# trigger (a transient spike, e.g. one weight at 1e30 for an interval) is left out of the average.
_ABSURD_NORM_RATIO = 1e3


class AutoDrop:
    """Drops the learning rate when the angular velocity of the parameters saturates.

    Call `step()` at the end of every interval (an epoch, or a fixed number of optimizer updates).
    It measures the angle between the last two parameter displacements and the squared distance from
    the anchor (the parameters at the start or right after the last drop), and when the saturation
    test says the run has stopped making progress (`config.detector`, see `hf_autodrop.detectors`: by
    default, the distance has stopped growing over the latter half of the time since the last drop; or a test on the angle) it
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
        self,
        model_or_params,
        optimizer,
        scheduler=None,
        config: AutoDropConfig | dict | None = None,
        *,
        horizon: float | None = None,
        **overrides,
    ):
        if isinstance(scheduler, AutoDropConfig):
            raise TypeError("the third argument is the scheduler; pass the configuration as config=AutoDropConfig(...)")
        self.config = cfg = AutoDropConfig.coerce(config, **overrides)
        self._test = make_test(cfg)
        self._cooldown = Cooldown(cfg.cooldown_fraction if self._test.cools_down else 0.0)
        self._cooldown.set_horizon(horizon)
        self._params, buffers = split_model(model_or_params)
        if not self._params:
            raise ValueError(
                "AutoDrop found no trainable parameters (requires_grad=True); nothing to measure. "
                "Unfreeze some parameters or leave AutoDrop out."
            )
        self._buffers = buffers if cfg.average_buffers else []
        self._lr = LRGroups(optimizer, scheduler, cfg.min_lr)
        # The elements this process owns (all of them on one process or under DDP) and the reduction.
        self._shards = local_shards(model_or_params, self._params)
        # Engines (FSDP, ZeRO) hand the optimizer flat or partitioned tensors, not the module's parameters;
        # with plain replicated parameters the optimizer must hold them.
        self._watch_rebuild = not self._shards.sharded and not any(
            type(o).__module__.startswith("deepspeed") for o in wrapper_chain(optimizer)
        )
        if self._watch_rebuild:
            check_optimizer_holds(self._params, self._lr.optimizer)
        # Counting the optimizer's steps places every step inside its interval, so that the cooldown moves the
        # lr at every step; with plain replicated parameters it also catches a loop that rebuilt its optimizer
        # (the parameters keep moving while the optimizer AutoDrop drops has stopped stepping).
        if callable(getattr(self._lr.optimizer, "register_step_post_hook", None)):
            self._lr.optimizer.register_step_post_hook(self._after_optimizer_step)
        self._optimizer_steps = 0  # optimizer steps during the current interval (counted when hooked)
        self._optimizer_stepped = False  # the optimizer stepped during some earlier interval
        self._steps_per_interval = 0  # optimizer steps in the last complete interval that had any (0: unknown)

        params = self._shards.tensors()
        flat = OffloadedFlatCopy if cfg.offload_to_cpu else FlatCopy
        self._snapshot = flat.of(params, self._shards.counted)  # x_(t-1)
        self._displacement = flat(params, self._shards.counted)  # -s_(t-1), valid when t >= 2
        self._displacement.zero_()  # read (and ignored) by the first interval's sums
        self._average: FlatCopy | None = None  # running weighted average while averaging
        self._buffer_average: FlatCopy | None = None
        # x_a, the anchor of a test that reads D(t): the parameters at the start or right after the last drop.
        self._anchor: FlatCopy | None = self._snapshot.clone() if self._test.uses_anchor else None
        self._state = PhaseState(threshold=float(cfg.threshold))
        if cfg.offload_to_cpu:
            # The end-of-interval snapshot is copied to CPU memory while the next steps compute; the
            # optimizer must not update the parameters before that copy has read them.
            self._lr.optimizer.register_step_pre_hook(self._before_optimizer_step)

    def _before_optimizer_step(self, *args) -> None:
        self._snapshot.wait_before_overwrite()

    def _after_optimizer_step(self, *args) -> None:
        self._optimizer_steps += 1
        if self._cooldown.cooled and self._steps_per_interval:
            # Inside the decay: the lr of the next step, at its start (as warmup_stable_decay's lr of a step is
            # its value after the steps taken). The scheduler's step, which follows, keeps it and reports it;
            # until then get_last_lr() says the lr of the step just taken.
            self._decay_to(self._state.interval + self._optimizer_steps / self._steps_per_interval, report=False)

    # ------------------------------------------------------------------ the interval step
    @torch.no_grad()
    def step(self) -> Measurement:
        """Measure at the end of an interval, decide, and drop when due. Returns the `Measurement`."""
        s, test = self._state, self._test
        params = self._shards.tensors()
        self._check_unchanged(params)
        s.interval += 1
        s.since_anchor += 1
        t = s.since_anchor
        dot, norm_sq, prev_norm_sq, distance_sq = self._measure(params)
        finite = math.isfinite(norm_sq)
        self._check_optimizer_stepped(norm_sq)
        angle = angle_from_sums(dot, norm_sq, prev_norm_sq) if t >= 2 else math.nan
        change = change_statistic(s.recent_angles[-1], angle) if s.recent_angles else math.nan
        statistic, window = test.statistic(t, angle, change, s.recent_angles, s.last_phase)
        tolerance = test.tolerance(s.threshold)
        self._report_bad_values(finite, norm_sq, prev_norm_sq)

        # Inside the run's final segment the decay alone sets the lr: no trigger, and a window still open drops now.
        decaying = self._cooldown.progress(s.interval) is not None
        triggered = dropped = exhausted = False
        if s.phase == MONITOR:
            # False while the statistic is undefined (NaN), at an interval where nothing moved (a frozen model
            # or an lr of 0 holds D still: no evidence of saturation), inside the decay, and, in a run of known
            # length, before the phase has lasted as long as the final segment (a transient stall is not saturation).
            moved = norm_sq > 0.0
            if finite and moved and statistic < tolerance and not decaying and t >= self._cooldown.shortest_phase:
                triggered = True
                self._begin_averaging(norm_sq)
        elif finite and not self._absurd(norm_sq):
            s.averaged += 1
            weight = 2.0 / (s.averaged + 1)
            self._average.lerp_(self._snapshot, weight)
            if self._buffer_average is not None:
                self._buffer_average.lerp_from(self._buffers, weight)

        if s.phase == AVERAGING and (s.averaged == s.averaging_intervals + 1 or decaying):
            dropped = True
            exhausted = self._drop(angle)
        else:
            s.recent_angles = (s.recent_angles + [angle])[-test.angles_kept(t) :]
        if decaying:
            self._decay()

        return Measurement(
            interval=s.interval,
            angle=angle,
            angle_change=change,
            statistic=statistic,
            tolerance=test.tolerance(s.threshold),
            phase=s.phase,
            lr_scale=self._lr.scales[0],
            dropped=dropped,
            num_drops=s.num_drops,
            triggered=triggered,
            exhausted=exhausted,
            should_stop=exhausted and self.config.stop_when_exhausted,
            lrs=tuple(self._lr.current_lrs()),
            window=window,
            since_anchor=t,
            distance_sq=distance_sq,
            cooldown=self._cooldown.cooled,
        )

    def _measure(self, params: list[torch.Tensor]) -> tuple[float, float, float, float]:
        """<-s_t, -s_(t-1)>, |s_t|^2, |s_(t-1)|^2 and D(t) (NaN without an anchor), in one fused pass.

        The snapshot buffer becomes -s_t = x_(t-1) - x_t in place (displacements are kept negated, which
        changes no angle or norm), the sums are taken, and the buffer that held -s_(t-1) becomes the new
        snapshot x_t: no third copy. D(t) = |x_t - x_a|^2 joins the same pass (the new snapshot against the
        anchor). The partial sums over this process's elements go through one all-reduce (none under DDP),
        so every process takes the same decision.
        """
        displacement, spare = self._snapshot, self._displacement
        extra = [((spare, self._anchor),) * 2] if self._anchor is not None else []
        sums = self._shards.all_reduce(displacement.advance(params, spare, extra=extra)).tolist()
        self._snapshot, self._displacement = spare, displacement
        distance_sq = math.nan
        if self._anchor is not None:
            distance_sq = max(0.0, sums[3])
            self._test.observe(self._state.since_anchor, distance_sq)
        return sums[0], sums[1], sums[2], distance_sq

    def _begin_averaging(self, norm_sq: float) -> None:
        """Enter the averaging phase: this interval's snapshot is the first of the running average."""
        s = self._state
        s.phase, s.averaged, s.trigger_norm_sq = AVERAGING, 1, norm_sq
        s.averaging_intervals = self.config.averaging_intervals(s.since_anchor)
        self._average = self._snapshot.clone()
        if self._buffers:
            self._buffer_average = FlatCopy.of(self._buffers)

    def _decay(self) -> None:
        """Set every group's lr for the next interval of the run's final segment (1 - sqrt to the floor); the
        step hook moves it at every optimizer step after that."""
        first, before = not self._cooldown.cooled, self._lr.current_lrs()
        # The next interval's first step, at its start; once per interval at its middle where steps are not counted.
        self._decay_to(self._state.interval + (0.0 if self._steps_per_interval else 0.5))
        if first:
            logger.info(
                "AutoDrop: cooldown of the run's final %.3g from interval %d (the run ends after %.6g intervals): "
                "the lr decays from %s to its floor %s along 1 - sqrt%s",
                self._cooldown.fraction,
                self._state.interval,
                self._cooldown.horizon,
                _fmt(before),
                _fmt(self._lr.floors),
                " (dry run: not applied)" if self.config.dry_run else "",
            )

    def _decay_to(self, position: float, report: bool = True) -> None:
        """Every group's lr at `position` (in intervals since the start) of the decay, when it applies there."""
        scales = self._cooldown.scales(self._state.interval, self._lr.scales, self._lr.floor_scales(), position)
        if scales is not None:
            self._lr.set_scales(scales, apply=not self.config.dry_run, report=report)

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
        if stepped:
            self._steps_per_interval = stepped
        if self._watch_rebuild and self._optimizer_stepped and not stepped and 0 < norm_sq < math.inf:
            raise RuntimeError(
                f"The parameters moved during interval {self._state.interval} but the optimizer AutoDrop was built "
                "with did not step (it did in earlier intervals): the training loop seems to have rebuilt its "
                "optimizer, and AutoDrop would keep dropping the lr of the old one. Build a new AutoDrop with "
                "the new optimizer (and scheduler)."
            )
        self._optimizer_stepped = self._optimizer_stepped or stepped > 0

    def _absurd(self, norm_sq: float) -> bool:
        """A finite interval whose displacement dwarfs the one at the trigger: left out of the average."""
        if not self._state.trigger_norm_sq > 0 or norm_sq <= _ABSURD_NORM_RATIO**2 * self._state.trigger_norm_sq:
            return False
        logger.warning(
            "AutoDrop: the parameters moved %.3g times farther during interval %d than during the interval "
            "that triggered averaging; this interval is left out of the running average (the drop comes one "
            "interval later), like a NaN/Inf one.",
            math.sqrt(norm_sq / self._state.trigger_norm_sq),
            self._state.interval,
        )
        return True

    # ------------------------------------------------------------------ the cooldown of a run of known length
    def set_horizon(self, intervals: float | None) -> None:
        """Tell AutoDrop how many intervals the run has in all (counting from its start, resumed runs
        included), or None when unknown; `AutoDrop(..., horizon=N)` does the same at construction. With
        the `"growth"` test this enables the cooldown (`AutoDropConfig.cooldown_fraction`): the lr decays
        to its floor over the run's final segment. The Trainer callback sets it from `max_steps`."""
        self._cooldown.set_horizon(intervals)

    @property
    def horizon(self) -> float | None:
        """The run's length in intervals as told by `set_horizon` (None: unknown, no cooldown)."""
        return self._cooldown.horizon

    @property
    def cooldown_start(self) -> int | None:
        """The first interval at whose end the cooldown sets the lr (its decay has begun), or None."""
        return self._cooldown.start

    def _drop(self, angle: float) -> bool:
        cfg, s = self.config, self._state
        old_lrs = self._lr.current_lrs()
        old_scale = self._lr.scales[0]
        if not cfg.dry_run:
            params = self._shards.tensors()
            self._average.copy_to(params)
            self._shards.commit(params)
            if self._buffer_average is not None:
                self._buffer_average.copy_to(self._buffers)
        exhausted = self._lr.drop(cfg.drop_factor, apply=not cfg.dry_run)
        s.threshold = min(cfg.max_threshold, s.threshold / cfg.drop_factor)
        s.num_drops += 1
        # Reset the history: the (averaged) parameters are the new x_0 and the new anchor.
        s.last_phase = s.since_anchor
        s.phase, s.averaged, s.since_anchor = MONITOR, 0, 0
        s.recent_angles = []
        self._average = self._buffer_average = None
        self._snapshot.copy_from(self._shards.tensors())
        if self._anchor is not None:
            self._anchor = None  # the old buffer goes first (memory peak)
            self._anchor = self._snapshot.clone()
        self._test.reset()

        if cfg.dry_run:
            logger.info(
                "AutoDrop (dry run): would drop #%d at interval %d: lr scale %.4g -> %.4g, angle %.4f deg",
                s.num_drops,
                s.interval,
                old_scale,
                self._lr.scales[0],
                angle,
            )
        else:
            logger.info(
                "AutoDrop: drop #%d at interval %d: lr %s -> %s, angle %.4f deg%s%s",
                s.num_drops,
                s.interval,
                _fmt(old_lrs),
                _fmt(self._lr.current_lrs()),
                angle,
                f", threshold now {s.threshold:.4g} deg" if self._test.uses_threshold else "",
                " (every group already at its floor)" if exhausted else "",
            )
        return exhausted

    def _report_bad_values(self, finite: bool, norm_sq: float, prev_norm_sq: float) -> None:
        if not finite:
            logger.warning(
                "AutoDrop: the parameter displacement at interval %d is NaN/Inf (or too large for the float32 "
                "products of the interval sums, elements beyond ~1e19); no trigger or drop at this interval%s, "
                "training goes on.",
                self._state.interval,
                "; it is left out of the running average" if self._state.phase == AVERAGING else "",
            )
        elif norm_sq == 0.0 or (self._state.since_anchor >= 2 and prev_norm_sq == 0.0):
            if not self._state.warned_zero:
                logger.warning(
                    "AutoDrop: the parameters did not move during interval %d (frozen model or lr 0?); "
                    "the angle is undefined and nothing is triggered until they move.",
                    self._state.interval,
                )
                self._state.warned_zero = True

    # ------------------------------------------------------------------ introspection
    @property
    def num_drops(self) -> int:
        return self._state.num_drops

    @property
    def phase(self) -> str:
        return self._state.phase

    @property
    def threshold(self) -> float:
        """The paper's threshold theta in degrees as it stands now (grown by 1 / drop_factor per drop)."""
        return self._state.threshold

    @property
    def interval(self) -> int:
        return self._state.interval

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
        return _state_io.save_state(self)

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()`.

        Load the model's (and optimizer's) state first: the saved parameters' fingerprint must match
        the current parameters. Raises `ValueError` when the state belongs to another model or run, is
        damaged, or holds a history the current config cannot continue; a config that changed in a way
        the history allows is applied with a warning that lists the changes.
        """
        _state_io.load_state(self, state)


def _fmt(lrs: list[float]) -> str:
    """One number when every group shares it (the Trainer's decay/no-decay split), else the list."""
    if len(set(lrs)) == 1:
        return f"{lrs[0]:.4g}"
    return "[" + ", ".join(f"{lr:.4g}" for lr in lrs) + "]"
