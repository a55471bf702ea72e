"""AutoDrop's cost end to end: a tiny GPT-2 trained through the Trainer with and without `AutoDropCallback()`.

Both arms run in this process, interleaved (without, with, without, with, ...), `--repeats` times per run
length; the table gives the medians of the wall time and of the process's CPU time of `trainer.train()`,
their ratios, and the CPU time spent inside the callback's events (a share that a busy machine's other
processes barely disturb: on a shared machine the wall times vary by more than the overhead). The callback runs
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

N_PARAMS, N_TENSORS = 118_528, 28  # of the model below (checked in make_trainer)


def make_trainer(steps: int, with_autodrop: bool, output_dir: str, batch: int, seq: int):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from hf_autodrop import AutoDropCallback

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=seq, n_embd=64, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    params = list(model.parameters())
    assert (sum(p.numel() for p in params), len(params)) == (N_PARAMS, N_TENSORS)
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


def _clock_callback(trainer, spent: list[float]) -> None:
    """Add the CPU time of every event of the trainer's AutoDropCallback to `spent[0]`."""
    from hf_autodrop import AutoDropCallback

    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, AutoDropCallback))
    for name in dir(callback):
        if name.startswith("on_"):
            event = getattr(callback, name)

            def clocked(*args, _event=event, **kwargs):
                start = time.process_time()
                try:
                    return _event(*args, **kwargs)
                finally:
                    spent[0] += time.process_time() - start

            setattr(callback, name, clocked)


def timed_run(steps: int, with_autodrop: bool, batch: int, seq: int) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, CPU seconds inside AutoDropCallback's events) of train()."""
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(steps, with_autodrop, out, batch, seq)
        spent = [0.0]
        if with_autodrop:
            _clock_callback(trainer, spent)
        # The Trainer prints its log rows (and AutoDrop's at its events) in both arms; not to the table.
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            wall, cpu = time.perf_counter(), time.process_time()
            trainer.train()
            return time.perf_counter() - wall, time.process_time() - cpu, spent[0]


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

    import hf_autodrop
    from hf_autodrop import AutoDropConfig

    timed_run(20, True, args.batch, args.seq)  # warm up imports, allocator and kernels for both arms
    timed_run(20, False, args.batch, args.seq)
    print(
        f"tiny GPT-2 (2 layers, width 64, vocab 256; {N_PARAMS:,} parameters in {N_TENSORS} tensors), batch "
        f"{args.batch} x {args.seq} tokens, CPU, {torch.get_num_threads()} thread(s), {args.repeats} interleaved "
        f"repeats per length, medians; hf_autodrop from {os.path.dirname(hf_autodrop.__file__)}"
    )
    print(
        "| steps | interval | wall without | wall with | **wall ratio** | CPU without | CPU with | **CPU ratio** "
        "| CPU in AutoDrop's events / CPU without | peak RSS without | with | RSS ratio |"
    )
    print("| ---: " * 12 + "|")
    for steps in args.steps:
        without, with_ = [], []
        for _ in range(args.repeats):
            without.append(timed_run(steps, False, args.batch, args.seq))
            with_.append(timed_run(steps, True, args.batch, args.seq))
        rss = "| | |"
        if not args.no_memory:
            base, auto = peak_rss(steps, False, args.batch, args.seq), peak_rss(steps, True, args.batch, args.seq)
            rss = f"| {base / 2**20:.1f} MiB | {auto / 2**20:.1f} MiB | {auto / base:.4f} |"
        wall_b, wall_w = (statistics.median(r[0] for r in runs) for runs in (without, with_))
        cpu_b, cpu_w = (statistics.median(r[1] for r in runs) for runs in (without, with_))
        inside = statistics.median(r[2] for r in with_)
        print(
            f"| {steps} | {AutoDropConfig().auto_interval_steps(steps)} | {wall_b:.3f} s | {wall_w:.3f} s | "
            f"**{wall_w / wall_b:.4f}** | {cpu_b:.3f} s | {cpu_w:.3f} s | **{cpu_w / cpu_b:.4f}** | "
            f"{inside / cpu_b:.2%} {rss}"
        )


if __name__ == "__main__":
    main()
