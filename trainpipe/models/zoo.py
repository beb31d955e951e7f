"""Any timm or torchvision classifier by name, sized for the data.

timm and torchvision are imported when a model is built, not when the registry is
listed: `trainpipe list` and config checks stay quick.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from trainpipe.config.types import Dropout
from trainpipe.data.base import DataSpec
from trainpipe.errors import ConfigError, did_you_mean
from trainpipe.models.wrap import image_channels
from trainpipe.registry import MODELS

# Errors a weight download raises when offline or behind a proxy (URLError and the
# Hugging Face hub errors are OSErrors) or when the file arrives damaged.
_DOWNLOAD_ERRORS = (OSError, RuntimeError)


def _pretrained_failed(lib: str, arch: str, err: Exception) -> ConfigError:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ConfigError(
        f"model.pretrained: could not get the pretrained weights of {lib} model {arch!r} ({first}). "
        f"Pretrained weights are downloaded on first use and cached, which needs internet access; "
        f"download them on a machine that has it, or point model.weights at a local copy "
        f"(model.weights: PATH, a state dict or .safetensors file) and set model.pretrained=false."
    )


def _check_image_size(arch: str, expected: Any, spec: DataSpec) -> None:
    """Nets with position embeddings only take the size they were built for."""
    if expected is None:
        return
    size = tuple(expected) if isinstance(expected, (tuple, list)) else (expected, expected)
    if tuple(spec.in_shape[1:]) != tuple(size):
        raise ConfigError(
            f"model.input_size: {arch} takes {size[0]}x{size[1]} images but the data gives "
            f"{spec.in_shape[1]}x{spec.in_shape[2]}; set model.input_size={size[0]} to resize them "
            f"on the device."
        )


# -------------------------------------------------------------------------- timm
@MODELS.register("timm")
def timm_model(
    spec: DataSpec,
    pretrained: bool = False,
    /,
    *,
    arch: str = "resnet18",
    drop_rate: Dropout = 0.0,
    drop_path_rate: Dropout | None = None,
) -> nn.Module:
    """Any timm model by name (model.arch: resnet50, convnext_tiny, vit_small_patch16_224, ...)."""
    import timm

    in_chans = image_channels(spec, "timm")
    # "hf-hub:org/name" loads a model definition and weights from the Hugging Face hub.
    from_hub = arch.startswith(("hf-hub:", "hf_hub:"))
    if not from_hub and not timm.is_model(arch):
        raise ConfigError(
            f"model.arch: unknown timm model {arch!r}{did_you_mean(arch, timm.list_models()) or '.'} "
            f"List the names with `python -c \"import timm; print(timm.list_models('*resnet*'))\"`."
        )
    if pretrained and not from_hub and not (timm.list_pretrained(arch) or timm.list_pretrained(arch + ".*")):
        raise ConfigError(
            f"model.pretrained: timm publishes no pretrained weights for {arch!r}"
            f"{did_you_mean(arch, timm.list_pretrained()) or '.'} Train it from scratch "
            f"(model.pretrained=false) or pick a name from timm.list_pretrained()."
        )
    kwargs: dict[str, Any] = {"drop_rate": drop_rate}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        net = timm.create_model(
            arch, pretrained=pretrained, num_classes=spec.num_classes, in_chans=in_chans, **kwargs
        )
    except TypeError as e:
        if "drop" not in str(e):
            raise
        raise ConfigError(
            f"model.drop_rate / model.drop_path_rate: timm model {arch!r} does not take this "
            f"option ({e}); leave it unset for this architecture."
        ) from None
    except _DOWNLOAD_ERRORS as e:
        if not (pretrained or from_hub):
            raise
        raise _pretrained_failed("timm", arch, e) from None
    patch_embed = getattr(net, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "strict_img_size", False):
        _check_image_size(arch, getattr(patch_embed, "img_size", None), spec)
    return net


# ------------------------------------------------------------------- torchvision
# Auxiliary classifiers make the output a tuple in training mode; one head is enough.
_TORCHVISION_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False},
    "inception_v3": {"aux_logits": False},
}
_IMAGENET_CLASSES = 1000


class TorchvisionNet(nn.Module):
    """A torchvision classifier with timm's head protocol (get/reset_classifier).

    torchvision names its head fc, classifier[i], heads.head or head depending on the
    family; it is found once as the one layer with an output per ImageNet class.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        heads = [
            name
            for name, m in net.named_modules()
            if (isinstance(m, nn.Linear) and m.out_features == _IMAGENET_CLASSES)
            or (isinstance(m, nn.Conv2d) and m.out_channels == _IMAGENET_CLASSES)
        ]
        if len(heads) != 1:
            raise ConfigError(
                f"model.arch: cannot find the classification layer of torchvision model "
                f"{type(net).__name__} (found {len(heads)} candidates); use model.name=timm instead."
            )
        self.head_name = heads[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def get_classifier(self) -> nn.Module:
        return self.net.get_submodule(self.head_name)

    def reset_classifier(self, num_classes: int) -> None:
        old = self.get_classifier()
        if isinstance(old, nn.Conv2d):  # SqueezeNet classifies with a 1x1 conv
            new: nn.Module = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
        else:
            new = nn.Linear(old.in_features, num_classes)
        new = new.to(device=old.weight.device, dtype=old.weight.dtype)
        parent_name, _, child = self.head_name.rpartition(".")
        parent = self.net.get_submodule(parent_name) if parent_name else self.net
        setattr(parent, child, new)


def _adapt_first_conv(net: nn.Module, in_chans: int) -> None:
    """Give the stem `in_chans` inputs, adapting pretrained RGB kernels the way timm does."""
    from timm.models import adapt_input_conv

    for parent in net.modules():
        for name, conv in parent.named_children():
            if isinstance(conv, nn.Conv2d):
                new = nn.Conv2d(
                    in_chans,
                    conv.out_channels,
                    conv.kernel_size,
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    conv.groups,
                    conv.bias is not None,
                )
                with torch.no_grad():
                    new.weight.copy_(adapt_input_conv(in_chans, conv.weight))
                    if conv.bias is not None:
                        new.bias.copy_(conv.bias)
                setattr(parent, name, new)
                return


def torchvision_names() -> list[str]:
    """Classification models only (detection, segmentation and video live in submodules)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


@MODELS.register("torchvision")
def torchvision_model(spec: DataSpec, pretrained: bool = False, /, *, arch: str = "resnet18") -> nn.Module:
    """Any torchvision classification model by name (model.arch: resnet50, efficientnet_b0, ...)."""
    import torchvision

    in_chans = image_channels(spec, "torchvision")
    names = torchvision_names()
    if arch not in names:
        raise ConfigError(
            f"model.arch: unknown torchvision classification model {arch!r}{did_you_mean(arch, names) or '.'} "
            f"Valid names: {', '.join(names)}."
        )
    kwargs = dict(_TORCHVISION_KWARGS.get(arch, {}))
    if in_chans != 3 and arch in _TORCHVISION_KWARGS:
        kwargs["transform_input"] = False  # it re-normalises exactly three channels
    try:
        # Built with the 1000-class ImageNet head (pretrained weights need it), then resized.
        with warnings.catch_warnings():
            # inception_v3 and googlenet warn that their init will change; that is not ours to act on.
            warnings.simplefilter("ignore", FutureWarning)
            net = torchvision.models.get_model(arch, weights="DEFAULT" if pretrained else None, **kwargs)
    except _DOWNLOAD_ERRORS as e:
        if not pretrained:
            raise
        raise _pretrained_failed("torchvision", arch, e) from None
    _check_image_size(arch, getattr(net, "image_size", None), spec)
    if in_chans != 3:
        _adapt_first_conv(net, in_chans)
    model = TorchvisionNet(net)
    model.reset_classifier(spec.num_classes)
    return model
