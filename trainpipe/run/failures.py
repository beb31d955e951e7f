"""Failures of the machine, told apart from failures of the configuration.

A run that fails because the machine could not do it (out of memory on the CPU or a
GPU, a full disk, a GPU that fell off the bus) says nothing about its configuration: a
sweep records such a trial with its cause, does not rank it, and runs it again when the
sweep is run again (see the README's "Sweeps"). `classify` is the one place that
decides; the summary of the run and the sweep's results read its answer.
"""

from __future__ import annotations

import errno
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from trainpipe import files

OOM, DISK_FULL, DEVICE_LOST = "oom", "disk_full", "device_lost"
CAUSES = (OOM, DISK_FULL, DEVICE_LOST)

# The CPU allocator's words on Linux/macOS ("can't allocate memory") and Windows ("not enough
# memory"), CUDA's and MPS's out-of-memory errors (older torch raise them as RuntimeError).
_OOM_TEXT = re.compile(r"DefaultCPUAllocator: (can't allocate memory|not enough memory)|CUDA out of memory|"
                       r"MPS backend out of memory|out of memory", re.IGNORECASE)
# Errors after which the GPU cannot be used any more by this process (a reset, an Xid, a
# lost device); a configuration does not cause them.
_DEVICE_LOST_TEXT = re.compile(
    r"CUDA-capable device\(s\) is/are busy or unavailable|cudaErrorDevicesUnavailable|"
    r"unspecified launch failure|uncorrectable ECC error|GPU is lost|device has fallen off the bus|"
    r"CUDA error: (an illegal instruction was encountered|device not ready|launch timed out)|"
    r"cudaErrorDeviceUninitialized|no CUDA-capable device is detected", re.IGNORECASE)
_REQUESTED = re.compile(r"(?:allocate|tried to allocate)\s+([\d.]+)\s*(bytes|KiB|MiB|GiB|TiB|B)?", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "bytes": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

WHAT = {OOM: "out of memory", DISK_FULL: "disk full", DEVICE_LOST: "device lost"}
HINTS = {
    OOM: "lower data.batch_size, or run fewer --workers per GPU (workers on one GPU share its memory)",
    DISK_FULL: "free disk space (or move the sweep to a larger disk)",
    DEVICE_LOST: "check the GPU (nvidia-smi; the kernel log for Xid errors) or leave it out with --devices",
}


def advice(causes: Any) -> str:
    """What to do about these causes, in the order of CAUSES: `out of memory: lower ...; disk full: ...`."""
    return "; ".join(f"{WHAT[c]}: {HINTS[c]}" for c in CAUSES if c in set(causes))


RERUN_NOTE = ("These trials failed for a reason of the machine, not of their configuration: they are not ranked, "
              "and running the sweep again (`trainpipe sweep DIR`) retries them.")


@dataclass
class MachineFailure:
    cause: str  # oom | disk_full | device_lost
    error: str  # the exception, one line
    facts: dict[str, Any] = field(default_factory=dict)  # batch_size, peak_memory_mb, requested_mb

    def describe(self) -> str:
        """`out of memory (batch size 256, peak 11.2 GiB; tried to allocate 2.0 GiB)`."""
        f = self.facts
        parts = [f"batch size {f['batch_size']}" if f.get("batch_size") else "",
                 f"peak {fmt_mb(f['peak_memory_mb'])}" if f.get("peak_memory_mb") else "",
                 f"tried to allocate {fmt_mb(f['requested_mb'])}" if f.get("requested_mb") else ""]
        shown = ", ".join(p for p in parts if p)
        return f"{WHAT[self.cause]}{f' ({shown})' if shown else ''}: {self.error}"

    def record(self) -> dict[str, Any]:
        """What summary.json and a sweep's trial keep: the cause, the facts, the message."""
        return {"cause": self.cause, **{k: v for k, v in self.facts.items() if v is not None}}


def fmt_mb(mb: Any) -> str:
    if not isinstance(mb, (int, float)):
        return "-"
    return f"{mb / 1024:.1f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"


def classify(exc: BaseException) -> str | None:
    """The machine's cause of `exc` (oom, disk_full, device_lost), or None (the configuration's,
    or a bug). Looks through the exceptions that a library wrapped around the original."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        cause = _cause_of(e)
        if cause is not None:
            return cause
        e = e.__cause__ or e.__context__
    return None


def _cause_of(e: BaseException) -> str | None:
    if isinstance(e, MemoryError):
        return OOM
    torch = sys.modules.get("torch")
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if t)
    if oom_types and isinstance(e, oom_types):
        return OOM
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return DISK_FULL  # an OSError, or trainpipe's StorageError that names the file
    os_cause = files.storage_cause(e)
    if os_cause is not None and os_cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return DISK_FULL
    text = str(e)
    if type(e).__name__ == "OperationalError" and "database or disk is full" in text:
        return DISK_FULL  # SQLite (Optuna's storage) on a full disk
    if isinstance(e, RuntimeError) and _OOM_TEXT.search(text):
        return OOM
    if isinstance(e, RuntimeError) and _DEVICE_LOST_TEXT.search(text):
        return DEVICE_LOST
    return None


def machine_failure(exc: BaseException, *, batch_size: int | None = None,
                    device: Any = None) -> MachineFailure | None:
    """A `MachineFailure` for `exc` when the machine caused it, with what is known of the memory."""
    cause = classify(exc)
    if cause is None:
        return None
    facts: dict[str, Any] = {"batch_size": batch_size}
    if cause == OOM:
        facts["peak_memory_mb"] = peak_memory_mb(device)
        m = _REQUESTED.search(str(exc))
        if m:
            unit = (m.group(2) or "").lower() or None
            facts["requested_mb"] = round(float(m.group(1)) * _UNITS.get(unit, 1) / 2**20, 1)
    return MachineFailure(cause, one_line(exc), facts)


def one_line(exc: BaseException) -> str:
    """`Type: first line`, without the advice a lone run gives (to resume it): a sweep retries instead."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first.split(' The run stopped;')[0]}"[:300]


def peak_memory_mb(device: Any = None) -> float | None:
    """The peak memory of this process on `device`: the CUDA allocator's peak on a GPU, the
    peak resident set size on the CPU; None when unknown."""
    torch = sys.modules.get("torch")
    dev = str(device) if device is not None else "cpu"
    if torch is not None and dev.startswith("cuda"):
        try:
            return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        except Exception:  # the device may be what failed
            return None
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux
