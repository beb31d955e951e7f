"""The results of a sweep as data: its trials ranked, its configurations, and the statistics
shown with them. results.csv / results.md / best.yaml / `--status` (`sweep.results`, from
the Optuna study), the `test: best` protocol (`sweep.final_test`) and the report
(`report.sweep`, from the trial directories and results.csv) all read these.

A trial is anything with `number`, `name`, `state`, `value` (the best value of the sweep
metric), `test_acc` and `shown` (the sweep file's names -> values, labels for lists and
dicts): `sweep.results.TrialRow` and `report.sweep.Trial` are two sources of the same.

A configuration is the trials that differ only in their seed. A sweep with
`seed: {values: [0, 1, 2]}` runs each configuration once per seed; one lucky seed says
little, so configurations are ranked by the mean of their completed trials and shown as
mean ± std with n (airbench reports its accuracy that way). A sweep without a seed
parameter has one trial per configuration.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainpipe.sweep import verdict as vd


def finite(v: Any) -> bool:
    """A number (not a bool) that is neither NaN nor infinite: a value that can be ranked."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _sign(goal: str) -> float:
    return -1.0 if goal == "maximize" else 1.0


# ------------------------------------------------------------------------ trials
def rank_trials(trials: Sequence[Any], goal: str) -> list[Any]:
    """Best value first (ties by trial number); trials without a finite value follow by number.
    A failed trial may have logged the metric before it failed: it is shown, not ranked."""
    ranked = [t for t in trials if finite(t.value) and t.state != "failed"]
    rest = [t for t in trials if not (finite(t.value) and t.state != "failed")]
    ranked.sort(key=lambda t: (_sign(goal) * t.value, t.number))
    return ranked + sorted(rest, key=lambda t: t.number)


def best_trial(ranked: Sequence[Any]) -> Any | None:
    """The best completed trial of `rank_trials`' order."""
    return next((t for t in ranked if t.state == "completed" and finite(t.value)), None)


# ---------------------------------------------------------------- configurations
@dataclass
class Configuration:
    shown: dict[str, Any]  # the configuration's parameters (not the seed), as results show them
    rows: list[Any] = field(default_factory=list)  # its trials, in the order they were given (best first)
    rank: int | None = None  # 1 = best mean; None while none of its trials has completed

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.rows if r.state == "completed" and finite(r.value)]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """The sample standard deviation over seeds; None with fewer than two."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def test_values(self) -> list[float]:
        return [r.test_acc for r in self.rows if r.state == "completed" and finite(r.test_acc)]

    @property
    def label(self) -> str:
        return f"#{self.rank}" if self.rank is not None else "-"

    @property
    def trials(self) -> str:
        return ", ".join(r.name for r in sorted(self.rows, key=lambda r: r.number))

    @property
    def estimate(self) -> vd.Estimate | None:
        """Mean, std, n and the 95% interval of the mean (Student t, n >= 2); None before a trial completed."""
        return vd.estimate(self.values) if self.values else None

    @property
    def ci(self) -> tuple[float, float] | None:
        """The 95% confidence interval of the mean; None with fewer than two completed seeds."""
        e = self.estimate
        return (e.low, e.high) if e is not None and e.low is not None and e.high is not None else None

    def describe(self) -> str:
        """The configuration in words, as a verdict names it: `optimizer=adamw lr=0.001`."""
        return " ".join(f"{k}={_word(v)}" for k, v in self.shown.items()) or f"configuration {self.label}"

    # The statistics of a verdict between configurations (intervals, the best against the
    # runner-up, seeds needed) are `sweep.verdict`'s, computed from these ranked configurations'
    # `values`; results.md, the report and --status show them from the same objects.


def _word(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def configurations(trials: Sequence[Any], names: Sequence[str], goal: str, *,
                   per_trial: bool = False) -> list[Configuration]:
    """The configurations of `trials` (trials with equal values of the parameters `names`),
    best mean first; those without a completed trial last, by their first trial's number.
    `per_trial`: every trial is a configuration of its own (a sweep that varies no seed)."""
    groups: dict[tuple, Configuration] = {}
    for t in trials:
        key = (t.number,) if per_trial else tuple(repr(t.shown.get(n)) for n in names)
        groups.setdefault(key, Configuration({n: t.shown[n] for n in names if n in t.shown})).rows.append(t)
    first = {id(g): min(r.number for r in g.rows) for g in groups.values()}
    scored = sorted((g for g in groups.values() if g.mean is not None),
                    key=lambda g: (_sign(goal) * g.mean, first[id(g)]))
    rest = sorted((g for g in groups.values() if g.mean is None), key=lambda g: first[id(g)])
    for i, g in enumerate(scored):
        g.rank = i + 1
    return scored + rest


def verdict(groups: Sequence[Configuration], metric: str, goal: str) -> vd.Verdict | None:
    """The verdict on the top of the ranked configurations (best against runner-up); None when
    no configuration has completed a trial."""
    ranked = [g for g in groups if g.rank is not None]
    if not ranked:
        return None
    # single runs are answered with the `confirm:` block (`sweep.confirm`)
    return vd.decide([(g.describe(), g.values) for g in ranked], metric, goal)


def best_configuration(groups: Sequence[Configuration]) -> Configuration | None:
    return groups[0] if groups and groups[0].rank == 1 else None


# ---------------------------------------------------------------------- statistics
def ci_text(g: Configuration, fmt: Callable[[float], str] = lambda v: f"{v:.4g}", *, unit: str = "",
            empty: str = "-") -> str:
    """`0.9652 to 0.9771`: a configuration's 95% interval of the mean, or `empty` with n < 2."""
    ci = g.ci
    return f"{fmt(ci[0])}{unit} to {fmt(ci[1])}{unit}" if ci is not None else empty


def mean_spread(values: Sequence[float], fmt: Callable[[float], str] = lambda v: f"{v:.4g}", *,
                unit: str = "", n: bool = True, empty: str = "-") -> str:
    """`0.9712 ± 0.0031 (n=3)`: the mean and the sample standard deviation, each written by
    `fmt`, then `unit` (`97.12 ± 0.31%`); a single value has no spread to show."""
    if not values:
        return empty
    count = f" (n={len(values)})" if n else ""
    if len(values) == 1:
        return f"{fmt(values[0])}{unit}{count}"
    return f"{fmt(statistics.fmean(values))} ± {fmt(statistics.stdev(values))}{unit}{count}"
