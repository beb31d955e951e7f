"""`method: bayes`: a model of the finished trials proposes the next values."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainpipe.registry import SWEEP_METHODS
from trainpipe.sweep.methods import Search

if TYPE_CHECKING:
    from trainpipe.sweep.spec import SweepSpec


@SWEEP_METHODS.register("bayes")
def bayes(spec: SweepSpec, /) -> Search:
    """Bayesian optimisation with Optuna's TPESampler: finished trials guide the next values, until the run cap."""

    def sampler() -> object:
        import optuna

        # constant_liar: parallel workers see each other's running trials as bad guesses
        # and spread out instead of sampling the same promising point.
        return optuna.samplers.TPESampler(constant_liar=True)

    return Search(summary="Optuna's TPESampler", sampler=sampler)
