"""A fully connected net whose layout is set by a few sweepable options."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from trainpipe.config.types import Dropout, NonNegativeInt, PositiveInt
from trainpipe.data.base import DataSpec
from trainpipe.errors import ConfigError
from trainpipe.models.wrap import HeadMixin
from trainpipe.registry import MODELS

Activation = Literal["relu", "gelu", "silu", "tanh", "leaky_relu", "elu", "selu", "mish", "sigmoid"]
Shape = Literal["constant", "diamond", "hourglass", "pyramid"]
Norm = Literal["batch", "layer", "none"]
Init = Literal["torch", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", "orthogonal"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "mish": nn.Mish,
    "sigmoid": nn.Sigmoid,
}
# torch.nn.init.calculate_gain knows only some activations; the smooth ReLU-likes
# (GELU, SiLU, ELU, Mish) pass about half the variance, like ReLU.
_GAIN_NAME = {"tanh": "tanh", "leaky_relu": "leaky_relu", "selu": "selu", "sigmoid": "sigmoid"}


def hidden_widths(depth: int, width: int, shape: str) -> list[int]:
    """Hidden-layer widths for `depth` layers whose widest layer has `width` units.

    - constant:  every layer `width`                      (4 layers: w, w, w, w)
    - pyramid:   halving towards the output                (4 layers: w, w/2, w/4, w/8)
    - diamond:   widest in the middle, halving to the ends (5 layers: w/4, w/2, w, w/2, w/4)
    - hourglass: narrowest in the middle                   (5 layers: w, w/2, w/4, w/2, w)

    Halving stops at one unit.
    """
    def halve(times: int) -> int:
        return max(1, width >> times)

    if shape == "constant":
        return [width] * depth
    if shape == "pyramid":
        return [halve(i) for i in range(depth)]
    # Distance of each layer from the nearer end: 0, 1, 2, 1, 0 for five layers.
    ends = [min(i, depth - 1 - i) for i in range(depth)]
    if shape == "diamond":
        peak = max(ends, default=0)
        return [halve(peak - d) for d in ends]
    if shape == "hourglass":
        return [halve(d) for d in ends]
    raise ConfigError(f"model.shape: expected constant, diamond, hourglass or pyramid; got {shape!r}.")


class MLP(HeadMixin, nn.Module):
    """Flatten -> [Linear -> norm -> activation -> dropout] per hidden width -> Linear head."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        widths: list[int],
        activation: str,
        norm: str,
        dropout: float,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        cin = in_features
        for w in widths:
            layers.append(nn.Linear(cin, w, bias=norm != "batch"))  # batch norm's shift replaces the bias
            if norm == "batch":
                layers.append(nn.BatchNorm1d(w))
            elif norm == "layer":
                layers.append(nn.LayerNorm(w))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            cin = w
        self.body = nn.Sequential(*layers)
        self.num_features = cin
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _initialise(model: MLP, init: str, activation: str) -> None:
    if init == "torch":
        return
    hidden_gain = _GAIN_NAME.get(activation, "relu")
    for m in model.modules():
        if not isinstance(m, nn.Linear):
            continue
        # The head feeds a softmax, not an activation: unit gain keeps the logits O(1).
        gain_name = "linear" if m is model.head else hidden_gain
        if init == "kaiming_uniform":
            nn.init.kaiming_uniform_(m.weight, nonlinearity=gain_name)
        elif init == "kaiming_normal":
            nn.init.kaiming_normal_(m.weight, nonlinearity=gain_name)
        elif init == "xavier_uniform":
            nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(gain_name))
        elif init == "xavier_normal":
            nn.init.xavier_normal_(m.weight, gain=nn.init.calculate_gain(gain_name))
        elif init == "orthogonal":
            nn.init.orthogonal_(m.weight, gain=nn.init.calculate_gain(gain_name))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


@MODELS.register("mlp")
def mlp(
    spec: DataSpec,
    /,
    *,
    widths: list[PositiveInt] | None = None,
    depth: NonNegativeInt = 2,
    width: PositiveInt = 256,
    shape: Shape = "constant",
    activation: Activation = "relu",
    norm: Norm = "none",
    dropout: Dropout = 0.0,
    init: Init = "torch",
) -> nn.Module:
    """Fully connected net on flattened input; explicit `widths` or `depth` x `width` in a `shape`."""
    if widths is None:
        widths = hidden_widths(depth, width, shape)
    net = MLP(math.prod(spec.in_shape), spec.num_classes, list(widths), activation, norm, dropout)
    _initialise(net, init, activation)
    return net
