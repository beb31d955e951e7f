"""From an Optuna trial to config overrides: how each W&B distribution is sampled.

Optuna has no normal or quantised-log distributions and stores only plain values
(None, bool, int, float, str) as choices, so some parameters are sampled in another
form and transformed here: the value the config receives is always the W&B one, and
`trial_overrides` is the single place that knows the mapping (results tables replay
it with `optuna.trial.FixedTrial` to show a trial's values).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from trainpipe.sweep.spec import Param, SweepSpec

# Normal parameters are sampled as a quantile u in (EPS, 1 - EPS) and mapped through
# the inverse CDF: exact for random search, and monotone, so TPE models it as well.
EPS = 1e-6


def is_plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def choices(p: Param) -> list[Any]:
    """What Optuna stores for a categorical: the values, or their indices for lists/dicts."""
    return list(p.values) if all(is_plain(v) for v in p.values) else list(range(len(p.values)))


def sample(trial: Any, p: Param) -> Any:
    """The value of parameter `p` in `trial` (an Optuna Trial or FixedTrial)."""
    d, k = p.distribution, p.key
    if d == "constant":
        return p.values[0]
    if d == "categorical":
        c = choices(p)
        picked = trial.suggest_categorical(k, c)
        return picked if c == list(p.values) else p.values[int(picked)]
    if d == "int_uniform":
        return trial.suggest_int(k, int(p.low), int(p.high))
    if d in ("uniform", "q_uniform"):
        return p.quantize(trial.suggest_float(k, p.low, p.high))
    if d in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values"):
        return p.quantize(trial.suggest_float(k, p.low, p.high, log=True))
    if d in ("log_uniform", "q_log_uniform"):  # min and max are exponents of e
        return p.quantize(trial.suggest_float(k, math.exp(p.low), math.exp(p.high), log=True))
    if d == "inv_log_uniform":  # log(1/x) is uniform in [min, max]
        return trial.suggest_float(k, math.exp(-p.high), math.exp(-p.low), log=True)
    u = trial.suggest_float(k, EPS, 1 - EPS)
    x = NormalDist(p.mu, p.sigma).inv_cdf(u)
    return p.quantize(math.exp(x) if d in ("log_normal", "q_log_normal") else x)


def trial_overrides(trial: Any, spec: SweepSpec) -> dict[str, Any]:
    """The sampled value of every varied parameter, as {dotted key: value}."""
    return {p.key: sample(trial, p) for p in spec.varied}


def grid_search_space(spec: SweepSpec) -> dict[str, list[Any]]:
    """GridSampler's search space in the form `sample` suggests it (indices for lists/dicts)."""
    space = {}
    for p in spec.varied:
        values = p.grid_values() or []
        space[p.key] = choices(p) if p.distribution == "categorical" else values
    return space
