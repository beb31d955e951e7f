"""A sweep's study rebuilt from its trial directories, when its local optuna.db is lost.

Every `trials/NNNN/` is an ordinary run directory: its config.yaml holds the values the
trial ran with, its summary.json how it ended, its metrics.jsonl the metric per epoch.
That is all Optuna keeps of a finished trial, so a study rebuilt from them goes on as
the lost one would have: finished trials are not run again, new trials get the next
numbers, and the sampler learns from the rebuilt ones. Trials that had not finished
(interrupted, killed, failed for a reason of the machine) are queued again.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from statistics import NormalDist
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from trainpipe.errors import ConfigError
from trainpipe.run import failures, rundir
from trainpipe.sweep import confirm as cf
from trainpipe.sweep import study as st
from trainpipe.sweep.db import DbSettings, PatientStorage
from trainpipe.sweep.final_test import record as record_test
from trainpipe.sweep.params import EPS, Param
from trainpipe.sweep.spec import SweepSpec
from trainpipe.sweep.worker import best_of


def trial_dirs(sweep_dir: str | Path) -> dict[int, Path]:
    """{trial number: its run directory} for the trials/NNNN/ folders that hold a run."""
    root = Path(sweep_dir) / "trials"
    if not root.is_dir():
        return {}
    return {int(p.name): p for p in sorted(root.iterdir()) if re.fullmatch(r"\d{4,}", p.name) and rundir.holds_run(p)}


class _Unreplayable(Exception):
    pass


class _Recorder:
    """Stands in for an Optuna trial in `Param.sample`: answers each suggestion with the stored
    form of the value the trial's config holds, and records the distribution asked for."""

    def __init__(self, p: Param, value: Any, config: dict[str, Any]) -> None:
        self.p, self.value, self.config = p, value, config
        self.stored: Any = None
        self.distribution: BaseDistribution | None = None

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        self.distribution = CategoricalDistribution(choices)
        for choice, v in zip(choices, self.p.values):
            if _same(v, self.value) or _same(_resolved(self.p.key, v, self.config), self.value):
                self.stored = choice
                return choice
        raise _Unreplayable(name)

    def suggest_int(self, name: str, low: int, high: int) -> int:
        self.distribution = IntDistribution(low, high)
        self.stored = int(self.value)
        return self.stored

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        self.distribution = FloatDistribution(low, high, log=log)
        d, x = self.p.distribution, float(self.value)
        if self.p.entry.shape == "normal":  # sampled as a quantile of N(mu, sigma), of log x for log_normal
            x = NormalDist(self.p.mu, self.p.sigma).cdf(math.log(x) if "log" in d else x)
            x = min(max(x, EPS), 1 - EPS)
        self.stored = min(max(x, low), high)  # a quantised value may lie a hair outside the range
        return self.stored


def _lookup(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise _Unreplayable(key)
        node = node[part]
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _resolved(key: str, value: Any, config: dict[str, Any]) -> Any:
    """A list or dict value as the resolved config holds it (with the component's defaults)."""
    if not isinstance(value, (list, dict)):
        return value
    from trainpipe.config import load

    try:
        return _lookup(load(base=config, overrides={key: value}).to_dict(), key)
    except ConfigError:
        return value


def stored_params(spec: SweepSpec, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, BaseDistribution]]:
    """The Optuna parameters (stored form) and distributions of a trial that ran with `config`."""
    params, dists = {}, {}
    for p in spec.varied:
        rec = _Recorder(p, _lookup(config, p.key), config)
        p.sample(rec)
        params[p.display], dists[p.display] = rec.stored, rec.distribution
    fixed = optuna.trial.FixedTrial(params)
    for p in spec.varied:  # the stored form must give back the value the trial ran with
        if not _same(_resolved(p.key, p.sample(fixed), config), _lookup(config, p.key)):
            raise _Unreplayable(p.display)
    return params, dists


def rebuild(study: optuna.Study, spec: SweepSpec, sweep_dir: str | Path) -> tuple[list[int], list[int]]:
    """Add a trial to the (empty) `study` for each trial directory, numbered as the directory.
    Returns (rebuilt numbers, numbers queued again to run)."""
    dirs = trial_dirs(sweep_dir)
    rebuilt, queued = [], []
    for number in range(max(dirs, default=-1) + 1):
        d = dirs.get(number)
        trial = _trial_from(d, spec) if d is not None else None
        if trial is None:  # keeps the numbering: a gap, or a directory that cannot be replayed
            why = "no trial directory" if d is None else f"{d} cannot be read back as a trial of this sweep"
            trial = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"discarded": f"rebuilt: {why}"})
        study.add_trial(trial)
        if "discarded" in trial.user_attrs:
            continue
        rebuilt.append(number)
        s = rundir.read_summary(d)
        if s.get("test_evaluated") and "test/acc" in s:  # `test: best` evaluated it after the sweep
            tested = {k: float(v) for k, v in s.items() if k.startswith("test/") and isinstance(v, (int, float))}
            record_test(study, number, tested)
        if trial.state == TrialState.FAIL and (trial.user_attrs.get("result") or {}).get("status") != "failed":
            st.retry_interrupted(study, number)
            queued.append(number)
    return rebuilt, queued


def _trial_from(d: Path, spec: SweepSpec) -> optuna.trial.FrozenTrial | None:
    try:
        config, mark = cf.rebuilt_mark(spec, rundir.read_config(d))  # a confirmation trial keeps its mark
        params, dists = stored_params(spec, config)
    except (_Unreplayable, ConfigError, TypeError, ValueError):  # a config.yaml that cannot be read back
        return None
    s = rundir.read_summary(d)
    metrics = rundir.read_metrics(d)
    best = best_of(metrics, spec.metric, spec.goal)
    curve = {int(m["epoch"]): float(m[spec.metric]) for m in metrics
             if isinstance(m.get(spec.metric), (int, float)) and math.isfinite(m[spec.metric]) and "epoch" in m}
    res = {"status": s.get("status"), "reason": s.get("stop_reason"), "best": best,
           "train_acc": s.get("final/train/acc"), "test_acc": s.get("test/acc"), "epochs": s.get("epochs_run"),
           "epoch_time_s": s.get("epoch_time_s"), "wall_time_s": s.get("wall_time_s")}
    status = s.get("status")
    if status == "completed" and best is not None:
        state, value = TrialState.COMPLETE, best
    elif status == "pruned" or s.get("stop_reason") == "pruned":
        state, value = TrialState.PRUNED, None
        res.update({"status": "pruned", "reason": f"pruned after epoch {s.get('epochs_run')}"})
    elif status == "failed" and s.get("cause") not in failures.CAUSES:
        state, value = TrialState.FAIL, None
        res["reason"] = s.get("error") or s.get("stop_reason") or "failed"
    else:  # interrupted, killed, or failed for a reason of the machine: run it again
        state, value = TrialState.FAIL, None
        res["status"] = "interrupted"
    proc = rundir.read_process(d)
    return optuna.trial.create_trial(state=state, value=value, params=params, distributions=dists,
                                     intermediate_values=curve,
                                     user_attrs={"run_dir": str(d.resolve()), "result": res, "rebuilt": True, **mark,
                                                 "worker": {"host": proc.get("host", ""),
                                                            "machine": proc.get("machine")}})


def open_or_rebuild(spec: SweepSpec, sweep_dir: Path, url: str, study_name: str, *, local: bool, epochs: int,
                    db: DbSettings | None = None) -> tuple[optuna.Study, PatientStorage]:
    """The sweep's study and its storage, the study checked against its trial directories.

    With the local optuna.db damaged (or missing, or empty) beside trials it no longer knows,
    the file is kept as optuna.db.damaged-TIME and the study rebuilt from the trial
    directories. A database that knows some of the trials but not others (an older copy),
    or another database (--storage) that does not know them, is refused: nothing is run
    and nothing is written, so no results are replaced.
    """
    dirs = trial_dirs(sweep_dir)
    existed = (sweep_dir / "optuna.db").is_file()
    damaged: str | None = None
    study = None
    try:
        storage = st.make_storage(url, db)
        study = st.open_study(spec, storage, study_name=study_name, epochs=epochs)
        known = {t.number for t in study.get_trials(deepcopy=False)}
    except st.DamagedDatabase as e:
        if not (local and dirs):
            raise
        damaged = str(e).split("is damaged (", 1)[-1].split("). ", 1)[0]
    except Exception as e:
        if not (local and dirs and st.is_database_error(e)):
            raise
        damaged = str(e).strip().splitlines()[0].split(") ", 1)[-1]
    if damaged is None and study is not None:
        unknown = sorted(set(dirs) - known)
        if not unknown:
            return study, storage
        where = "optuna.db" if local else st.redact(url)
        if known or not local:
            shown = ", ".join(f"{n:04d}" for n in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
            fix = (f"move it away (mv {sweep_dir / 'optuna.db'} {sweep_dir / 'optuna.db.old'}) and run the sweep "
                   f"again: the study is then rebuilt from {sweep_dir / 'trials'}" if local else
                   f"pass the --storage that the sweep ran with, or another --output for a new sweep")
            raise ConfigError(f"the study in {where} does not know trials {shown} of {sweep_dir / 'trials'} (it holds "
                              f"{len(known)} trials: an older copy, or another database). Nothing was run or "
                              f"written. To recover: {fix}.")
        damaged = "it holds no trials" if existed else "it was missing"
    return _rebuild_local(spec, sweep_dir, url, study_name, damaged, keep_aside=existed, epochs=epochs, settings=db)


def _rebuild_local(spec: SweepSpec, sweep_dir: Path, url: str, study_name: str, why: str, *, keep_aside: bool,
                   epochs: int, settings: DbSettings | None) -> tuple[optuna.Study, PatientStorage]:
    import datetime as dt
    import os

    db = sweep_dir / "optuna.db"
    kept = ""
    if keep_aside and db.is_file():  # never deleted: it may hold more than this study
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for suffix in ("", "-journal", "-wal", "-shm"):  # SQLite's side files go with it
            side = db.with_name(db.name + suffix)
            if side.is_file():
                os.replace(side, sweep_dir / f"optuna.db.damaged-{stamp}{suffix}")
        kept = f" (kept as optuna.db.damaged-{stamp})"
    storage = st.make_storage(url, settings)
    study = st.open_study(spec, storage, study_name=study_name, epochs=epochs)
    rebuilt, queued = rebuild(study, spec, sweep_dir)
    again = f"; {len(queued)} that had not finished run again" if queued else ""
    print(f"{db} could not be used ({why}){kept}: rebuilt the study from {len(rebuilt)} trial directories in "
          f"{sweep_dir / 'trials'}{again}", flush=True)
    return study, storage
