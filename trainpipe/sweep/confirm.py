"""`confirm: {top: 3, seeds: 5}`: screen every configuration, then confirm the best with more seeds.

A sweep with a `confirm:` block runs in two stages. **Screening**: the method (grid, random,
bayes) runs its trials as it would without the block, each configuration once (or once per
value of the file's `seed` parameter). **Confirmation**: once screening is over, the `top`
configurations by their screening mean are run again with new seeds until each has `seeds`
runs; results then rank every configuration by the mean over all its runs.

Which trial comes next while confirming (the seed-aware rule): the configurations of the top
that cannot be told apart from the current best (`sweep.verdict`: Welch's test at p >= 0.05,
or fewer than two finished runs on either side) get their seeds first, fewest runs first;
configurations already clearly beaten by the best get theirs last. A sweep cut by its budget
has then spent its seeds where they change the answer.

A confirmation trial is an ordinary Optuna trial, queued (`Study.enqueue_trial`) with the
parameters of the configuration's first screening trial and the user attribute
`CONFIRM_ATTR` = {"seed": s}; the worker trains it with `seed=s`. Its seed is the smallest
whole number >= 0 that the configuration has not run with. Two workers that queue the same
(configuration, seed) at once are sorted out as grid points are: the lower trial number keeps
it, the other is discarded before it trains. A confirmation trial lost with its worker is
queued again with its attribute (Optuna's retry copies user attributes), so a crash or a
resume neither loses nor repeats one.

With a budget, screening may spend at most `SCREEN_SHARE` of it: a screening trial starts
only if it would end inside that share, so that confirmation has the rest.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainpipe.sweep.spec import Confirm, SweepSpec, parse_confirm  # noqa: F401 (the block is the spec's)

CONFIRM_ATTR = "trainpipe:confirm"  # a confirmation trial's user attribute: {"seed": s}
SCREEN_SHARE = 0.7  # of a budget, what screening may spend; confirmation gets the rest
SCREEN, CONFIRM = "screen", "confirm"  # the stage column of results


# ------------------------------------------------------------------ trials
def is_confirmation(trial: Any) -> bool:
    return CONFIRM_ATTR in (trial.user_attrs or {})


def confirm_seed(trial: Any) -> int | None:
    rec = (trial.user_attrs or {}).get(CONFIRM_ATTR)
    return int(rec["seed"]) if isinstance(rec, Mapping) and "seed" in rec else None


def seed_override(trial: Any) -> dict[str, Any]:
    """The config override that makes a confirmation trial run with its own seed ({} for others)."""
    s = confirm_seed(trial)
    return {} if s is None else {"seed": s}


@functools.lru_cache(maxsize=16)
def _base_seed(base: str | None, overrides: str) -> int:
    from trainpipe import config as config_mod

    return int(config_mod.load(base, json.loads(overrides)).seed)


def screening_seed(spec: SweepSpec) -> int:
    """The seed every screening trial trains with when the sweep varies no seed."""
    try:
        return _base_seed(spec.base, json.dumps(spec.constant_overrides(), sort_keys=True, default=str))
    except Exception:
        return 0


def seed_of(trial: Any, spec: SweepSpec) -> Any:
    """The seed a trial (a FrozenTrial) trains with."""
    s = confirm_seed(trial)
    if s is not None:
        return s
    sp = spec.seed_param
    if sp is not None and sp.display in trial.params:
        return sp.from_stored(trial.params[sp.display])
    return screening_seed(spec)


def rebuilt_mark(spec: SweepSpec, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """For a study rebuilt from its trial directories (`sweep.rebuild`): the config to replay a trial's
    parameters from, and its confirmation attribute ({} for a screening trial). A trial is taken for a
    confirmation trial when its seed is not one that screening uses: the base config's (no seed
    parameter), or one of the seed parameter's values."""
    seed = config.get("seed")
    if spec.confirm is None or seed is None:
        return config, {}
    sp = spec.seed_param
    if sp is None:
        return config, ({} if seed == screening_seed(spec) else {CONFIRM_ATTR: {"seed": seed}})
    if sp.distribution != "categorical" or any(v == seed for v in sp.values):
        return config, {}
    return {**config, "seed": sp.values[0]}, {CONFIRM_ATTR: {"seed": seed}}


def screening(led: Any) -> Any:
    """The ledger `led` (`study.Ledger`) without its confirmation trials."""
    from trainpipe.sweep.study import Ledger

    return Ledger([t for t in led.visible if not is_confirmation(t)], led.superseded, led.discarded)


def duplicate_of(me: Any, earlier: list[Any], spec: SweepSpec) -> Any | None:
    """An earlier trial with the same configuration and seed as the confirmation trial `me`."""
    from trainpipe.sweep.study import point_of

    keys = [p.display for p in spec.config_params]
    mine = (point_of(me, keys), repr(seed_of(me, spec)))
    return next((t for t in earlier if (point_of(t, keys), repr(seed_of(t, spec))) == mine), None)


# ------------------------------------------------------------------ what to confirm
@dataclass
class _Config:
    point: tuple
    trials: list[Any]  # its visible trials, any state, screening and confirmation

    def values(self, confirmation: bool = True) -> list[float]:
        from optuna.trial import TrialState

        return [float(t.value) for t in self.trials if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value) and (confirmation or not is_confirmation(t))]


def _configs(spec: SweepSpec, trials: list[Any]) -> list[_Config]:
    from trainpipe.sweep.study import point_of

    keys = [p.display for p in spec.config_params]
    groups: dict[tuple, _Config] = {}
    for t in sorted(trials, key=lambda t: t.number):
        pt = point_of(t, keys)
        if pt is not None:
            groups.setdefault(pt, _Config(pt, [])).trials.append(t)
    return list(groups.values())


def top_configs(spec: SweepSpec, trials: list[Any]) -> list[_Config]:
    """The `top` configurations by their screening mean (ties: the first trial's number)."""
    assert spec.confirm is not None
    sign = -1.0 if spec.goal == "maximize" else 1.0
    scored = [c for c in _configs(spec, trials) if c.values(confirmation=False)]
    scored.sort(key=lambda c: (sign * sum(c.values(False)) / len(c.values(False)), c.trials[0].number))
    return scored[: spec.confirm.top]


def needed(spec: SweepSpec, trials: list[Any]) -> list[tuple[dict[str, Any], int]]:
    """The confirmation trials still to queue, first to run first, as (Optuna params, seed).

    `trials`: the visible trials (any state). A configuration of the top has as many runs as it
    has visible trials (running, queued and failed ones included, so a failure is not retried
    forever); it needs `seeds` minus that many more."""
    from trainpipe.sweep import verdict as vd

    assert spec.confirm is not None
    top = top_configs(spec, trials)
    if not top:
        return []
    sign = -1.0 if spec.goal == "maximize" else 1.0
    best = min(top, key=lambda c: (sign * _mean(c.values()), c.trials[0].number))

    def contested(c: _Config) -> bool:
        a, b = best.values(), c.values()
        return c is best or len(a) < 2 or len(b) < 2 or not vd.welch(a, b, spec.goal).real

    queues: list[list[int]] = []
    for c in top:
        used = {repr(seed_of(t, spec)) for t in c.trials}
        seeds, s = [], 0
        for _ in range(spec.confirm.seeds - len(c.trials)):
            while repr(s) in used:
                s += 1
            used.add(repr(s))
            seeds.append(s)
        queues.append(seeds)
    # In the order they would run: contested first, then the one with the fewest runs, then by rank.
    runs = [len(c.trials) for c in top]
    keys = [not contested(c) for c in top]
    out: list[tuple[dict[str, Any], int]] = []
    while any(queues):
        i = min((i for i in range(len(top)) if queues[i]), key=lambda i: (keys[i], runs[i], i))
        first = next((t for t in top[i].trials if not is_confirmation(t)), top[i].trials[0])
        out.append((dict(first.params), queues[i].pop(0)))
        runs[i] += 1
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.inf


def planned_extra(spec: SweepSpec, screening_trials: int | None) -> int:
    """How many confirmation trials a complete sweep adds to `screening_trials` (0 without confirm)."""
    if spec.confirm is None:
        return 0
    sp = spec.seed_param
    per = len(sp.values) if sp is not None and sp.distribution == "categorical" and sp.values else 1
    configs = spec.confirm.top if screening_trials is None else max(screening_trials // per, 1)
    return min(spec.confirm.top, configs) * max(spec.confirm.seeds - per, 0)


# ------------------------------------------------------------------ the worker's decision
def step(wc: Any, led: Any, action: str, took: list[float]) -> tuple[str, tuple[dict[str, Any], int] | None]:
    """The worker loop's decision for a sweep with `confirm:`: ('run' | 'wait' | 'done', the
    confirmation trial to queue before running, if any). `action`: `worker.next_action` on the
    screening trials alone."""
    from optuna.trial import TrialState

    from trainpipe.sweep import budget as bd

    if led.by_state(TrialState.WAITING):
        return "run", None
    screen = screening(led)
    cut = False
    if action == "run" and wc.budget is not None:
        b = wc.budget
        est = bd.trial_estimate(took or [bd.span_s(t) for t in led.visible if t.state == TrialState.COMPLETE],
                                b.fallback_trial_s)
        if b.used_s() + (est or 0.0) > SCREEN_SHARE * b.total_s:
            cut = True
            if not getattr(wc, "_said_cut", False):
                wc.say(f"screening stops: the next trial would pass {SCREEN_SHARE:.0%} of the budget; the rest "
                       f"is for confirming the best configurations")
                wc._said_cut = True
    if action == "run" and not cut:
        return "run", None
    if screen.by_state(TrialState.RUNNING):
        return "wait", None  # the top is known once screening is over
    todo = needed(wc.spec, led.visible)
    if todo:
        return "run", todo[0]
    if led.by_state(TrialState.RUNNING):
        return "wait", None
    if cut:
        bd.mark_stopped(wc.sweep_dir, wc.total)
    return "done", None


def enqueue(study: Any, item: tuple[dict[str, Any], int]) -> None:
    params, seed = item
    study.enqueue_trial(params, user_attrs={CONFIRM_ATTR: {"seed": seed}})
