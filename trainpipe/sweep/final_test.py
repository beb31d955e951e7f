"""The sweep's `test:` protocol: which trials are evaluated on the test split, and when.

    all    every trial ends with a test pass (of its best checkpoint), as a lone run does
    best   trials skip it; when the sweep has ended, the best configuration (each of its
           seeds) is evaluated once: choose on val, report test once
    none   no test pass at all

Optuna does not let a finished trial's attributes change, so test results found after
the sweep are kept in the study's user attributes `trainpipe:test:NNNN` (one per trial,
so that machines recording different trials never overwrite each other; older sweeps
kept one `trainpipe:test` dict); they are also written into the trial's summary.json,
where reports read them.

Each trial is evaluated once per sweep, not once per machine that sees its run
directory (a shared file system): the process that first creates the marker study
`<study>:test-split:NNNN` in the storage evaluates it. Creating a study of a taken name
fails atomically in every storage, which no read-then-write of an attribute does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from trainpipe.loop.callbacks import Callback
from trainpipe.run import rundir
from trainpipe.sweep.spec import SweepSpec

TEST_ATTR = "trainpipe:test"
WHEN = {"all": "every trial, at its end (test: all)",
        "best": "the best configuration only, once, after the sweep (test: best)",
        "none": "not evaluated (test: none)"}


class SkipTestSplit(Callback):
    """Leaves out a trial's test pass (test: best or none).

    The runner evaluates the test split when the data has one; removing it from the
    trainer before training starts is the one switch that needs no change to the run
    itself. The split is still loaded (a small share of a trial's cost); the pass is not run.
    """

    def on_fit_start(self, trainer: Any) -> None:
        trainer.data.test = None


def recorded(study: optuna.Study) -> dict[int, dict[str, float]]:
    """Test metrics found after the sweep, by trial number."""
    attrs = study.user_attrs
    out = {int(k): v for k, v in (attrs.get(TEST_ATTR) or {}).items()}
    prefix = TEST_ATTR + ":"
    out.update({int(k[len(prefix):]): v for k, v in attrs.items() if k.startswith(prefix)})
    return out


def record(study: optuna.Study, number: int, metrics: dict[str, float]) -> None:
    """Keep trial `number`'s test metrics in the study (an attribute of its own)."""
    study.set_user_attr(f"{TEST_ATTR}:{number:04d}", metrics)


def claim(study: optuna.Study, storage: optuna.storages.BaseStorage, number: int) -> dict[str, Any] | None:
    """Claim trial `number`'s test evaluation; None when this process has it, else who has it.

    A claim whose process is gone from this machine without a recorded result is taken over.
    """
    name = f"{study.study_name}:test-split:{number:04d}"
    try:
        marker = optuna.create_study(storage=storage, study_name=name)
    except optuna.exceptions.DuplicatedStudyError:
        who = optuna.load_study(study_name=name, storage=storage).user_attrs.get("by") or {}
        if rundir.gone(who) is not True:
            return who
        optuna.delete_study(study_name=name, storage=storage)
        return claim(study, storage, number)
    marker.set_user_attr("by", rundir.this_process())
    return None


def to_evaluate(rows: list[Any], spec: SweepSpec) -> list[Any]:
    """The completed trials of the best configuration (every seed of it)."""
    from trainpipe.sweep.ranking import best_configuration, configurations

    best = best_configuration(configurations(rows, [p.display for p in spec.config_params], spec.goal))
    if best is None:
        return []
    return sorted((r for r in best.rows if r.state == "completed"), key=lambda r: r.number)


def evaluate_best(study: optuna.Study, spec: SweepSpec, rows: list[Any],
                  say: Callable[[str], None] = print, storage: optuna.storages.BaseStorage | None = None) -> list[int]:
    """Evaluate the best configuration's trials on the test split (those not evaluated yet).

    Returns the trial numbers evaluated now. A trial whose run directory is on another
    machine is left to that machine's sweep command; with `storage` (the study's), one
    that another process claimed (`claim`) is left to that process.
    """
    from trainpipe.run.evaluate import evaluate_checkpoint

    done = recorded(study)
    evaluated = []
    for r in to_evaluate(rows, spec):
        if r.number in done or r.test_acc is not None:
            continue
        run_dir = Path(r.run_dir)
        if not (run_dir / rundir.CHECKPOINTS).is_dir():
            say(f"test split: trial {r.name} ran on {r.host or 'another machine'} ({run_dir} is not here); "
                f"run `trainpipe sweep` there to evaluate it")
            continue
        if storage is not None:
            who = claim(study, storage, r.number)
            if who is not None:
                say(f"test split: trial {r.name} is evaluated by {who.get('host') or 'another process'} "
                    f"(pid {who.get('pid', '?')})")
                continue
            if r.number in recorded(study):  # finished by the claim's former holder meanwhile
                continue
        cfg = rundir.read_config(run_dir)
        tta = (cfg.get("train") or {}).get("tta") == "flip"
        res = evaluate_checkpoint(run_dir, split="test", tta=tta)
        metrics = {k: float(v) for k, v in res.metrics.items()}
        record(study, r.number, metrics)
        _add_to_summary(run_dir, metrics)
        evaluated.append(r.number)
        say(f"test split: trial {r.name} (best configuration) test/acc {metrics.get('test/acc', float('nan')):.4f}")
    return evaluated


def _add_to_summary(run_dir: Path, metrics: dict[str, float]) -> None:
    summary = rundir.read_summary(run_dir)
    if summary:
        rundir.write_summary(run_dir, {**summary, **metrics, "test_evaluated": "after the sweep (test: best)"})
