"""The model: a timm model wrapped with the `Trainer`'s interface, normalising uint8 images on the device."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArguments


class ImageClassifier(nn.Module):
    """A timm model with the `Trainer`'s interface: `forward(pixel_values, labels)` -> {"loss", "logits"}.

    Images arrive as uint8 and are normalised here, on the device, so the dataloader moves 4x fewer
    bytes. `mean`/`std` are non-persistent buffers: the timm checkpoint is `self.model`'s alone.
    """

    def __init__(self, model: nn.Module, mean, std, channels_last: bool = False):
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def state_dict(self, *args, **kwargs):
        # safetensors (the Trainer's checkpoints) refuses channels_last tensors; loading copies them back.
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v.contiguous()) for k, v in state.items())

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        x = (pixel_values.float() - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits.float(), labels)
        return out


def create_model(model_args: ModelArguments, num_classes: int) -> nn.Module:
    import timm

    import hf_autodrop.models  # noqa: F401 - registers the CIFAR architectures with timm

    return timm.create_model(model_args.model_name, num_classes=num_classes, **json.loads(model_args.model_kwargs))
