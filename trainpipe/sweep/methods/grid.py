"""`method: grid`: every combination of the parameters' values once, in file order."""

from __future__ import annotations

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
    """GridSampler that visits combinations in the sweep file's order.

    Optuna shuffles the grid; a fixed order makes trial NNNN the NNNN-th combination
    of the file (last parameter fastest), which is what users read in the table.
    (Made on first use, so that reading a sweep file does not import Optuna.)
    """
    import optuna

    class FileOrderGridSampler(optuna.samplers.GridSampler):
        def __init__(self, search_space: dict[str, list[Any]], order: list[str]) -> None:
            super().__init__(search_space)
            names = sorted(search_space)
            ordered = list(itertools.product(*(search_space[k] for k in order)))
            pos = [order.index(n) for n in names]
            if hasattr(self, "_all_grids"):
                self._all_grids = [tuple(c[i] for i in pos) for c in ordered]

    return FileOrderGridSampler
