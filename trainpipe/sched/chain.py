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
from typing import Any

from trainpipe.registry import SCHEDULERS
from trainpipe.sched.curves import EPS, Curve, Horizon, require


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


def _epoch(value: Any, key: str) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    require(ok, key, f"must be a whole epoch number, got {value!r}.")
    return value


@SCHEDULERS.register("chain")
def chain(h: Horizon, /, *, schedulers: list[dict[str, Any]]) -> Curve:
    """Schedules one after another, each from the epoch it takes over (start_epoch or the
    previous one's until_epoch), continuing from the lr the previous one left."""
    from trainpipe.optim import check_options

    require(len(schedulers) > 0, f"{h.key}.schedulers",
             "is empty; list the schedulers in order, e.g. [{name: onecycle, until_epoch: 15}, {name: plateau}].")
    specs = []
    for i, raw in enumerate(schedulers):
        key = f"{h.key}.schedulers[{i}]"
        opts = dict(raw)
        name = opts.pop("name", None)
        require(name is not None, f"{key}.name", "is missing; name the scheduler, e.g. name: cosine.")
        require(name != "chain", f"{key}.name", "a chain cannot hold another chain; list its members here instead.")
        entry = SCHEDULERS.get(str(name), key=f"{key}.name")
        start = opts.pop("start_epoch", None)
        until = opts.pop("until_epoch", None)
        specs.append((key, entry, None if start is None else _epoch(start, f"{key}.start_epoch"),
                      None if until is None else _epoch(until, f"{key}.until_epoch"), opts))

    starts: list[float] = []
    for i, (key, _, start, _, _) in enumerate(specs):
        if i == 0:
            require(start is None, f"{key}.start_epoch",
                     "the first scheduler starts with the chain (epoch 0, or when warmup ends); remove start_epoch.")
            starts.append(h.start)
            continue
        before = specs[i - 1][3]
        require(start is not None or before is not None, key,
                 f"says nowhere when it takes over; give it start_epoch: N, "
                 f"or give schedulers[{i - 1}] until_epoch: N.")
        require(start is None or before is None or start == before, f"{key}.start_epoch",
                 f"is {start} but schedulers[{i - 1}].until_epoch is {before}; they must agree (or keep one).")
        s = start if start is not None else before
        require(s > starts[-1], f"{key}.start_epoch",
                 f"({s}) must come after the previous scheduler's start (epoch {starts[-1]:g}, after any warmup).")
        require(s < h.end, f"{key}.start_epoch", f"({s}) must come before the end of training (epoch {h.end:g}).")
        starts.append(float(s))
    last_until = specs[-1][3]
    if last_until is not None:
        require(starts[-1] < last_until <= h.end, f"{specs[-1][0]}.until_epoch",
                 f"({last_until}) must be after its start (epoch {starts[-1]:g}) and no later than the last epoch "
                 f"({h.end:g}); after it the lr holds its last value.")
    ends = starts[1:] + [float(last_until) if last_until is not None else h.end]

    members = []
    for (key, entry, _, _, opts), s, e in zip(specs, starts, ends):
        members.append(entry.fn(replace(h, start=s, end=e, key=key), **check_options(entry, opts, key=key)))
    return Chain(h, members)
