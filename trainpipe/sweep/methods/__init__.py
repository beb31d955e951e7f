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
    workers they would differ from run to run.)
    """

    class Seeded(cls):  # type: ignore[misc, valid-type]
        def sample_independent(self, study: Any, trial: Any, param_name: str, distribution: Any) -> Any:
            # Optuna draws a value when the trial asks for it, so the draw is seeded there.
            import zlib

            draw = zlib.crc32(f"{seed}/{trial.number}/{param_name}".encode())
            self._rng.rng.seed(draw)  # LazyRandomState.rng: a numpy RandomState
            inner = getattr(self, "_random_sampler", None)  # TPE's sampler for its first trials
            if inner is not None:
                inner._rng.rng.seed(draw)
            return super().sample_independent(study, trial, param_name, distribution)

    Seeded.__name__ = Seeded.__qualname__ = f"Seeded{cls.__name__}"
    return Seeded
