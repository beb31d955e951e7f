"""From an Optuna trial to config overrides.

Each parameter samples itself through its distribution's entry (`params.DISTRIBUTIONS`:
Optuna's form of it and the transform back to the W&B value), so `trial_overrides` is the
single place a trial becomes config values (results tables replay it with
`optuna.trial.FixedTrial` to show a trial's values). List and dict values are stored under
their labels (`hflip+random_crop`), so that optuna-dashboard and `best_params` show the
same words as the results. Optuna's parameter names are the sweep file's own
(`learning_rate`, `optim.lr`).
"""

from __future__ import annotations

from typing import Any

from trainpipe.sweep.params import Param
from trainpipe.sweep.spec import SweepSpec


def choices(p: Param) -> list[Any]:
    """What Optuna stores for a categorical: the values, or their labels for lists/dicts."""
    return p.choices()


def trial_overrides(trial: Any, spec: SweepSpec) -> dict[str, Any]:
    """The sampled value of every varied parameter, as {dotted key: value}."""
    return {p.key: p.sample(trial) for p in spec.varied}


def grid_search_space(spec: SweepSpec) -> dict[str, list[Any]]:
    """GridSampler's search space in the form the parameters suggest it (labels for lists/dicts)."""
    space = {}
    for p in spec.varied:
        values = p.grid_values() or []
        space[p.display] = p.choices() if p.distribution == "categorical" else values
    return space
