"""GPUs emulated on the CPU: torch.cuda's queries answer as they would on a machine with
the given GPUs (their compute capabilities), with the same semantics as torch's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

T4, V100, A100, H100 = (7, 5), (7, 0), (8, 0), (9, 0)


def _index(device: Any) -> int | None:
    if isinstance(device, torch.device):
        return device.index
    if isinstance(device, str):
        return torch.device(device).index
    return device


def fake_gpus(monkeypatch: pytest.MonkeyPatch, capabilities: Sequence[tuple[int, int]]) -> None:
    """Pretend this process sees one GPU per entry of `capabilities`, device 0 current.
    Asking about an index past the last one raises, as torch does."""
    caps = list(capabilities)

    def capability(device: Any = None) -> tuple[int, int]:
        index = _index(device)
        index = 0 if index is None else index
        if not 0 <= index < len(caps):
            raise AssertionError("Invalid device id")  # torch's own words for an index past the count
        return caps[index]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(caps))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(caps))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    # True on every GPU from Pascal on: bf16 is emulated before compute capability 8.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bool(caps))
    monkeypatch.setattr(torch.cuda, "get_device_name",
                        lambda device=None: f"emulated GPU, compute capability {capability(device)}")
