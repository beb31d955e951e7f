"""Every W&B distribution is one entry: parsed, range-checked and sampled from the same place."""

from __future__ import annotations

import optuna
import pytest

from trainpipe.errors import ConfigError
from trainpipe.sweep.params import DISTRIBUTIONS, Problems, parse_params

BLOCKS = {"constant": {"value": 3}, "categorical": {"values": [1, 2]}, "normal": {"mu": 0.0, "sigma": 1.0}}


def _block(name: str) -> dict:
    shape = DISTRIBUTIONS[name].shape
    body = dict(BLOCKS.get(shape, {"min": 1, "max": 4}))
    if name.startswith("q_"):
        body["q"] = 1
    return {"distribution": name, **body}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_each_distribution_parses_and_samples_within_its_candidates(name: str) -> None:
    problems = Problems("sweep")
    (p,) = parse_params({"x": _block(name)}, prefix="", where="sweep", problems=problems)
    problems.raise_if_any()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [p.sample(study.ask()) for _ in range(20)]
    grid = p.grid_values()
    if grid is not None:
        assert set(values) <= set(grid)
    elif DISTRIBUTIONS[name].shape == "range":
        lo, hi = sorted(p.candidates())
        assert all(lo <= v <= hi for v in values), (name, values)
    # Replaying the stored values gives the same config values (results tables do this).
    trial = study.trials[0]
    assert p.sample(optuna.trial.FixedTrial(dict(trial.params))) == values[0]


def test_a_distributions_own_range_check_names_the_parameter() -> None:
    problems = Problems("sweep")
    parse_params({"lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}, prefix="", where="sweep",
                 problems=problems)
    with pytest.raises(ConfigError, match=r"parameters.lr: log_uniform_values needs min > 0"):
        problems.raise_if_any()
