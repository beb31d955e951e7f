"""Model zoo: `build()` turns the `model` config section into an nn.Module.

Every model follows timm's head protocol (`get_classifier()`, `reset_classifier(n)`),
so transfer learning, linear probes and per-group learning rates work the same way
for our own nets, timm and torchvision.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from itertools import chain
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from trainpipe.data.base import DataSpec
from trainpipe.errors import ConfigError

from trainpipe.models.weights import load_weights
from trainpipe.models.wrap import add_input_resize, freeze_backbone, head_modules, split_head_parameters
from trainpipe.registry import MODELS

__all__ = ["build", "model_stats", "parameters_on_meta", "load_weights", "head_modules", "split_head_parameters"]


def _takes_pretrained(fn: object) -> bool:
    params = inspect.signature(fn).parameters
    p = params.get("pretrained")
    return p is not None and p.kind is inspect.Parameter.POSITIONAL_ONLY


def build(
    name: str,
    options: dict,
    spec: DataSpec,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    input_size: int | None = None,
    freeze: Literal["none", "backbone"] = "none",
) -> nn.Module:
    """Build model `name` with its `options` for data described by `spec`.

    pretrained:  the library's published weights (timm / torchvision; downloaded once).
    weights:     a local state dict or trainpipe checkpoint; a head for another class
                 count is left freshly initialised.
    input_size:  resize images to input_size x input_size inside the model, on the device.
    freeze:      "backbone" trains only the head (linear probe).
    """
    entry = MODELS.get(name, key="model.name")
    if pretrained and weights is not None:
        raise ConfigError(
            "model.pretrained / model.weights: set one of them: pretrained downloads the library's "
            "weights, weights loads a local file; both would load twice."
        )
    net_spec = spec
    if input_size is not None:
        if not spec.is_image:
            raise ConfigError(
                f"model.input_size: only images can be resized; the data gives vectors of shape "
                f"{spec.in_shape}. Remove model.input_size."
            )
        # The net is built for the size it will see after the resize.
        net_spec = dataclasses.replace(spec, in_shape=(spec.in_shape[0], input_size, input_size))
    context: tuple = (net_spec,)
    if pretrained:
        if not _takes_pretrained(entry.fn):
            raise ConfigError(
                f"model.pretrained: {name} has no published pretrained weights. Use model.name=timm "
                f"or model.name=torchvision with model.arch=<name> for those, or load your own "
                f"checkpoint with model.weights: PATH."
            )
        context = (net_spec, True)
    model = entry.fn(*context, **options)
    if weights is not None:
        load_weights(model, weights)
    if input_size is not None and tuple(spec.in_shape[1:]) != (input_size, input_size):
        add_input_resize(model, input_size)
    if freeze == "backbone":
        freeze_backbone(model)
    return model


def parameters_on_meta(name: str, options: dict, spec: DataSpec, *, input_size: int | None = None) -> int | None:
    """The number of parameters and buffer values model `name` would have, counted on a copy
    built on torch's meta device (shapes, no memory), so that a model too large for the machine
    is measured before anything is allocated. None when the model cannot be built there (a
    library net that reads tensor values while it is built); the real build then decides."""
    try:
        with torch.device("meta"):
            model = build(name, options, spec, input_size=input_size)
    except Exception:  # noqa: BLE001 - any failure here is the real build's to report
        return None
    return sum(t.numel() for t in chain(model.parameters(), model.buffers()))


def model_stats(model: nn.Module, spec: DataSpec) -> dict[str, int]:
    """Parameter counts and multiply-accumulates for one input sample.

    MACs are half of the FLOPs that torch's FlopCounterMode counts (matmuls and
    convolutions; element-wise ops are not counted) on one forward pass in eval mode,
    on CPU. The model's weights, buffers and train/eval modes are left as they were;
    a model already on an accelerator is measured on a CPU copy, so call this before
    moving it to keep that cheap.
    """
    params = list(model.parameters())
    stats = {
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
    }
    tensors = list(chain(params, model.buffers()))
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    probe = model if on_cpu else copy.deepcopy(model).cpu()
    modes = {m: m.training for m in probe.modules()}
    dtype = tensors[0].dtype if tensors and tensors[0].is_floating_point() else torch.float32
    try:
        probe.eval()
        from torch.utils.flop_counter import FlopCounterMode  # imports triton: only when counting

        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            probe(torch.zeros(1, *spec.in_shape, dtype=dtype))
    except RuntimeError as e:
        # Before any training: a net whose poolings or reshapes do not fit the image size
        # (LeNet on 8x8 digits, model.input_size too small) fails here, so say it as a
        # config problem instead of a crash, with torch's own words.
        said = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"model: the model cannot run on this data's inputs of shape {tuple(spec.in_shape)}: one forward "
            f"pass failed ({said}). Set model.input_size to resize the images inside the model, or choose a "
            f"model made for this image size."
        ) from None
    finally:
        for m, mode in modes.items():
            m.training = mode
    stats["macs_per_image"] = int(counter.get_total_flops()) // 2
    return stats
