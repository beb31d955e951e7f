"""Sweep methods: the `method:` key resolved through SWEEP_METHODS, what each method refuses,
and a new method added from one module running a whole sweep."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from trainpipe.cli import main
from trainpipe.errors import ConfigError
from trainpipe.registry import SWEEP_METHODS
from trainpipe.sweep import open_sweep, parse_spec, run_sweep
from trainpipe.sweep.methods import Search
from trainpipe.sweep.methods.grid import GRID_LIMIT

from sweep_kit import sweep_file  # noqa: E402

METRIC = {"name": "val/acc", "goal": "maximize"}


def parse(method: object, parameters: dict) -> object:
    data = {"metric": METRIC, "parameters": parameters}
    if method is not None:
        data["method"] = method
    return parse_spec(data)


def test_the_three_methods_are_registered_with_their_samplers() -> None:
    assert SWEEP_METHODS.names() == ["bayes", "grid", "random"]
    spec = parse("random", {"optim.lr": {"values": [0.1, 0.2]}})
    assert isinstance(spec.search().sampler(), optuna.samplers.RandomSampler)
    assert spec.search().points is None and spec.planned_trials() == 2  # a finite space ends when exhausted
    bayes = parse("bayes", {"optim.lr": {"min": 0.01, "max": 0.1}}).search().sampler()
    assert isinstance(bayes, optuna.samplers.TPESampler) and bayes._constant_liar
    grid = parse("grid", {"optim.lr": {"values": [0.1, 0.2]}, "model.width": {"values": [8, 16, 32]}})
    assert isinstance(grid.search().sampler(), optuna.samplers.GridSampler)
    assert grid.search().points[:2] == [{"optim.lr": 0.1, "model.width": 8}, {"optim.lr": 0.1, "model.width": 16}]
    assert grid.planned_trials() == 6


def test_an_unknown_method_gets_the_registry_message_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as e:
        parse("gird", {"optim.lr": {"values": [0.1]}})
    msg = str(e.value)
    assert "method: unknown method 'gird'; did you mean grid?" in msg
    assert "bayes, grid, random" in msg and "trainpipe list method" in msg
    with pytest.raises(ConfigError, match="method is missing. Set method to one of: bayes, grid, random"):
        parse(None, {"optim.lr": {"values": [0.1]}})


def test_grid_refuses_continuous_ranges_naming_each_parameter() -> None:
    with pytest.raises(ConfigError) as e:
        parse("grid", {"optim.lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.1},
                       "optim.weight_decay": {"min": 0.0, "max": 0.1},
                       "model.width": {"values": [8, 16]}})
    msg = str(e.value)
    assert "parameters.optim.lr (log_uniform_values), parameters.optim.weight_decay (uniform)" in msg
    assert "model.width" not in msg and "method random or bayes" in msg
    # Integer and quantised ranges are finite: the grid visits every value.
    spec = parse("grid", {"data.batch_size": {"distribution": "int_uniform", "min": 30, "max": 32},
                          "optim.lr": {"distribution": "q_uniform", "min": 0.1, "max": 0.3, "q": 0.1}})
    assert [(p["data.batch_size"], p["optim.lr"]) for p in spec.search().points] == \
        [(b, pytest.approx(lr)) for b in (30, 31, 32) for lr in (0.1, 0.2, 0.3)]


def test_a_grid_beyond_the_limit_is_refused_before_it_is_listed() -> None:
    side = 400  # 400 x 400 = 160,000 combinations
    assert side * side > GRID_LIMIT
    with pytest.raises(ConfigError, match=r"the grid has 160,000 combinations \(more than 100,000\)"):
        parse("grid", {"model.width": {"distribution": "int_uniform", "min": 1, "max": side},
                       "data.batch_size": {"distribution": "int_uniform", "min": 1, "max": side}})


@pytest.fixture()
def halton_method() -> Iterator[list[int]]:
    """A method added the way a new module in trainpipe/sweep/methods/ adds one."""
    calls: list[int] = []

    @SWEEP_METHODS.register("qmc")
    def qmc(spec: object, /) -> Search:
        """Optuna's QMCSampler (Halton points)."""
        calls.append(1)
        return Search(summary="Optuna's QMCSampler",
                      sampler=lambda: optuna.samplers.QMCSampler(qmc_type="halton", seed=0))

    yield calls
    del SWEEP_METHODS._entries["qmc"]


def test_a_method_registered_in_one_place_runs_a_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture,
                                                       halton_method: list[int]) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.3}},
                   method="qmc", run_cap=2)
    assert main(["list", "method"]) == 0
    assert "Optuna's QMCSampler (Halton points)." in capsys.readouterr().out
    assert main(["sweep", str(s), "--dry-run"]) == 0
    assert "qmc search (Optuna's QMCSampler), 2 trials" in capsys.readouterr().out
    run_sweep(s)
    _, study = open_sweep(tmp_path / "sweeps" / "s")
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 and all(0.01 <= t.params["optim.lr"] <= 0.3 for t in trials)
    assert halton_method  # the sweep asked the method, not a hard-coded sampler
