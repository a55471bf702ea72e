"""The CIFAR ResNets and Wide ResNets of the AutoDrop paper, registered in timm.

Importing this module registers four architectures with timm, so that `timm.create_model` builds
them by name and reloads checkpoints that the recipes publish:

| name | architecture | default classes | parameters |
| --- | --- | --- | --- |
| `resnet18_cifar` | ResNet-18, 3x3 stride-1 stem, no max-pool | 10 | 11,173,962 |
| `resnet34_cifar` | ResNet-34, same stem | 100 | 21,328,292 |
| `wrn28_10_cifar` | WRN-28-10, pre-activation wide blocks, 1x1 projection shortcuts | 10 | 36,479,194 |
| `wrn40_10_cifar` | WRN-40-10, same blocks | 100 | 55,899,444 |

The default number of classes is the one of the paper's Table 1 row; `num_classes=` changes it.
Both families are built from timm's own classes and blocks (`ResNet` + `BasicBlock`, `ResNetV2` +
`PreActBasic`); only the ImageNet stem (7x7 stride-2 conv and max-pool) is replaced by the single
3x3 stride-1 convolution that 32x32 inputs need. Dropout in the wide blocks is 0, as in the
paper's runs (timm's `PreActBasic` has none).

Example:
    >>> import timm
    >>> import hf_autodrop.models  # registers the names
    >>> model = timm.create_model("resnet18_cifar", num_classes=10)
    >>> sum(p.numel() for p in model.parameters())
    11173962
    >>> # a folder written by the recipes (or `hf-hub:<repo>` for a pushed one)
    >>> # model = timm.create_model("local-dir:out/cifar10_resnet18/model", pretrained=True)
"""

from __future__ import annotations

from collections import OrderedDict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import BatchNormAct2d, create_conv2d
from timm.models import build_model_with_cfg, register_model
from timm.models.resnet import BasicBlock, ResNet
from timm.models.resnetv2 import ResNetV2
from torch import nn

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "CifarResNet", "CifarWideResNet"]

# Per-channel statistics of the training splits (pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def _cifar_stem_conv(in_chans: int, out_chs: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_chans, out_chs, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class CifarResNet(ResNet):
    """timm's `ResNet` (conv-BN-ReLU `BasicBlock`s, 1x1 conv + BN projection shortcuts) for 32x32 inputs.

    The stem is one 3x3 stride-1 convolution + BN + ReLU with no max-pool, so the four stages see
    32, 16, 8 and 4 pixels (He et al. 2016, Section 4.2, with the ImageNet stage widths 64-512).
    The last BN of each residual branch starts at one (`zero_init_last=False`), as in the paper's
    reference implementations.
    """

    def __init__(self, layers, num_classes: int = 10, in_chans: int = 3, zero_init_last: bool = False, **kwargs):
        super().__init__(
            BasicBlock, layers, num_classes=num_classes, in_chans=in_chans, zero_init_last=zero_init_last, **kwargs
        )
        self.conv1 = _cifar_stem_conv(in_chans, self.bn1.num_features)
        self.maxpool = nn.Identity()
        # Without the stride-2 stem conv and the max-pool every reduction is 4x smaller.
        for info in self.feature_info:
            info["reduction"] = max(1, info["reduction"] // 4)


class CifarWideResNet(ResNetV2):
    """timm's `ResNetV2` with `PreActBasic` blocks: the Wide ResNet of Zagoruyko & Komodakis (2016).

    Depth `d` has `(d - 4) / 6` blocks per stage, stage widths 16k, 32k, 64k and strides 1, 2, 2;
    each block is BN-ReLU-conv3x3-BN-ReLU-conv3x3 with a 1x1 projection of the pre-activated input
    where the width or stride changes; BN-ReLU, global average pooling and a linear classifier end
    the network. Convolutions have no bias. The stem is one 3x3 stride-1 convolution to 16 channels.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 10, in_chans: int = 3, **kwargs):
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n + 4 (e.g. 28 or 40), got {depth}")
        n = (depth - 4) // 6
        super().__init__(
            layers=[n, n, n],
            channels=(16 * widen_factor, 32 * widen_factor, 64 * widen_factor),
            num_classes=num_classes,
            in_chans=in_chans,
            stem_chs=16,
            preact=True,
            basic=True,
            bottle_ratio=1.0,
            act_layer=nn.ReLU,
            norm_layer=BatchNormAct2d,
            conv_layer=create_conv2d,
            **kwargs,
        )
        self.stem = nn.Sequential(OrderedDict(conv=_cifar_stem_conv(in_chans, 16)))
        self.stem_feat_idx = 0
        # ResNetV2 counts a stride-4 stem; the CIFAR stem has stride 1 and the stages 1, 2, 2.
        for info, reduction in zip(self.feature_info, (1, 1, 2, 4)):
            info["reduction"] = reduction


def _cfg(num_classes: int, mean, std, pool_size, **kwargs) -> dict:
    return {
        "url": "",
        "num_classes": num_classes,
        "input_size": (3, 32, 32),
        "pool_size": pool_size,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": mean,
        "std": std,
        "license": "apache-2.0",
        **kwargs,
    }


# Read by timm's `register_model` when the entry points below are registered.
default_cfgs = {
    "resnet18_cifar": _cfg(10, CIFAR10_MEAN, CIFAR10_STD, (4, 4), first_conv="conv1", classifier="fc"),
    "resnet34_cifar": _cfg(100, CIFAR100_MEAN, CIFAR100_STD, (4, 4), first_conv="conv1", classifier="fc"),
    "wrn28_10_cifar": _cfg(10, CIFAR10_MEAN, CIFAR10_STD, (8, 8), first_conv="stem.conv", classifier="head.fc"),
    "wrn40_10_cifar": _cfg(100, CIFAR100_MEAN, CIFAR100_STD, (8, 8), first_conv="stem.conv", classifier="head.fc"),
}


def _create(cls, variant: str, pretrained: bool, **kwargs):
    return build_model_with_cfg(cls, variant, pretrained, feature_cfg=dict(flatten_sequential=True), **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-18 for CIFAR (11,173,962 parameters with 10 classes)."""
    return _create(CifarResNet, "resnet18_cifar", pretrained, **{"layers": [2, 2, 2, 2], **kwargs})


@register_model
def resnet34_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-34 for CIFAR (21,328,292 parameters with 100 classes)."""
    return _create(CifarResNet, "resnet34_cifar", pretrained, **{"layers": [3, 4, 6, 3], **kwargs})


@register_model
def wrn28_10_cifar(pretrained: bool = False, **kwargs) -> CifarWideResNet:
    """WRN-28-10 for CIFAR (36,479,194 parameters with 10 classes)."""
    return _create(CifarWideResNet, "wrn28_10_cifar", pretrained, **{"depth": 28, "widen_factor": 10, **kwargs})


@register_model
def wrn40_10_cifar(pretrained: bool = False, **kwargs) -> CifarWideResNet:
    """WRN-40-10 for CIFAR (55,899,444 parameters with 100 classes)."""
    return _create(CifarWideResNet, "wrn40_10_cifar", pretrained, **{"depth": 40, "widen_factor": 10, **kwargs})


# ImageNet statistics, re-exported for the ImageNet recipe (timm's own `resnet18` is the paper's model).
IMAGENET_MEAN, IMAGENET_STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
