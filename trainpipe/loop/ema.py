"""An exponential moving average of a model's weights, evaluated instead of the raw weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    """An exponential moving average of the weights (buffers copied as they are).

    timm's ModelEmaV3 does the same; ours keeps a `state_dict` that includes the
    update count so that the decay warm-up continues exactly after a resume.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay
        if self.warmup:
            # Early averages would be dominated by the random initialisation; the
            # (1 + n) / (10 + n) ramp is the one timm and TF use.
            d = min(d, (1 + self.updates) / (10 + self.updates))
        ema_p = list(self.module.parameters())
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.module.load_state_dict(d["module"])
        self.updates = d["updates"]
