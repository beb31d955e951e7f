"""Sweeps: a W&B-format sweep file run as an Optuna study, one `trainpipe.train()` per trial.

`trainpipe.sweep(SWEEP, overrides)` (this package, called) runs or resumes a sweep as
`trainpipe sweep` does and returns its `SweepOutcome`.

    spec.py     the sweep file -> SweepSpec (method, metric, base, fixed, hyperband)
    params.py   one parameter and its W&B distribution: one entry each (parsing, range check, sampler)
    methods/    grid, random, bayes: one module per `method:`, registered in SWEEP_METHODS
    names.py    W&B-style flat names and metric names -> config keys; labels for list/dict values
    check.py    every candidate value resolved through the config before anything runs
    space.py    Optuna trial -> config overrides (each parameter sampled by its distribution's entry)
    study.py    storage, sampler, pruner, heartbeats, dead-worker detection, the ledger
    db.py       every storage call retried through an outage; PostgreSQL's timeouts
    worker.py   the objective and the worker loop (in process, or spawned per GPU)
    ranking.py  the results as data: trials ranked, configurations (trials that differ only
                in their seed) as mean ± std, the one formatter of a mean and its spread
    results.py  the study's trials as rows; results.csv / results.md / best.yaml and `--status`
    final_test.py  the `test:` protocol (all | best | none)
    run.py      `trainpipe sweep`: the directory, the workers, resume

`trainpipe report DIR` reads a sweep from its plain files (trials/NNNN/ and results.csv,
so a copied sweep reports anywhere) and ranks it with `ranking.py`, as results.md does;
it opens the study (`open_sweep(DIR)`) only for parameter importance.
The names below are imported on first use, so that reading a sweep file (or listing
the sweep methods) does not import Optuna.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainpipe import callable_package

_LAZY = {
    "check_against_config": "trainpipe.sweep.check", "DbSettings": "trainpipe.sweep.db",
    "Configuration": "trainpipe.sweep.ranking", "config_groups": "trainpipe.sweep.results",
    "TrialRow": "trainpipe.sweep.results", "trial_rows": "trainpipe.sweep.results",
    "write_results": "trainpipe.sweep.results",
    "SweepOutcome": "trainpipe.sweep.run", "open_sweep": "trainpipe.sweep.run", "run_sweep": "trainpipe.sweep.run",
    "sweep_status": "trainpipe.sweep.run",
    "trial_overrides": "trainpipe.sweep.space",
    "Param": "trainpipe.sweep.params", "SweepSpec": "trainpipe.sweep.spec", "load_spec": "trainpipe.sweep.spec",
    "parse_spec": "trainpipe.sweep.spec",
}
__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from trainpipe.sweep.check import check_against_config
    from trainpipe.sweep.db import DbSettings
    from trainpipe.sweep.ranking import Configuration
    from trainpipe.sweep.results import TrialRow, config_groups, trial_rows, write_results
    from trainpipe.sweep.run import SweepOutcome, open_sweep, run_sweep, sweep_status
    from trainpipe.sweep.space import trial_overrides
    from trainpipe.sweep.params import Param
    from trainpipe.sweep.spec import SweepSpec, load_spec, parse_spec


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'trainpipe.sweep' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def run_or_resume(
    sweep: str | Path,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    output: str | Path | None = None,
    *,
    workers: int = 1,
    devices: str | None = None,
    storage: str | None = None,
    trials: int | None = None,
    budget: str | None = None,
    db: DbSettings | None = None,
) -> SweepOutcome:
    """Run a sweep file, or resume the sweep in a sweep directory, exactly as `trainpipe sweep`
    does (the same arguments: `overrides` for every trial, --output, --workers, --devices,
    --storage, --trials, --budget; `db` the --db-* options as a `DbSettings`). Returns the
    SweepOutcome: `.trials` and `.configurations` as tables, `.interrupted` when Ctrl-C (a
    notebook's stop button) ended it early, `.unreachable` when the database stayed away for
    longer than the retry limit."""
    from trainpipe.sweep.run import run_sweep

    return run_sweep(sweep, output, workers=workers, devices=devices, storage=storage, trials=trials,
                     overrides=overrides, budget=budget, db=db)


callable_package(__name__, run_or_resume)
