"""Hub custom code of the hf_autodrop recipes' model folders: load them with transformers and timm alone.

A folder the recipes publish is timm's own export (`config.json` + `model.safetensors`), so
transformers reads it as a `TimmWrapperConfig`; its `auto_map` points
`AutoModelForImageClassification` here. This file and `hf_autodrop_models.py` (a verbatim copy of
`hf_autodrop/models.py`, which needs torch and timm only) travel with the weights: importing that
copy registers the CIFAR architectures (`resnet18_cifar`, `wrn28_10_cifar`, ...) with timm, and
`TimmWrapperForImageClassification` does the rest (weights, labels, `pipeline`). Stock timm
architectures (`resnet18`) need no registration and load the same way.

    from transformers import AutoModelForImageClassification, pipeline

    model = AutoModelForImageClassification.from_pretrained("<repo or folder>", trust_remote_code=True)
    classify = pipeline("image-classification", model="<repo or folder>", trust_remote_code=True)

`model.timm_model` is the plain timm model; once this file was imported, `timm.create_model(
"hf-hub:<repo>", pretrained=True)` finds the architecture too.
"""

from transformers import TimmWrapperForImageClassification

# Importing the copy registers the CIFAR architectures with timm (transformers copies the files that are
# imported as `from .<file> import <name>`).
from .hf_autodrop_models import CifarResNet, CifarWideResNet  # noqa: F401


class AutoDropTimmForImageClassification(TimmWrapperForImageClassification):
    """`TimmWrapperForImageClassification` with the hf_autodrop architectures registered in timm."""
