"""Where and how a run computes: the device, the autocast precision, the memory format,
and the comparisons the loop and its callbacks share (which metric value is better, are
tensors finite)."""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence

import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device, *, fp16_ok: bool = True) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    `auto`: bf16 on GPUs that have it; fp16 (with a GradScaler) on older GPUs, where it is
    still several times faster than fp32, unless the optimizer cannot run under the scaler
    (`fp16_ok=False`, e.g. SAM); fp32 on the CPU, where autocast is slower for these nets.
    """
    if name == "auto":
        if device.type != "cuda":
            return None
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if fp16_ok else None
    if name == "fp16" and device.type == "cpu":
        _warn_fp16_on_cpu()
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def resolve_channels_last(setting: bool | str, model: nn.Module, device: torch.device) -> tuple[bool, str]:
    """(channels-last or not, why) for `train.channels_last`; `true`/`false` are kept as given.

    `auto` is on for a model with 2-D convolutions on the CPU (oneDNN's convolutions run
    channels-last natively: the resnet18 CIFAR-10 epoch took 79 s instead of 87 s) and on
    CUDA (cuDNN's tensor-core kernels are NHWC; NCHW costs two transposes per layer), and
    off on MPS, whose 2-D convolution backward is built in NCHW and gathers channels-last
    inputs through the strided API (pytorch/pytorch#193349: about 30x slower per call).
    Without 2-D convolutions (MLPs, 1-D inputs) it is off: the format would only add copies.
    Models are recognised by their nn.Conv2d modules (timm's and torchvision's convolution
    layers are subclasses of it).
    """
    if isinstance(setting, bool):
        return setting, f"train.channels_last={str(setting).lower()}"
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False, "auto: the model has no 2-D convolutions"
    if device.type in ("cpu", "cuda"):
        return True, f"auto: 2-D convolutions on {device.type}"
    return False, f"auto: 2-D convolutions are faster in the default format on {device.type}"


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.preserve_format


_fp16_warned = False


def _warn_fp16_on_cpu() -> None:
    # fp16 autocast on a CPU is emulated: several times slower than fp32 (see the README's
    # troubleshooting section), and people write it meaning "mixed precision on".
    global _fp16_warned
    if _fp16_warned:
        return
    _fp16_warned = True
    print("warning: train.precision=fp16 on a CPU: CPUs have no fast fp16, so this runs many times slower "
          "than fp32 (see the README, Troubleshooting). Use train.precision=auto, which picks fp32 on the CPU "
          "and bf16 or fp16 on a GPU.", file=sys.stderr)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def is_better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best + min_delta if mode == "max" else value < best - min_delta


def all_finite(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor on the device: every element of every tensor is finite."""
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return torch.stack([t.detach().isfinite().all() for t in tensors]).all()
