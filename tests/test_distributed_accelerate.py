"""A custom `accelerate` loop that uses `AutoDrop` directly, launched with `accelerate launch` on 2 processes."""

import json
import math

from ._distributed import BIN, launch


def test_custom_accelerate_loop_on_two_processes_matches_one_process(tmp_path):
    from .scripts.accelerate_loop import train

    launch(
        [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
        + ["--mixed_precision", "no", "--dynamo_backend", "no", "tests/scripts/accelerate_loop.py", str(tmp_path)]
    )
    single = train(None)
    assert [i for i, m in enumerate(single, 1) if m["dropped"]] == [10]  # triggered at 9 by a real angle change
    for rank in (0, 1):
        record = json.loads((tmp_path / f"loop-rank{rank}.json").read_text())
        assert record["world_size"] == 2
        run = record["measurements"]
        assert [(m["dropped"], m["phase"]) for m in run] == [(m["dropped"], m["phase"]) for m in single]
        for mine, theirs in zip(run, single):
            assert (math.isnan(mine["angle"]) and math.isnan(theirs["angle"])) or abs(
                mine["angle"] - theirs["angle"]
            ) < 1e-3
            assert mine["lrs"] == theirs["lrs"]
