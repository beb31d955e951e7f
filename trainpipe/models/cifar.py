"""ResNets shaped for 32 px images: a 3x3 stride-1 stem and no max-pool.

ImageNet stems (7x7 stride 2 + max-pool) shrink a 32 px image to 8 px before the first
block and cap CIFAR-100 accuracy well below what these variants reach. Neither
torchvision nor timm ships the CIFAR variants with a width option, so the nets are
assembled here; the post-activation block is torchvision's own.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import AfterValidator
from torch import nn

from trainpipe.config.types import Dropout, PositiveInt
from trainpipe.data.base import DataSpec
from trainpipe.errors import ConfigError
from trainpipe.models.wrap import HeadMixin, image_channels
from trainpipe.registry import MODELS


def _init_weights(model: nn.Module) -> None:
    # He et al.'s initialisation, as torchvision's ResNet does it.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class CifarResNet(HeadMixin, nn.Module):
    """Post-activation ResNet (He et al. 2015) with torchvision's BasicBlock."""

    def __init__(self, in_chans: int, num_classes: int, width: int, blocks: list[int]) -> None:
        # Imported here: torchvision costs a second to import, which `trainpipe check` need not pay.
        from torchvision.models.resnet import BasicBlock

        super().__init__()
        self.stem = nn.Sequential(_conv3x3(in_chans, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout, stride = width * 2**i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or cin != cout:
                downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
                )
            layer = [BasicBlock(cin, cout, stride, downsample)]
            layer += [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layer))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.stem(x))))


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice (He et al. 2016); optional dropout between the convs (WRN)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3x3(cout, cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # A projection shortcut reads the normalised input, as in the paper's code.
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


class PreActResNet(HeadMixin, nn.Module):
    """Pre-activation ResNet: stages of PreActBlocks, then BN-ReLU, pooling and the head."""

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        stem_width: int,
        widths: list[int],
        blocks: list[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = _conv3x3(in_chans, stem_width)
        stages, cin = [], stem_width
        for i, (cout, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layer = [PreActBlock(cin, cout, stride, dropout)]
            layer += [PreActBlock(cout, cout, 1, dropout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layer))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.final = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.final(self.stages(self.stem(x)))))


def _check_width(width: int) -> None:
    if width < 1:
        raise ConfigError(
            f"model.width: must be a positive channel count (64 is the standard ResNet-18); got {width}."
        )


@MODELS.register("resnet18_cifar")
def resnet18_cifar(spec: DataSpec, /, *, width: PositiveInt = 64) -> nn.Module:
    """ResNet-18 for small images: 3x3 stem, no max-pool (75%+ on CIFAR-100)."""
    _check_width(width)
    return CifarResNet(image_channels(spec, "resnet18_cifar"), spec.num_classes, width, [2, 2, 2, 2])


@MODELS.register("preact_resnet18")
def preact_resnet18(spec: DataSpec, /, *, width: PositiveInt = 64) -> nn.Module:
    """Pre-activation ResNet-18 for small images (He et al. 2016, identity mappings)."""
    _check_width(width)
    widths = [width * 2**i for i in range(4)]
    return PreActResNet(image_channels(spec, "preact_resnet18"), spec.num_classes, width, widths, [2, 2, 2, 2])


def _wrn_depth(depth: int) -> int:
    if depth < 10 or (depth - 4) % 6:
        raise ValueError("wide_resnet needs depth = 6n + 4 with n >= 1 (10, 16, 22, 28, 40)")
    return depth


WrnDepth = Annotated[int, AfterValidator(_wrn_depth)]


@MODELS.register("wide_resnet")
def wide_resnet(spec: DataSpec, /, *, depth: WrnDepth = 28, widen_factor: PositiveInt = 10,
                dropout: Dropout = 0.0) -> nn.Module:
    """Wide ResNet WRN-depth-k (Zagoruyko & Komodakis 2016); WRN-28-10 by default (the paper's dropout: 0.3)."""
    n = (depth - 4) // 6
    widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    return PreActResNet(image_channels(spec, "wide_resnet"), spec.num_classes, 16, widths, [n] * 3, dropout)
