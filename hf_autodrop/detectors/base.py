"""The protocol every test of saturation implements (one class per file beside this one)."""

from __future__ import annotations

from typing import Protocol


class SaturationTest(Protocol):
    """What the controller asks of a test of saturation.

    The controller measures once per interval (the angle omega between the last two displacements and,
    for a test with `uses_anchor`, D(t) = |x_t - x_a|^2 from the anchor x_a, the parameters where the
    current lr began), passes the measurements in, and triggers the averaging when the statistic falls
    below the tolerance. `t` is always the number of intervals since the start or the last drop.

    Attributes:
        uses_anchor: the test reads D(t): the controller keeps the anchor and adds |x_t - x_a|^2 to its
            one fused pass and its one all-reduce.
        uses_threshold: the test's tolerance follows the paper's threshold, which grows by
            `1 / drop_factor` at every drop (the drop log names it).
        cools_down: a run of known length gets the end-of-run policy (`cooldown.Cooldown`) with it.
        measures_per_epoch: with `interval_steps=None` the Trainer callback measures once per epoch (the
            paper's interval) rather than every `auto_interval_steps(max_steps)` updates.
        first_check: the interval after the start or a drop of the first possible trigger.
    """

    uses_anchor: bool
    uses_threshold: bool
    cools_down: bool
    measures_per_epoch: bool

    @property
    def first_check(self) -> int: ...

    def default_averaging_intervals(self, t: int) -> int:
        """n_d for a trigger at `t` when `drop_delay` is None."""

    def auto_interval_steps(self, max_steps: int) -> int:
        """Optimizer updates per interval for a run of `max_steps` when `interval_steps` is None."""

    def angles_kept(self, t: int) -> int:
        """How many of the latest angles the controller keeps for the next interval's statistic."""

    def observe(self, t: int, distance_sq: float) -> None:
        """Record this interval's D(t) (only called when `uses_anchor`; NaN/Inf when not finite)."""

    def statistic(self, t: int, angle: float, change: float, recent: list[float], last_phase: int) -> tuple[float, int]:
        """(the statistic at this interval, NaN while undefined; the window it covers, in intervals).

        `recent`: the angles kept before this one (oldest first); `last_phase`: the intervals from the
        anchor before the last drop to that drop (0 before the first drop).
        """

    def tolerance(self, threshold: float) -> float:
        """What the statistic must stay below to trigger, given the paper's current threshold."""

    def reset(self) -> None:
        """A drop landed: the averaged parameters are the new anchor; forget the history."""

    def resume_refusal(self, saved_config) -> str | None:
        """Why a state saved with `saved_config` (same detector) cannot be continued, or None."""

    def state_dict(self) -> dict:
        """The test's own history, as plain values (merged into the controller's state)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` (keys missing from older states take their defaults)."""
