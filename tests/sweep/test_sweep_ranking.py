"""One model of a sweep's results: the same ranking and statistics for results.md, --status and the report."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from trainpipe.report.load import mean_spread as report_spread
from trainpipe.sweep.ranking import best_trial, configurations, finite, mean_spread, rank_trials


def trial(number: int, value: float | None, state: str = "completed", lr: float = 0.1, seed: int = 0,
          test_acc: float | None = None) -> SimpleNamespace:
    return SimpleNamespace(number=number, name=f"{number:04d}", state=state, value=value, test_acc=test_acc,
                           shown={"lr": lr, "seed": seed})


def test_a_failed_trial_with_a_value_is_shown_not_ranked() -> None:
    trials = [trial(0, 0.5), trial(1, 0.9, "failed"), trial(2, 0.7), trial(3, None, "running"), trial(4, math.nan)]
    ranked = rank_trials(trials, "maximize")
    assert [t.number for t in ranked] == [2, 0, 1, 3, 4]
    assert best_trial(ranked).number == 2
    assert [t.number for t in rank_trials(trials, "minimize")][:2] == [0, 2]


def test_configurations_are_ranked_by_their_mean_over_seeds() -> None:
    trials = [trial(0, 0.9, lr=0.1, seed=0), trial(1, 0.5, lr=0.1, seed=1),  # mean 0.7
              trial(2, 0.8, lr=0.2, seed=0), trial(3, 0.75, lr=0.2, seed=1),  # mean 0.775
              trial(4, None, "running", lr=0.3)]
    groups = configurations(trials, ["lr"], "maximize")
    assert [(g.label, g.shown, g.n) for g in groups] == [("#1", {"lr": 0.2}, 2), ("#2", {"lr": 0.1}, 2),
                                                          ("-", {"lr": 0.3}, 0)]
    assert groups[0].trials == "0002, 0003" and groups[0].std == pytest.approx(math.sqrt(0.00125))
    # Without a seed every trial is its own configuration, even with equal parameters.
    assert len(configurations(trials[:2], ["lr"], "maximize", per_trial=True)) == 2


def test_one_formatter_of_a_mean_and_its_spread() -> None:
    assert mean_spread([]) == "-"
    assert mean_spread([0.5]) == "0.5 (n=1)"
    assert mean_spread([0.9, 0.8]) == "0.85 ± 0.07071 (n=2)"
    assert mean_spread([0.9, 0.8], lambda v: f"{100 * v:.2f}", unit="%", n=False) == "85.00 ± 7.07%"
    # The report writes each metric its way through the same formatter.
    assert report_spread("val/acc", [0.9, 0.8]) == "85.00 ± 7.07%"
    assert report_spread("val/acc", [0.9]) == "90.00%"
    assert report_spread("val/loss", [0.5, 0.25]) == "0.3750 ± 0.1768"
    assert not finite(True) and not finite(math.inf) and finite(3)
