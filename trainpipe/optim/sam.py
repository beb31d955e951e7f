"""SAM (sharpness-aware minimization), an optimizer torch does not ship.

This module holds the class and its registry entry (`optim.name: sam`), which declares
the closure step (`step="closure"`); a new closure optimizer is one module like this. It behaves like a plain
`torch.optim.Optimizer` towards the loop and the schedule: `param_groups` are the dicts
the schedule writes `lr` into, and `state_dict()` round-trips everything a resume needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any

import torch
from pydantic import PositiveFloat
from torch import nn
from torch.optim import Optimizer

from trainpipe.config.types import ComponentName
from trainpipe.registry import OPTIMIZERS


class SAM(Optimizer):
    """Sharpness-Aware Minimization (Foret et al. 2021) around any base optimizer.

    Written by hand because neither torch nor timm has it; it follows the
    reference implementation (github.com/davda54/sam). One `step(closure)`:
    climb from w to w + rho * g / ||g|| using the gradient already present,
    zero the gradients, let `closure()` recompute them at the climbed point,
    restore w exactly, then step the base optimizer with that second gradient.
    `adaptive=True` is ASAM (Kwon et al. 2021): the climb is scaled elementwise
    by |w|, so it is invariant to rescaling a layer's weights.

    The loop runs the second pass inside `second_pass(model)`: with `freeze_bn` (the
    default) BatchNorm's running statistics stay as the first pass left them, as the
    reference recipe does (its `disable_running_stats`: momentum 0), so they are not
    pulled towards the statistics of the perturbed weights.
    """

    # For code that drives a bare SAM (tests, notebooks): step() needs a closure. The loop
    # reads the registry entry's step="closure" instead.
    requires_closure = True

    def __init__(
        self,
        param_groups: Iterable[dict[str, Any]],
        base_factory: Callable[[list[dict[str, Any]]], Optimizer],
        *,
        rho: float = 0.05,
        adaptive: bool = False,
        freeze_bn: bool = True,
    ) -> None:
        if rho <= 0:
            raise ValueError(f"SAM needs rho > 0, got {rho}")
        self.rho, self.adaptive, self.freeze_bn = float(rho), bool(adaptive), bool(freeze_bn)
        super().__init__(list(param_groups), {})
        self.base_optimizer = base_factory(self.param_groups)
        # One set of group dicts for both, so a schedule writing `lr` here reaches the base.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @contextlib.contextmanager
    def second_pass(self, model: nn.Module) -> Iterator[None]:
        """Around the closure's forward: BatchNorm momentum 0 (with `freeze_bn`), restored after.

        `num_batches_tracked` is put back too, so it counts optimizer steps as without SAM
        and a BatchNorm with `momentum=None` (a cumulative average) stays exact.
        """
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               and m.training and m.track_running_stats] if self.freeze_bn else []
        saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
        for m in bns:
            m.momentum = 0.0
        try:
            yield
        finally:
            for m, (momentum, tracked) in zip(bns, saved):
                m.momentum = momentum
                m.num_batches_tracked.copy_(tracked)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise RuntimeError(
                "SAM needs a closure: call optimizer.step(closure) where closure() re-runs the "
                "forward and backward pass on the same batch and returns the loss."
            )
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            with torch.enable_grad():
                return closure()
        device = params[0].device
        scaled = [p.grad * p.abs() if self.adaptive else p.grad for p in params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s).to(device) for s in scaled]))
        scale = self.rho / (norm + 1e-12)
        # Keep the weights themselves (not the step) so that restoring them is exact.
        saved = [p.detach().clone() for p in params]
        for p, s in zip(params, scaled):
            climb = s * p.abs() if self.adaptive else s  # ASAM: T_w^2 g with T_w = |w|
            p.add_(climb * scale.to(p.device))
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
        for p, w in zip(params, saved):
            p.copy_(w)
        self.base_optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        # Loading replaces the base's group dicts; share the new ones again.
        self.param_groups = self.base_optimizer.param_groups


# step="closure": the loop passes step() a closure that re-runs forward and backward
# (trainpipe.loop.step.ClosureStep), and the config refuses what that step cannot do.
@OPTIMIZERS.register("sam", step="closure")
def sam(param_groups: list[dict[str, Any]], /, *,
        base: Annotated[str, ComponentName("optimizer", options="base_options")] = "sgd",
        rho: PositiveFloat = 0.05, adaptive: bool = False, base_options: dict[str, Any] | None = None,
        freeze_bn: bool = True) -> Optimizer:
    """Sharpness-Aware Minimization around any other optimizer (`base`); adaptive=true is ASAM;
    freeze_bn=false lets the second pass update BatchNorm's running statistics too."""
    entry = OPTIMIZERS.get(base, key="optim.base")
    opts = dict(base_options or {})  # checked against `base` with the config
    return SAM(param_groups, lambda groups: entry.fn(groups, **opts), rho=rho, adaptive=adaptive,
               freeze_bn=freeze_bn)
