#!/usr/bin/env python
"""Turn several runs' `results.json` into the layout of the paper's Table 1 (mean +- std over seeds).

Usage:
    python recipes/aggregate.py out/                      # every results.json below out/, Markdown table
    python recipes/aggregate.py out/ --format json        # the same numbers as JSON
    python recipes/aggregate.py a/results.json b/results.json --output table.md

Runs are grouped by recipe, schedule and drop factor. The std is the sample standard deviation
(ddof = 1) of the final test errors, so it is empty for a single run; the paper does not say which
it used. A run written twice (its output folder and its `model/` copy) counts once.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

# Table 1's row order.
RECIPE_ORDER = ["cifar10_resnet18", "cifar10_wrn28_10", "cifar100_resnet34", "cifar100_wrn40_10", "imagenet_resnet18"]


def find_results(paths: list[str]) -> list[Path]:
    """Every results.json named, or found below the folders named."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("results.json")) if p.is_dir() else [p])
    return files


def load_runs(files: list[Path]) -> list[dict]:
    runs, seen = [], set()
    for f in files:
        r = json.loads(f.read_text())
        if r.get("final_test_error") is None:
            continue
        run_id = ((r.get("config") or {}).get("training") or {}).get("output_dir") or str(f.parent)
        if run_id in seen:
            continue
        seen.add(run_id)
        runs.append(r)
    return runs


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(runs: list[dict]) -> list[dict]:
    """One row per (recipe, schedule, drop factor): our mean/std of the final error beside the paper's."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["recipe"], r["schedule"], float(r["drop_factor"])), []).append(r)

    def order(key):
        recipe, schedule, rho = key
        rank = RECIPE_ORDER.index(recipe) if recipe in RECIPE_ORDER else len(RECIPE_ORDER)
        return rank, recipe, schedule != "multistep", rho

    rows = []
    for key in sorted(groups, key=order):
        recipe, schedule, rho = key
        group = sorted(groups[key], key=lambda r: r["seed"])
        mean, std = _mean_std([r["final_test_error"] for r in group])
        best_epochs = [r["best_epoch"] for r in group if r.get("best_epoch") is not None]
        paper = (group[0].get("paper") or {}).get("value")
        rows.append(
            {
                "recipe": recipe,
                "title": group[0]["title"],
                "schedule": schedule,
                "drop_factor": rho,
                "method": ("AutoDrop" if schedule == "autodrop" else "Baseline (multistep)") + f" (rho = {rho:g})",
                "seeds": [r["seed"] for r in group],
                "final_test_error_mean": mean,
                "final_test_error_std": std,
                "final_test_errors": [r["final_test_error"] for r in group],
                "best_epoch_mean": statistics.fmean(best_epochs) if best_epochs else None,
                "drop_epochs": [r.get("drop_epochs", []) for r in group],
                "paper_mean": paper[0] if paper else None,
                "paper_std": paper[1] if paper else None,
            }
        )
    return rows


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| Model, data | Method | Test error [%], ours | Test error [%], paper | Seeds | Best epoch (mean) | Drop epochs |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    previous = None
    for r in rows:
        title = r["title"] if r["title"] != previous else ""
        previous = r["title"]
        drops = "; ".join(",".join(f"{e:g}" for e in d) or "none" for d in r["drop_epochs"])
        best = f"{r['best_epoch_mean']:.0f}" if r["best_epoch_mean"] is not None else "n/a"
        lines.append(
            f"| {title} | {r['method']} | {_pm(r['final_test_error_mean'], r['final_test_error_std'])} | "
            f"{_pm(r['paper_mean'], r['paper_std'])} | {len(r['seeds'])} | {best} | {drops} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="results.json files or folders to search")
    parser.add_argument("--format", choices=["markdown", "json"], default="markdown")
    parser.add_argument("--output", help="write here instead of printing")
    args = parser.parse_args(argv)
    rows = aggregate(load_runs(find_results(args.paths)))
    if not rows:
        parser.error(f"no finished run (results.json with a final test error) under {args.paths}")
    text = to_markdown(rows) if args.format == "markdown" else json.dumps(rows, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return text


if __name__ == "__main__":
    main()
