"""Cost of one AutoDrop interval next to the cost of copying the parameters, measured side by side.

For models of 1 M, 10 M and 100 M float32 parameters (a stack of square Linear layers), prints
- step/clone: time of one `AutoDrop.step()` over the time of one `clone()` of every parameter:
  with the package's default test (dflt.; for this checkout the growth test, which keeps the anchor
  and takes one more reduction), and with the paper's test outside an averaging window (mon.) and
  inside one (avg.: one more running-average pass);
- state/params: AutoDrop's tensor bytes over the parameters' bytes, in those three cases.

With `--baseline DIR`, the `hf_autodrop` package found in DIR (e.g. an older checkout:
`git archive <rev> hf_autodrop | tar -x -C DIR`) is timed in the same run, interleaved with this one,
and its step/clone ratios are printed beside.

Absolute times drift on a shared machine; the ratios are measured in the same run, interleaved, and
every timed call starts with a cold cache (64 MiB written before it), so that a 1 M model's clone is not
timed from the cache while AutoDrop's buffers come from memory.

    python bench/overhead.py [--sizes 1e6 1e7 1e8] [--repeats 5] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch

import hf_autodrop


def _load_baseline(directory: str):
    """The `hf_autodrop` package of `directory`, imported as `hf_autodrop_baseline` (its imports are relative)."""
    init = os.path.join(directory, "hf_autodrop", "__init__.py")
    if not os.path.isfile(init):
        raise SystemExit(f"--baseline: {init} does not exist")
    spec = importlib.util.spec_from_file_location(
        "hf_autodrop_baseline", init, submodule_search_locations=[os.path.dirname(init)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["hf_autodrop_baseline"] = module
    spec.loader.exec_module(module)
    return module


def _model(n_params: int) -> torch.nn.Module:
    width = 1024 if n_params >= 10**7 else 256
    layers = max(1, round(n_params / (width * width + width)))
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])


_FLUSH = torch.empty(1 << 24)  # 64 MiB, twice the last-level cache of the machines this runs on


def _time(fn) -> float:
    """Seconds of one call, started with a cold cache (as after a training interval), for clone and step alike."""
    _FLUSH.fill_(1.0)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(n_params: int, repeats: int, packages: dict) -> dict:
    torch.manual_seed(0)
    model = _model(n_params)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    controllers = {}
    for name, package in packages.items():
        controllers[name, "default"] = package.AutoDrop(model, opt)  # a random walk grows like t: no trigger
        controllers[name, "monitor"] = package.AutoDrop(
            model, opt, detector="paper", threshold=1e-9, max_threshold=1e-9, drop_delay=10**6
        )  # random walk: no trigger
        controllers[name, "averaging"] = package.AutoDrop(
            model, opt, detector="paper", threshold=180.0, max_threshold=180.0, drop_delay=10**6
        )  # triggers at 3

    def nudge():  # a random displacement, like a training interval
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p), alpha=0.01)

    for ad in controllers.values():
        for _ in range(3):
            nudge()
            ad.step()
    assert all(ad.phase == {"default": "monitor"}.get(phase, phase) for (_, phase), ad in controllers.items())

    times = {key: [] for key in controllers}
    clone_t = []
    for _ in range(repeats):  # interleaved so that drift hits all alike
        clone_t.append(_time(lambda: [p.detach().clone() for p in params]))
        for key, ad in controllers.items():
            nudge()
            times[key].append(_time(ad.step))
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    clone_s = statistics.median(clone_t)
    out = {"params": sum(p.numel() for p in params), "clone_s": clone_s}
    for (name, phase), ad in controllers.items():
        out[name, phase] = statistics.median(times[name, phase]) / clone_s
        out[name, phase, "state"] = ad.state_nbytes() / param_bytes
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", metavar="DIR", help="also time the hf_autodrop package in DIR, interleaved")
    args = parser.parse_args()
    packages = {"this": hf_autodrop}
    if args.baseline:
        packages = {"baseline": _load_baseline(args.baseline), **packages}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    head = f"{'params':>12} {'clone (s)':>10}"
    sub = f"{'':>12} {'':>10}"
    for name in packages:
        head += f" {'step/clone':>12} {'step/clone':>12} {'step/clone':>12}"
        sub += f" {name + ' dflt.':>12} {name + ' mon.':>12} {name + ' avg.':>12}"
    print(head + f" {'state/params':>13} {'state/params':>13} {'state/params':>13}")
    print(sub + f" {'default':>13} {'monitor':>13} {'averaging':>13}")
    for size in args.sizes:
        r = measure(int(size), args.repeats, packages)
        line = f"{r['params']:>12,} {r['clone_s']:>10.4f}"
        for name in packages:
            line += f" {r[name, 'default']:>12.2f} {r[name, 'monitor']:>12.2f} {r[name, 'averaging']:>12.2f}"
        states = [r["this", phase, "state"] for phase in ("default", "monitor", "averaging")]
        print(line + "".join(f" {x:>13.2f}" for x in states))


if __name__ == "__main__":
    main()
