"""What every model gets on top of its architecture: a head protocol, input resizing
and a frozen backbone for linear probes.

The head protocol is timm's: `get_classifier()` returns the classification layer and
`reset_classifier(num_classes)` replaces it. timm models have it already; our own nets
inherit `HeadMixin`; torchvision nets get it from `TorchvisionNet` in zoo.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainpipe.data.base import DataSpec
from trainpipe.errors import ConfigError


class HeadMixin:
    """timm's head protocol for nets that keep their classifier as `self.head` (a Linear)."""

    head: nn.Module
    num_features: int  # width of the features the head reads, as in timm

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        old = self.head
        new = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        weight = getattr(old, "weight", None)
        if weight is not None:
            new = new.to(device=weight.device, dtype=weight.dtype)
        self.head = new


def head_modules(model: nn.Module) -> list[nn.Module]:
    """The classifier module(s) of a model; timm's distilled ViTs return two heads."""
    head = model.get_classifier()
    return list(head) if isinstance(head, (tuple, list)) else [head]


def head_prefixes(model: nn.Module) -> list[str]:
    """Dotted module paths of the head(s), e.g. ["fc"] or ["net.classifier.1"]."""
    ids = {id(m) for m in head_modules(model)}
    return [name for name, m in model.named_modules() if id(m) in ids and name]


def is_head_key(key: str, prefixes: list[str]) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def split_head_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone, head) parameters, e.g. for a smaller backbone learning rate."""
    prefixes = head_prefixes(model)
    backbone, head = [], []
    for name, p in model.named_parameters():
        (head if is_head_key(name, prefixes) else backbone).append(p)
    return backbone, head


# ------------------------------------------------------------------ input resize
class InputResize(nn.Module):
    """Bilinear resize of an image batch to `size` x `size`, on whatever device it is on.

    Upsampling on the device lets a 32 px dataset stay small in memory and in the
    loader while a net pretrained at 224 px sees the resolution it was trained at.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = (size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def _resize_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_resize(args[0]), *args[1:])


def add_input_resize(model: nn.Module, size: int) -> nn.Module:
    """Make `model` resize its input to `size` x `size` before anything else.

    The resize is a parameter-free child module called from a forward pre-hook rather
    than an outer wrapper, so the model keeps its class, its timm attributes, its
    head methods and the exact state-dict keys of the unresized net: a checkpoint
    loads into the same architecture with or without `model.input_size`.
    """
    model.add_module("input_resize", InputResize(size))
    model.register_forward_pre_hook(_resize_input)
    return model


# ------------------------------------------------------------------------ freeze
class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine terms, for inputs of any rank.

    torchvision's and timm's FrozenBatchNorm2d reshape to 4-D only; a linear probe on
    an MLP has BatchNorm1d layers too, so this one calls `F.batch_norm` in inference
    mode directly. State-dict keys match the layer it replaces.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        n = bn.num_features
        ref = bn.weight if bn.weight is not None else bn.running_mean
        kw = {"device": ref.device if ref is not None else None}
        self.eps = bn.eps
        self.affine = bn.affine
        for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            src = getattr(bn, name, None)
            value = src.detach().clone() if src is not None else torch.full((n,), fill, **kw)
            if name in ("weight", "bias"):
                # Frozen parameters rather than buffers: parameter counts stay comparable.
                self.register_parameter(name, nn.Parameter(value, requires_grad=False))
            else:
                self.register_buffer(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # Checkpoints of the unfrozen net carry a step counter this layer has no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.running_mean.numel()}, eps={self.eps}"


def freeze_backbone(model: nn.Module) -> nn.Module:
    """Linear probe: only the head trains; the backbone's weights and norm statistics stay fixed.

    Setting `requires_grad=False` alone would still let batch norm update its running
    statistics (and normalise with batch statistics) whenever the model is in training
    mode, so backbone batch-norm layers are swapped for `FrozenBatchNorm`.
    """
    prefixes = head_prefixes(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not is_head_key(full + ".", prefixes):
                setattr(module, child_name, FrozenBatchNorm(child))
    for name, p in model.named_parameters():
        p.requires_grad_(is_head_key(name, prefixes))
    return model


# ------------------------------------------------------------------------ checks
def image_channels(spec: DataSpec, name: str) -> int:
    """The channel count of image data; a ConfigError naming the model for vector data."""
    if not spec.is_image:
        raise ConfigError(
            f"model.name: {name} needs image input (C, H, W) but the data gives vectors of shape "
            f"{spec.in_shape}; use model.name=mlp for feature vectors."
        )
    return spec.in_shape[0]
