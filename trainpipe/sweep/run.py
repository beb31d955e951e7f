"""`trainpipe sweep`: check the sweep, prepare its directory, run the workers, write results.

The sweep directory (default `sweeps/<name>/`, the name being the sweep file's
`name:` or its file name):

    sweep.yaml     the sweep file as given (resuming reads this copy)
    study.json     study name, storage (password hidden), base config, fingerprint
    optuna.db      the Optuna study, SQLite (unless --storage names another database)
    optuna.journal the Optuna study as a journal file instead, with --storage journal (no server,
                   safe on a shared file system); workers/ then holds their liveness files
    results.csv    one row per trial, best first (rewritten after every trial)
    results.md     the same table in Markdown
    best.yaml      the best completed trial's complete config: `trainpipe train best.yaml`
    trials/NNNN/   one ordinary run directory per trial (NNNN = Optuna's trial number):
                   config.yaml, summary.json, metrics.jsonl, checkpoints/, ...

Running the same command again resumes: Optuna's storage knows every trial, so
finished ones are never re-run and queued ones (lost or interrupted) run first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing as mp
import os
import re
import shlex
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trainpipe import files
from trainpipe.errors import ConfigError, StorageError
from trainpipe.run import failures
from trainpipe.sweep import budget as bd
from trainpipe.sweep import study as st
from trainpipe.sweep.check import check_against_config, load_checked_spec
from trainpipe.sweep.db import DatabaseUnreachable, DbSettings
from trainpipe.sweep.final_test import evaluate_best
from trainpipe.sweep.ranking import best_trial
from trainpipe.sweep.rebuild import open_or_rebuild
from trainpipe.sweep.results import TrialRow, config_groups, machine_failures, status_text, trial_rows, \
    write_results
from trainpipe.sweep.spec import SweepSpec
from trainpipe.sweep.worker import (EXIT_RETRY, WorkerConfig, check_stop, check_sweep_dir,
                                   install_signal_handlers, run_worker, worker_main)

META = st.SWEEP_META


@dataclass(repr=False)
class SweepOutcome:
    """What `trainpipe.sweep()` returns: the trials' rows (best first), and the same as tables."""

    sweep_dir: Path
    study_name: str
    storage: str  # password hidden
    rows: list[TrialRow]
    interrupted: bool = False
    spec: SweepSpec | None = None
    machine_failures: list[TrialRow] = field(default_factory=list)  # out of memory, disk full, a lost GPU
    unreachable: bool = False  # stopped: the database was away for longer than the retry limit

    @property
    def exit_code(self) -> int:
        """How `trainpipe sweep` ends when no signal stopped it (with or without --slurm): 75 when
        running it again is what is needed (trials failed for a reason of the machine, or the
        database stayed away), else 0."""
        return EXIT_RETRY if self.machine_failures or self.unreachable else 0

    @property
    def trials(self) -> Any:
        """One row per trial, best first (results.csv): a pandas DataFrame when pandas is
        installed, else a `Table`."""
        from trainpipe.run.result import as_table

        return as_table([{"trial": r.name, "state": r.state, **({"stage": r.stage} if r.stage else {}),
                          **r.shown, "best": r.value, "test/acc": r.test_acc,
                          "epochs": r.epochs, "wall_time_s": r.wall_time_s, "reason": r.reason} for r in self.rows],
                        index="trial")

    @property
    def configurations(self) -> Any:
        """One row per configuration (trials that differ only in their seed), best mean first:
        its rank, parameters, mean and std of the sweep metric over its seeds, n and its trials."""
        from trainpipe.run.result import as_table

        if self.spec is None:
            return as_table([])
        return as_table([{"rank": g.rank, **g.shown, "mean": g.mean, "std": g.std, "n": g.n, "trials": g.trials}
                         for g in config_groups(self.rows, self.spec)])

    def __repr__(self) -> str:
        states: dict[str, int] = {}
        for r in self.rows:
            states[r.state] = states.get(r.state, 0) + 1
        counts = ", ".join(f"{n} {state}" for state, n in states.items()) or "no trials"
        best = best_trial(self.rows)
        metric = self.spec.metric if self.spec is not None else "best"
        shown = f", best {metric}={best.value:.4f} (trial {best.name})" if best is not None else ""
        return (f"SweepOutcome({counts}{shown}{', interrupted' if self.interrupted else ''}"
                f"{', database unreachable' if self.unreachable else ''}, sweep_dir={str(self.sweep_dir)!r})")


def read_meta(d: Path) -> dict[str, Any] | None:
    p = d / META
    return json.loads(p.read_text()) if p.is_file() else None


def parse_cli_overrides(overrides: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """`key=value` strings (values read as YAML, as `trainpipe train` reads them) as a dict."""
    from trainpipe.config import parse_overrides

    return dict(parse_overrides(overrides or ()))


def overrides_suffix(overrides: Mapping[str, Any]) -> str:
    """`train.epochs=1-data.fraction=0.05`: names a sweep run with command-line overrides, so that
    a smoke test never mixes into the real sweep's directory or study."""
    text = "-".join(f"{k}={json.dumps(v) if isinstance(v, (list, dict)) else v}" for k, v in overrides.items())
    text = re.sub(r"[^A-Za-z0-9._=+-]+", "_", text)
    if len(text) > 60:
        text = f"{text[:50]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return text


def locate(sweep: str | Path, output: str | Path | None = None,
           overrides: Sequence[str] | Mapping[str, Any] | None = None) -> tuple[SweepSpec, Path, dict[str, Any] | None]:
    """The spec, the sweep directory and its metadata (None for a new sweep).

    `sweep` is a sweep file, or a sweep directory to resume (its stored copy is used,
    with the command-line overrides it was started with). A sweep file with
    `overrides` gets a directory and study of its own: sweeps/<name>-<overrides>.
    """
    p = Path(sweep)
    extra = parse_cli_overrides(overrides)
    if p.is_dir():
        meta = read_meta(p)
        if meta is None:
            raise ConfigError(f"{p} is a directory but not a sweep directory (it has no {META}); pass a "
                              f"sweep file, or the directory a sweep wrote.")
        if output is not None and Path(output).resolve() != p.resolve():
            raise ConfigError(f"--output {output} differs from the sweep directory {p}; leave --output out.")
        stored = meta.get("overrides") or {}
        if extra and extra != stored:
            shown = " ".join(f"{k}={v}" for k, v in stored.items()) or "none"
            raise ConfigError(f"the sweep in {p} was started with the overrides {shown}; resume it without "
                              f"key=value arguments (its own are applied again), or start the sweep file with "
                              f"the new ones (another directory).")
        spec = load_checked_spec(p / "sweep.yaml", base=meta.get("base"), overrides=stored)
        return replace(spec, name=meta.get("name") or meta["study_name"]), p, meta
    spec = load_checked_spec(p, overrides=extra)
    if extra:
        spec = replace(spec, name=f"{spec.name}-{overrides_suffix(spec.overrides)}")
    d = Path(output) if output is not None else Path("sweeps") / spec.name
    return spec, d, read_meta(d)


def storage_url(d: Path, storage: str | None, meta: dict[str, Any] | None) -> str:
    recorded = None if meta is None else meta.get("storage")
    if meta is not None and recorded is None and storage:
        raise ConfigError(f"the sweep in {d} keeps its study in {d / 'optuna.db'}; leave --storage out to "
                          f"resume it, or use another --output for a sweep in {st.redact(storage)}.")
    if storage == "journal":  # an Optuna journal file in the sweep directory
        storage = st.journal_url(d / st.JOURNAL_FILE)
    if storage:
        if recorded is not None and st.redact(storage) != recorded:
            raise ConfigError(f"the sweep in {d} keeps its study in {recorded}, not {st.redact(storage)}; pass "
                              f"that --storage, or another --output.")
        return storage
    if recorded is not None:
        if "***" in recorded:
            raise ConfigError(f"the sweep in {d} keeps its study in {recorded}; pass --storage with the "
                              f"password (it is not written to disk).")
        return recorded
    return st.default_storage_url(d)


def parse_devices(devices: str | list[str] | None) -> list[str] | None:
    if devices is None:
        return None
    items = devices.split(",") if isinstance(devices, str) else [str(x) for x in devices]
    out = [x.strip() for x in items if x.strip()]
    bad = [x for x in out if not (x.isdigit() or x == "cpu")]
    if bad or not out:
        raise ConfigError(f"--devices {devices!r}: expected GPU indices and/or cpu separated by commas, e.g. "
                          f"--devices 0,1 (several workers may share one: --workers 4 --devices 0,1).")
    return out


def check_gpus(devs: list[str] | None, given: Any) -> None:
    """Refuse GPU indices past the GPUs this process sees (every trial on them would fail),
    naming the GPUs present."""
    gpus = sorted({int(d) for d in devs or [] if d != "cpu"})
    if not gpus:
        return
    import torch

    count = torch.cuda.device_count()
    missing = [g for g in gpus if g >= count]
    if not missing:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    if count == 0:
        present = f"this machine has no GPU that torch can use{seen}; leave --devices out (or --devices cpu) to " \
                  f"run on the CPU"
    else:
        names = ", ".join(f"{i}: {torch.cuda.get_device_name(i)}" for i in range(count))
        present = f"the GPUs present{seen}, as torch numbers them, are {names}; use indices 0 to {count - 1}"
    raise ConfigError(f"--devices {given!r}: no GPU {', '.join(map(str, missing))}; {present} "
                      f"(several workers may share one: --workers 4 --devices 0,1).")


def device_shares(devs: list[str] | None, workers: int) -> list[int]:
    """For each worker, how many workers (itself included) use its GPU; 1 on the CPU."""
    assigned = [devs[i % len(devs)] if devs else None for i in range(workers)]
    return [assigned.count(d) if d not in (None, "cpu") else 1 for d in assigned]


def run_sweep(
    sweep: str | Path,
    output: str | Path | None = None,
    *,
    workers: int = 1,
    devices: str | list[str] | None = None,
    storage: str | None = None,
    trials: int | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    budget: str | None = None,
    heartbeat_interval: float = st.HEARTBEAT_INTERVAL_S,
    grace_period: float = st.GRACE_PERIOD_S,
    db: DbSettings | None = None,
) -> SweepOutcome:
    """Run (or resume, or join) a sweep; returns when it is complete or interrupted, or when
    its database stayed away for longer than `db.retry_limit` (`unreachable`).

    `trials` caps the sweep's total number of trials (it overrides run_cap).
    `overrides` (`key=value` strings or a dict) apply to every trial, after `fixed`.
    `budget` (`90m`) replaces the file's `budget:` (see `sweep.budget`).
    `db`: the retry limit and PostgreSQL's timeouts (`trainpipe.sweep.db`).
    """
    devs = parse_devices(devices)
    check_gpus(devs, devices)
    try:
        p = prepare_sweep(sweep, output, workers=workers, storage=storage, trials=trials, overrides=overrides,
                          heartbeat_interval=heartbeat_interval, grace_period=grace_period, trains_here=devs is None,
                          budget=budget, budgeted=True, db=db)
    except DatabaseUnreachable as e:
        return unreachable(str(e), locate(sweep, output, overrides)[1], storage in (None, "journal"))
    workers = p.common["workers"]  # capped at the trials that can run
    shares = device_shares(devs, workers)
    configs = [WorkerConfig(index=i, device=devs[i % len(devs)] if devs else None, device_share=shares[i],
                            spawned=workers > 1,
                            cwd=os.getcwd() if workers > 1 else None,
                            env=dict(os.environ) if workers > 1 else None, **p.common) for i in range(workers)]
    limit = p.common["budget"]
    try:
        ended = run_in_process(configs[0]) if workers == 1 else run_processes(configs)
    except DatabaseUnreachable as e:
        return unreachable(str(e), p.sweep_dir, p.own_storage)
    finally:
        if limit is not None:
            bd.finish(p.sweep_dir, limit)
    if ended == "unreachable":
        return unreachable(f"a worker found the database unreachable for longer than the retry limit "
                           f"({p.common['db'].retry_limit:g} s)", p.sweep_dir, p.own_storage)
    try:
        return finish_sweep(p, ended == "interrupted")
    except DatabaseUnreachable as e:
        return unreachable(str(e), p.sweep_dir, p.own_storage)


def unreachable(why: str, d: Path, own_storage: bool) -> SweepOutcome:
    """The sweep stops: its database stayed away for longer than the retry limit (exit code 75)."""
    again = f"trainpipe sweep {d}{'' if own_storage else ' --storage URL'}"
    print(f"stopped: {why}.\nThe running trials stopped at the end of an epoch and keep their checkpoints; "
          f"finished trials are recorded. When the database is back, resume with: {again} (the stopped trials "
          f"continue from their checkpoints; --db-retry-limit SECONDS waits longer for the database).",
          file=sys.stderr, flush=True)
    return SweepOutcome(d, d.name, "", [], unreachable=True)


@dataclass
class PreparedSweep:
    """A checked sweep whose directory and study exist, ready for workers (`WorkerConfig(**common)`)."""

    spec: SweepSpec
    sweep_dir: Path
    study: Any  # optuna.Study
    url: str
    own_storage: bool  # the study lives in the sweep directory (SQLite or journal file): resuming needs no --storage
    common: dict[str, Any]
    storage: Any = None  # the study's storage (`db.PatientStorage`)


def prepare_sweep(
    sweep: str | Path,
    output: str | Path | None = None,
    *,
    workers: int = 1,
    storage: str | None = None,
    trials: int | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    heartbeat_interval: int = st.HEARTBEAT_INTERVAL_S,
    grace_period: int = st.GRACE_PERIOD_S,
    where: str = "",
    trains_here: bool = False,
    budget: str | None = None,
    budgeted: bool = False,
    db: DbSettings | None = None,
) -> PreparedSweep:
    """Check the sweep, create (or open) its directory and study, and say what will run; `where`
    is added to the first line (e.g. " on Slurm"). `trains_here`: the trials run on this machine
    on the config's train.device, which is then checked here (not so for --devices or Slurm).
    `budgeted`: the workers of this process keep to the time budget (`budget`, else the file's;
    see `run_sweep`). `db`: how long the database's outages are ridden out (`DbSettings`)."""
    db = db or DbSettings()
    for name, v in (("--db-retry-limit", db.retry_limit), ("--db-connect-timeout", db.connect_timeout),
                    ("--db-statement-timeout", db.statement_timeout)):
        if not v > 0:
            raise ConfigError(f"{name} must be a positive number of seconds; got {v:g}.")
    spec, d, meta = locate(sweep, output, overrides)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1; got {workers}.")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be at least 1; got {trials}.")
    budget_s = bd.parse_duration(budget, "--budget") if budget is not None else spec.budget_s
    base_cfg = check_against_config(spec)
    if trains_here and not any(p.key == "train.device" for p in spec.varied):
        from trainpipe.loop.device import resolve_device

        resolve_device(base_cfg.train.device)  # every trial here would be refused: say it once, before any write
    url = storage_url(d, storage, meta)
    if meta is not None:  # a changed sweep file extends the sweep, or is refused (`sweep.extend`)
        from trainpipe.sweep.extend import reconcile

        meta = reconcile(spec, d, meta, url)
    study_name = meta["study_name"] if meta else spec.name
    if storage is None or st.is_journal(url):
        d.mkdir(parents=True, exist_ok=True)  # for optuna.db; another database is opened first
    st.refuse_sqlite_on_network_fs(url)
    study, storage_obj = open_or_rebuild(spec, d, url, study_name, local=storage is None, epochs=base_cfg.train.epochs,
                                         db=db)
    retried = st.retry_machine_failures(study, failures.CAUSES)
    if retried:
        print(f"retrying {len(retried)} trial{'s' if len(retried) > 1 else ''} that failed for a reason of the "
              f"machine last time: " + ", ".join(f"{t.number:04d} ({failures.WHAT[t.user_attrs['result']['cause']]})"
                                                for t in retried), flush=True)
    (d / "trials").mkdir(parents=True, exist_ok=True)
    if spec.source and Path(spec.source).resolve() != (d / "sweep.yaml").resolve():
        files.write_text(d / "sweep.yaml", Path(spec.source).read_text())
    if meta is None:
        meta = {"study_name": study_name, "storage": None if storage is None else st.redact(url),
                "sweep_file": str(Path(spec.source).resolve()) if spec.source else None, "base": spec.base,
                "fingerprint": spec.fingerprint(), "created": dt.datetime.now().isoformat(timespec="seconds"),
                "method": spec.method, "metric": spec.metric, "goal": spec.goal,
                "params": [p.display for p in spec.varied], "metric_name": spec.metric_label,
                "overrides": spec.overrides,
                "keys": {p.display: p.key for p in spec.varied},
                "sweep_file_text": Path(spec.source).read_text() if spec.source else None}
        files.write_json(d / META, meta)
    total = planned_total(spec, trials)
    planned = f"{total} trials" if total is not None else "trials until stopped (no run_cap or --trials)"
    if spec.confirm is not None:
        from trainpipe.sweep.confirm import planned_extra

        planned += (f" + {planned_extra(spec, total)} confirmation trials (the top {spec.confirm.top} with "
                    f"{spec.confirm.seeds} seeds each)")
    can_run = runnable(spec, study, total)
    if can_run is not None and workers > max(can_run, 1):
        # A worker with nothing to run would only wait, and each one costs start-up time and memory.
        left = f"only {can_run} trial{'' if can_run == 1 else 's'} can run" if can_run else "no trial is left to run"
        print(f"--workers {workers}: {left}, so {max(can_run, 1)} worker{'s start' if can_run > 1 else ' starts'}",
              flush=True)
        workers = max(can_run, 1)
    shown = (meta or {}).get("name") or study_name  # (an extended sweep's study is NAME.extended-K)
    print(f"sweep {shown}: {spec.method} over {', '.join(p.display for p in spec.varied) or 'nothing'}, "
          f"{spec.metric} ({spec.goal}), {planned}, {workers} worker{'s' if workers > 1 else ''}{where} -> {d}"
          f"{'' if storage is None else ' (study in ' + st.redact(url) + ')'}", flush=True)

    if spec.ignored:
        print(f"ignored: {', '.join(spec.ignored)} (read only by `wandb agent`; trainpipe runs the trials itself)",
              flush=True)
    command = "trainpipe sweep " + shlex.join([str(sweep)] + [f"{k}={v}" for k, v in parse_cli_overrides(overrides).items()]
                                              + ([f"--output={output}"] if output else []))
    limit = start_budget(spec, d, study, budget_s, workers) if budgeted and budget_s is not None else None
    if budgeted and limit is None:
        bd.drop(d)
    common = dict(budget=limit, spec=spec, sweep_dir=str(d), storage_url=url, study_name=study_name, total=total,
                  epochs=base_cfg.train.epochs, workers=workers, heartbeat_interval=heartbeat_interval,
                  grace_period=grace_period, command=command, db=db)
    own = storage is None or (st.is_journal(url) and Path(url[len(st.JOURNAL):]).parent == d.resolve())
    return PreparedSweep(spec, d, study, url, own, common, storage_obj)


def finish_sweep(p: PreparedSweep, interrupted: bool) -> SweepOutcome:
    """After the workers: results, the test evaluation of the best configuration, the summary."""
    spec, d, study, url = p.spec, p.sweep_dir, p.study, p.url
    study_name = p.common["study_name"]
    check_sweep_dir(d)
    if interrupted and p.storage is not None:
        try:  # after Ctrl-C, never wait for a database that is away: the next start writes them
            with p.storage.patience.no_wait():
                rows = write_results_if_room(d, study, spec)
        except DatabaseUnreachable:
            rows = []
    else:
        rows = write_results_if_room(d, study, spec)
    broken = machine_failures(rows)
    if spec.test == "best" and not interrupted and not broken and evaluate_best(study, spec, rows,
                                                                                storage=p.storage):
        rows = write_results_if_room(d, study, spec)
    print(status_text(rows, spec, d).rstrip(), flush=True)
    if broken and not interrupted:
        print(machine_failure_message(broken, d, None if p.own_storage else url), file=sys.stderr, flush=True)
    if interrupted:
        print(f"interrupted: running trials were marked and queued again; resume with: trainpipe sweep {d}"
              f"{'' if p.own_storage else ' --storage URL'}"
              f"{' (the best configuration is evaluated on the test split when the sweep ends)' if spec.test == 'best' else ''}",
              file=sys.stderr)
    return SweepOutcome(d, study_name, st.redact(url), rows, interrupted, spec, broken)


def runnable(spec: SweepSpec, study: Any, total: int | None) -> int | None:
    """How many trials can run now (queued ones plus the room left); None: no limit."""
    from optuna.trial import TrialState

    from trainpipe.sweep import confirm as cf

    led = st.ledger(study.get_trials(deepcopy=False))
    queued = len(led.by_state(TrialState.WAITING))
    if total is None:
        return None
    left = max(total - len(cf.screening(led).visible), 0)
    if spec.confirm is not None:  # the confirmation trials still to come (an estimate while screening runs)
        left += len(cf.needed(spec, led.visible)) if not left else cf.planned_extra(spec, total)
    return queued + left


def write_results_if_room(d: Path, study: Any, spec: SweepSpec) -> list[TrialRow]:
    """`write_results`; on a full disk the files stay as they were and the rows are returned."""
    try:
        return write_results(d, study, spec)
    except StorageError as e:
        if failures.classify(e) != failures.DISK_FULL:
            raise
        print(f"results not rewritten: {e}", file=sys.stderr)
        return trial_rows(study, spec)


def machine_failure_message(broken: list[TrialRow], d: Path, storage: str | None) -> str:
    """What a sweep with trials the machine failed says at its end (it then exits with code 75)."""
    causes = [c for c in failures.CAUSES if any(r.cause == c for r in broken)]
    listed = ", ".join(f"{r.name} ({failures.WHAT[r.cause]})" for r in broken[:10])
    stopped = " The disk is full, so no more trials were started." if failures.DISK_FULL in causes else ""
    todo = failures.advice(causes)
    return (f"{len(broken)} trial{'s' if len(broken) > 1 else ''} failed for a reason of the machine, not of "
            f"{'their' if len(broken) > 1 else 'its'} configuration: {listed}.{stopped} They are not counted as "
            f"results. What to do: {todo}; then run `trainpipe sweep {d}{'' if storage is None else ' --storage URL'}` "
            f"again: it retries them (finished trials are not run again).")


def start_budget(spec: SweepSpec, d: Path, study: Any, budget_s: float, workers: int) -> bd.Budget:
    """Begin this invocation's share of the budget; before any trial has completed, the dry run
    times the first configuration, so that the first trial's start can be judged too."""
    from optuna.trial import TrialState

    limit = bd.start(d, budget_s)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        from trainpipe.sweep.plan import time_first_configuration

        try:
            limit.fallback_trial_s = time_first_configuration(spec).trial_s(spec.test == "all")
        except Exception as e:  # the first trial will say what is wrong; it starts unestimated
            print(f"budget: could not time the first configuration ({type(e).__name__}: {e}); the first trial "
                  f"starts without an estimate", file=sys.stderr)
    return limit


def planned_total(spec: SweepSpec, trials: int | None) -> int | None:
    if trials is None:
        return spec.planned_trials()
    size = spec.space_size()
    return trials if size is None else min(trials, size)


def dry_run(sweep: str | Path, output: str | Path | None = None, *, workers: int = 1, trials: int | None = None,
            overrides: Sequence[str] | Mapping[str, Any] | None = None, timed: bool = True) -> list[str]:
    """`trainpipe sweep FILE --dry-run`: print what would run and, after timing a few steps of
    the first configuration, the estimated wall time; writes nothing. Returns the printed lines."""
    from trainpipe.sweep.plan import estimate_lines, plan_lines, time_first_configuration

    spec, d, meta = locate(sweep, output, overrides)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1; got {workers}.")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be at least 1; got {trials}.")
    check_against_config(spec)
    total = planned_total(spec, trials)
    lines = plan_lines(spec, total, workers)
    lines.append(f"directory: {d}" + (" (exists: running the sweep resumes it; finished trials are not run again)"
                                      if meta is not None else ""))
    if meta is not None:  # a changed sweep file: what running it would do (`sweep.extend`)
        from trainpipe.sweep.extend import preview

        lines += preview(spec, d, meta)
    print("\n".join(lines), flush=True)
    if timed:
        print("timing a few steps of the first configuration ...", flush=True)
        more = estimate_lines(spec, time_first_configuration(spec), total, workers)
        print("\n".join(more), flush=True)
        lines += more
    return lines


def run_in_process(wc: WorkerConfig) -> str:
    """'done' or 'interrupted'; `DatabaseUnreachable` is raised."""
    restore = install_signal_handlers()
    try:
        run_worker(wc)
        return "done"
    except KeyboardInterrupt:
        return "interrupted"
    finally:
        restore()


# What every worker imports before its first trial; the forkserver imports it once.
WORKER_PRELOAD = ["trainpipe.sweep.worker", "trainpipe.run.train", "trainpipe.data", "trainpipe.models",
                  "trainpipe.optim", "trainpipe.sched", "trainpipe.track", "trainpipe.sweep.preload"]


def worker_context() -> Any:
    """The multiprocessing context for worker processes.

    Every worker needs torch, torchvision, Optuna and trainpipe: over 10 CPU-seconds of
    imports per fresh interpreter. With the forkserver, one server process imports them
    once and each worker is a fork of it, ready at once. The server never touches CUDA
    (importing torch does not initialise it), so each worker still opens its own GPU,
    as a spawned one would. Elsewhere than on Linux workers are spawned: Windows has no
    forkserver, and macOS's system frameworks are not safe to use in a forked child.
    """
    if not sys.platform.startswith("linux") or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


def stop_forkserver(ctx: Any) -> None:
    """Stop the server once its workers have ended, and reap it.

    Nothing outlives the sweep command, and the CPU time of the server and of its
    workers (which it reaps) is counted to this process's children, as spawned workers'
    would be (`time`, `getrusage`). The stdlib has no public call for this; where its
    private one is missing, the server exits by itself with this process.
    """
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is not None:
        stop()


def run_processes(configs: list[WorkerConfig]) -> str:
    """Worker processes (never forks of this one: CUDA must not be inherited); 'done', 'interrupted' or
    'unreachable' (a worker stopped for its database)."""
    ctx = worker_context()
    procs = [ctx.Process(target=worker_main, args=(wc,), name=f"trainpipe-sweep-worker-{wc.index}")
             for wc in configs]
    restore = install_signal_handlers()
    interrupted = False
    try:
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=0.5)
            check_stop()
    except KeyboardInterrupt:
        interrupted = True
        for p in procs:  # a terminal's Ctrl-C reached them already; a `kill` of this process did not
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=120)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join()
    finally:
        restore()
        stop_forkserver(ctx)
    lost_db = False
    for p, wc in zip(procs, configs):
        if p.exitcode == 130:
            interrupted = True
        elif p.exitcode == EXIT_RETRY:
            lost_db = True
        elif p.exitcode not in (0, None) and not interrupted:
            print(f"worker {wc.index} stopped with exit code {p.exitcode}; its trial, if any, is queued again "
                  f"on the next start", file=sys.stderr)
    return "interrupted" if interrupted else "unreachable" if lost_db else "done"


def open_sweep(sweep_dir: str | Path, storage: str | None = None) -> tuple[SweepSpec, Any]:
    """The spec and the Optuna study of an existing sweep directory (for status and reports)."""
    import optuna

    spec, d, meta = locate(sweep_dir)
    url = storage_url(d, storage, meta)
    if url == st.default_storage_url(d) and not (d / "optuna.db").is_file():
        if (d / "trials").is_dir() and any((d / "trials").iterdir()):
            raise ConfigError(f"{d / 'optuna.db'}, the sweep's local Optuna database, is missing; its trials are "
                              f"kept in {d / 'trials'}: run `trainpipe sweep {d}` to rebuild the study from them.")
        raise ConfigError(f"{d} has no optuna.db: the sweep never started here.")
    try:
        study = optuna.load_study(study_name=meta["study_name"], storage=st.make_storage(url))
    except KeyError:
        raise ConfigError(f"the storage {st.redact(url)} has no study {meta['study_name']!r}.") from None
    return spec, study


def sweep_status(sweep: str | Path, output: str | Path | None = None, storage: str | None = None,
                 overrides: Sequence[str] | Mapping[str, Any] | None = None) -> str:
    """The text of `trainpipe sweep DIR --status` (or of `trainpipe sweep FILE [key=value ...] --status`)."""
    p = Path(sweep)
    d = p if p.is_dir() else locate(p, output, overrides)[1]
    if read_meta(d) is None:
        raise ConfigError(f"no sweep in {d} (no {META}); pass the sweep directory, e.g. sweeps/NAME.")
    spec, study = open_sweep(d, storage)
    return status_text(trial_rows(study, spec), spec, d)
