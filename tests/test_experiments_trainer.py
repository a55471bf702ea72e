"""The real-data studies: one run's record, the dry-run shortcut's identity, and each study's quick mode."""

import gzip
import json

import pytest

from experiments import charlm_study, digits_study
from experiments.trainer_study import PAPER_AUTODROP, Method, run_all, run_one

TASK = digits_study.QUICK_TASK
FORCED = dict(detector="paper", threshold=180.0, max_threshold=180.0, drop_delay=1)  # every check triggers


def test_autodrop_that_never_drops_is_the_constant_run_bit_for_bit():
    # The premise of run_all's shortcut: the paper's rule does not fire in this run, so the real
    # AutoDrop run (any drop factor) is the constant-lr run, and the dry run shows it.
    constant = run_one(TASK, Method("constant lr", "constant"), seed=0)
    autodrop = run_one(TASK, Method("AutoDrop", "autodrop", autodrop={**PAPER_AUTODROP, "drop_factor": 0.5}), seed=0)
    assert not any(m["dropped"] for m in constant["autodrop"])
    assert [c["metric"] for c in autodrop["curve"]] == [c["metric"] for c in constant["curve"]]
    assert [c["loss"] for c in autodrop["curve"]] == [c["loss"] for c in constant["curve"]]
    assert [m["angle"] for m in autodrop["autodrop"][1:]] == [m["angle"] for m in constant["autodrop"][1:]]


def test_run_all_trains_autodrop_when_the_dry_run_drops():
    const = Method("constant lr", "constant", autodrop=FORCED)
    ad = Method("AutoDrop forced", "autodrop", autodrop={**FORCED, "drop_factor": 0.2})
    never = Method("AutoDrop paper", "autodrop", autodrop={**PAPER_AUTODROP, "drop_factor": 0.2})
    const_r, ad_r, never_r = run_all([(TASK, const, 0, None), (TASK, ad, 0, None), (TASK, never, 0, None)])
    assert any(m["dropped"] for m in const_r["autodrop"])  # the dry run would drop ...
    assert not ad_r["derived"] and any(m["dropped"] for m in ad_r["autodrop"])  # ... so this one was trained
    assert ad_r["curve"][-1]["lr"] == pytest.approx(0.05 * 0.2 ** ad_r["autodrop"][-1]["num_drops"])
    # Other settings than the dry run's: trained too, never derived.
    assert not never_r["derived"]


def test_run_records_what_each_method_needs():
    plateau = run_one(TASK, Method("plateau", "plateau"), seed=0)
    assert plateau["val_passes"] == TASK.epochs  # one validation pass per epoch
    multistep = run_one(TASK, Method("multistep", "multistep"), seed=0)
    assert multistep["val_passes"] == 0
    # 5 epochs: drops at round(0.3*5)=2, round(0.6*5)=3, round(0.8*5)=4 epochs.
    assert [round(c["lr"], 6) for c in multistep["curve"]] == [0.05, 0.01, 0.002, 0.0004, 0.0004]
    assert len(multistep["curve"]) == TASK.epochs and multistep["to_best"] in range(1, TASK.epochs + 1)


def test_wsd_and_autodrop_cool_down_the_same_final_fifth():
    """The peers' WSD row is transformers' warmup_stable_decay (1 - sqrt over the last 20 %); AutoDrop's
    default on a run that does not settle decays over the same segment, to its floor."""
    wsd = run_one(TASK, Method("WSD", "wsd"), seed=0)
    autodrop = run_one(TASK, Method("AutoDrop", "autodrop", autodrop={"growth_threshold": 1e-9}), seed=0)
    # 5 epochs of 16 steps: the decay covers steps 65-80. The curve holds the lr set for the next step
    # (WSD's for step 65 is the base lr; AutoDrop's is 1 - sqrt at the middle of its first interval).
    for run in (wsd, autodrop):
        lrs = [c["lr"] for c in run["curve"]]
        assert lrs[:3] == [0.05] * 3 and 0.04 < lrs[3] <= 0.05 and lrs[4] < 1e-3 * 0.05 + 1e-12, run["method"]
    assert not any(m["dropped"] for m in autodrop["autodrop"])


def _runs(path):
    with gzip.open(path, "rt") as f:
        saved = json.load(f)
    assert "--quick" in saved["provenance"]["command"]
    return saved["runs"]


def test_digits_quick_study(tmp_path):
    report = open(digits_study.main(["--quick", "--out", str(tmp_path)])).read()
    for section in ("## Comparison", "## Table 2 analogue", "## Figure 7 analogue", "issue 5 item 5"):
        assert section in report
    for png in ("digits_curves.png", "digits_to_best.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    runs = _runs(tmp_path / "digits_runs.json.gz")
    kinds = {r["kind"] for r in runs}
    assert kinds == {"constant", "multistep", "cosine", "plateau", "schedulefree", "autodrop"}
    tuned = [r for r in runs if "tuned" in r["method"]]
    assert tuned and all(any(m["dropped"] for m in r["autodrop"]) for r in tuned)
    assert {r["lr"] for r in runs} == {0.1, 0.05}  # the quick sweep
    # The report can be rewritten from the saved runs without training, keeping the original command.
    rewritten = open(digits_study.main(["--quick", "--out", str(tmp_path), "--report-only"])).read()
    assert "Report rewritten from the saved runs" in rewritten
    assert rewritten.split("## Comparison")[1] == report.split("## Comparison")[1]


def test_charlm_quick_study(tmp_path):
    report = open(charlm_study.main(["--quick", "--out", str(tmp_path)])).read()
    assert "bits/char" in report and "issue 5 item 5" in report
    runs = _runs(tmp_path / "charlm_runs.json.gz")
    constant = next(r for r in runs if r["kind"] == "constant")
    # Step-based: AutoDrop measures every 5 steps and the test loss is taken every 10 steps.
    assert [m["step"] for m in constant["autodrop"]] == list(range(5, 41, 5))
    assert [c["step"] for c in constant["curve"]] == [10, 20, 30, 40]
    assert constant["final"] < 7.0  # below a uniform guess over 128 characters (7 bits)


def test_peer_quick_study(tmp_path):
    from experiments import peer_study

    report = open(
        peer_study.main(["--quick", "--tasks", "digits_bn", "--lr-grid", "1/3,1", "--out", str(tmp_path)])
    ).read()
    assert "## Summary: AutoDrop against WSD" in report and "### digits_bn@4ep" in report
    runs = _runs(tmp_path / "peers_runs.json.gz")
    assert {r["method"] for r in runs} == {m.name for m in peer_study.methods()}
    # Every method at each lr of the grid; schedule-free (SGD) over its README's range.
    lrs = {(r["method"], round(r["run_lr"] / 0.05, 4)) for r in runs}
    assert {x for m, x in lrs if m == peer_study.WSD} == {round(1 / 3, 4), 1.0}
    assert {x for m, x in lrs if m == peer_study.SCHEDULEFREE} == {10.0, 20.0, 50.0}
    # The report keeps, per method, the lr with the best validation metric, and says which it was.
    chosen, keys = peer_study.select(runs)
    for r in chosen:
        assert keys[(r["task"], r["method"])][r["run_lr"]] == min(keys[(r["task"], r["method"])].values())
    wsd = next(r for r in chosen if r["method"] == peer_study.WSD)
    autodrop = next(r for r in chosen if r["method"] == peer_study.AUTODROP)
    off = next(r for r in chosen if r["method"] == peer_study.NO_COOLDOWN)
    assert f"| {peer_study.WSD} | {wsd['run_lr'] / 0.05:.3g} (of 0.333, 1) |" in report
    # WSD and AutoDrop's decay end at a small lr; without the decay AutoDrop keeps its lr (no drop in 4 epochs).
    assert wsd["curve"][-1]["lr"] < 0.01 * wsd["lr"] and autodrop["curve"][-1]["lr"] < 0.01 * autodrop["lr"]
    assert not any(m["dropped"] for m in off["autodrop"]) and off["curve"][-1]["lr"] == off["lr"]
    summary = report.split("## Summary")[1].split("## Every method")[0]
    assert f"| digits_bn@4ep | {peer_study.AUTODROP} |" in summary
    assert (tmp_path / "peers_digits_bn.png").stat().st_size > 10_000

    # --rerun trains one method's runs again and keeps every other saved run (the training is deterministic,
    # so the re-trained runs come out as they were); the report names both commands.
    quick = ["--quick", "--tasks", "digits_bn", "--lr-grid", "1/3,1", "--out", str(tmp_path)]
    report = open(peer_study.main([*quick, "--rerun", peer_study.AUTODROP])).read()
    again = _runs(tmp_path / "peers_runs.json.gz")
    assert [(r["method"], r["seed"], r["lr"]) for r in again] == [(r["method"], r["seed"], r["lr"]) for r in runs]
    for before, after in zip(runs, again):
        assert after["final"] == before["final"] and after["curve"] == before["curve"]
        assert (after["wall_s"] == before["wall_s"]) == (before["method"] != peer_study.AUTODROP)
    assert f"for the rows of {peer_study.AUTODROP}" in report.splitlines()[2]
    with pytest.raises(SystemExit, match="unknown method"):
        peer_study.main([*quick, "--rerun", "AutoDrop"])
    # Saved runs that this machine does not reproduce (here: the first one, altered) are not merged.
    path = tmp_path / "peers_runs.json.gz"
    data = json.loads(gzip.decompress(path.read_bytes()))
    data["runs"][0]["final"] += 0.5
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    with pytest.raises(SystemExit, match="do not reproduce here"):
        peer_study.main([*quick, "--rerun", peer_study.AUTODROP])


def test_peer_gpt2_task_is_a_transformers_model_cut_in_steps():
    import dataclasses

    from transformers import GPT2LMHeadModel

    from experiments import peer_study, tasks
    from experiments.trainer_study import Method, run_one

    full = peer_study.TASKS["gpt2"]
    short = peer_study.cut(full, 0.1)
    assert (short.name, short.max_steps, short.eval_steps) == ("gpt2@100st", 100, 10)
    assert isinstance(tasks.TinyGPT2(), GPT2LMHeadModel)
    train, _, _ = tasks.gpt2_splits()
    ids = train.tensors["input_ids"]
    assert ids.shape[1] == 65 and bool((train.tensors["labels"] == ids).all())  # GPT-2 shifts the labels itself
    run = run_one(dataclasses.replace(short, max_steps=30, eval_steps=10), Method("wsd", "wsd"), seed=0)
    assert [c["step"] for c in run["curve"]] == [10, 20, 30]
    assert run["final"] < 7.0 and run["curve"][-1]["lr"] == 0.0  # below a uniform guess; WSD ends at 0


def test_unknown_length_quick_study(tmp_path):
    from experiments import unknown_length_study as ul

    report = open(ul.main(["--quick", "--tasks", "digits_bn", "--out", str(tmp_path)])).read()
    runs = _runs(tmp_path / "unknown_length_runs.json.gz")
    mine = next(r for r in runs if r["method"] == ul.UNKNOWN)
    # No horizon: no end-of-run decay, so without a drop the lr is the one it started at.
    assert not any(m["dropped"] for m in mine["autodrop"]) and mine["curve"][-1]["lr"] == mine["lr"]
    peers = [r for r in runs if r["task"] == "digits_bn@T.0"]
    assert {r["method"] for r in peers} == {m.name for m in ul.PEERS}
    # Every peer is told the step AutoDrop ended at, and WSD ends there at 0.
    assert all(ul.stop_step(r) == ul.stop_step(mine) for r in peers)
    assert next(r for r in peers if r["kind"] == "wsd")["curve"][-1]["lr"] == 0.0
    assert f"| {ul.UNKNOWN} |" in report and "### digits_bn" in report
