"""bench/gpu_all.sh, the one command a GPU session runs, end to end in its CPU smoke mode (DEVICE=cpu).

The smoke runs the same scripts, recipe and benches as on a GPU, with tiny sizes: a 64 + 32 image
synthetic uoft-cs/cifar10 in the Hub's schema, a narrow ResNet-18, 2 gloo processes, 2 epochs per
schedule. CUDA-only parts (nvidia-smi sampling, bf16, the Trainer's real FSDP2) cannot run here.
About 2-3 minutes on the shared 2-core machine: most of it is the start-up of ~10 Python processes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_tables  # noqa: E402

NUMBER = re.compile(r"^-?[0-9][0-9,]*(\.[0-9]+)?%?$")


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The markdown tables in `text`, keyed by the `### name` heading above them (several tables: name, name#2)."""
    found: dict[str, list[dict[str, str]]] = {}
    heading, lines = None, text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("### "):
            heading = line[4:].split(":")[0]
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("| "):
                rows.append(dict(zip(header, (c.strip() for c in lines[i].strip("|").split("|")))))
                i += 1
            key = heading if heading not in found else f"{heading}#2"
            found[key] = rows
            continue
        i += 1
    return found


def is_number(cell: str) -> bool:
    return bool(NUMBER.match(cell))


def test_gpu_budgets_fit_in_ten_minutes():
    out = subprocess.run(["bash", str(ROOT / "bench/gpu_all.sh"), "--budgets"], capture_output=True, text=True)
    budgets = dict(line.split() for line in out.stdout.splitlines())
    assert out.returncode == 0 and set(budgets) == {"setup", "cifar_epoch", "distributed", "table1", "total"}
    total = sum(int(v) for k, v in budgets.items() if k != "total")
    assert total == int(budgets["total"]) <= 570  # 30 s or more left for printing, under 600 s


def test_table1_from_the_progress_log_of_a_run_cut_short(tmp_path):
    """A schedule stopped at its budget has no results.json; its table row comes from the progress log."""
    (tmp_path / "multistep.progress.log").write_text(
        "[multistep] epoch 1.0: test error 80.00% | epoch time 20.0 s | elapsed 20 s\n"
        "[multistep] epoch 2.0: test error 60.00% | epoch time 6.0 s | elapsed 26 s\n"
        "[multistep] epoch 3.0: test error 70.00% | epoch time 8.0 s | elapsed 34 s\n"
    )
    rows = tables("### t\n" + gpu_tables.table1(tmp_path))["t"]
    cut, failed = rows
    assert cut["final test error (%)"] == "70.00" and cut["best (%)"] == "60.00" and cut["best epoch"] == "2.0"
    assert cut["epochs"] == "3" and cut["s/epoch"] == "7.0" and cut["run"].startswith("cut short")
    assert failed["schedule"] == "autodrop" and failed["run"].startswith("failed")


@pytest.mark.timeout(480)
def test_gpu_all_cpu_smoke(tmp_path):
    out = tmp_path / "gpu_all"
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "PYTHON": sys.executable,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "bench/gpu_all.sh"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=460,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    printed = proc.stdout
    # The tables are printed and written to tables.md; every part says ok with its seconds.
    assert (out / "tables.md").read_text().strip() in printed
    for part in ("setup", "cifar_epoch", "distributed", "table1"):
        assert re.search(rf"^{part}: ok \(\d+s of \d+s, exit 0\)$", printed, re.M), part
        assert (out / f"{part}.log").stat().st_size > 0
    found = tables(printed[printed.index("######## tables") :])

    (epoch,) = found["cifar_epoch"]
    assert epoch["device"] == "cpu" and epoch["train images"] == "64" and epoch["batch"] == "16"
    assert is_number(epoch["epoch wall time (s)"]) and is_number(epoch["images/s"])
    assert float(epoch["epoch wall time (s)"]) > 0 and epoch["GPU busy fraction"] == "-"  # no nvidia-smi on CPU

    trainer = {r["run"]: r for r in found["distributed"]}
    assert set(trainer) == {"ddp", "fsdp2-offload"}  # on CPU the Trainer's fsdp2 is DDP: run once, with offload
    for name, row in trainer.items():
        assert row["processes"] == "2" and row["intervals"] == "6", row
        ad_median, ad_max = row["AutoDrop ms per interval (median / max)"].split(" / ")
        assert is_number(ad_median) and is_number(ad_max) and is_number(row["epoch ms (median)"])
        assert is_number(row["overhead (median)"]) and " -> " in row["angle, first -> last (deg)"]
        assert row["offload_to_cpu"] == str(name.endswith("offload"))
    cost = {r["engine (AutoDrop's)"]: r for r in found["distributed#2"]}
    assert set(cost) == {"replicated (DDP)", "FSDP2 (DTensor)"}
    assert cost["replicated (DDP)"]["bytes sent per interval"] == "0"
    assert cost["FSDP2 (DTensor)"]["bytes sent per interval"] == "24"  # one all-reduce of 3 float64
    for row in cost.values():
        for column in ("reduction ms", "training step ms", "AutoDrop.step() ms, snapshots on device"):
            assert is_number(row[column]), (column, row)
        assert is_number(row["AutoDrop.step() ms, offload_to_cpu"])

    schedules = {r["schedule"]: r for r in found["table1"]}
    assert set(schedules) == {"multistep", "autodrop"}
    for row in schedules.values():
        assert row["run"] == "finished" and row["epochs"] == "2", row
        assert is_number(row["final test error (%)"]) and is_number(row["best (%)"]) and is_number(row["s/epoch"])
    # 2 epochs: the baseline's milestones at 30/60/80% round to epochs 1, 1 and 2, all reached.
    assert schedules["multistep"]["drops (epochs)"] == "3 (1.0, 1.0, 2.0)"
    results = json.loads((out / "table1" / "autodrop-seed0" / "results.json").read_text())
    assert results["config"]["autodrop"]["interval_steps"] == 1  # ceil(2 epochs x 4 steps / 200)
    assert [p["part"] for p in found["parts"]] == ["setup", "cifar_epoch", "distributed", "table1"]
    assert {p["status"] for p in found["parts"]} == {"ok"}
