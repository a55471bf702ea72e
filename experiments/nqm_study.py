"""The paper's noisy quadratic model study: Figure 1, Theorem 1 and Figure 3, and when the rule fires.

    python -m experiments.nqm_study            # the evidence (about 3 minutes on 2 cores)
    python -m experiments.nqm_study --quick    # a smoke run (seconds)
    python -m experiments.nqm_study --autodrop '{"threshold": 0.5}'   # other AutoDrop settings

Writes `nqm.md` and `nqm_*.png` into `--out` (default `docs/results`).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from .common import Study, fmt, markdown_table, mean_std, setup_matplotlib
from .nqm import NOISE_MODELS, block_mean, paper_curvature, simulate, steady_state_angle, steady_state_loss

FIXED_LRS = (0.06, 0.03, 0.01, 0.001)
AUTODROP_LR, MIN_LR, DROP_FACTOR = 0.06, 0.001, 0.5
# Figure 3's AutoDrop: the paper's test and threshold, one interval per iteration.
FIGURE3_AUTODROP = dict(
    detector="paper", threshold=0.01, max_threshold=1.0, drop_factor=DROP_FACTOR, min_lr=MIN_LR, drop_delay=20
)
NOISES = ("identity", "inverse_curvature")
THEOREM_NOISES = ("identity", "inverse_curvature", "curvature")
SIGMA_TEXT = {
    "identity": "Sigma = I",
    "inverse_curvature": "Sigma = A^-1 (gradient noise covariance A, as in Zhang et al. 2019b)",
    "curvature": "Sigma = A",
}


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each index (NaN for the first window - 1)."""
    out = np.full(len(values), np.nan)
    if len(values) >= window:
        c = np.cumsum(np.insert(values, 0, 0.0))
        out[window - 1 :] = (c[window:] - c[:-window]) / window
    return out


def first_at_or_below(values: np.ndarray, target: float, window: int = 100) -> float:
    """First iteration (1-based) whose `window`-iteration running mean of `values` is <= target."""
    hits = np.nonzero(running_mean(values, window) <= target)[0]
    return float(hits[0] + 1) if hits.size else math.nan


def saturation_iteration(angles: np.ndarray, level: float, tol: float = 1.0, block: int = 500) -> float:
    """First iteration after which every `block`-iteration mean angle stays within `tol` degrees of `level`."""
    ends, means = block_mean(angles, block)
    outside = np.nonzero(~(np.abs(means - level) <= tol))[0]
    if outside.size == 0:
        return float(ends[0])
    if outside[-1] + 1 >= len(ends):
        return math.nan
    return float(ends[outside[-1] + 1])


def paper_smoothed_rule_fires(angles: np.ndarray, threshold: float = 0.01, window: int = 20) -> float:
    """First iteration where the paper's NQM rule (Section 3) would fire: the change between two
    consecutive 20-iteration running means of the angle is below `threshold` degrees."""
    smooth = running_mean(np.nan_to_num(angles, nan=90.0), window)
    change = np.abs(np.diff(smooth))
    hits = np.nonzero(change < threshold)[0]
    return float(hits[0] + 2) if hits.size else math.nan


def main(argv=None) -> str:
    study = Study("experiments.nqm_study", __doc__.splitlines()[0], default_seeds=5, argv=argv)
    setup_matplotlib()
    import matplotlib.pyplot as plt

    quick = study.quick
    seeds = list(range(study.args.seeds or (1 if quick else 5)))
    steps = 3000 if quick else 20000
    theorem_steps = 4000 if quick else 40000
    a = paper_curvature()
    noises = NOISES[:1] if quick else NOISES
    autodrop_variants = {
        "AutoDrop (n_d=20, spec default)": study.config(**FIGURE3_AUTODROP),
        "AutoDrop (n_d=0, no averaging)": study.config(**{**FIGURE3_AUTODROP, "drop_delay": 0}),
    }
    sections = []

    # ---------------------------------------------------------------- Theorem 1
    rows = []
    theorem_noises = THEOREM_NOISES[:1] if quick else THEOREM_NOISES
    theorem_seeds = seeds[:2]
    for noise in theorem_noises:
        v = NOISE_MODELS[noise](a)
        for lr in FIXED_LRS:
            runs = [simulate(lr, theorem_steps, a, v, seed=s) for s in theorem_seeds]
            tail = np.concatenate([r.angles[theorem_steps // 2 :] for r in runs])
            measured = float(np.nanmean(tail))
            measured_cos = math.degrees(math.acos(float(np.nanmean(np.cos(np.radians(tail))))))
            predicted = steady_state_angle(lr, a, v)
            loss = float(np.mean([r.losses[theorem_steps // 2 :].mean() for r in runs]))
            sat = [saturation_iteration(r.angles, predicted) for r in runs]
            rows.append(
                [
                    SIGMA_TEXT[noise].split(" (")[0],
                    lr,
                    f"{predicted:.3f}",
                    f"{measured:.3f}",
                    f"{measured - predicted:+.3f}",
                    f"{measured_cos:.3f}",
                    f"{np.nanstd(tail):.2f}",
                    fmt(steady_state_loss(lr, a, v)),
                    fmt(loss),
                    mean_std(sat, 0),
                ]
            )
    sections.append(
        "## Theorem 1: the steady-state angle\n\n"
        f"Gradient descent on the paper's NQM (dimension 200, A = diag(1/10, ..., 200/10), x_0 = 10 in every "
        f"coordinate), {theorem_steps} iterations, {len(theorem_seeds)} seed(s); the measured angle is the mean "
        f"per-iteration angle between consecutive steps over the second half of the run. The closed form is the "
        f"paper's eq. (6) with sigma_i^2 the i-th diagonal entry of Sigma: "
        f"cos = -(lr/2) sum(a^3 s/(2 - lr a)) / sum(a^2 s/(2 - lr a)). The paper does not give Sigma, so three "
        f"noise models are used: {'; '.join(SIGMA_TEXT[n] for n in theorem_noises)}. "
        "'arccos(mean cos)' is the quantity eq. (6) approximates; the stationary loss 1/2 x^T A x is checked "
        "against its closed form 1/2 sum(lr a^2 s / (2 - lr a)) too. 'Saturated at' is the first iteration after "
        "which every 500-iteration mean of the angle stays within 1 degree of the closed form.\n\n"
        + markdown_table(
            [
                "Sigma",
                "lr",
                "closed form (deg)",
                "measured mean (deg)",
                "difference",
                "arccos(mean cos)",
                "per-iteration std (deg)",
                "stationary loss, closed form",
                "measured",
                "saturated at (iteration)",
            ],
            rows,
        )
    )

    # ---------------------------------------------------------------- Figure 1 and Figure 3 runs
    results: dict[str, dict[str, list]] = {}
    for noise in noises:
        v = NOISE_MODELS[noise](a)
        per = results[noise] = {}
        for lr in FIXED_LRS:
            per[f"fixed lr {lr}"] = [simulate(lr, steps, a, v, seed=s) for s in seeds]
        for name, cfg in autodrop_variants.items():
            per[name] = [simulate(AUTODROP_LR, steps, a, v, seed=s, autodrop=cfg) for s in seeds]

    fig, axes = plt.subplots(len(noises), 2, figsize=(11, 3.6 * len(noises)), squeeze=False)
    for row, noise in enumerate(noises):
        for lr in FIXED_LRS:
            run = results[noise][f"fixed lr {lr}"][0]
            it = np.arange(1, steps + 1)
            axes[row, 0].semilogy(it, run.losses, lw=0.8, label=f"lr {lr}")
            ends, means = block_mean(run.angles, 20)
            axes[row, 1].plot(ends, means, lw=0.8, label=f"lr {lr}")
            axes[row, 1].axhline(steady_state_angle(lr, a, NOISE_MODELS[noise](a)), color="k", lw=0.5, ls=":")
        axes[row, 0].set(
            title=f"loss, {SIGMA_TEXT[noise].split(' (')[0]}", xlabel="iteration", ylabel="1/2 x^T A x", xscale="log"
        )
        axes[row, 1].set(
            title="angle, 20-iteration means (dotted: Theorem 1)", xlabel="iteration", ylabel="degrees", xscale="log"
        )
        axes[row, 0].legend()
        axes[row, 1].legend()
    fig1 = study.save_figure(fig, "nqm_figure1.png")

    fig, axes = plt.subplots(len(noises), 3, figsize=(15, 3.6 * len(noises)), squeeze=False)
    for row, noise in enumerate(noises):
        it = np.arange(1, steps + 1)
        for name, runs in results[noise].items():
            run = runs[0]
            style = dict(lw=1.2) if name.startswith("AutoDrop") else dict(lw=0.7, alpha=0.7)
            axes[row, 0].semilogy(it, running_mean(run.losses, 20), label=name, **style)
            axes[row, 1].semilogy(it, run.lrs, label=name, **style)
            if name.startswith("AutoDrop"):
                ends, means = block_mean(run.angles, 20)
                axes[row, 2].plot(ends, means, lw=0.8, label=name)
                for d in run.drops[:12]:
                    axes[row, 2].axvline(d, color="r", lw=0.3, alpha=0.5)
        sigma = SIGMA_TEXT[noise].split(" (")[0]
        axes[row, 0].set(title=f"loss (20-iteration mean), {sigma}, seed 0", xlabel="iteration")
        axes[row, 1].set(title="learning rate", xlabel="iteration")
        axes[row, 2].set(
            title="AutoDrop: 20-iteration mean angle (red: first drops)", xlabel="iteration", ylabel="degrees"
        )
        axes[row, 0].legend(fontsize=7)
        axes[row, 2].legend(fontsize=7)
    fig3 = study.save_figure(fig, "nqm_figure3.png")

    fig3_rows = []
    firing_rows = []
    change_rows = []
    for noise in noises:
        v = NOISE_MODELS[noise](a)
        target = 1.1 * steady_state_loss(MIN_LR, a, v)
        sigma = SIGMA_TEXT[noise].split(" (")[0]
        for name, runs in results[noise].items():
            finals = [float(r.losses[-1000:].mean()) for r in runs]
            reach = [first_at_or_below(r.losses, target) for r in runs]
            own = [first_at_or_below(r.losses, 1.1 * f) for r, f in zip(runs, finals)]
            floor = [
                float(np.nonzero(r.lrs <= MIN_LR * (1 + 1e-9))[0][0] + 1)
                if np.any(r.lrs <= MIN_LR * (1 + 1e-9))
                else math.nan
                for r in runs
            ]
            fig3_rows.append(
                [
                    sigma,
                    name,
                    mean_std(finals, 3),
                    mean_std(own, 0),
                    f"{mean_std(reach, 0)}" if not all(math.isnan(x) for x in reach) else "never",
                    mean_std(floor, 0) if name.startswith("AutoDrop") else "",
                ]
            )
            if name.startswith("AutoDrop"):
                first = [r.triggers[0] if r.triggers else math.nan for r in runs]
                drops = [len(r.drops) for r in runs]
                firing_rows.append(
                    [
                        sigma,
                        name,
                        f"{sum(bool(r.triggers) for r in runs)}/{len(runs)}",
                        mean_std(first, 0),
                        f"{min(first):.0f}-{max(first):.0f}",
                        mean_std(drops, 1),
                    ]
                )
                ch = np.concatenate([[m.angle_change for m in r.measurements] for r in runs])
                ch = ch[np.isfinite(ch)]
                change_rows.append(
                    [sigma, name, *(f"{q:.3g}" for q in np.percentile(ch, [5, 50, 95])), f"{np.mean(ch < 0.01):.4f}"]
                )
        # When the paper's own smoothed NQM rule and our per-iteration rule would fire at a fixed lr.
        for lr in FIXED_LRS:
            runs = results[noise][f"fixed lr {lr}"]
            raw = [np.abs(np.diff(r.angles)) for r in runs]
            first_raw = [float(np.nonzero(c < 0.01)[0][0] + 2) if np.any(c < 0.01) else math.nan for c in raw]
            first_smooth = [paper_smoothed_rule_fires(r.angles) for r in runs]
            sat = [saturation_iteration(r.angles, steady_state_angle(lr, a, v)) for r in runs]
            firing_rows.append(
                [
                    sigma,
                    f"fixed lr {lr} (dry measurement)",
                    "-",
                    mean_std(first_raw, 0),
                    f"smoothed rule: {mean_std(first_smooth, 0)}",
                    f"angle saturates at {mean_std(sat, 0)}",
                ]
            )
            allc = np.concatenate([c[np.isfinite(c)] for c in raw])
            change_rows.append(
                [
                    sigma,
                    f"fixed lr {lr}",
                    *(f"{q:.3g}" for q in np.percentile(allc, [5, 50, 95])),
                    f"{np.mean(allc < 0.01):.4f}",
                ]
            )

    sections.append(
        "## Figure 1: loss and angle at fixed learning rates\n\n"
        f"![Figure 1]({fig1})\n\n"
        f"Seed 0, {steps} iterations, x_0 = 10 (log iteration axis). Property P1 (the angle saturates as the loss flattens) and P2 "
        "(larger lr, higher saturation level between 90 and 120 degrees; the smallest lr saturates at about 90 "
        "degrees and converges lowest) are visible; the dotted lines are Theorem 1's levels."
    )
    sections.append(
        "## Figure 3: AutoDrop drives the learning rate on the NQM\n\n"
        f"![Figure 3]({fig3})\n\n"
        f"The public `AutoDrop` controller on a torch parameter with `torch.optim.SGD`, one interval per iteration, "
        f"initial lr {AUTODROP_LR}, `min_lr={MIN_LR}`, `drop_factor={DROP_FACTOR}`, the paper's threshold 0.01 deg "
        f"(growing to 1.0 deg), against each fixed lr; {len(seeds)} seed(s), {steps} iterations. "
        f"'Final loss' is the mean of 1/2 x^T A x over the last 1000 iterations; the target is 1.1 x the stationary "
        f"loss of the smallest lr ({MIN_LR}); iterations are counted on a 100-iteration running mean of the loss.\n\n"
        + markdown_table(
            [
                "Sigma",
                "method",
                "final loss",
                "iterations to 1.1 x own final loss",
                f"iterations to 1.1 x stationary loss of lr {MIN_LR}",
                "iteration the lr reached its floor",
            ],
            fig3_rows,
        )
    )
    sections.append(
        "## When does the paper's rule fire on the NQM? (issue 5 item 5)\n\n"
        "For the AutoDrop runs: how many runs triggered, the first trigger iteration and the number of drops "
        "(the spec keeps averaging at the floor: with the threshold at its 1 deg cap, a 'drop' that only averages "
        "follows about every n_d + 3 iterations, and they are counted). For the fixed-lr runs, measured without changing anything: "
        "the first iteration where abs(omega_t - omega_(t-1)) < 0.01 deg for the per-iteration angle (what the "
        "controller tests with one interval per iteration), the first iteration where the paper's Section 3 rule "
        "(the change between consecutive 20-iteration running means of the angle below 0.01 deg) fires, and when "
        "the angle actually saturates (as in the Theorem 1 table).\n\n"
        + markdown_table(
            [
                "Sigma",
                "run",
                "runs that fired",
                "first trigger (iteration)",
                "range / smoothed rule",
                "drops / saturation",
            ],
            firing_rows,
        )
        + "\n\nThe measured |omega_t - omega_(t-1)| (degrees) per interval of one iteration, all iterations of all "
        "seeds (the AutoDrop rows count only the controller's defined measurements):\n\n"
        + markdown_table(
            ["Sigma", "run", "5th percentile", "median", "95th percentile", "fraction < 0.01 deg"], change_rows
        )
    )
    body = "\n\n".join(sections)
    return study.write_report("nqm.md", "Noisy quadratic model: Figure 1, Theorem 1, Figure 3", body)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
