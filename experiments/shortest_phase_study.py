"""The shortest phase a saturation drop may end, as a multiple of the final segment, on the NQM.

    python -m experiments.shortest_phase_study            # the table in docs/how-it-decides.md
    python -m experiments.shortest_phase_study --seeds 1  # quicker

In a run of known length no drop triggers before `SHORTEST_PHASE x cooldown_fraction` of the run has passed
since the start or the last drop (`hf_autodrop.detectors.cooldown`). This study runs AutoDrop's defaults on
the paper's noisy quadratic model (200 dimensions, lr 0.06, identity and 1/curvature gradient noise) at two
lengths, with that multiple at 0 (no floor), 1/4, 1/2 and 1, and prints the final loss (the mean of the
last 50 steps, mean over seeds) and the drops per run, beside WSD (1 - sqrt to 0 over the last 20 % of the
same constant lr, same seeds).
"""

from __future__ import annotations

import argparse

import numpy as np

from hf_autodrop import AutoDropConfig
from hf_autodrop.detectors import cooldown

from .nqm import NOISE_MODELS, paper_curvature, simulate

MULTIPLES = (0.0, 0.25, 0.5, 1.0)
LENGTHS = (2000, 20000)
LR = 0.06


def wsd(steps: int, fraction: float = 0.2):
    """The lr of transformers' `warmup_stable_decay` (no warm-up, 1 - sqrt to 0 over the last `fraction`) at
    each 0-based step: the scheduler's own multiplier, as the Trainer applies it."""
    import torch
    from transformers.optimization import get_wsd_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    schedule = get_wsd_schedule(optimizer, 0, round(fraction * steps), num_training_steps=steps, decay_type="1-sqrt")
    return lambda t: LR * schedule.lr_lambdas[0](t)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one seed, 600 and 1200 steps (a smoke run)")
    args = parser.parse_args(argv)
    seeds, lengths = (1, (600, 1200)) if args.quick else (args.seeds, LENGTHS)
    curvature = paper_curvature()
    chosen = cooldown.SHORTEST_PHASE
    lines = [
        f"| NQM, final loss (drops per run) | {' | '.join(f'{m:g} x segment' for m in MULTIPLES)} | WSD |",
        f"| --- |{' --- |' * (len(MULTIPLES) + 1)}",
    ]
    print("\n".join(lines), flush=True)
    try:
        for noise in ("identity", "inverse_curvature"):
            noise_var = NOISE_MODELS[noise](curvature)
            for steps in lengths:
                cells = []
                for multiple in MULTIPLES:
                    cooldown.SHORTEST_PHASE = multiple
                    finals, drops = [], []
                    for seed in range(seeds):
                        config = AutoDropConfig(interval_steps=max(1, steps // 300))
                        run = simulate(LR, steps, curvature, noise_var, seed, autodrop=config)
                        finals.append(float(np.mean(run.losses[-50:])))
                        drops.append(sum(m.dropped for m in run.measurements))
                    cells.append(f"{np.mean(finals):.3g} ({np.mean(drops):.2g})")
                wsd_final = [
                    float(np.mean(simulate(wsd(steps), steps, curvature, noise_var, seed).losses[-50:]))
                    for seed in range(seeds)
                ]
                lines.append(f"| {noise} noise, {steps} steps | {' | '.join(cells)} | {np.mean(wsd_final):.3g} |")
                print(lines[-1], flush=True)
    finally:
        cooldown.SHORTEST_PHASE = chosen
    return "\n".join(lines)


if __name__ == "__main__":
    main()
