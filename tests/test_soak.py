"""Kill-anywhere soak: SIGKILL a Trainer run with AutoDropCallback at 20 seeded random moments, resume each
time from `newest_complete_checkpoint`, and get the uninterrupted run bit for bit (CPU).

The moments: at steps' ends inside averaging windows, right after drops and during the end-of-run cooldown,
and inside every kind of checkpoint write (AutoDrop's staged file, the weights, optimizer, scheduler, RNG
state and trainer_state.json each cut to half their length, right after trainer_state.json, and half-way
through deleting an old checkpoint). Each segment is a real process that SIGKILLs itself
(`tests/scripts/soak.py`, which also runs longer soaks: `python -m tests.scripts.soak --kills 48 --rounds 5`).
"""

import pytest

from .scripts import soak

KILLS = 20


def _check(got, variant, phases_wanted):
    straight, kills = got["straight"][0], got["kills"]
    # Every chosen moment was reached, and in order: each segment died where it was meant to.
    assert [tuple(k[:2]) for k in kills] == sorted({tuple(d[:2]) for d in got["died"]})
    kinds = {where for _, where, _ in kills}
    wanted = set(soak.IN_SAVE) - ({"rotate"} if not soak.VARIANTS[variant]["save_total_limit"] else set())
    if variant != "ddp":  # (the DDP run has a few kills only)
        assert wanted | {"step-end"} <= kinds, f"moments not covered: {wanted - kinds}"
    by_step = soak.phases(straight)
    for phase in phases_wanted:
        assert any(phase in by_step[step] for step, _, _ in kills), f"no kill {phase}"
    # Some resumes had to skip an incomplete newer folder (what resume_from_checkpoint=True would pick).
    assert any(newest and chosen != newest for chosen, newest in got["resumes"][1:])
    assert sum(m["dropped"] for m in straight["measurements"]) >= 1
    for s, r in zip(got["straight"], got["resumed"]):
        assert soak.differences(s, r) == []


@pytest.mark.parametrize(
    "variant, phases_wanted",
    [("growth", ("averaging", "after-drop", "cooldown")), ("paper", ("averaging", "after-drop"))],
    ids=["growth", "paper"],
)
def test_twenty_kills_anywhere_resume_bit_for_bit(tmp_path, variant, phases_wanted):
    got = soak.soak(str(tmp_path), variant, KILLS, seed=0, log=lambda *_: None)
    assert len(got["kills"]) == KILLS
    _check(got, variant, phases_wanted)


def test_ddp_kills_of_one_rank_and_of_both_resume_bit_for_bit(tmp_path):
    got = soak.soak(str(tmp_path), "ddp", 6, seed=0, log=lambda *_: None)
    ranks = [rank for _, _, rank in got["kills"]]
    assert None in ranks and 1 in ranks and 0 in ranks  # both ranks at once, and each one alone
    assert {"rng", "autodrop-staging"} & {where for _, where, _ in got["kills"]}
    _check(got, "ddp", ("cooldown",))
