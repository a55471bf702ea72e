"""What one interval step costs on a small model, part by part, against one training step of that model.

The model and batch are bench/trainer_cost.py's (a tiny GPT-2, 118,528 parameters in 28 tensors, batch 8 x
32 tokens, AdamW). Timed in this process in CPU time, one thread, best of `--repeats` rounds (the machine is noisy;
the best round is the least disturbed): one training step, `AutoDrop.step()` at the growth test's default, the
fused pass inside it (`FlatCopy.advance`), and the torch operations that pass is made of. Each part is
printed with its share of the training step: the parts' shares are what the interval step costs at an
interval of one optimizer step, the floor `bench/trainer_cost.py` measures end to end.

    OMP_NUM_THREADS=1 python bench/interval_floor.py --repeats 5
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import timeit
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_cost import N_PARAMS, N_TENSORS  # noqa: E402


def build(seq: int = 32, batch: int = 8):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=seq, n_embd=64, n_layer=2, n_head=2))
    params = list(model.parameters())
    assert (sum(p.numel() for p in params), len(params)) == (N_PARAMS, N_TENSORS)
    tokens = torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(0))
    return model, params, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--number", type=int, default=200, help="calls per timed round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)

    from hf_autodrop import AutoDrop

    model, params, tokens = build()
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    def train_step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    autodrop = AutoDrop(model, optimizer, horizon=10**9)  # for the fused pass's parts: no decay
    for _ in range(20):  # past the first intervals (an anchor, a window of samples)
        train_step()
        autodrop.step()
    detached = [p.detach() for p in params]
    n = sum(p.numel() for p in detached)
    flat, spare, anchor, product = (torch.zeros(n) for _ in range(4))
    views, o = [], 0
    for p in detached:
        views.append(flat[o : o + p.numel()].view_as(p))
        o += p.numel()
    blocks = n // 1024
    block_sums = torch.zeros(blocks)

    def advance():
        autodrop._measure(autodrop._shards.tensors())
        autodrop._test.samples.pop()  # keep the window as it was: the timed calls are no intervals
        autodrop._test._log_s.pop()
        autodrop._test._log_d.pop()

    def run(intervals: int, with_autodrop: bool) -> float:
        """A whole run at the automatic interval's count (300 intervals): its CPU time (AutoDrop built before)."""
        ad = AutoDrop(model, optimizer, horizon=intervals) if with_autodrop else None
        start = time.process_time()
        for _ in range(intervals):
            train_step()
            if ad is not None:
                ad.step()
        return time.process_time() - start

    def per_interval() -> float:
        # Interleaved runs with and without, the least disturbed of each (CPU time of this process, which other
        # processes disturb less than the wall time): the mean cost of one interval step after a real optimizer
        # step, over a run of 300 (the growth test's fits over its window and the decay over the last fifth).
        pairs = [(run(300, False), run(300, True)) for _ in range(args.repeats)]
        return (min(w for _, w in pairs) - min(wo for wo, _ in pairs)) / 300

    def best(fn):
        return min(timeit.repeat(fn, timer=time.process_time, number=args.number, repeat=args.repeats)) / args.number

    step_s = best(train_step)
    rows = [
        ("one training step (forward, backward, AdamW)", step_s),
        ("AutoDrop.step(), the mean over a run of 300 intervals", per_interval()),
        ("its fused pass (FlatCopy.advance and the fit's sample)", best(advance)),
        ("_foreach_sub_ (28 tensors into the flat buffer)", best(lambda: torch._foreach_sub_(views, detached))),
        ("_foreach_copy_ (28 tensors into the spare buffer)", best(lambda: torch._foreach_copy_(views, detached))),
        ("one product (torch.mul, out=)", best(lambda: torch.mul(flat, spare, out=product))),
        (
            "one block sum (torch.sum over 1024-blocks)",
            best(lambda: torch.sum(product[: blocks * 1024].view(blocks, 1024), 1, out=block_sums)),
        ),
        ("x - anchor (a difference, allocated)", best(lambda: spare - anchor)),
    ]
    print(
        f"tiny GPT-2, {N_PARAMS:,} parameters in {N_TENSORS} tensors, 1 thread, best of {args.repeats} x {args.number}"
    )
    print("| part | time (us) | share of a training step |")
    print("| --- | ---: | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {1e6 * seconds:.0f} | {seconds / step_s:.1%} |")


if __name__ == "__main__":
    main()
