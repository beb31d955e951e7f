"""Where and how a run computes: the device, the autocast precision, the memory format,
the process-wide torch settings a run holds while it runs, and the comparisons the loop
and its callbacks share (which metric value is better, are tensors finite)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

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

    `auto`: bf16 on GPUs with bf16 tensor cores (`has_fast_bf16`); fp16 (with a GradScaler)
    on older GPUs, where it is still several times faster than fp32, unless the optimizer
    cannot run under the scaler (`fp16_ok=False`, e.g. SAM); fp32 on the CPU and MPS.
    """
    if name == "auto":
        if device.type != "cuda":
            return None
        if has_fast_bf16(device):
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


def has_fast_bf16(device: torch.device) -> bool:
    """The GPU `device` (not the current one) computes bf16 in hardware: compute capability 8
    (Ampere: A100, RTX 30xx) or later. `torch.cuda.is_bf16_supported()` also says yes on a T4,
    P100 or V100, where bf16 is emulated: slower than fp16 and without cuDNN's convolutions."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def has_tf32(device: torch.device) -> bool:
    """The GPU `device` has TF32 tensor cores (compute capability 8, Ampere, or later), the
    same GPUs that have bf16 in hardware."""
    return has_fast_bf16(device)


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


# ----------------------------------------------------------------- process-wide settings
# cuBLAS reuses per-stream workspaces in an order that can change results from one run to the
# next; torch's deterministic mode requires one of these two fixed configurations (see
# "Reproducibility" in torch's notes). torch reads it when it first uses cuBLAS in a process.
CUBLAS_WORKSPACE = ":4096:8"
_CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"


@dataclasses.dataclass(frozen=True)
class TorchSettings:
    """The process-wide torch settings a run holds while it runs; None leaves one as found.

    To add a setting: a field here, its reading in `current_settings`, its writing in
    `apply_settings`, and its value in `settings_for`; `run_settings` then sets it when a run
    starts and puts the value found back when the run ends.
    """

    deterministic: bool | None = None  # torch.use_deterministic_algorithms
    deterministic_warn_only: bool = False  # ... only warning about ops that have no deterministic kernel
    cudnn_deterministic: bool | None = None
    cudnn_benchmark: bool | None = None  # cuDNN's autotuner (fastest with fixed batch shapes)
    matmul_precision: str | None = None  # torch.set_float32_matmul_precision: "highest" or "high" (TF32)
    cudnn_tf32: bool | None = None  # TF32 in cuDNN convolutions
    threads: int | None = None  # torch.set_num_threads: intra-op threads
    cublas_workspace: str | None = None  # CUBLAS_WORKSPACE_CONFIG ("" = unset)


def current_settings() -> TorchSettings:
    """Every setting of `TorchSettings` as this process has it now."""
    return TorchSettings(
        deterministic=torch.are_deterministic_algorithms_enabled(),
        deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn_deterministic=torch.backends.cudnn.deterministic,
        cudnn_benchmark=torch.backends.cudnn.benchmark,
        matmul_precision=_matmul_precision(),
        cudnn_tf32=_cudnn_tf32(),
        threads=torch.get_num_threads(),
        cublas_workspace=os.environ.get(_CUBLAS_ENV, ""),
    )


def apply_settings(s: TorchSettings) -> None:
    if s.deterministic is not None:
        torch.use_deterministic_algorithms(s.deterministic, warn_only=s.deterministic_warn_only)
    if s.cudnn_deterministic is not None:
        torch.backends.cudnn.deterministic = s.cudnn_deterministic
    if s.cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = s.cudnn_benchmark
    if s.matmul_precision is not None and s.matmul_precision != _matmul_precision():
        torch.set_float32_matmul_precision(s.matmul_precision)
    if s.cudnn_tf32 is not None and s.cudnn_tf32 != _cudnn_tf32():
        torch.backends.cudnn.allow_tf32 = s.cudnn_tf32
    if s.threads is not None and s.threads != torch.get_num_threads():
        torch.set_num_threads(s.threads)
    if s.cublas_workspace is not None:
        if s.cublas_workspace:
            os.environ[_CUBLAS_ENV] = s.cublas_workspace
        else:
            os.environ.pop(_CUBLAS_ENV, None)


def settings_for(train: Any, device: torch.device) -> TorchSettings:
    """What a run with these `train` options (config's TrainConfig) sets on `device`.

    `deterministic`: torch's deterministic algorithms, strictly (an op with no deterministic
    implementation raises instead of warning), cuDNN's deterministic convolutions, no
    autotuner, no TF32, and cuBLAS's fixed workspace. Otherwise, on a GPU: cuDNN's autotuner,
    which pays off with fixed batch shapes, and the fp32 math `train.precision` implies:
    with `auto`, `bf16` or `fp16` (mixed precision), TF32 for the fp32 matmuls and
    convolutions left outside autocast, on GPUs that have it (compute capability 8, Ampere,
    and later; before that the switches do nothing and are left as found); with `fp32`
    asked for by name, IEEE fp32 throughout (TF32 off, also in cuDNN, where torch's own
    default has it on). On the CPU and MPS a run changes none of these.
    """
    on_cuda = device.type == "cuda"
    if train.deterministic:
        workspace = (os.environ.get(_CUBLAS_ENV) or CUBLAS_WORKSPACE) if on_cuda else None
        return TorchSettings(deterministic=True, cudnn_deterministic=True, cudnn_benchmark=False,
                             matmul_precision="highest" if on_cuda else None,
                             cudnn_tf32=False if on_cuda else None, cublas_workspace=workspace)
    if not on_cuda:
        return TorchSettings()
    if getattr(train, "precision", "auto") == "fp32":
        return TorchSettings(cudnn_benchmark=True, matmul_precision="highest", cudnn_tf32=False)
    if has_tf32(device):
        return TorchSettings(cudnn_benchmark=True, matmul_precision="high", cudnn_tf32=True)
    return TorchSettings(cudnn_benchmark=True)


@contextlib.contextmanager
def run_settings(settings: TorchSettings) -> Iterator[TorchSettings]:
    """Hold `settings` while the block runs, then put back every setting as it was found, so
    a later run in the same process (a notebook, an in-process sweep) starts from the same state."""
    found = current_settings()
    apply_settings(settings)
    try:
        yield settings
    finally:
        apply_settings(found)


def release_run_caches(device: torch.device, *, compiled: bool) -> None:
    """Drop what a finished run leaves in the process that the next run (a sweep's next trial,
    a notebook cell) must not inherit: torch.compile's caches, whose recompile limit (8 per
    function) trials of other shapes would otherwise reach and then silently run eager; and
    the GPU memory cached by torch's allocator, which other processes sharing the GPU, and
    this process's next data-fit check, should see as free."""
    if compiled:
        torch.compiler.reset()
    if device.type == "cuda" and torch.cuda.is_initialized():
        gc.collect()  # the run's tensors held in reference cycles go first
        torch.cuda.empty_cache()


def _matmul_precision() -> str:
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        # Someone set torch.backends.cuda.matmul.fp32_precision, torch's newer switch, after
        # which the older getter refuses to answer: translate the newer one.
        return {"tf32": "high", "bf16": "medium"}.get(torch.backends.cuda.matmul.fp32_precision, "highest")


def _cudnn_tf32() -> bool:
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # as above, for cuDNN's convolutions
        return torch.backends.cudnn.conv.fp32_precision == "tf32"


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
