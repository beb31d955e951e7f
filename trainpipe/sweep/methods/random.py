"""`method: random`: independent draws from each parameter's distribution."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainpipe.registry import SWEEP_METHODS
from trainpipe.sweep.methods import Search, seeded_per_trial

if TYPE_CHECKING:
    from trainpipe.sweep.spec import SweepSpec


@SWEEP_METHODS.register("random")
def random(spec: SweepSpec, /) -> Search:
    """Independent draws from each parameter's distribution (Optuna's RandomSampler), until the run cap."""

    def sampler() -> object:
        import optuna

        return seeded_per_trial(optuna.samplers.RandomSampler, spec.sampler_seed)(seed=spec.sampler_seed)

    return Search(summary=f"Optuna's RandomSampler, seed {spec.sampler_seed}", sampler=sampler)
