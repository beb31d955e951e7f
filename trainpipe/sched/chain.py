"""`chain`: schedules one after another, e.g. one-cycle for 15 epochs, then plateau.

Each member runs over its own span of the run, [its start epoch, the next one's
start), as if that span were the whole run: cosine anneals over its span, a
multistep milestone counts from the member's start. A member takes over from the
lr the previous one left (its multiplier is applied to the last value of the one
before), so the curve has no jump at a hand-off; the lr never springs back to the
base lr. A plateau's `min_lr` holds while that plateau is the active member.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any

from trainpipe.config.types import ComponentList
from trainpipe.errors import ConfigError
from trainpipe.registry import SCHEDULERS
from trainpipe.sched.curves import EPS, Curve, Horizon

if TYPE_CHECKING:
    from trainpipe.config import RunConfig


class Chain(Curve):
    def __init__(self, h: Horizon, members: list[Curve]) -> None:
        super().__init__(h, lambda u: 1.0)
        self.members = members
        self.cycles_momentum = any(m.cycles_momentum for m in members)

    def _active(self, t: float) -> int:
        return max(i for i, m in enumerate(self.members) if i == 0 or m.horizon.start <= t + EPS)

    def _carried(self, i: int) -> float:
        """The multiplier members before `i` left at their ends."""
        out = 1.0
        for m in self.members[:i]:
            out *= m.final()
        return out

    def __call__(self, t: float) -> float:
        i = self._active(t)
        return self._carried(i) * self.members[i](t)

    def floor(self, t: float) -> float:
        return self.members[self._active(t)].floor(t)

    def momentum(self, t: float) -> float | None:
        # A member that does not cycle momentum keeps the value the last one that did left,
        # as the lr continues from where the previous member left it.
        for m in reversed(self.members[: self._active(t) + 1]):
            value = m.momentum(t)
            if value is not None:
                return value
        return None

    def epoch_end(self, epoch: int, metric: float | None) -> None:
        # The member that was active when the epoch ended judges it.
        i = max(i for i, m in enumerate(self.members) if i == 0 or m.horizon.start < epoch + 1)
        self.members[i].epoch_end(epoch, metric)

    def state_dict(self) -> dict[str, Any]:
        return {"members": [m.state_dict() for m in self.members]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state["members"]
        if len(saved) != len(self.members):
            raise ValueError(f"schedule state has {len(saved)} chain members, the config has {len(self.members)}")
        for m, s in zip(self.members, saved):
            m.load_state_dict(s)


def check_handoffs(members: list[dict[str, Any]], cfg: RunConfig) -> None:
    """The members' hand-off epochs follow one another within the run (after any warmup in
    epochs). Called by `trainpipe.config.load` once each member is checked."""
    if not members:
        raise ConfigError("sched.schedulers: is empty; list the schedulers in order, e.g. "
                          "[{name: onecycle, until_epoch: 15}, {name: plateau}].")
    starts: list[float] = []
    for i, member in enumerate(members):
        key = f"sched.schedulers[{i}]"
        start, until = member.get("start_epoch"), member.get("until_epoch")
        for what, v in (("start_epoch", start), ("until_epoch", until)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise ConfigError(f"{key}.{what}: must be a whole epoch number, got {v!r}.")
        if i == 0:
            if start is not None:
                raise ConfigError(f"{key}.start_epoch: the first scheduler starts with the chain (epoch 0, or "
                                  f"when warmup ends); remove start_epoch.")
            starts.append(cfg.sched.warmup_epochs)
            continue
        before = members[i - 1].get("until_epoch")
        if start is None and before is None:
            raise ConfigError(f"{key}: says nowhere when it takes over; give it start_epoch: N, or give "
                              f"schedulers[{i - 1}] until_epoch: N.")
        if start is not None and before is not None and start != before:
            raise ConfigError(f"{key}.start_epoch: is {start} but schedulers[{i - 1}].until_epoch is {before}; "
                              f"they must agree (or keep one).")
        s = start if start is not None else before
        if s <= starts[-1]:
            raise ConfigError(f"{key}.start_epoch: ({s}) must come after the previous scheduler's start "
                              f"(epoch {starts[-1]:g}, after any warmup).")
        if cfg.train.epochs and s >= cfg.train.epochs:
            raise ConfigError(f"{key}.start_epoch: ({s}) must come before the end of training "
                              f"(epoch {cfg.train.epochs}).")
        starts.append(float(s))
    last_until = members[-1].get("until_epoch")
    if last_until is not None and cfg.train.epochs and not starts[-1] < last_until <= cfg.train.epochs:
        raise ConfigError(f"sched.schedulers[{len(members) - 1}].until_epoch: ({last_until}) must be after its "
                          f"start (epoch {starts[-1]:g}) and no later than the last epoch ({cfg.train.epochs}); "
                          f"after it the lr holds its last value.")


@SCHEDULERS.register("chain")
def chain(
    h: Horizon,
    /,
    *,
    schedulers: Annotated[list[dict[str, Any]], ComponentList(
        "scheduler", member_keys=("start_epoch", "until_epoch"), check=check_handoffs)],
) -> Curve:
    """Schedules one after another, each from the epoch it takes over (start_epoch or the
    previous one's until_epoch), continuing from the lr the previous one left.

    The members come checked and completed by `trainpipe.config.load` (each against its
    schedule's signature, then `check_handoffs`).
    """
    starts: list[float] = [h.start]
    for before, member in zip(schedulers, schedulers[1:]):
        starts.append(float(member.get("start_epoch", before.get("until_epoch"))))
    last_until = schedulers[-1].get("until_epoch")
    ends = starts[1:] + [float(last_until) if last_until is not None else h.end]
    members = []
    for i, (member, s, e) in enumerate(zip(schedulers, starts, ends)):
        opts = {k: v for k, v in member.items() if k not in ("name", "start_epoch", "until_epoch")}
        entry = SCHEDULERS.get(member["name"])
        members.append(entry.fn(replace(h, start=s, end=e, key=f"{h.key}.schedulers[{i}]"), **opts))
    return Chain(h, members)
