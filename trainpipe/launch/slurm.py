"""Sweeps and runs on a Slurm cluster, through submitit (`pip install 'trainpipe[slurm]'`).

`trainpipe sweep FILE --slurm` submits the sweep's workers as one job array: each array
task is a worker on the shared study (Optuna's journal file in the sweep directory by
default: no server) that takes trials until none is left, as `--workers` does on one
machine. `trainpipe train CONFIG --slurm` submits one run; with `--nproc N` (and
`slurm.nodes`) it trains with DDP over Slurm's tasks, torch.distributed initialised from
Slurm's environment (submitit's `TorchDistributedEnvironment`).

Time limits and preemption: the generated parameters ask Slurm for SIGUSR1
`signal_lead_s` (default 120 s) before the time limit. The run (or the worker's trial)
stops at its next step with a checkpoint there (trainpipe.run.signals), and the task asks
Slurm to requeue it (`scontrol requeue`); the requeued task resumes from that step.
SIGTERM (scancel, preemption) stops the same way without a requeue: the sweep's trial is
queued again in the study, and `--slurm` again submits workers for what is left.

The sweep directory keeps `slurm/jobs.json` (every submission: job id, tasks, time) and
each task's log in `slurm/<job>_<task>/`; a run directory keeps them in `slurm/` too.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainpipe import files
from trainpipe.errors import ConfigError, did_you_mean

# Slurm sends SIGUSR1 this long before the time limit: time for one step and a checkpoint
# (Slurm's own check can fire up to a minute early, so the margin is generous).
SIGNAL_LEAD_S = 120
JOBS = "jobs.json"
TIME_LIMIT_SIGNAL = signal.SIGUSR1
DONE_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
               "DEADLINE", "PREEMPTED")


class SlurmOptions(BaseModel):
    """The `slurm:` block of a sweep file, and the flags of `--slurm` (which take precedence)."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None  # the cluster's default partition when unset
    time: int | str = "1:00:00"  # per task: minutes, or [D-]HH:MM:SS
    gpus_per_task: int = Field(0, ge=0)
    cpus_per_task: int = Field(2, ge=1)
    mem: str | None = None  # per node, e.g. 16G; the cluster's default when unset
    account: str | None = None
    qos: str | None = None
    array_parallelism: int | None = Field(None, ge=1)  # array tasks that run at once (default: all)
    nodes: int = Field(1, ge=1)  # for `train --slurm`: DDP across nodes
    signal_lead_s: int = Field(SIGNAL_LEAD_S, ge=0)
    setup: list[str] = Field(default_factory=list)  # shell lines before the task (module load ..., source venv)
    additional_parameters: dict[str, Any] = Field(default_factory=dict)  # any other sbatch option

    def minutes(self) -> int:
        return parse_time(self.time)


def parse_time(value: int | str) -> int:
    """Slurm's time formats (minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]) in whole minutes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError("must be at least 1 minute")
        return value
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError(f"{text!r} is not a Slurm time: minutes, HH:MM:SS or D-HH:MM:SS, e.g. 2:00:00")
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:
        seconds = a * 60
    if seconds < 60:
        raise ValueError(f"{text!r} is less than a minute")
    return math.ceil(seconds / 60)


def options(block: Any, flags: dict[str, Any] | None = None, *, where: str = "slurm") -> SlurmOptions:
    """The options from a `slurm:` block (a mapping or None) and command-line flags, checked."""
    if block is not None and not isinstance(block, dict):
        raise ConfigError(f"{where} must be a mapping of Slurm options, e.g. {{partition: gpu, time: '2:00:00'}}; "
                          f"got {type(block).__name__}.")
    merged = {**(block or {}), **{k: v for k, v in (flags or {}).items() if v is not None}}
    try:
        opts = SlurmOptions(**merged)
        opts.minutes()
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        known = list(SlurmOptions.model_fields)
        hint = did_you_mean(key, known) if err["type"] == "extra_forbidden" else ""
        raise ConfigError(f"{where}.{key}: {err['msg'].lower()}{hint or '.'} Options: {', '.join(known)}; "
                          f"other sbatch options go under additional_parameters.") from None
    except ValueError as e:
        raise ConfigError(f"{where}.time: {e}.") from None
    return opts


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError("--slurm needs submitit: pip install 'trainpipe[slurm]' (or pip install submitit).") from None
    return submitit


def sbatch_parameters(opts: SlurmOptions, *, name: str, tasks_per_node: int = 1) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters for `opts` (the time-limit signal, requeue, the rest)."""
    params: dict[str, Any] = {"job_name": name, "time": opts.minutes(), "nodes": opts.nodes,
                              "ntasks_per_node": tasks_per_node, "cpus_per_task": opts.cpus_per_task}
    for key in ("partition", "mem", "account", "qos"):
        if getattr(opts, key) is not None:
            params[key] = getattr(opts, key)
    if opts.gpus_per_task:
        params["gpus_per_task"] = opts.gpus_per_task
    if opts.setup:
        params["setup"] = list(opts.setup)
    # SIGUSR1 (trainpipe's time-limit signal, not submitit's USR2) to every task, and a job that
    # may be requeued; any additional_parameters of the user come last and win.
    params["additional_parameters"] = {"signal": f"{TIME_LIMIT_SIGNAL.name[3:]}@{opts.signal_lead_s}",
                                       "requeue": True, **opts.additional_parameters}
    return params


def executor(folder: Path, params: dict[str, Any], *, array_parallelism: int | None = None) -> Any:
    submitit = _submitit()
    ex = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=0)
    extra = {"array_parallelism": array_parallelism} if array_parallelism else {}
    ex.update_parameters(**params, **extra)
    return ex


def sbatch_text(folder: Path, params: dict[str, Any], *, array: int | None = None,
                array_parallelism: int | None = None) -> str:
    """The sbatch script submitit would submit (for --dry-run)."""
    _submitit()
    from submitit.slurm.slurm import _make_sbatch_string

    extra: dict[str, Any] = {}
    if array is not None:
        extra = {"map_count": array, "array_parallelism": array_parallelism or array}
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder / '%j'))}"
    return _make_sbatch_string(command=command, folder=str(folder / "%j"), **params, **extra)


# ------------------------------------------------------------------ job records
def read_jobs(folder: Path) -> list[dict[str, Any]]:
    p = folder / JOBS
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return data if isinstance(data, list) else []


def record_job(folder: Path, job_id: str, *, tasks: int, kind: str) -> None:
    files.make_dir(folder, what="Slurm log folder")
    entry = {"job_id": job_id, "tasks": tasks, "kind": kind, "submitted": dt.datetime.now().isoformat(timespec="seconds")}
    files.write_json(folder / JOBS, [*read_jobs(folder), entry])


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{task id (`123_4` or `123`): state} from sacct; {} when sacct cannot answer."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in out.splitlines():
        if "|" in line:
            jid, state = line.split("|", 1)
            states[jid.strip()] = state.split()[0] if state.strip() else "UNKNOWN"
    return states


def active_tasks(folder: Path) -> list[str]:
    """Recorded tasks that are still pending or running."""
    ids = [str(j["job_id"]) for j in read_jobs(folder)]
    states = slurm_states(ids)
    return [t for t, s in states.items() if s not in DONE_STATES and "[" not in t]


def status_lines(folder: Path) -> list[str]:
    """`trainpipe sweep DIR --status`: each recorded Slurm task, its state and its log."""
    jobs = read_jobs(folder)
    if not jobs:
        return []
    states = slurm_states([str(j["job_id"]) for j in jobs])
    lines = ["", "Slurm tasks:", "", "| task | state | submitted | log |", "|---|---|---|---|"]
    for j in jobs:
        tasks = sorted((t for t in states if t.split("_")[0] == str(j["job_id"])),
                       key=lambda t: [int(x) if x.isdigit() else 0 for x in t.split("_")]) or [str(j["job_id"])]
        for t in tasks:
            log = folder / t / f"{t}_0_log.out"
            lines.append(f"| {t} | {states.get(t, 'unknown (sacct gave no answer)')} | {j.get('submitted', '')} "
                         f"| {log if log.exists() else '-'} |")
    return lines


def requeue_self() -> bool:
    """Ask Slurm to requeue the job this process runs in (its time limit is near)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    r = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"could not requeue job {job}: {r.stderr.strip()}", file=sys.stderr, flush=True)
    return r.returncode == 0


def _threads() -> None:
    import torch

    cpus = os.environ.get("OMP_NUM_THREADS") or os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        torch.set_num_threads(int(cpus))


def _after_signal(signum: int | None) -> int:
    """A task stopped by a signal: requeued when it was the time-limit warning, and the exit
    code every trainpipe command gives after a signal (128 + its number, `signals.exit_code`)."""
    from trainpipe.run import signals

    if signum == TIME_LIMIT_SIGNAL and int(os.environ.get("SLURM_PROCID", "0")) == 0:
        requeue_self()
    return signals.exit_code(signum)


# ------------------------------------------------------------------ sweeps
def sweep_worker(wc: Any) -> int:
    """One array task: a worker on the sweep's study until no trial is left (runs on the node)."""
    from trainpipe.loop.trainer import StopRequest
    from trainpipe.run import signals
    from trainpipe.sweep import study as st
    from trainpipe.sweep.db import DatabaseUnreachable
    from trainpipe.sweep.worker import EXIT_RETRY, run_worker

    _threads()
    st.quiet_optuna()
    # Between trials too, a signal is a request, honoured where the worker loop checks: never in
    # the middle of a write to the study (scancel, preemption and the time limit all signal first).
    try:
        with signals.handling(StopRequest()):
            run_worker(wc)
        return 0
    except KeyboardInterrupt:
        return _after_signal(signals.received())
    except DatabaseUnreachable as e:  # the message says so; the task ends with EX_TEMPFAIL, no traceback
        wc.say(f"stopped: {e}")
        return EXIT_RETRY


def submit_sweep(sweep: str | Path, output: str | Path | None, *, storage: str | None, trials: int | None,
                 overrides: Any, workers: int | None, flags: dict[str, Any], dry_run: bool = False,
                 wait: bool = False, db: Any = None) -> int:
    """`trainpipe sweep FILE --slurm`: submit the workers the sweep still needs as one job array;
    `db` (`sweep.db.DbSettings`, the `--db-*` flags) travels with each task's worker config."""
    from trainpipe.sweep.run import finish_sweep, locate, prepare_sweep
    from trainpipe.sweep.worker import WorkerConfig

    if workers is not None and workers < 1:
        raise ConfigError(f"--workers (Slurm array tasks) must be at least 1; got {workers}.")
    spec, d, meta = locate(sweep, output, overrides)
    opts = options(spec.raw.get("slurm"), flags, where=f"sweep file {spec.source!r}: slurm" if spec.source else "slurm")
    _submitit()
    if storage is None and meta is None:
        storage = "journal"  # a shared file system, no server: Optuna's journal file in the sweep directory
    params = sbatch_parameters(opts, name=f"sweep-{spec.name}")
    folder = d.resolve() / "slurm"
    if dry_run:
        n = workers or min(spec.planned_trials() or 4, 4)
        print(f"sweep {spec.name}: {n} Slurm array task{'s' if n > 1 else ''} (workers) on the study in "
              f"{'the journal file ' + str(d / 'optuna.journal') if storage == 'journal' else storage or 'optuna.db'}; "
              f"would submit:\n")
        print(sbatch_text(folder, params, array=n, array_parallelism=opts.array_parallelism))
        return 0
    p = prepare_sweep(sweep, output, workers=workers or 1, storage=storage, trials=trials, overrides=overrides,
                      where=" on Slurm", db=db)
    n = _tasks_needed(p, workers, folder)
    if n > 0:
        configs = [WorkerConfig(**{**p.common, "sweep_dir": str(d.resolve()), "workers": n}, index=i)
                   for i in range(n)]
        ex = executor(folder, params, array_parallelism=opts.array_parallelism or n)
        jobs = ex.map_array(sweep_worker, configs)
        array = jobs[0].job_id.split("_")[0]
        record_job(folder, array, tasks=n, kind="sweep")
        print(f"submitted Slurm job array {array} ({n} worker task{'s' if n > 1 else ''}); logs in {folder}/{array}_*/. "
              f"Follow it: trainpipe sweep {d} --status (squeue -j {array}); cancel: scancel {array} (the sweep "
              f"stays resumable: trainpipe sweep {d} --slurm submits what is left).", flush=True)
    if not wait:
        return 0
    _wait_for(folder)  # a signal here raises KeyboardInterrupt: the command exits 128 + its number
    return finish_sweep(p, False).exit_code  # as a sweep on this machine ends


def _tasks_needed(p: Any, workers: int | None, folder: Path) -> int:
    from optuna.trial import TrialState

    from trainpipe.sweep import study as st

    total = p.common["total"]
    led = st.ledger(p.study.get_trials(deepcopy=False))
    finished = len(led.by_state(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    wanted = workers or min(total or 4, 4)
    left = wanted if total is None else max(0, total - finished)
    active = active_tasks(folder)
    n = max(0, min(wanted, left) - len(active))
    if n == 0:
        print(f"nothing to submit: {finished} trial{'s' if finished != 1 else ''} finished, "
              f"{len(active)} Slurm task{'s' if len(active) != 1 else ''} still pending or running "
              f"({', '.join(active) or 'none'}) for the {left} left.", flush=True)
    return n


def _wait_for(folder: Path, poll_s: float = 3.0) -> None:
    """Until every recorded task has ended (a requeued one is pending again, not ended)."""
    seen: dict[str, str] = {}
    while True:
        states = slurm_states([str(j["job_id"]) for j in read_jobs(folder)])
        for t, s in sorted(states.items()):
            if seen.get(t) != s and "[" not in t:
                print(f"slurm task {t}: {s}", flush=True)
        seen = states
        # `123_[4-7%2]`: array tasks not started yet. A job just submitted may not be in the
        # accounting database yet: it counts as not ended until sacct lists it.
        listed = {t.split("_")[0] for t in states}
        ids = {str(j["job_id"]) for j in read_jobs(folder)}
        if ids <= listed and all(s in DONE_STATES for s in states.values()):
            return
        time.sleep(poll_s)


# ------------------------------------------------------------------ one run
def train_task(run_dir: str, config: str | None, overrides: list[str]) -> int:
    """One Slurm task of a run: train, or resume after a requeue; DDP when the job has several
    tasks. Returns the exit code `trainpipe train` would (a bad input raises, failing the job)."""
    submitit = _submitit()
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    _threads()
    from trainpipe.run import rundir, signals
    from trainpipe.run.resume import resume
    from trainpipe.run.train import train

    job = os.environ.get("SLURM_JOB_ID", "?")
    try:
        if rundir.holds_run(run_dir) and any((Path(run_dir) / rundir.CHECKPOINTS).glob("*.pt")):
            result = resume(run_dir, command=f"trainpipe resume {run_dir} (Slurm job {job}, requeued)")
        else:
            command = f"trainpipe train {shlex.join([*([config] if config else []), *overrides])} --slurm (job {job})"
            result = train(config, overrides, run_dir, command=command)
    except KeyboardInterrupt:
        return _after_signal(signals.received())
    return 0 if result.status == "completed" else 1


def submit_train(args: list[str], output: str | None, *, overwrite: bool, nproc: int | None,
                 flags: dict[str, Any], dry_run: bool = False, wait: bool = False) -> int:
    """`trainpipe train CONFIG --slurm`: check the config here, then submit the run as one job."""
    from trainpipe.run.train import claim_output, default_run_name, new_run_dir, resolve

    config = args[0] if args and "=" not in args[0] else None
    overrides = args[1:] if config is not None else list(args)
    cfg = resolve(config, overrides)
    opts = options(None, flags)
    tasks = nproc or 1
    if tasks > 1 and cfg.data.batch_size % (tasks * opts.nodes):
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} must be divisible by the number of processes "
                          f"({tasks * opts.nodes} = --nproc {tasks} x slurm nodes {opts.nodes}).")
    run_dir = new_run_dir(cfg, output, default_run_name(cfg, config, overrides)).resolve()
    params = sbatch_parameters(opts, name=f"train-{run_dir.name}", tasks_per_node=tasks)
    folder = run_dir / "slurm"
    if dry_run:
        print(f"run {run_dir}: {tasks * opts.nodes} Slurm task{'s' if tasks * opts.nodes > 1 else ''}; would submit:\n")
        print(sbatch_text(folder, params))
        return 0
    _submitit()
    claim_output(run_dir if output is not None else None, overwrite=overwrite)
    ex = executor(folder, params)
    job = ex.submit(train_task, str(run_dir), config, list(overrides))
    record_job(folder, job.job_id, tasks=tasks * opts.nodes, kind="train")
    print(f"submitted Slurm job {job.job_id}: {run_dir} (logs in {folder}/{job.job_id}/). Follow it: squeue -j "
          f"{job.job_id}, or trainpipe list runs {run_dir.parent}; cancel: scancel {job.job_id} (then "
          f"`trainpipe resume {run_dir}` continues from its checkpoint).", flush=True)
    if not wait:
        return 0
    _wait_for(folder)
    from trainpipe.run import rundir

    status = rundir.status(run_dir)
    print(f"{run_dir}: {rundir.describe_status(run_dir)}", flush=True)
    return 0 if status == "completed" else 1
