"""`method: bayes`: a model of the finished trials proposes the next values."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainpipe.registry import SWEEP_METHODS
from trainpipe.sweep.methods import Search, seeded_per_trial

if TYPE_CHECKING:
    from trainpipe.sweep.spec import SweepSpec


@SWEEP_METHODS.register("bayes")
def bayes(spec: SweepSpec, /) -> Search:
    """Bayesian optimisation with Optuna's TPESampler: finished trials guide the next values, until the run cap."""

    def sampler() -> object:
        import optuna

        # constant_liar: parallel workers see each other's running trials as bad guesses
        # and spread out instead of sampling the same promising point.
        return seeded_per_trial(optuna.samplers.TPESampler, spec.sampler_seed)(constant_liar=True,
                                                                              seed=spec.sampler_seed)

    return Search(summary=f"Optuna's TPESampler, seed {spec.sampler_seed}", sampler=sampler)
