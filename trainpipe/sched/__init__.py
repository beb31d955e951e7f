"""Learning-rate schedules as pure functions of fractional epochs: `build()` and `Schedule`.

The loop calls `Schedule.step(t)` before every optimizer step with
t = epoch + batch_index / batches_in_epoch, and the lr of every param group is set to

    lr = factors * warmup(t) * max(base_lr * curve(t), floor)

where `base_lr` is the group's own (see optim.param_groups), `curve` the registered
schedule's multiplier, `floor` the plateau's `min_lr` (0 elsewhere) and `factors` the
product of the named factors others contribute through `set_factor` (the batch-size
schedule's lr scaling, the halving of each NaN rollback). The schedule is the only
writer of a group's lr (and, for one-cycle, of its momentum): the factors live in its
state, so resume restores them with it. Because t is the time in epochs rather than a
count of steps, the lr stays exact across resume and when the batch size (hence the
number of steps per epoch) changes, as nanoGPT's `get_lr(it)` does for steps.

torch.optim.lr_scheduler is not used: its schedulers count `step()` calls and keep
the lr in the optimizer, so they drift when steps per epoch change and cannot hand
over from one to the next at an arbitrary epoch. The formulas below are torch's
(CosineAnnealingLR, OneCycleLR, StepLR, ..., ReduceLROnPlateau), written as
functions of t; tests check them against torch at a fixed steps per epoch.

Warmup takes the first `warmup_epochs` (or `warmup_steps`) and the schedule runs
over the rest, nanoGPT style: cosine reaches its minimum at the last epoch, and
epoch counts inside a schedule (`step_size`, `milestones`) start when it starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from torch.optim import Optimizer

from trainpipe.registry import SCHEDULERS
from trainpipe.sched.curves import Curve, Horizon, require


class Schedule:
    """Sets every param group's lr from the time t in epochs; see the module docstring."""

    def __init__(self, optimizer: Optimizer, curve: Curve, *, warmup_epochs: float, steps_per_epoch: int) -> None:
        self.optimizer, self.curve = optimizer, curve
        self.warmup = warmup_epochs
        # The ramp starts one step in (nanoGPT's (it + 1) / (warmup + 1)), so the first
        # batch is not spent at lr 0.
        self._one_step = 1.0 / steps_per_epoch
        # Each group's base lr as the config set it (optim.param_groups), read once here;
        # a resumed run builds a new schedule from its (possibly overridden) config.
        self.base_lrs = [float(g.get("base_lr", g["lr"])) for g in optimizer.param_groups]
        self.factors: dict[str, float] = {}
        self._factor = 1.0
        self._cycles_momentum = curve.cycles_momentum  # looked up once: step() is on the hot path
        self.t = 0.0
        self.step(0.0)

    def warmup_factor(self, t: float) -> float:
        if t >= self.warmup:
            return 1.0
        return (t + self._one_step) / (self.warmup + self._one_step)

    def step(self, t: float) -> None:
        """Set the lrs (and a cycled momentum) for the optimizer step taken at time t (epochs, fractional)."""
        self.t = float(t)
        mult, floor = self.curve(self.t), self.curve.floor(self.t)
        outer = self._factor * self.warmup_factor(self.t)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = outer * max(base * mult, floor)
        if self._cycles_momentum:
            self._set_momentum(self.curve.momentum(self.t))

    def _set_momentum(self, m: float | None) -> None:
        # Where torch's OneCycleLR puts it: beta1 of Adam-family optimizers, else `momentum`.
        # Groups with neither (Adagrad, ...) are left alone.
        if m is None:
            return
        for g in self.optimizer.param_groups:
            if "betas" in g:
                g["betas"] = (m, *g["betas"][1:])
            elif "momentum" in g:
                g["momentum"] = m

    def epoch_end(self, epoch: int, metric: float | None) -> None:
        """Report the monitored metric after epoch `epoch` (0-based); warmup epochs are not judged."""
        if epoch + 1 > self.curve.horizon.start:
            self.curve.epoch_end(epoch, None if metric is None else float(metric))

    def set_factor(self, name: str, value: float) -> None:
        """Multiply every lr from now on by `value` under `name`, replacing that name's previous
        factor: `batch_size` (lr scaling with the batch-size schedule), `rollback` (NaN rollbacks)."""
        self.factors[name] = float(value)
        self._factor = math.prod(self.factors.values())
        self.step(self.t)

    def factor(self, name: str) -> float:
        return self.factors.get(name, 1.0)

    def current_lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "factors": dict(self.factors), "curve": self.curve.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.curve.load_state_dict(state["curve"])
        # Checkpoints written before the named factors held the batch-size scaling as `lr_scale`.
        saved = state.get("factors", {"batch_size": state.get("lr_scale", 1.0)})
        self.factors = {k: float(v) for k, v in saved.items()}
        self._factor = math.prod(self.factors.values())
        self.step(float(state["t"]))


def build(
    name: str,
    options: Mapping[str, Any],
    optimizer: Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    warmup_steps: int = 0,
    monitor_mode: Literal["max", "min"] = "max",
) -> Schedule:
    """The schedule `name` with `options` over `epochs`, after a linear warmup of
    `warmup_epochs` (or `warmup_steps`, converted with `steps_per_epoch`)."""
    # `name`, `options` and the warmup come from a validated config; what the config cannot
    # know is the number of steps per epoch (the data's size), which warmup_steps depends on.
    require(steps_per_epoch >= 1, "data.batch_size", "leaves no training batch per epoch; lower the batch size.")
    warmup = warmup_epochs + warmup_steps / steps_per_epoch
    # A run with no epochs still builds (it only evaluates); give the curve a unit span.
    end = float(epochs) if epochs > 0 else warmup + 1.0
    require(warmup < end, "sched.warmup_steps",
            f"warmup ({warmup_steps} steps = {warmup:g} epochs) must end before training does ({epochs} epochs).")
    entry = SCHEDULERS.get(name, key="sched.name")
    opts = dict(options)
    horizon = Horizon(start=warmup, end=end, steps_per_epoch=steps_per_epoch, monitor_mode=monitor_mode)
    curve = entry.fn(horizon, **opts)
    return Schedule(optimizer, curve, warmup_epochs=warmup, steps_per_epoch=steps_per_epoch)
