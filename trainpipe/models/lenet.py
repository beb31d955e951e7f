"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, for any image of 4x4 or more."""

from __future__ import annotations

import torch
from torch import nn

from trainpipe.data.base import DataSpec
from trainpipe.errors import ConfigError
from trainpipe.models.wrap import HeadMixin, image_channels
from trainpipe.registry import MODELS


class LeNet(HeadMixin, nn.Module):
    """conv5-pool-conv5-pool, then 120 and 84 units and the head.

    Both convolutions pad by 2 ("same"), so the two 2x2 pools alone set the size of
    the flattened features: (H // 4) x (W // 4) x 16. The original's unpadded second
    conv would reject 8x8 digits; at 28x28 this matches the usual MNIST variant.
    """

    def __init__(self, in_chans: int, num_classes: int, height: int, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * (height // 4) * (width // 4), 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
        )
        self.num_features = 84
        self.head = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@MODELS.register("lenet")
def lenet(spec: DataSpec, /) -> nn.Module:
    """LeNet-5 with ReLU and max-pooling: the classic small CNN for digits and MNIST."""
    channels = image_channels(spec, "lenet")
    _, h, w = spec.in_shape
    if h < 4 or w < 4:
        raise ConfigError(
            f"model.name: lenet needs images of at least 4x4 pixels (two 2x2 poolings); got {h}x{w}. "
            f"Set model.input_size to upsample them."
        )
    return LeNet(channels, spec.num_classes, h, w)
