"""Saving, verifying and restoring the controller's state: one declaration of its scalars, checked tensors.

`AutoDrop.state_dict()` holds the scalars of `PhaseState` (each declared once, below), the test of
saturation's and the cooldown's own history, the lr scales, and the state tensors (snapshot,
displacement, anchor, averages) of this process's shard, with an additive checksum of each and a
fingerprint of the parameters they were saved with. `load_state_dict` refuses a damaged file, a state
of other parameters, and a config change the saved history cannot honour; it applies the others with
a warning that says what they mean.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .averaging import FlatCopy
from .config import AutoDropConfig
from .measurement import AVERAGING, MONITOR

__all__ = ["PhaseState", "load_state", "parameter_fingerprint", "save_state", "word_sum"]

logger = logging.getLogger("hf_autodrop")

# 2: checksums of the state tensors, the parameters' fingerprint, float64 copies of float64 parameters.
STATE_FORMAT = 2
READABLE_FORMATS = (1, 2)
_TENSORS = ("snapshot", "displacement", "average", "buffer_average", "anchor")


def _scalar(default, read, key: str | None = None, required: bool = True):
    """A `PhaseState` field: saved under `key` (default: its name), converted by `read` on load; a missing
    required key makes the state damaged, a missing optional one (added in a later version) its default."""
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(**kw, metadata={"key": key, "read": read, "required": required})


def _floats(values) -> list[float]:
    return [float(v) for v in values]


@dataclass
class PhaseState:
    """The controller's scalar state, saved and loaded from this one declaration."""

    interval: int = _scalar(0, int)  # intervals since training started
    since_anchor: int = _scalar(0, int, key="t")  # the paper's t: intervals since the start or the last drop
    averaged: int = _scalar(0, int, key="k")  # the paper's k: snapshots in the running average
    phase: str = _scalar(MONITOR, str)
    threshold: float = _scalar(0.0, float)  # the paper's threshold theta, grown by 1 / drop_factor per drop
    num_drops: int = _scalar(0, int)
    recent_angles: list[float] = _scalar(list, _floats)  # the latest angles since the anchor, oldest first
    # The paper's n_d: the intervals of the averaging phase in progress.
    averaging_intervals: int = _scalar(0, int, required=False)
    last_phase: int = _scalar(0, int, required=False)  # intervals from the anchor before the last drop to it
    warned_zero: bool = _scalar(False, bool)  # the warning about parameters that did not move was given
    # |s|^2 at the trigger: the yardstick for absurd intervals while averaging.
    trigger_norm_sq: float = _scalar(math.nan, float, required=False)

    def to_state(self) -> dict:
        return {
            f.metadata["key"] or f.name: list(v) if isinstance(v := getattr(self, f.name), list) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_state(cls, state: dict) -> PhaseState:
        values = {}
        for f in dataclasses.fields(cls):
            key = f.metadata["key"] or f.name
            if key in state:
                values[f.name] = f.metadata["read"](state[key])
            elif f.metadata["required"]:
                raise KeyError(key)
        return cls(**values)


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


def save_state(ad) -> dict:
    """`AutoDrop.state_dict()` of controller `ad`: plain values, and references to its state tensors."""
    copies = [ad._snapshot, ad._displacement, ad._average, ad._buffer_average, ad._anchor]
    tensors = {name: None if c is None else c.state() for name, c in zip(_TENSORS, copies)}
    return {
        "format": STATE_FORMAT,
        "config": ad.config.to_dict(),
        **ad._state.to_state(),
        **ad._test.state_dict(),
        **ad._cooldown.state_dict(),
        # Where the current interval stands in optimizer steps, for the cooldown's per-step decay.
        "optimizer_steps": ad._optimizer_steps,
        "steps_per_interval": ad._steps_per_interval,
        "lr": ad._lr.state_dict(),
        # The tensors below hold this process's shard only: they resume on the same rank of the same world.
        "distributed": ad._shards.describe(),
        "param_shapes": [list(s) for s in ad._snapshot.shapes],
        **tensors,
        "checksums": {k: None if v is None else [word_sum(t) for t in v] for k, v in tensors.items()},
        "fingerprint": parameter_fingerprint(ad._shards.tensors()),
    }


def load_state(ad, state: dict) -> None:
    """`AutoDrop.load_state_dict(state)` for controller `ad` (its docstring says what is refused)."""
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        raise ValueError(
            f"not an AutoDrop state (format {state.get('format') if isinstance(state, dict) else type(state).__name__!r}, "
            f"expected one of {READABLE_FORMATS})"
        )
    try:
        _load(ad, state)
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        raise ValueError(
            f"AutoDrop state is damaged ({type(err).__name__}: {err}). Restore the state file from a copy, or "
            "restart AutoDrop's history: build a new AutoDrop without loading this state (with the Trainer, "
            "resume without restore_callback_states_from_checkpoint, or delete the checkpoint's "
            "autodrop_state file)."
        ) from err


def _load(ad, state: dict) -> None:
    saved, here = state.get("distributed", {"rank": 0, "world_size": 1}), ad._shards.describe()
    if saved["world_size"] != here["world_size"]:
        raise ValueError(
            f"AutoDrop state was saved by a run of {saved['world_size']} process(es) but this run has "
            f"{here['world_size']}: AutoDrop's snapshots are sharded like the parameters and cannot be "
            f"resharded. Resume with {saved['world_size']} process(es), or start AutoDrop afresh (drop its state)."
        )
    if saved["rank"] != here["rank"]:
        raise ValueError(f"AutoDrop state of rank {saved['rank']} cannot be loaded on rank {here['rank']}")
    shapes = [tuple(s) for s in state["param_shapes"]]
    if shapes != ad._snapshot.shapes:
        raise ValueError(
            f"AutoDrop state was saved for {len(shapes)} trainable parameters of shapes {_short(shapes)}, "
            f"but this model has {len(ad._snapshot.shapes)} of shapes {_short(ad._snapshot.shapes)}. "
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
        _verify(ad, state)
    else:
        logger.warning(
            "AutoDrop: this state was saved by an older hf_autodrop (format 1) without checksums or a "
            "parameter fingerprint; it is loaded unverified."
        )
    saved_config = _reconcile_config(ad, state)
    ad._snapshot.load(state["snapshot"], "snapshot")
    ad._displacement.load(state["displacement"], "displacement")
    if ad._anchor is not None:
        if state.get("anchor") is None:
            raise ValueError(
                "AutoDrop state holds no anchor (it was saved with another detector than 'growth'); "
                "resume with the detector it was saved with, or start AutoDrop afresh."
            )
        ad._anchor.load(state["anchor"], "anchor")
    if state["phase"] == AVERAGING:
        ad._average = ad._snapshot.empty_like()
        ad._average.load(state["average"], "average")
        ad._buffer_average = None
        if ad._buffers and state["buffer_average"] is not None:
            ad._buffer_average = FlatCopy(ad._buffers)
            ad._buffer_average.load(state["buffer_average"], "buffer_average")
    else:
        ad._average = ad._buffer_average = None
    cfg = ad.config
    ad._lr.load_state_dict(state["lr"], min_lr="saved" if saved_config.min_lr == cfg.min_lr else cfg.min_lr)
    scalars = PhaseState.from_state(state)
    # A changed threshold keeps the growth the saved drops earned: the same ratio to the starting value.
    if (saved_config.threshold, saved_config.max_threshold) != (cfg.threshold, cfg.max_threshold):
        growth = scalars.threshold / saved_config.threshold
        scalars.threshold = min(cfg.max_threshold, cfg.threshold * growth)
    if "averaging_intervals" not in state:  # saved before it was recorded
        scalars.averaging_intervals = cfg.averaging_intervals(scalars.since_anchor)
    if cfg.drop_delay is not None and cfg.drop_delay != saved_config.drop_delay:
        scalars.averaging_intervals = cfg.drop_delay  # an explicit new delay applies to the window in progress too
    ad._state = scalars
    ad._test.load_state_dict(state)
    ad._cooldown.load_state_dict(state)
    ad._optimizer_steps = int(state.get("optimizer_steps", 0))  # saved by every release since the per-step decay
    ad._steps_per_interval = int(state.get("steps_per_interval", 0))


def _verify(ad, state: dict) -> None:
    """The checksums of the state tensors, and the fingerprint of the parameters they were saved with."""
    for name, expected in state["checksums"].items():
        tensors = state[name]
        actual = None if tensors is None else [word_sum(t) if isinstance(t, torch.Tensor) else None for t in tensors]
        if actual != expected:
            raise ValueError(
                f"AutoDrop state tensor '{name}' fails its checksum (saved {expected}, read {actual}): the "
                "file was damaged after it was written. Restore it from a copy, or resume from an older "
                "checkpoint."
            )
    fingerprint = parameter_fingerprint(ad._shards.tensors())
    if [int(x) for x in state["fingerprint"]] != fingerprint:
        raise ValueError(
            "AutoDrop state was saved with other parameter values than the model holds now (fingerprint "
            f"{list(state['fingerprint'])}, model {fingerprint}): it belongs to another checkpoint or another "
            "branch of this run, or the model's weights were not loaded before AutoDrop's state. Load the "
            "model's weights of the same checkpoint first, and use the AutoDrop state file saved beside them."
        )


def _reconcile_config(ad, state: dict) -> AutoDropConfig:
    """The saved config; refuses changes the saved history cannot honour and warns about the others."""
    # Fields added after a state was saved take their defaults.
    saved = AutoDropConfig(**{**AutoDropConfig().to_dict(), **state["config"]})
    cfg = ad.config
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
    reason = ad._test.resume_refusal(saved)
    if reason is not None:
        raise refuse(reason)
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


def _short(shapes: list[tuple]) -> str:
    return str(shapes) if len(shapes) <= 6 else f"{shapes[:3]} ... {shapes[-2:]}"
