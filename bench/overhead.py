"""Cost of one AutoDrop interval next to the cost of copying the parameters, measured side by side.

For models of 1 M, 10 M and 100 M float32 parameters (a stack of square Linear layers), prints
- step/clone: time of one `AutoDrop.step()` over the time of one `clone()` of every parameter:
  with the default growth test (monitoring: it keeps the anchor and takes one more float64 reduction),
  and with the paper's test outside an averaging window (monitor) and inside one (averaging: one more
  running-average pass);
- state/params: AutoDrop's tensor bytes over the parameters' bytes, in those three cases.

Absolute times drift on a shared machine; the ratios are measured in the same run, interleaved.

    python bench/overhead.py [--sizes 1e6 1e7 1e8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_autodrop import AutoDrop


def _model(n_params: int) -> torch.nn.Module:
    width = 1024 if n_params >= 10**7 else 256
    layers = max(1, round(n_params / (width * width + width)))
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(n_params: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = _model(n_params)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    monitor = AutoDrop(
        model, opt, detector="paper", threshold=1e-9, max_threshold=1e-9, drop_delay=10**6
    )  # random walk: no trigger
    averaging = AutoDrop(
        model, opt, detector="paper", threshold=180.0, max_threshold=180.0, drop_delay=10**6
    )  # triggers at 3

    def nudge():  # a random displacement, like a training interval
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p), alpha=0.01)

    growth = AutoDrop(model, opt)  # the default; a random walk grows like t: no trigger
    for ad in (growth, monitor, averaging):
        for _ in range(3):
            nudge()
            ad.step()
    assert monitor.phase == "monitor" and averaging.phase == "averaging" and growth.phase == "monitor"

    clone_t, growth_t, monitor_t, averaging_t = [], [], [], []
    for _ in range(repeats):  # interleaved so that drift hits all four alike
        clone_t.append(_time(lambda: [p.detach().clone() for p in params], 1))
        nudge()
        growth_t.append(_time(growth.step, 1))
        nudge()
        monitor_t.append(_time(monitor.step, 1))
        nudge()
        averaging_t.append(_time(averaging.step, 1))
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    return {
        "params": sum(p.numel() for p in params),
        "clone_s": statistics.median(clone_t),
        "growth_ratio": statistics.median(growth_t) / statistics.median(clone_t),
        "monitor_ratio": statistics.median(monitor_t) / statistics.median(clone_t),
        "averaging_ratio": statistics.median(averaging_t) / statistics.median(clone_t),
        "growth_state": growth.state_nbytes() / param_bytes,
        "monitor_state": monitor.state_nbytes() / param_bytes,
        "averaging_state": averaging.state_nbytes() / param_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print(f"{'params':>12} {'clone (s)':>10} {'step/clone':>36} {'state/params':>36}")
    cases = f"{'growth':>11} {'paper mon.':>11} {'paper avg.':>11}"
    print(f"{'':>12} {'':>10} {cases:>36} {cases:>36}")
    for size in args.sizes:
        r = measure(int(size), args.repeats)
        print(
            f"{r['params']:>12,} {r['clone_s']:>10.4f} {r['growth_ratio']:>13.2f} {r['monitor_ratio']:>11.2f} "
            f"{r['averaging_ratio']:>11.2f} {r['growth_state']:>13.2f} {r['monitor_state']:>11.2f} "
            f"{r['averaging_state']:>11.2f}"
        )


if __name__ == "__main__":
    main()
