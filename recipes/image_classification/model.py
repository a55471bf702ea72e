"""The model: a timm model wrapped with the `Trainer`'s interface, normalising uint8 images on the device."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArguments


class ImageClassifier(nn.Module):
    """A timm model with the `Trainer`'s interface: `forward(pixel_values, labels)` -> {"loss", "logits"}.

    Images arrive as uint8 and are normalised here, on the device, so the dataloader moves 4x fewer
    bytes. `mean`/`std` are non-persistent buffers: the timm checkpoint is `self.model`'s alone.
    In training mode, and only when asked: random erasing (timm's, on the normalised batch), mixup /
    cutmix (`timm.data.Mixup`, soft targets with `SoftTargetCrossEntropy`) and label smoothing.
    """

    def __init__(
        self,
        model: nn.Module,
        mean,
        std,
        channels_last: bool = False,
        *,
        label_smoothing: float = 0.0,
        mixup=None,
        random_erasing: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.label_smoothing = float(label_smoothing)
        self.mixup = mixup  # a timm.data.Mixup (it applies the label smoothing itself) or None
        self.random_erasing = float(random_erasing)
        self._erase = None
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs=None, every_n_layers=1, offload=False, gradient_checkpointing_kwargs=None
    ):
        """`--gradient_checkpointing` / `--activation_checkpointing`: timm's own `set_grad_checkpointing`."""
        if every_n_layers != 1 or offload or activation_checkpointing_kwargs or gradient_checkpointing_kwargs:
            raise ValueError("timm models checkpoint every block: activation_checkpointing_kwargs is not supported")
        self.model.set_grad_checkpointing(True)

    gradient_checkpointing_enable = activation_checkpointing_enable  # the name transformers < 5 calls

    def state_dict(self, *args, **kwargs):
        # safetensors (the Trainer's checkpoints) refuses channels_last tensors; loading copies them back.
        state = super().state_dict(*args, **kwargs)
        return type(state)((k, v.contiguous()) for k, v in state.items())

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        x = (pixel_values.float() - self.mean) / self.std
        targets = labels
        if self.training and labels is not None:
            if self.random_erasing > 0:
                if self._erase is None:
                    from timm.data.random_erasing import RandomErasing

                    self._erase = RandomErasing(self.random_erasing, mode="pixel", device=str(x.device))
                x = self._erase(x)
            if self.mixup is not None:
                if x.shape[0] % 2:
                    raise ValueError(f"mixup/cutmix needs an even batch size, got {x.shape[0]}")
                x, targets = self.mixup(x, labels)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(x)
        out = {"logits": logits}
        if labels is not None:
            if targets.ndim == 2:  # soft targets from mixup / cutmix
                from timm.loss import SoftTargetCrossEntropy

                out["loss"] = SoftTargetCrossEntropy()(logits.float(), targets)
            else:
                smoothing = self.label_smoothing if self.training else 0.0
                out["loss"] = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        return out


def resolve_checkpoint(name_or_path: str) -> str:
    """A timm model name for `timm.create_model(..., pretrained=True)`: folder -> local-dir:, repo -> hf-hub:."""
    if name_or_path.startswith(("hf-hub:", "local-dir:")):
        return name_or_path
    if Path(name_or_path).is_dir():
        return f"local-dir:{Path(name_or_path).resolve()}"
    if Path(name_or_path).exists():
        raise ValueError(f"{name_or_path} is a file; pass the timm folder that holds config.json + model.safetensors")
    if name_or_path.count("/") == 1:
        return f"hf-hub:{name_or_path}"
    raise ValueError(f"{name_or_path!r} is neither a folder nor a Hub repo id (<owner>/<name>, hf-hub:<owner>/<name>)")


def create_model(model_args: ModelArguments, num_classes: int) -> nn.Module:
    """The recipe's timm model, or the weights of `--model_name_or_path` (classifier reset if the classes differ)."""
    import timm

    import hf_autodrop.models  # noqa: F401 - registers the CIFAR architectures with timm

    if model_args.model_name_or_path:
        return timm.create_model(
            resolve_checkpoint(model_args.model_name_or_path), pretrained=True, num_classes=num_classes
        )
    return timm.create_model(model_args.model_name, num_classes=num_classes, **json.loads(model_args.model_kwargs))


def load_checkpoint(name_or_path: str) -> nn.Module:
    """A published timm folder or Hub repo, as it was saved (its classes, its data config)."""
    import timm

    import hf_autodrop.models  # noqa: F401

    return timm.create_model(resolve_checkpoint(name_or_path), pretrained=True)


def make_mixup(mixup: float, cutmix: float, prob: float, label_smoothing: float, num_classes: int):
    """`timm.data.Mixup` when --mixup or --cutmix asks for it, else None."""
    if mixup <= 0 and cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, label_smoothing=label_smoothing, num_classes=num_classes
    )


class ModelEma:
    """An exponential moving average of the weights (`timm.utils.ModelEmaV3`), updated after each optimizer step.

    Its state is saved in each checkpoint (`model_ema.safetensors`) and restored on resume.
    """

    FILE = "model_ema.safetensors"

    def __init__(self, model: nn.Module, decay: float):
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(model, decay=decay)

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class EmaCallback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                outer.ema.update(_unwrap(model).model, step=state.global_step)

            def on_save(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    from safetensors.torch import save_file

                    folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                    folder.mkdir(parents=True, exist_ok=True)
                    state_dict = {k: v.contiguous() for k, v in outer.ema.module.state_dict().items()}
                    save_file(state_dict, str(folder / ModelEma.FILE))

        return EmaCallback()

    def load(self, checkpoint: str | None) -> bool:
        if not checkpoint or not (Path(checkpoint) / self.FILE).is_file():
            return False
        from safetensors.torch import load_file

        self.ema.module.load_state_dict(load_file(str(Path(checkpoint) / self.FILE)))
        return True


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and not isinstance(model, ImageClassifier):
        model = model.module
    return model
