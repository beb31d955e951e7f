"""`method: grid`: every combination of the parameters' values once, in file order."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from typing import TYPE_CHECKING, Any

from trainpipe.errors import ConfigError
from trainpipe.registry import SWEEP_METHODS
from trainpipe.sweep.methods import Search

if TYPE_CHECKING:
    from trainpipe.sweep.spec import SweepSpec

# More combinations than this is a typo or a job for random search with a run_cap;
# listing them all would also take a while before the first trial.
GRID_LIMIT = 100_000


@SWEEP_METHODS.register("grid")
def grid(spec: SweepSpec, /) -> Search:
    """Every combination of the values once, in the sweep file's order (the last parameter varies fastest), as W&B does."""
    continuous = [p for p in spec.varied if p.grid_values() is None]
    if continuous:
        names = ", ".join(f"parameters.{p.display} ({p.distribution})" for p in continuous)
        raise ConfigError(
            f"{names}: method grid needs a finite set of values, but "
            f"{'this distribution is' if len(continuous) == 1 else 'these distributions are'} continuous. "
            f"Give {'it' if len(continuous) == 1 else 'each'} values: [...], or use int_uniform / q_uniform, "
            f"or switch to method random or bayes.")
    values = [p.grid_values() or [] for p in spec.varied]
    size = math.prod(len(v) for v in values)
    if size > GRID_LIMIT:
        raise ConfigError(f"the grid has {size:,} combinations (more than {GRID_LIMIT:,}); use method random or "
                          f"bayes with a run_cap.")
    keys = [p.key for p in spec.varied]
    points = [dict(zip(keys, combo)) for combo in itertools.product(*values)]

    def sampler() -> Any:
        from trainpipe.sweep.space import grid_search_space

        return _file_order_grid_sampler()(grid_search_space(spec), [p.display for p in spec.varied])

    return Search(summary="every combination once, in file order", sampler=sampler, points=points,
                  noun="combinations in the grid")


@functools.cache
def _file_order_grid_sampler() -> type:
    """A GridSampler that visits the combinations in the sweep file's order.

    Optuna's GridSampler picks a random combination among those not yet visited; a
    fixed order makes trial NNNN the NNNN-th combination of the file (last parameter
    fastest), which is what users read in the table. The choice is made in the
    sampler's public hooks only: each trial takes the first combination that no other
    trial of the study holds, after those that earlier trials still choosing theirs will
    take (`choose`). Two workers that still race for one combination are sorted out by
    the worker's duplicate check, and the sweep's workers (not the sampler) decide when
    the grid is done. (Made on first use, so that reading a sweep file does not import
    Optuna.)
    """
    import optuna

    class FileOrderGridSampler(optuna.samplers.GridSampler):
        def __init__(self, search_space: dict[str, list[Any]], order: list[str]) -> None:
            super().__init__(search_space)
            self.file_order = list(order)
            self.combinations = [dict(zip(order, combo)) for combo in itertools.product(*(search_space[k] for k in order))]
            self.chosen: dict[int, dict[str, Any]] = {}

        def key_of(self, params: dict[str, Any]) -> tuple[str, ...] | None:
            if not all(k in params for k in self.file_order):
                return None
            return tuple(repr(params[k]) for k in self.file_order)

        def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            pass

        def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                               param_distribution: Any) -> Any:
            point = self.chosen.get(trial.number)
            if point is None:
                point = self.choose(study.get_trials(deepcopy=False), trial.number)
                self.chosen[trial.number] = point
            return point[param_name]

        def choose(self, trials: list[optuna.trial.FrozenTrial], number: int) -> dict[str, Any]:
            """The combination of trial `number`: the k-th that no other trial holds, k being the
            number of earlier trials still choosing theirs (running, values not all stored), so
            that workers asking at the same moment take different combinations."""
            taken = {self.key_of(t.params) for t in trials if t.number != number}
            ahead = sum(1 for t in trials if t.number < number and t.state == optuna.trial.TrialState.RUNNING
                        and self.key_of(t.params) is None)
            free = [p for p in self.combinations if self.key_of(p) not in taken]
            if not free:
                return self.combinations[0]  # more trials than combinations: the duplicate check discards it
            return free[min(ahead, len(free) - 1)]

        def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any,
                        values: Any) -> None:
            # Inside Study.optimize, stop once every combination is taken, as GridSampler does.
            # Under ask/tell (the sweep's workers) Study.stop raises: the sweep decides itself.
            taken = {self.key_of(t.params) for t in study.get_trials(deepcopy=False)} | {self.key_of(trial.params)}
            if all(self.key_of(p) in taken for p in self.combinations):
                with contextlib.suppress(RuntimeError):
                    study.stop()

    return FileOrderGridSampler
