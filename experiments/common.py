"""What every study shares: its command line, Markdown tables, statistics and the report file."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from hf_autodrop import AutoDropConfig

__all__ = ["Study", "fmt", "markdown_table", "mean_std"]


def mean_std(values: Iterable[float], digits: int = 2, scale: float = 1.0) -> str:
    """`"mean ± std"` (sample std, ddof=1) of the finite values; notes how many were not finite."""
    vals = np.asarray([v * scale for v in values], dtype=np.float64)
    finite = vals[np.isfinite(vals)]
    if finite.size == 0:
        return "n/a"
    std = finite.std(ddof=1) if finite.size > 1 else 0.0
    text = f"{finite.mean():.{digits}f} ± {std:.{digits}f}"
    missing = vals.size - finite.size
    return text + (f" ({missing} n/a)" if missing else "")


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) >= 1e4 or abs(value) < 1e-3 else f"{value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Study:
    """The command line and report of one study: `python -m experiments.<name> [--quick]`.

    Parses `--quick`, `--out` (default `docs/results`), `--seeds` and `--workers`, keeps the exact
    command, times the run, sets torch's threads, and writes the Markdown report with the command, the
    machine and the wall time at the top.
    """

    def __init__(
        self,
        module: str,
        description: str,
        default_seeds: int = 5,
        argv: Sequence[str] | None = None,
        saves_runs: bool = False,
        extra_args: Callable[[argparse.ArgumentParser], None] | None = None,
    ):
        parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
        if extra_args is not None:
            extra_args(parser)
        parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (used by the tests)")
        parser.add_argument("--out", default=os.path.join("docs", "results"), help="where the report and plots go")
        parser.add_argument(
            "--seeds", type=int, default=None, help=f"number of seeds (default {default_seeds}, quick 1-2)"
        )
        parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (one torch thread each)")
        parser.add_argument(
            "--autodrop",
            type=json.loads,
            default={},
            metavar="JSON",
            help="AutoDropConfig fields that override the study's AutoDrop settings, e.g. '{\"threshold\": 0.5}'",
        )
        if saves_runs:
            parser.add_argument(
                "--report-only",
                action="store_true",
                help="rewrite the report and plots from the saved runs (<out>/<task>_runs.json.gz), no training",
            )
        argv = list(sys.argv[1:] if argv is None else argv)
        self.args = parser.parse_args(argv)
        self.command = shlex.join(["python", "-m", module, *argv])
        self.quick: bool = self.args.quick
        self.report_only: bool = getattr(self.args, "report_only", False)
        self.overrides: dict = dict(self.args.autodrop)
        self.out: str = self.args.out
        os.makedirs(self.out, exist_ok=True)
        self.start = time.time()

        import torch

        torch.set_num_threads(1)

    def config(self, **fields) -> AutoDropConfig:
        """The study's AutoDrop settings with the command line's `--autodrop` overrides applied."""
        return AutoDropConfig(**{**fields, **self.overrides})

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def save_figure(self, fig, name: str) -> str:
        """Save a matplotlib figure as `<out>/<name>` and close it; returns the file name."""
        import matplotlib.pyplot as plt

        fig.tight_layout()
        fig.savefig(self.path(name), dpi=110)
        plt.close(fig)
        return name

    def provenance(self) -> dict:
        """What produced the results: the command, its wall time, the machine and its load."""
        import torch

        return {
            "command": self.command,
            "minutes": round((time.time() - self.start) / 60, 1),
            "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), Python "
            f"{platform.python_version()}, torch {torch.__version__}",
            "workers": self.args.workers,
            "load_average_15min": round(os.getloadavg()[2], 1),
            "overrides": self.overrides,
        }

    def write_report(
        self, name: str, title: str, body: str, provenance: dict | None = None, rewritten: bool | None = None
    ) -> str:
        """Write `<out>/<name>` with the title, the exact command, the machine and the wall time.

        `provenance` (from the saved runs) describes the run that produced the numbers when the report is
        rewritten with `--report-only` (`rewritten`, by default whether `provenance` is given, says so).
        """
        p = provenance or self.provenance()
        if rewritten is None:
            rewritten = provenance is not None
        header = (
            f"# {title}\n\n"
            f"Produced by `{p['command']}` (from the repository root; `--quick` is a smoke run, not evidence) "
            f"in {p['minutes']:.1f} minutes of wall time on {p['machine']}, {p['workers']} worker process(es) with "
            f"1 torch thread each; the machine's 15-minute load average at the end was {p['load_average_15min']} "
            "(other jobs shared its cores)."
            + (f" AutoDrop overrides: `{json.dumps(p['overrides'])}`." if p["overrides"] else "")
            + (f" Report rewritten from the saved runs by `{self.command}`." if rewritten else "")
            + "\n\n"
        )
        path = self.path(name)
        with open(path, "w") as f:
            f.write(header + body.rstrip() + "\n")
        return path


def setup_matplotlib() -> None:
    import matplotlib

    matplotlib.use("Agg")
