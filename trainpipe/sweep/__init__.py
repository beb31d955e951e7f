"""Sweeps: a W&B-format sweep file run as an Optuna study, one `trainpipe.train()` per trial.

    spec.py     the sweep file -> SweepSpec (methods, metric, distributions, hyperband)
    names.py    W&B-style flat names and metric names -> config keys; labels for list/dict values
    check.py    every candidate value resolved through the config before anything runs
    space.py    Optuna trial -> config overrides (how each distribution is sampled)
    study.py    storage, sampler, pruner, heartbeats, dead-worker detection, the ledger
    worker.py   the objective and the worker loop (in process, or spawned per GPU)
    groups.py   configurations: trials that differ only in their seed, as mean ± std
    results.py  results.csv / results.md / best.yaml and `--status`
    final_test.py  the `test:` protocol (all | best | none)
    run.py      `trainpipe sweep`: the directory, the workers, resume

Reports read a sweep through `open_sweep(DIR)` (the spec and the Optuna study) and
`trial_rows(study, spec)` (the table's rows, with each trial's per-epoch curve).
"""

from __future__ import annotations

from trainpipe.sweep.check import check_against_config
from trainpipe.sweep.groups import ConfigGroup, config_groups
from trainpipe.sweep.results import TrialRow, trial_rows, write_results
from trainpipe.sweep.run import SweepOutcome, open_sweep, run_sweep, sweep_status
from trainpipe.sweep.space import trial_overrides
from trainpipe.sweep.spec import Param, SweepSpec, load_spec, parse_spec

__all__ = ["ConfigGroup", "config_groups", "Param", "SweepOutcome", "SweepSpec", "TrialRow", "check_against_config", "load_spec", "open_sweep",
           "parse_spec", "run_sweep", "sweep_status", "trial_overrides", "trial_rows", "write_results"]
