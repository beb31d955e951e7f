"""The small default net: quick enough for digits-sized data on a laptop CPU."""

from __future__ import annotations

from torch import nn

from trainpipe.config.types import Dropout, PositiveInt
from trainpipe.data.base import DataSpec
from trainpipe.registry import MODELS


class CnnSmall(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int, dropout: float) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
            )

        self.features = nn.Sequential(
            block(in_channels, width),
            block(width, width * 2),
            nn.MaxPool2d(2),
            block(width * 2, width * 4),
            # Global pooling makes the net indifferent to the input size (8x8 digits, 28x28 MNIST).
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        return self.head(self.features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.head.in_features, num_classes)


@MODELS.register("cnn_small")
def cnn_small(spec: DataSpec, /, *, width: PositiveInt = 32, dropout: Dropout = 0.0) -> nn.Module:
    """A three-layer CNN with global pooling: the quickstart model for small images."""
    if not spec.is_image:
        from trainpipe.errors import ConfigError

        raise ConfigError(
            f"model.name: cnn_small needs image input (C, H, W) but the data gives vectors of shape "
            f"{spec.in_shape}; use model.name=mlp for feature vectors."
        )
    return CnnSmall(spec.in_shape[0], spec.num_classes, width, dropout)
