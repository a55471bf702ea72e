"""The small real tasks of the studies, all offline: digits (a small CNN), a character-level LM, and
Friedman #1 (tabular regression with an MLP).

- `digits`: scikit-learn's 8x8 digits (1797 images, shipped with scikit-learn), split once with a
  fixed seed into 997 train / 300 validation / 500 test images; a two-convolution CNN.
- `charlm`: the Python standard library's own `*.py` sources (already on every machine with Python),
  as ASCII bytes, in fixed chunks; a 2-layer causal transformer predicting the next character.
- `friedman`: scikit-learn's generated Friedman #1 regression problem (`make_friedman1`: 10 uniform
  features, 5 of them informative, y = 10 sin(pi x1 x2) + 20 (x3 - 1/2)^2 + 10 x4 + 5 x5 + N(0, 1)),
  6,000 samples from a fixed seed, split 4000 / 1000 / 1000; a 2-hidden-layer MLP, mean squared error.
  Chosen as the held-out task of issue 9 before any AutoDrop setting was tuned on it, and reported as-is.

The validation split exists only for the methods that need one (`reduce_lr_on_plateau`); the test
split measures every method.
"""

from __future__ import annotations

import functools
import glob
import math
import os
import sysconfig

import numpy as np
import torch
from torch import nn

__all__ = [
    "DigitsCNN",
    "CharTransformer",
    "FriedmanMLP",
    "digits_splits",
    "charlm_splits",
    "friedman_splits",
    "TensorDataset",
]


class TensorDataset(torch.utils.data.Dataset):
    """Items `{name: tensor[i]}` (what the Trainer's default collator stacks)."""

    def __init__(self, **tensors: torch.Tensor):
        self.tensors = tensors
        self.n = len(next(iter(tensors.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}


# ---------------------------------------------------------------------------- digits
@functools.lru_cache(maxsize=1)
def digits_splits() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """(train 997, validation 300, test 500) of scikit-learn's digits; the split is fixed (seed 0)."""
    from hf_autodrop.demo import load_digits_arrays

    x, y = load_digits_arrays()
    order = np.random.default_rng(0).permutation(len(y))
    x, y = torch.from_numpy(x[order]).reshape(-1, 1, 8, 8), torch.from_numpy(y[order])
    cuts = [(0, 997), (997, 1297), (1297, 1797)]
    return tuple(TensorDataset(pixel_values=x[a:b], labels=y[a:b]) for a, b in cuts)


def DigitsCNN() -> nn.Module:
    """The demo's CNN without BatchNorm and with a 64-unit hidden layer (38 k parameters)."""
    from hf_autodrop.demo import DigitsCNN

    return DigitsCNN(batchnorm=False, hidden=64)


def DigitsBNCNN() -> nn.Module:
    """The demo's CNN as the demo trains it: with BatchNorm, 64-unit hidden layer (an SGD + BatchNorm task)."""
    from hf_autodrop.demo import DigitsCNN

    return DigitsCNN(batchnorm=True, hidden=64)


# ---------------------------------------------------------------------------- char LM
VOCAB = 128  # ASCII; any other byte becomes "?"


@functools.lru_cache(maxsize=1)
def stdlib_text() -> bytes:
    """The top-level `*.py` files of this Python's standard library, sorted by name, as ASCII bytes."""
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    if not files:
        raise FileNotFoundError("no *.py files in the standard library directory; the charlm task needs them")
    data = b"".join(open(f, "rb").read() for f in files)
    arr = np.frombuffer(data, dtype=np.uint8).copy()
    arr[arr >= VOCAB] = ord("?")
    return arr.tobytes()


@functools.lru_cache(maxsize=4)
def charlm_splits(context: int = 64, train_chars: int = 1_500_000, eval_sequences: int = 256):
    """(train, validation, test) sequences of `context + 1` characters cut from the stdlib text.

    Train: the first `train_chars` characters in non-overlapping chunks; validation and test:
    `eval_sequences` chunks each from the text after it (validation first), so no file overlaps.
    """
    arr = torch.from_numpy(np.frombuffer(stdlib_text(), dtype=np.uint8).astype(np.int64))
    width = context + 1

    def chunks(start: int, count: int) -> TensorDataset:
        seqs = arr[start : start + count * width].view(count, width)
        return TensorDataset(input_ids=seqs[:, :-1].contiguous(), labels=seqs[:, 1:].contiguous())

    n_train = train_chars // width
    val_start = n_train * width
    test_start = val_start + eval_sequences * width
    if test_start + eval_sequences * width > arr.numel():
        raise ValueError("the standard library text is too short for these split sizes")
    return chunks(0, n_train), chunks(val_start, eval_sequences), chunks(test_start, eval_sequences)


class CharTransformer(nn.Module):
    """A small causal transformer (pre-LayerNorm) over ASCII characters; the loss is in nats per character."""

    def __init__(self, context: int = 64, dim: int = 48, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.pos = nn.Parameter(torch.randn(context, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, input_ids, labels=None):
        t = input_ids.shape[1]
        h = self.embed(input_ids) + self.pos[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        logits = self.out(self.norm(h))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))
        return out


NATS_TO_BITS = 1.0 / math.log(2.0)


# ---------------------------------------------------------------------------- a transformers GPT-2
def gpt2_splits(context: int = 64):
    """The char LM's splits in GPT-2's convention: `input_ids` = `labels` (the model shifts them itself).

    The same `context + 1` characters per sequence as `charlm_splits`, so the same `context` predictions.
    """
    return tuple(
        TensorDataset(input_ids=ids, labels=ids)
        for ids in (torch.cat([d.tensors["input_ids"], d.tensors["labels"][:, -1:]], 1) for d in charlm_splits(context))
    )


def TinyGPT2(context: int = 64) -> nn.Module:
    """transformers' GPT-2 built from a config (nothing downloaded): 2 layers, width 64, 2 heads, ASCII."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=context + 1,
        n_embd=64,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return GPT2LMHeadModel(config)


# ---------------------------------------------------------------------------- Friedman #1
@functools.lru_cache(maxsize=1)
def friedman_splits() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """(train 4000, validation 1000, test 1000) of `make_friedman1(6000, noise=1.0, random_state=0)`.

    Features and target are standardised with the training split's mean and standard deviation, so the
    mean squared error is in units of the target's variance (the noise alone is about 0.04 of it).
    """
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=6000, n_features=10, noise=1.0, random_state=0)
    x_mean, x_std = x[:4000].mean(0), x[:4000].std(0)
    y_mean, y_std = y[:4000].mean(), y[:4000].std()
    x = torch.from_numpy(((x - x_mean) / x_std).astype(np.float32))
    y = torch.from_numpy(((y - y_mean) / y_std).astype(np.float32))
    cuts = [(0, 4000), (4000, 5000), (5000, 6000)]
    return tuple(TensorDataset(x=x[a:b], labels=y[a:b]) for a, b in cuts)


class FriedmanMLP(nn.Module):
    """10 -> 64 -> 64 -> 1 with ReLU (4.9 k parameters); the loss is the mean squared error."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x, labels=None):
        pred = self.net(x).squeeze(-1)
        out = {"logits": pred}
        if labels is not None:
            out["loss"] = nn.functional.mse_loss(pred, labels)
        return out
