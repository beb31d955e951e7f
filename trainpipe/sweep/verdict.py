"""What the numbers of a sweep support: intervals, the best against the runner-up, seeds needed.

A configuration run with several seeds is a sample of its metric; the mean alone hides how
far a second set of seeds could move it. For each configuration with n >= 2 this module
gives the 95% confidence interval of the mean (Student t), and for the top of the ranking
a verdict: the best against the runner-up by Welch's t-test (no equal-variance
assumption), with the difference, its interval and a p-value, in one plain sentence. When
the two cannot be told apart it says how many seeds each would need to separate the gap
that was observed (the power of a two-sample t-test at alpha 0.05, power 0.8, with the
observed seed-to-seed spread taken as the true one).

scipy does the statistics (Student t, Welch, the noncentral t for the power); it is
imported when a verdict is asked for, not when a sweep file is read.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Literal, Sequence

LEVEL = 0.95  # the confidence level of every interval shown
ALPHA = 0.05  # a difference is called real when its two-sided p-value is below this
POWER = 0.8  # the chance of detecting a gap that the seeds-needed estimate aims for
MAX_SEEDS = 1000  # past this many seeds per configuration the gap is called too small to chase


@dataclass(frozen=True)
class Estimate:
    """A configuration's metric over its seeds: mean, sample std, n and the interval of the mean."""

    mean: float
    std: float | None  # None with n < 2
    n: int
    low: float | None  # the LEVEL confidence interval of the mean (Student t); None with n < 2
    high: float | None


def estimate(values: Sequence[float], level: float = LEVEL) -> Estimate:
    values = [float(v) for v in values]
    if not values:
        raise ValueError("estimate() needs at least one value")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Estimate(mean, None, len(values), None, None)
    from scipy import stats

    std = statistics.stdev(values)
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * std / math.sqrt(len(values))
    return Estimate(mean, std, len(values), mean - half, mean + half)


@dataclass(frozen=True)
class Difference:
    """How much better `a` is than `b` (positive: a is better, whatever the metric's goal)."""

    diff: float
    low: float
    high: float
    p: float  # two-sided, Welch's t-test
    n_a: int
    n_b: int

    @property
    def real(self) -> bool:
        return self.p < ALPHA


def welch(a: Sequence[float], b: Sequence[float], goal: str = "maximize", level: float = LEVEL) -> Difference:
    """Welch's t-test of `a` against `b` (each at least two values), oriented by the goal."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("welch() needs at least two values on each side")
    from scipy import stats

    sign = 1.0 if goal == "maximize" else -1.0
    diff = sign * (statistics.fmean(a) - statistics.fmean(b))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:  # every seed gave the same value on both sides: the difference is exact
        return Difference(diff, diff, diff, 1.0 if diff == 0 else 0.0, len(a), len(b))
    # Welch-Satterthwaite degrees of freedom, as scipy.stats.ttest_ind(equal_var=False) uses
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return Difference(diff, diff - half, diff + half, p, len(a), len(b))


def seeds_needed(spread: float, gap: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Seeds per configuration for a two-sample t-test to find `gap` with the given power.

    Assumes both configurations share the seed-to-seed standard deviation `spread` and that
    `gap` is the true difference; None when the gap is zero or needs more than MAX_SEEDS.
    """
    if gap <= 0 or not math.isfinite(gap):
        return None
    if spread <= 0:
        return 2
    from scipy import stats

    for n in range(2, MAX_SEEDS + 1):
        df = 2 * n - 2
        crit = stats.t.ppf(1 - alpha / 2, df)
        nc = gap / (spread * math.sqrt(2 / n))
        if stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) >= power:
            return n
    return None


@dataclass(frozen=True)
class Verdict:
    kind: Literal["beats", "tied", "none"]  # none: too few seeds to say anything
    sentence: str
    difference: Difference | None = None  # best against the runner-up, where both have n >= 2
    tied: int = 0  # how many configurations at the top cannot be told apart (kind "tied")
    more_seeds: int | None = None  # seeds each would still need to separate the observed gap


def _is_accuracy(metric: str) -> bool:
    """Accuracies are fractions in trainpipe; a verdict speaks of them in percentage points."""
    return "acc" in metric.rsplit("/", 1)[-1]


def _n(d: Difference) -> str:
    return f"n={d.n_a} each" if d.n_a == d.n_b else f"n={d.n_a} and {d.n_b}"


CONFIRM_ADVICE = ("Add `confirm: {top: 3, seeds: 5}` to the sweep file to rerun the best configurations with "
                  "more seeds.")


def decide(ranked: Sequence[tuple[str, Sequence[float]]], metric: str, goal: str = "maximize", *,
           advice: str = CONFIRM_ADVICE) -> Verdict:
    """The verdict on the top of a ranking: (label, values over seeds) pairs, best mean first.
    `advice`: what a verdict with single runs tells the user to do."""
    scale = 100.0 if _is_accuracy(metric) else 1.0

    def fmt(v: float) -> str:
        x = v * scale
        if scale == 1:
            return f"{x:.3g}"
        return f"{x:.1f}" if abs(x) >= 0.1 else f"{x:.2g}"

    def by(v: float) -> str:
        return f"{fmt(v)} points" if scale != 1 else f"{fmt(v)} in {metric}"

    def gap(v: float) -> str:
        return f"a {fmt(v)}-point gap" if scale != 1 else f"a gap of {fmt(v)} in {metric}"

    if len(ranked) < 2:
        return Verdict("none", "one configuration: nothing to compare it with.")
    (best, a), (second, b) = ranked[0], ranked[1]
    if len(a) < 2 or len(b) < 2:
        if all(len(v) < 2 for _, v in ranked):
            why = "every configuration ran once (n=1)"
        else:
            why = f"{best if len(a) < 2 else second} ran once"
        return Verdict("none", f"no verdict is possible: {why}, so there is no seed-to-seed spread to "
                               f"compare the gap with. {advice}")
    d = welch(a, b, goal)
    if d.real:
        return Verdict("beats", f"{best} beats {second} by {by(d.diff)} (95% CI {fmt(d.low)} to "
                                f"{fmt(d.high)}, p={d.p:.2g}, {_n(d)}).", d, tied=1)
    # How far down the ranking the best cannot be told from the others.
    tied = 2
    for _, v in ranked[2:]:
        if len(v) < 2 or welch(a, v, goal).real:
            break
        tied += 1
    top = [v for _, v in ranked[:tied]]
    spread = math.sqrt(statistics.fmean(statistics.variance(v) for v in top))
    need = seeds_needed(spread, d.diff)
    have = min(len(v) for v in top)
    ns = {len(v) for v in top}
    at = f"n={have}" if len(ns) == 1 else f"n={min(ns)} to {max(ns)}"
    who = "the top 2" if tied == 2 else f"the top {tied}"
    sentence = f"{who} cannot be told apart at {at} (differences below the seed-to-seed spread)"
    if need is None:
        sentence += (f"; {gap(d.diff)} is too small to separate with fewer than "
                     f"{MAX_SEEDS} seeds each." if d.diff > 0 else "; their means are equal.")
        more = None
    else:
        more = max(need - have, 1)
        sentence += (f"; about {more} more seed{'s' if more != 1 else ''} each would be needed to separate "
                     f"{gap(d.diff)}.")
    return Verdict("tied", sentence, d, tied=tied, more_seeds=more)
