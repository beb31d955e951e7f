"""The batch-size schedule (`train.batch_size_schedule`) and the lr scaling that goes with it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal


def batch_size_at(epoch: int, base: int, schedule: Mapping[int, int] | None) -> int:
    """The batch size for `epoch` (0-based): the entry with the latest start epoch <= `epoch`,
    or `base` before the first entry."""
    if not schedule:
        return base
    size = base
    for start, bs in sorted((int(k), int(v)) for k, v in schedule.items()):
        if start <= epoch:
            size = bs
    return size


def lr_scale_for(batch_size: int, base_batch_size: int, mode: Literal["none", "linear", "sqrt"]) -> float:
    """The lr multiplier for `batch_size` given lrs tuned at `base_batch_size`:
    1 (none), the ratio (linear, Goyal et al.) or its square root (sqrt, for adaptive optimizers)."""
    ratio = batch_size / base_batch_size
    if mode == "none":
        return 1.0
    if mode == "linear":
        return ratio
    return math.sqrt(ratio)  # sqrt
