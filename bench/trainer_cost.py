"""AutoDrop's cost end to end: a tiny GPT-2 trained through the Trainer with and without `AutoDropCallback()`.

Both arms run in this process, interleaved (without, with, without, with, ...), `--repeats` times per run
length; the table gives the medians of the wall time of `trainer.train()` and their ratio. The callback runs
at its defaults (the growth test, the automatic interval: `max_steps // 300` optimizer steps, so one step
for runs under 600 steps), with the Trainer's default logging cadence; checkpoints are off in both arms.
Peak memory: each arm once more in a fresh child process per run length, whose peak resident set size
(`ru_maxrss`) covers the whole process (Python, torch, transformers, the model, the data and AutoDrop).

Offline: the model is built from a config and the tokens are generated. One thread (set
`OMP_NUM_THREADS=1`). E.g.:
    OMP_NUM_THREADS=1 python bench/trainer_cost.py --steps 250 1000 3000 --repeats 4
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import resource
import statistics
import tempfile
import time

import torch


def make_trainer(steps: int, with_autodrop: bool, output_dir: str, batch: int, seq: int):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from hf_autodrop import AutoDropCallback

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=seq, n_embd=64, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    g = torch.Generator().manual_seed(0)
    # Tokens of a fixed random bigram chain: something to learn.
    successor = torch.randint(0, 256, (256, 4), generator=g)
    tokens = torch.empty(1024, seq, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, 256, (1024,), generator=g)
    for i in range(1, seq):
        tokens[:, i] = successor[tokens[:, i - 1], torch.randint(0, 4, (1024,), generator=g)]
    data = [{"input_ids": t, "labels": t} for t in tokens]
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=True,
        seed=0,
    )
    callbacks = [AutoDropCallback()] if with_autodrop else []
    return Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)


def timed_run(steps: int, with_autodrop: bool, batch: int, seq: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(steps, with_autodrop, out, batch, seq)
        # The Trainer prints its log rows (and AutoDrop's at its events) in both arms; not to the table.
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            start = time.perf_counter()
            trainer.train()
            return time.perf_counter() - start


def _peak_child(steps: int, with_autodrop: bool, batch: int, seq: int, queue) -> None:
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    timed_run(steps, with_autodrop, batch, seq)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # kilobytes on Linux


def peak_rss(steps: int, with_autodrop: bool, batch: int, seq: int) -> int:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_peak_child, args=(steps, with_autodrop, batch, seq, queue))
    child.start()
    peak = queue.get()
    child.join()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[250, 1000, 3000])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)  # the Trainer's and AutoDrop's info lines would flood the table
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from hf_autodrop import AutoDropConfig

    timed_run(20, True, args.batch, args.seq)  # warm up imports, allocator and kernels for both arms
    timed_run(20, False, args.batch, args.seq)
    print(
        f"tiny GPT-2 (2 layers, width 64, vocab 256), batch {args.batch} x {args.seq} tokens, CPU, "
        f"{torch.get_num_threads()} thread(s), {args.repeats} interleaved repeats per length, medians"
    )
    print(
        f"{'steps':>6} {'interval':>8} {'without (s)':>11} {'with (s)':>9} {'time ratio':>10} "
        f"{'spread of ratios':>17} {'peak RSS without':>16} {'with':>9} {'RSS ratio':>9}"
    )
    for steps in args.steps:
        without, with_ = [], []
        for _ in range(args.repeats):
            without.append(timed_run(steps, False, args.batch, args.seq))
            with_.append(timed_run(steps, True, args.batch, args.seq))
        ratios = sorted(w / b for w, b in zip(with_, without))
        rss = ""
        if not args.no_memory:
            base, auto = peak_rss(steps, False, args.batch, args.seq), peak_rss(steps, True, args.batch, args.seq)
            rss = f"{base / 2**20:13.1f} MiB {auto / 2**20:5.1f} MiB {auto / base:9.4f}"
        med_b, med_w = statistics.median(without), statistics.median(with_)
        print(
            f"{steps:6d} {AutoDropConfig().auto_interval_steps(steps):8d} {med_b:11.3f} {med_w:9.3f} "
            f"{med_w / med_b:10.4f} {ratios[0]:8.4f}-{ratios[-1]:.4f} {rss}"
        )


if __name__ == "__main__":
    main()
