"""Up-front checks of what `AutoDrop` is built on: the parameters and the optimizer."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def split_model(model_or_params) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Trainable parameters and floating-point buffers of a module, or the given tensors."""
    if isinstance(model_or_params, torch.nn.Module):
        params = [p for p in model_or_params.parameters() if p.requires_grad]
        buffers = [b for b in model_or_params.buffers() if b.is_floating_point()]
        check_parameters(params)
        return params, buffers
    if isinstance(model_or_params, torch.Tensor):
        model_or_params = [model_or_params]
    if not isinstance(model_or_params, Iterable):
        raise TypeError(f"expected an nn.Module or an iterable of tensors, got {type(model_or_params).__name__}")
    params = []
    for p in model_or_params:
        if isinstance(p, dict):
            raise TypeError("pass the model or a list of parameters, not param-group dicts")
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"expected tensors, got {type(p).__name__}")
        if p.requires_grad:
            params.append(p)
    check_parameters(params)
    return params, []


def check_parameters(params: list[torch.Tensor]) -> None:
    """Refuse parameters whose angle AutoDrop cannot measure, at construction instead of at the first interval."""
    for i, p in enumerate(params):
        if p.layout != torch.strided:
            raise ValueError(
                f"trainable parameter {i} has layout {p.layout}: AutoDrop supports dense (strided) parameters "
                "only. Keep sparse parameters out of AutoDrop (pass it the dense ones, or freeze them)."
            )
        if p.is_complex() or not p.is_floating_point():
            raise ValueError(
                f"trainable parameter {i} has dtype {p.dtype}: AutoDrop measures angles between real "
                "floating-point displacements. Pass it the real parameters only (e.g. a list without this one), "
                "or store the parameter as torch.view_as_real."
            )


def check_optimizer_holds(params: list[torch.Tensor], optimizer) -> None:
    """Every trainable parameter must be one the optimizer updates, or AutoDrop measures (and drops) nothing real."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [i for i, p in enumerate(params) if id(p) not in held]
    if missing:
        raise ValueError(
            f"{len(missing)} of the {len(params)} trainable parameters (indices {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}) are not in the optimizer AutoDrop was given, so AutoDrop "
            "would measure parameters that never move and drop an lr that does not train them. Pass the "
            "optimizer that updates this model's parameters (built after any wrapping or replacement), "
            "or freeze the parameters it does not update (requires_grad=False)."
        )


def wrapper_chain(optimizer):
    """The optimizer and every optimizer it wraps (`.optimizer`), outermost first."""
    chain = [optimizer]
    while getattr(chain[-1], "optimizer", None) is not None and len(chain) < 8:
        chain.append(chain[-1].optimizer)
    return chain
