"""The statistics behind a sweep's verdict, checked against scipy computed independently here."""

import math

import numpy as np
import pytest
from scipy import stats

from trainpipe.sweep.verdict import decide, estimate, seeds_needed, welch

CLEAR_A = [0.951, 0.953, 0.949, 0.952, 0.950]  # five seeds of a configuration ~0.9 points better
CLEAR_B = [0.942, 0.944, 0.940, 0.943, 0.941]
NOISY = ([0.950, 0.962, 0.941], [0.948, 0.958, 0.937], [0.946, 0.955, 0.940])  # gaps far below the spread


def test_interval_of_the_mean_is_students_t():
    e = estimate(NOISY[0])
    lo, hi = stats.t.interval(0.95, df=2, loc=np.mean(NOISY[0]), scale=stats.sem(NOISY[0]))
    assert (e.n, e.mean, e.std) == (3, pytest.approx(np.mean(NOISY[0])), pytest.approx(np.std(NOISY[0], ddof=1)))
    assert (e.low, e.high) == (pytest.approx(lo), pytest.approx(hi))
    single = estimate([0.9])
    assert (single.n, single.std, single.low, single.high) == (1, None, None, None)


@pytest.mark.parametrize("goal", ["maximize", "minimize"])
def test_difference_interval_and_p_value_are_welchs(goal):
    a, b = (CLEAR_A, CLEAR_B) if goal == "maximize" else (CLEAR_B, CLEAR_A)
    d = welch(a, b, goal)
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    sign = 1 if goal == "maximize" else -1
    assert d.p == pytest.approx(ref.pvalue)
    assert d.diff == pytest.approx(sign * (np.mean(a) - np.mean(b))) and d.diff > 0
    assert sorted([d.low, d.high]) == pytest.approx(sorted([sign * ci.low, sign * ci.high]))
    assert d.real


def test_seeds_needed_reaches_the_power_of_a_two_sample_t_test():
    spread, gap = 0.01, 0.01
    n = seeds_needed(spread, gap)

    def power(k):
        df, nc = 2 * k - 2, gap / (spread * math.sqrt(2 / k))
        crit = stats.t.ppf(0.975, df)
        return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)

    assert power(n) >= 0.8 > power(n - 1)
    assert n == 17  # the textbook answer for an effect size of 1 at alpha 0.05, power 0.8
    assert seeds_needed(spread, 0.0) is None and seeds_needed(spread, 1e-9) is None


def test_clearly_different_configurations_get_a_winner_with_its_interval():
    v = decide([("adamw lr=0.001", CLEAR_A), ("sgd lr=0.1", CLEAR_B)], "val/acc")
    ref = stats.ttest_ind(CLEAR_A, CLEAR_B, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert v.kind == "beats"
    assert v.sentence == (f"adamw lr=0.001 beats sgd lr=0.1 by {100 * (np.mean(CLEAR_A) - np.mean(CLEAR_B)):.1f} "
                          f"points (95% CI {100 * ci.low:.1f} to {100 * ci.high:.1f}, p={ref.pvalue:.2g}, n=5 each).")


def test_indistinguishable_configurations_get_the_seeds_that_would_separate_them():
    ranked = [("A", NOISY[0]), ("B", NOISY[1]), ("C", NOISY[2])]
    v = decide(ranked, "val/acc")
    spread = math.sqrt(np.mean([np.var(x, ddof=1) for x in NOISY]))
    need = seeds_needed(spread, np.mean(NOISY[0]) - np.mean(NOISY[1]))
    assert v.kind == "tied" and v.tied == 3 and v.more_seeds == need - 3
    assert v.sentence.startswith("the top 3 cannot be told apart at n=3 (differences below the seed-to-seed spread)")
    assert f"about {need - 3} more seeds each would be needed to separate a 0.3-point gap" in v.sentence


def test_a_loss_is_compared_in_its_own_units_and_lower_is_better():
    v = decide([("A", [0.30, 0.31, 0.305]), ("B", [0.50, 0.52, 0.51])], "val/loss", goal="minimize")
    assert v.kind == "beats" and v.sentence.startswith("A beats B by 0.205 in val/loss")


def test_single_runs_get_no_verdict_and_a_pointer_to_confirm():
    v = decide([("A", [0.9]), ("B", [0.8]), ("C", [0.7])], "val/acc")
    assert v.kind == "none" and "n=1" in v.sentence and "confirm" in v.sentence
    v = decide([("A", [0.9, 0.91]), ("B", [0.8])], "val/acc")
    assert v.kind == "none" and "B ran once" in v.sentence
