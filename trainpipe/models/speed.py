"""A small, fast CIFAR net after Keller Jordan's airbench (94% on CIFAR-10 in seconds on a GPU).

Kept from airbench94: a 2x2 stem conv, three conv groups of conv-pool-BN-GELU +
conv-BN-GELU, a global max-pool, a bias-free head and scaled-down logits. Left out:
the data-dependent whitening init of the stem and the frozen BN scales, which need
the training set at build time; this stem learns from a normal init instead.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from trainpipe.config.types import PositiveFloat, PositiveInt
from trainpipe.data.base import DataSpec
from trainpipe.errors import ConfigError
from trainpipe.models.wrap import HeadMixin, image_channels
from trainpipe.registry import MODELS


def _conv_group(cin: int, cout: int) -> nn.Sequential:
    # airbench's BatchNorm momentum 0.6 is its keep-rate: 0.4 in torch's convention.
    def bn() -> nn.BatchNorm2d:
        return nn.BatchNorm2d(cout, momentum=0.4)

    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
        bn(),
        nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        bn(),
        nn.GELU(),
    )


class GlobalMaxPool(nn.Module):
    """The maximum over each channel's pixels: nn.AdaptiveMaxPool2d(1)'s values, computed as
    amax, whose backward has a deterministic CUDA kernel (adaptive max pooling's has none, so
    `train.deterministic` could not run this net on a GPU). Parameter-free: checkpoints of
    either form load into the other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(-2, -1), keepdim=True)


class SpeedNet(HeadMixin, nn.Module):
    def __init__(
        self, in_chans: int, num_classes: int, stem_width: int, widths: list[int], logit_scale: float
    ) -> None:
        super().__init__()
        groups, cin = [], stem_width
        for w in widths:
            groups.append(_conv_group(cin, w))
            cin = w
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 2, padding=0, bias=True),
            nn.GELU(),
            *groups,
            GlobalMaxPool(),
            nn.Flatten(),
        )
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes, bias=False)
        # airbench divides the logits by 9: with its high learning rate, unscaled
        # logits saturate the softmax in the first steps.
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * self.logit_scale


@MODELS.register("speednet")
def speednet(
    spec: DataSpec,
    /,
    *,
    widths: Annotated[list[PositiveInt], Field(min_length=1)] = [64, 256, 256],  # noqa: B006 (read-only, shown by `trainpipe list`)
    stem_width: PositiveInt = 24,
    logit_scale: PositiveFloat = 1 / 9,
) -> nn.Module:
    """airbench-style fast CIFAR net: 2x2 stem + conv/pool/BN/GELU groups; for quick sweeps."""
    channels = image_channels(spec, "speednet")
    # The 2x2 stem takes one pixel off, then every group halves the size.
    smallest = 2 ** len(widths) + 1
    if min(spec.in_shape[1:]) < smallest:
        raise ConfigError(
            f"model.name: speednet with {len(widths)} groups needs images of at least "
            f"{smallest}x{smallest}; got {spec.in_shape[1]}x{spec.in_shape[2]}. Set model.input_size "
            f"or use fewer model.widths."
        )
    return SpeedNet(channels, spec.num_classes, stem_width, list(widths), logit_scale)
