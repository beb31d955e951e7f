"""Where and how a run computes: the device, the autocast precision, the memory format,
and the comparisons the loop and its callbacks share (which metric value is better, are
tensors finite)."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Sequence

import torch
from torch import nn

from trainpipe.errors import ConfigError


def resolve_device(name: str, *, key: str = "train.device") -> torch.device:
    """The device `name` (auto, cpu, cuda, cuda:N, mps) means on this machine.

    A device this machine does not have is a ConfigError naming `key` and the devices it
    has, raised before anything is written (callers resolve the device first).
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        _check_cuda(device, name, key)
    elif device.type == "mps" and not _mps_available():
        import platform

        if sys.platform != "darwin":
            why = f"MPS is Apple's Metal backend, found only on Macs (this is {platform.system() or sys.platform})"
        elif not torch.backends.mps.is_built():
            why = "this torch build has no MPS support"
        else:
            why = "this Mac has no Metal GPU that torch can use (MPS needs macOS 12.3 or later)"
        raise ConfigError(f"{key}={name}: {why}. This machine has {_available()}. Use {key}=auto (the best "
                          f"device here) or one of those.")
    return device


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def _check_cuda(device: torch.device, name: str, key: str) -> None:
    if not torch.cuda.is_available():
        why = ("this torch build has no CUDA support (a CPU-only build)" if torch.version.cuda is None
               else "no NVIDIA GPU is visible (no GPU or driver, or CUDA_VISIBLE_DEVICES hides them)")
        raise ConfigError(f"{key}={name}: no CUDA GPU is available here: {why}. This machine has "
                          f"{_available()}. Use {key}=auto (a GPU when there is one, else the CPU) or {key}=cpu.")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"{key}={name}: this machine has {count} visible GPU{'s' if count != 1 else ''}, "
                          f"numbered from 0: {_available()}. Use {key}=cuda:N with N below {count} (or "
                          f"{key}=cuda for the first).")


def _available() -> str:
    """The devices this process can use, e.g. `cpu, cuda:0 (NVIDIA H100, 79 GiB)`."""
    names = ["cpu"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            try:
                p = torch.cuda.get_device_properties(i)
                names.append(f"cuda:{i} ({p.name}, {p.total_memory / 2**30:.0f} GiB)")
            except (RuntimeError, AssertionError):
                names.append(f"cuda:{i}")
    if _mps_available():
        names.append("mps")
    return ", ".join(names)


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
    channels-last natively: a training epoch on one thread took 0.85x the time for the
    quickstart, 0.62x for cifar10_cpu) and on CUDA (cuDNN's tensor-core kernels are NHWC;
    NCHW costs two transposes per layer), and
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


def memory_of(device: torch.device) -> tuple[int, str] | None:
    """(bytes, what they are) of the memory a run on `device` can use at most: a GPU's total
    memory, or the machine's RAM (the container's limit when lower); None when unknown."""
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return total, f"{device} has {format_bytes(total)} of GPU memory"
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        total = torch.mps.recommended_max_memory()
        return total, f"mps may use {format_bytes(total)} of this Mac's memory"
    if device.type != "cpu":
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    what = f"this machine has {format_bytes(total)} of memory"
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(open(limit_file).read().strip())  # "max" (no limit) is not a number
        except (OSError, ValueError):
            continue
        if limit < total:
            total, what = limit, f"this process may use {format_bytes(limit)} of memory (its container's limit)"
        break
    return total, what


def format_bytes(n: float) -> str:
    for size, unit in ((2**50, "PiB"), (2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB")):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} bytes"
