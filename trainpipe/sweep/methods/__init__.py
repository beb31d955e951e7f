"""Sweep methods: how a sweep chooses each trial's values, one module per method.

A method is a function registered in `SWEEP_METHODS` under the name a sweep file's
`method:` key uses. It receives the parsed `SweepSpec` and returns a `Search`: the
Optuna sampler to draw trials with and, for a method that visits a fixed list of
configurations (grid), that list. Everything else (the trial count, the duplicate
check between workers, the dry run's listing, checking every configuration against
the config before the first trial) reads the `Search`, so a new method is one new
module here:

    @SWEEP_METHODS.register("qmc")
    def qmc(spec: SweepSpec, /) -> Search:
        "Optuna's QMCSampler (Sobol points)."
        import optuna
        return Search(summary="Optuna's QMCSampler", sampler=lambda: optuna.samplers.QMCSampler())

A method that cannot search a spec (grid over a continuous range) raises a
`ConfigError` naming the parameter; the sweep file's check reports it with the rest.
Optuna is imported only when a sampler is built, so that reading a sweep file stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Search:
    """What a method makes of a sweep: how trials are sampled, and what is visited."""

    summary: str  # the dry run's words for the sampler: "Optuna's TPESampler"
    sampler: Callable[[], optuna.samplers.BaseSampler]  # called once per study opened
    # Every configuration the method visits, once each and in this order, as
    # {dotted key: value}; None when it samples until the run cap. A sweep with points
    # is complete when each has a trial, and two trials never share one.
    points: list[dict[str, Any]] | None = None
    noun: str = "configurations"  # how the dry run counts the points: "combinations in the grid"


def seeded_per_trial(cls: type, seed: int) -> type:
    """An Optuna sampler class whose random draws for trial N depend only on (`seed`, N, the parameter).

    The same sweep file then proposes the same trials, whichever worker asks for trial N and
    in whatever order the workers ask; two trials never share a draw. (Optuna seeds a sampler
    once, so that its draws depend on the order in which trials are asked for: with several
    workers they would differ from run to run.) Each draw is made by a sampler of the same
    class and arguments built with that draw's seed, through its public `sample_independent`:
    Optuna's samplers keep no state between draws but their random generator (and what they
    read from the study).
    """

    class Seeded(cls):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.kwargs = kwargs

        def sample_independent(self, study: Any, trial: Any, param_name: str, distribution: Any) -> Any:
            # Optuna draws a value when the trial asks for it, so the draw is seeded there.
            import warnings
            import zlib

            draw = zlib.crc32(f"{seed}/{trial.number}/{param_name}".encode())
            with warnings.catch_warnings():  # an experimental argument (constant_liar) warns each time
                warnings.simplefilter("ignore")
                one = cls(**{**self.kwargs, "seed": draw})
            return one.sample_independent(study, trial, param_name, distribution)

    Seeded.__name__ = Seeded.__qualname__ = f"Seeded{cls.__name__}"
    return Seeded
