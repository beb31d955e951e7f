"""One optimizer step, as a replaceable unit: what happens once a group's gradients are in.

detectron2's `SimpleTrainer.run_step` / `AMPTrainer` is the model: the loop computes the
loss and its backward (with the precision, accumulation and DDP it owns), then hands the
step to a `Step` chosen by what the optimizer's registry entry declares:

    @OPTIMIZERS.register("name", step="closure")    ->  ClosureStep (SAM, in optim/sam.py)
    (no declaration)                                ->  PlainStep

Every step does the same frame (unscale for clipping or the non-finite check, skip a
step whose gradients are not finite, update the GradScaler, zero the gradients); the
two kinds differ only in `apply`. Clipping and the non-finite check live here once.
The config refuses what a step kind cannot do (`trainpipe.config.load`, from the same
declaration): a closure step runs outside the fp16 GradScaler and sees one batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from trainpipe.loop.device import all_finite
from trainpipe.registry import OPTIMIZERS

# The step kinds an optimizer entry may declare with `step=...`; "plain" when it declares none.
CLOSURE = "closure"
PLAIN = "plain"


class Step:
    """The frame every step shares; subclasses say how the optimizer steps (`apply`)."""

    fp16_ok = True  # can run under the fp16 GradScaler (train.precision=fp16 / auto on old GPUs)

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *,
                 grad_clip: float | None, skip_nonfinite: bool) -> None:
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.grad_clip, self.skip_nonfinite = grad_clip, skip_nonfinite

    def __call__(self, loss: torch.Tensor, recompute: Callable[[], torch.Tensor]) -> bool:
        """Step with the gradients now in the parameters (`loss` is the batch's, before
        scaling); `recompute()` is the same batch's loss again, for steps that need it.
        False when the step was skipped (`train.on_nonfinite: skip_step`)."""
        if self.grad_clip is not None or self.skip_nonfinite:
            self.scaler.unscale_(self.optimizer)
        if self.skip_nonfinite and not self.grads_finite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()  # with fp16, an overflow also lowers the loss scale
            return False
        self.apply(recompute)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def apply(self, recompute: Callable[[], torch.Tensor]) -> None:
        raise NotImplementedError

    def clip(self) -> None:
        if self.grad_clip is not None:
            # `foreach` is torch's choice: its fast kernels where the device has them; an explicit
            # foreach=True raises on devices without them (Apple's MPS).
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)

    def grads_finite(self, loss: torch.Tensor) -> bool:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        # The documented host sync of skip_step: the step must be decided now.
        return bool(all_finite(grads) & loss.detach().isfinite())


class PlainStep(Step):
    """Clip, then `optimizer.step()` through the GradScaler."""

    def apply(self, recompute: Callable[[], torch.Tensor]) -> None:
        self.clip()
        self.scaler.step(self.optimizer)


class ClosureStep(Step):
    """`optimizer.step(closure)` for optimizers that re-evaluate the loss (SAM-like).

    The closure re-runs forward and backward on the same batch (inside the optimizer's
    `second_pass(model)` context when it has one: SAM keeps BatchNorm statistics there)
    and clips that second gradient, which is the one the optimizer steps with; the first
    only sets the direction.
    """

    fp16_ok = False  # the closure's backward runs outside the GradScaler: its gradients would stay scaled

    def apply(self, recompute: Callable[[], torch.Tensor]) -> None:
        second_pass = getattr(self.optimizer, "second_pass", None)

        def closure() -> torch.Tensor:
            with second_pass(self.model) if second_pass is not None else contextlib.nullcontext():
                loss = recompute()
            loss.backward()
            self.clip()
            return loss

        self.optimizer.step(closure)


STEPS: dict[str, type[Step]] = {PLAIN: PlainStep, CLOSURE: ClosureStep}


def step_class(optimizer_name: str) -> type[Step]:
    """The step kind the optimizer's registry entry declares (`step=...`), PlainStep by default."""
    entry = OPTIMIZERS.find(optimizer_name)
    return STEPS[entry.traits.get("step", PLAIN) if entry is not None else PLAIN]
