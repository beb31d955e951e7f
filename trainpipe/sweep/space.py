"""From an Optuna trial to config overrides: how each W&B distribution is sampled.

Optuna has no normal or quantised-log distributions and stores only plain values
(None, bool, int, float, str) as choices, so some parameters are sampled in another
form and transformed here: the value the config receives is always the W&B one, and
`trial_overrides` is the single place that knows the mapping (results tables replay
it with `optuna.trial.FixedTrial` to show a trial's values). List and dict values are
stored under their labels (`hflip+random_crop`), so that optuna-dashboard and
`best_params` show the same words as the results. Optuna's parameter names are the
sweep file's own (`learning_rate`, `optim.lr`).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from trainpipe.sweep.params import Param
from trainpipe.sweep.spec import SweepSpec

# Normal parameters are sampled as a quantile u in (EPS, 1 - EPS) and mapped through
# the inverse CDF: exact for random search, and monotone, so TPE models it as well.
EPS = 1e-6


def choices(p: Param) -> list[Any]:
    """What Optuna stores for a categorical: the values, or their labels for lists/dicts."""
    return list(p.labels) if p.labels else list(p.values)


def from_stored(p: Param, stored: Any) -> Any:
    """The value behind a stored categorical choice (its label, for lists and dicts)."""
    return p.values[p.labels.index(stored)] if p.labels else stored


def sample(trial: Any, p: Param) -> Any:
    """The value of parameter `p` in `trial` (an Optuna Trial or FixedTrial)."""
    d, k = p.distribution, p.display
    if d == "constant":
        return p.values[0]
    if d == "categorical":
        return from_stored(p, trial.suggest_categorical(k, choices(p)))
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
    """GridSampler's search space in the form `sample` suggests it (labels for lists/dicts)."""
    space = {}
    for p in spec.varied:
        values = p.grid_values() or []
        space[p.display] = choices(p) if p.distribution == "categorical" else values
    return space
