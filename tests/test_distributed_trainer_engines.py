"""The plain `Trainer(callbacks=[AutoDropCallback()])` under FSDP2, DeepSpeed ZeRO-2 and ZeRO-3, chosen by
`TrainingArguments` alone: 2 processes launched with torchrun (gloo, CPU), against one process.

`TrainingArguments(fsdp="full_shard", fsdp_config={"version": 2})` and `TrainingArguments(deepspeed={...
"zero_optimization": {"stage": 2 | 3}})`, per-device batch 16 on 2 processes = the one-process run's batch
of 32, float64 model. Each test first checks the Trainer really built the engine (FSDP2 modules with DTensor
shards, a DeepSpeed engine at the stage asked for, 2 processes), so a silent fallback to DDP or to one
process per rank fails. Then: the same angles and drops as one process (FSDP2: the plain one-process
Trainer, to 1e-6 degrees; DeepSpeed: to 1e-5 degrees, the floor of its float32 master weights and
gradients, against both the plain Trainer and a one-process DeepSpeed run), the same lr history and
final parameters, and a run resumed from a checkpoint inside the averaging window ends bit-identical to
the straight run. `tests/scripts/trainer_engines_run.py` is the per-process script; how accelerate is
let build FSDP / DeepSpeed on a CPU is in its `cpu_engine`.
"""

import importlib.util
import json
import math

import pytest

from ._distributed import BIN, launch, run_once
from .scripts.trainer_engines_run import CONFIG, RESUME_EPOCH, STEPS_PER_EPOCH

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
ENGINES = ["fsdp2"] + (["zero2", "zero3"] if HAS_DEEPSPEED else [])
DEEPSPEED = [e for e in ENGINES if e.startswith("zero")]
RESUME_STEP = RESUME_EPOCH * STEPS_PER_EPOCH
# DeepSpeed keeps master weights and gradients in float32 whatever the model's dtype
# (deepspeed/runtime/base_optimizer.py `_configure_master_weights`, used by ZeRO-1/2 and ZeRO-3), so the
# other summation order of the 2-process gradient average is rounded at float32: measured 3.4e-6 degrees
# against one process (DeepSpeed or not). FSDP2 keeps the model's float64: measured 1e-13 degrees.
ANGLE_TOLERANCE = {"fsdp2": 1e-6, "zero2": 1e-5, "zero3": 1e-5}
PARAM_TOLERANCE = {"fsdp2": 1e-12, "zero2": 1e-6, "zero3": 1e-6}
EXPECTED = {
    "fsdp2": dict(distributed_type="DistributedType.FSDP", wrapped_suffix="MLP64", autodrop_engine="FSDP2 (DTensor)"),
    "zero2": dict(
        distributed_type="DistributedType.DEEPSPEED",
        wrapped="DeepSpeedEngine",
        zero_stage=2,
        optimizer="DeepSpeedZeroOptimizer",
        autodrop_engine="DeepSpeed ZeRO-1/2",
    ),
    "zero3": dict(
        distributed_type="DistributedType.DEEPSPEED",
        wrapped="DeepSpeedEngine",
        zero_stage=3,
        optimizer="DeepSpeedZeroOptimizer_Stage3",
        autodrop_engine="DeepSpeed ZeRO-3",
    ),
}
ELEMENTS = 64 * 32 + 32 + 32 * 10 + 10  # the MLP's 2410 trainable elements


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from .scripts.trainer_engines_run import run

    def produce(folder):
        (folder / "single.json").write_text(json.dumps(run("single", str(folder / "single"), 32)))
        script = "tests/scripts/trainer_engines_run.py"
        env = {"DS_ACCELERATOR": "cpu"}
        torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node"]
        launch(torchrun + ["2", script, str(folder / "two"), str(RESUME_STEP), *ENGINES], timeout=400, env=env)
        if DEEPSPEED:  # DeepSpeed in one process, to compare with at DeepSpeed's own precision
            launch(torchrun + ["1", script, str(folder / "one"), "0", *DEEPSPEED], timeout=300, env=env)

    tmp = run_once(tmp_path_factory, "trainer-engines", produce)

    def load(path):
        return json.loads(path.read_text())

    two = {
        (e, name, r): load(tmp / "two" / e / f"{name}-rank{r}.json")
        for e in ENGINES
        for name in ("full", "resumed")
        for r in (0, 1)
    }
    one = {e: load(tmp / "one" / e / "full-rank0.json") for e in DEEPSPEED}
    return load(tmp / "single.json"), two, one, tmp / "two"


def _decisions(record):
    return [(m["epoch"], m["dropped"], m["phase"]) for m in record["measurements"]]


def _assert_same_angles(mine, theirs, tolerance):
    assert _decisions(mine) == _decisions(theirs)
    worst = 0.0
    for a, b in zip(mine["measurements"], theirs["measurements"], strict=True):
        if math.isnan(b["angle"]):
            assert math.isnan(a["angle"])
        else:
            worst = max(worst, abs(a["angle"] - b["angle"]))
        assert a["lrs"] == pytest.approx(b["lrs"], rel=1e-12)
    assert worst <= tolerance, f"angles differ by up to {worst} degrees"
    assert mine["lr_history"] == pytest.approx(theirs["lr_history"], rel=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_trainer_really_built_the_engine(runs, engine):
    _, two, one, _ = runs
    expected = EXPECTED[engine]
    for rank in (0, 1):
        info = two[engine, "full", rank]
        assert info["world_size"] == info["num_processes"] == 2
        assert info["distributed_type"] == expected["distributed_type"]
        assert info["autodrop_engine"] == expected["autodrop_engine"]
        if engine == "fsdp2":  # not DistributedDataParallel: FSDP2 modules holding DTensor shards
            assert info["wrapped"].startswith("FSDP") and info["wrapped"].endswith(expected["wrapped_suffix"])
            assert info["fsdp_modules"] >= 1
            assert info["dtensor_params"] == 4
            assert info["local_elements"] == ELEMENTS // 2
        else:
            assert info["wrapped"] == expected["wrapped"]
            assert info["zero_stage"] == expected["zero_stage"]
            assert info["optimizer"] == expected["optimizer"]
            assert info["dp_world_size"] == 2
            assert info["local_elements"] == (ELEMENTS // 2 if engine == "zero3" else ELEMENTS)
            assert one[engine]["world_size"] == 1 and one[engine]["zero_stage"] == expected["zero_stage"]


@pytest.mark.parametrize("engine", ENGINES)
def test_angles_drops_and_parameters_equal_one_process(runs, engine):
    single, two, one, _ = runs
    assert single["autodrop_engine"] == "single process" and single["world_size"] == 1
    assert [m["epoch"] for m in single["measurements"] if m["dropped"]] == [4.0], (
        "the configuration must trigger on a real angle change for the comparison to mean something"
    )
    threshold, phase = CONFIG["threshold"], "monitor"
    for m in single["measurements"]:  # no trigger check may hinge on less than the tolerance
        if phase == "monitor" and not math.isnan(m["angle_change"]):
            assert abs(m["angle_change"] - threshold) > 0.1
        threshold, phase = m["tolerance"], m["phase"]
    references = [single] + ([one[engine]] if engine in one else [])
    for rank in (0, 1):
        run = two[engine, "full", rank]
        for reference in references:
            _assert_same_angles(run, reference, ANGLE_TOLERANCE[engine])
            assert (
                max(abs(a - b) for a, b in zip(run["params"], reference["params"], strict=True))
                <= (PARAM_TOLERANCE[engine])
            )
    # Every process computed the same global angle (one all-reduce of the same three sums).
    assert two[engine, "full", 0]["measurements"] == two[engine, "full", 1]["measurements"]


@pytest.mark.parametrize("engine", ENGINES)
def test_resume_from_a_mid_run_checkpoint_equals_the_straight_run(runs, engine):
    _, two, _, out = runs
    checkpoint = out / engine / f"checkpoint-{RESUME_STEP}"
    assert sorted(p.name for p in checkpoint.glob("autodrop_state*")) == [
        "autodrop_state-rank0-of-2.pt",
        "autodrop_state-rank1-of-2.pt",
    ]
    full0 = two[engine, "full", 0]
    resumed_phase = full0["measurements"][RESUME_EPOCH - 1]["phase"]
    assert resumed_phase == "averaging", "the checkpoint must lie inside the averaging window"
    for rank in (0, 1):
        full, resumed = two[engine, "full", rank], two[engine, "resumed", rank]
        assert resumed["measurements"] == full["measurements"]  # the drop after the resume included
        assert resumed["lr_history"] == full["lr_history"]
        assert resumed["params"] == full["params"]  # bit for bit
