"""The lr curves: each registered schedule is a multiplier of the base lr over the run's time
t in epochs (see `trainpipe.sched` for how the loop applies it)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from trainpipe.config.types import (
    AtLeastOne,
    Fraction,
    Milestones,
    NonNegativeFloat,
    NonNegativeInt,
    OpenFraction,
    PositiveFloat,
    PositiveInt,
)
from trainpipe.errors import ConfigError
from trainpipe.registry import SCHEDULERS

Momentum = Annotated[float, Field(ge=0.0, lt=1.0, description="a momentum or Adam beta1, in [0, 1)")]


@dataclass(frozen=True)
class Horizon:
    """The context a schedule is built for: when it starts and ends (in epochs of the run)."""

    start: float
    end: float
    steps_per_epoch: int
    monitor_mode: Literal["max", "min"] = "max"
    key: str = "sched"  # dotted config key of the schedule's options, for error messages

    @property
    def span(self) -> float:
        return self.end - self.start


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


class Curve:
    """An lr multiplier over the run's time t (epochs); stateless unless a subclass keeps state.

    `shape(u)` gives the multiplier at u epochs after the curve's start, for u in [0, span];
    before the start the curve holds its first value, after the end its last.
    """

    # Whether `momentum(t)` may return a value (one-cycle's momentum cycling).
    cycles_momentum = False

    def __init__(self, horizon: Horizon, shape: Callable[[float], float]) -> None:
        self.horizon, self.shape = horizon, shape

    def _u(self, t: float) -> float:
        h = self.horizon
        return min(max(t - h.start, 0.0), h.span)

    def __call__(self, t: float) -> float:
        return self.shape(self._u(t))

    def momentum(self, t: float) -> float | None:
        """The momentum (SGD momentum, Adam-family beta1) at t, or None to leave it alone."""
        return None

    def final(self) -> float:
        """The multiplier the curve leaves at its end (the limit from the left), for `chain`."""
        return self(self.horizon.end)

    def floor(self, t: float) -> float:
        """An absolute lower bound on every group's lr (before warmup and lr scale)."""
        return 0.0

    def epoch_end(self, epoch: int, metric: float | None) -> None:
        """Called after each epoch's validation; stateless curves ignore it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def _anneal(a: float, b: float, p: float, how: str) -> float:
    """From a (p=0) to b (p=1), along a half cosine or a straight line."""
    if how == "cos":
        return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * p))
    return a + (b - a) * p


# Float times like 2.9999999 must count as epoch 3 when a schedule changes at epoch boundaries.
EPS = 1e-9


class Steps(Curve):
    """Piecewise constant: multiplied by gamma at each boundary (epochs after the start)."""

    def __init__(self, h: Horizon, boundaries: list[float], gamma: float) -> None:
        super().__init__(h, lambda u: gamma ** sum(u + EPS >= b for b in boundaries))
        self.boundaries, self.gamma = boundaries, gamma

    def final(self) -> float:
        # A drop that falls exactly on the end belongs to whatever comes next, not to this curve.
        return self.gamma ** sum(b < self.horizon.span - EPS for b in self.boundaries)


@SCHEDULERS.register("constant")
def constant(h: Horizon, /) -> Curve:
    """The base lr throughout (after any warmup)."""
    return Curve(h, lambda u: 1.0)


@SCHEDULERS.register("step")
def step(h: Horizon, /, *, step_size: PositiveInt = 30, gamma: PositiveFloat = 0.1) -> Curve:
    """Multiply the lr by gamma every step_size epochs."""
    return Steps(h, [k * step_size for k in range(1, int(h.span // step_size) + 1)], gamma)


@SCHEDULERS.register("multistep")
def multistep(h: Horizon, /, *, milestones: Milestones = [30, 60, 90], gamma: PositiveFloat = 0.1) -> Curve:  # noqa: B006
    """Multiply the lr by gamma at each milestone epoch (counted from the schedule's start)."""
    return Steps(h, [float(m) for m in milestones], gamma)


@SCHEDULERS.register("exponential")
def exponential(h: Horizon, /, *, gamma: PositiveFloat = 0.95) -> Curve:
    """Multiply the lr by gamma per epoch, continuously (gamma ** epochs)."""
    return Curve(h, lambda u: gamma**u)


@SCHEDULERS.register("cosine")
def cosine(h: Horizon, /, *, min_factor: Fraction = 0.0) -> Curve:
    """Half cosine from the base lr down to min_factor x base lr at the end of training."""
    return Curve(h, lambda u: _anneal(1.0, min_factor, u / h.span, "cos"))


@SCHEDULERS.register("linear")
def linear(h: Horizon, /, *, start_factor: NonNegativeFloat = 1.0, end_factor: NonNegativeFloat = 0.0) -> Curve:
    """Straight line from start_factor x base lr to end_factor x base lr over the run."""
    return Curve(h, lambda u: _anneal(start_factor, end_factor, u / h.span, "linear"))


class OneCycle(Curve):
    """torch's OneCycleLR (two phases) as a function of t, momentum cycling included.

    torch counts steps: over N steps the peak falls on step pct_start * N - 1 and the
    last step (N - 1) is at the minimum lr. The same positions in epochs are
    pct_start * span - one step and span - one step, one step being 1 / steps_per_epoch
    (the steps per epoch the schedule was built with).
    """

    def __init__(self, h: Horizon, *, pct_start: float, div_factor: float, final_div_factor: float, anneal: str,
                 momenta: tuple[float, float] | None) -> None:
        super().__init__(h, lambda u: 1.0)
        one_step = 1.0 / h.steps_per_epoch
        self.peak, self.end = pct_start * h.span - one_step, h.span - one_step
        self.first, self.last = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)
        self.how, self.momenta = anneal, momenta
        self.cycles_momentum = momenta is not None

    def _phase(self, u: float) -> tuple[bool, float]:
        """(in the rising phase, progress through that phase in [0, 1])."""
        if u <= self.peak:
            return True, u / self.peak if self.peak > 0 else 1.0
        return False, min((u - self.peak) / (self.end - self.peak), 1.0) if self.end > self.peak else 1.0

    def __call__(self, t: float) -> float:
        rising, p = self._phase(self._u(t))
        return _anneal(self.first, 1.0, p, self.how) if rising else _anneal(1.0, self.last, p, self.how)

    def momentum(self, t: float) -> float | None:
        if self.momenta is None:
            return None
        base, top = self.momenta
        rising, p = self._phase(self._u(t))
        # Momentum moves against the lr: high while the lr is low.
        return _anneal(top, base, p, self.how) if rising else _anneal(base, top, p, self.how)


@SCHEDULERS.register("onecycle")
def onecycle(h: Horizon, /, *, pct_start: OpenFraction = 0.3, div_factor: AtLeastOne = 25.0,
             final_div_factor: AtLeastOne = 1e4, anneal: Literal["cos", "linear"] = "cos",
             cycle_momentum: bool = True, base_momentum: Momentum = 0.85, max_momentum: Momentum = 0.95) -> Curve:
    """One cycle (Smith), as torch's OneCycleLR: from lr/div_factor up to the configured lr (the
    peak) at pct_start of the run, then down to lr/(div_factor*final_div_factor); momentum (SGD
    momentum, Adam-family beta1) goes from max_momentum down to base_momentum and back unless
    cycle_momentum is false."""
    return OneCycle(h, pct_start=pct_start, div_factor=div_factor, final_div_factor=final_div_factor,
                    anneal=anneal, momenta=(base_momentum, max_momentum) if cycle_momentum else None)


class Plateau(Curve):
    """ReduceLROnPlateau's rule on the monitored metric, kept as a multiplier.

    Hand-written because torch's class writes the optimizer's lr itself; the
    decision rule (threshold modes, patience, cooldown) is torch's, and the tests
    replay a metric sequence through both.
    """

    def __init__(self, h: Horizon, *, factor: float, patience: int, threshold: float,
                 threshold_mode: str, cooldown: int, min_lr: float) -> None:
        super().__init__(h, lambda u: 1.0)
        self.factor, self.patience, self.threshold = factor, patience, threshold
        self.threshold_mode, self.cooldown, self.min_lr = threshold_mode, cooldown, min_lr
        self.best = -math.inf if h.monitor_mode == "max" else math.inf
        self.bad_epochs = 0
        self.cooldown_left = 0
        self.reductions = 0

    def __call__(self, t: float) -> float:
        return self.factor**self.reductions

    def floor(self, t: float) -> float:
        return self.min_lr

    def _is_better(self, value: float) -> bool:
        rel = self.threshold_mode == "rel"
        if self.horizon.monitor_mode == "max":
            return value > (self.best * (1 + self.threshold) if rel else self.best + self.threshold)
        return value < (self.best * (1 - self.threshold) if rel else self.best - self.threshold)

    def epoch_end(self, epoch: int, metric: float | None) -> None:
        if metric is None or math.isnan(metric):
            return  # no validation this epoch: nothing to judge
        if self._is_better(metric):
            self.best, self.bad_epochs = float(metric), 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            self.reductions += 1
            self.cooldown_left, self.bad_epochs = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "cooldown_left": self.cooldown_left,
                "reductions": self.reductions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])
        self.cooldown_left, self.reductions = int(state["cooldown_left"]), int(state["reductions"])


@SCHEDULERS.register("plateau")
def plateau(h: Horizon, /, *, factor: OpenFraction = 0.1, patience: NonNegativeInt = 10,
            threshold: NonNegativeFloat = 1e-4,
            threshold_mode: Literal["rel", "abs"] = "rel", cooldown: NonNegativeInt = 0,
            min_lr: NonNegativeFloat = 0.0) -> Curve:
    """Multiply the lr by factor when the monitored metric stops improving for patience epochs."""
    return Plateau(h, factor=factor, patience=patience, threshold=threshold, threshold_mode=threshold_mode,
                   cooldown=cooldown, min_lr=min_lr)
