"""A sweep worker: takes trials from the study until the sweep is complete.

Each trial is one `trainpipe.train()` call (the code path of `trainpipe train`) in
`DIR/trials/NNNN/`, with a callback that reports the metric every epoch and, with
hyperband, stops the run when Optuna prunes it. A failed trial is recorded with its
reason and the worker goes on; Ctrl-C marks the running trial interrupted, queues a
copy of it for the next start, and stops the worker.

The running trial talks to the storage from a thread of its own (`TrialLink`): its
heartbeat and its per-epoch reports. While the storage is away (`trainpipe.sweep.db`)
those wait and training goes on; an outage longer than the retry limit stops the trial
at the end of its epoch (its checkpoints stay) and the worker with
`DatabaseUnreachable`. A trial that another worker took over meanwhile (it judged this
one dead) is dropped here, never told twice.

The worker loop decides between three things each round: run a trial (a queued copy,
or a new one while the sweep has room), wait (everything is claimed but other
workers are still running: one of them may die and its trial come back), or stop.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import math
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import optuna
from optuna.trial import TrialState

from trainpipe.loop.callbacks import Callback
from trainpipe.errors import ConfigError, StorageError
from trainpipe.loop.stop import StopReason
from trainpipe.run import failures, rundir, signals
from trainpipe.sweep import budget as bd
from trainpipe.sweep import confirm as cf
from trainpipe.sweep import study as st
from trainpipe.sweep.db import (Connectivity, DatabaseUnreachable, DbSettings, Patience, check_interrupt,
                               trial_finished)
from trainpipe.sweep.final_test import SkipTestSplit
from trainpipe.sweep.results import shown_params
from trainpipe.sweep.space import trial_overrides
from trainpipe.sweep.spec import SweepSpec

EXIT_INTERRUPTED = 130
EXIT_RETRY = 75  # sysexits' EX_TEMPFAIL: run the sweep again later (the database stayed away, or trials
#                  failed for a reason of the machine)


class TrialFailed(Exception):
    """The run failed (an exception or a non-finite loss); recorded, the sweep goes on."""


class TrialDiscarded(Exception):
    """Another worker already took this configuration, or the cap was reached meanwhile."""


class TrialTakenOver(Exception):
    """The trial was finished by another worker (which judged this one dead) while this one ran it."""


@dataclass
class WorkerConfig:
    spec: SweepSpec
    sweep_dir: str
    storage_url: str
    study_name: str
    total: int | None  # trials that complete the sweep; None: until stopped
    epochs: int  # the base config's train.epochs (hyperband's default max_iter)
    index: int = 0
    workers: int = 1
    device: str | None = None  # "cpu" or a GPU index
    device_share: int = 1  # the workers on this worker's GPU, itself included
    spawned: bool = False  # a worker process of its own: stops when the sweep command is gone
    heartbeat_interval: int = st.HEARTBEAT_INTERVAL_S
    grace_period: int = st.GRACE_PERIOD_S
    poll_s: float = 2.0
    # A worker process adopts the sweep command's working directory and environment at
    # start: under the forkserver it forks from a process started earlier, which has its own.
    cwd: str | None = None
    env: dict[str, str] | None = None
    command: str = "trainpipe sweep"
    budget: bd.Budget | None = None  # the sweep's time budget; None = no limit
    db: DbSettings = field(default_factory=DbSettings)  # how long the storage's outages are ridden out

    def say(self, msg: str) -> None:
        prefix = f"[worker {self.index}] " if self.workers > 1 else ""
        print(f"{prefix}{msg}", flush=True)


class ReportToStudy(Callback):
    """Reports the sweep metric to Optuna every epoch; stops the run when the pruner says so.

    The report goes through the trial's `TrialLink` (training does not wait for the
    storage); the run also stops (interrupted, its checkpoint kept) when the link lost its
    trial to another worker or its storage for longer than the retry limit.
    """

    def __init__(self, link: TrialLink, metric: str, prune: bool) -> None:
        self.link, self.metric, self.prune = link, metric, prune

    def on_fit_start(self, trainer: Any) -> None:
        # A resumed trial (the queued copy of an interrupted one) reports its earlier epochs again.
        for row in trainer.state.history:
            self._report(row)

    def on_epoch_end(self, trainer: Any) -> None:
        check_stop()
        if self.link.lost or self.link.unreachable is not None:
            trainer.state.should_stop = True
            trainer.state.stop_reason = StopReason.INTERRUPTED
            return
        step = self._report(trainer.state.metrics)
        if step is not None and self.prune and self.link.should_prune(step):
            trainer.state.should_stop = True
            trainer.state.stop_reason = StopReason.PRUNED

    def _report(self, m: dict[str, Any]) -> int | None:
        value = m.get(self.metric)
        if value is None or not math.isfinite(value):
            return None
        step = int(m["epoch"])
        self.link.report(float(value), step)
        return step


def best_of(history: list[dict[str, Any]], metric: str, goal: str) -> float | None:
    values = [h[metric] for h in history if isinstance(h.get(metric), (int, float)) and math.isfinite(h[metric])]
    if not values:
        return None
    return max(values) if goal == "maximize" else min(values)


def device_overrides(device: str | None, spawned: bool) -> dict[str, Any]:
    if device is None:
        return {}
    if device == "cpu":
        return {"train.device": "cpu"}
    # A spawned worker sees only its GPU (CUDA_VISIBLE_DEVICES), as cuda:0.
    return {"train.device": "cuda" if spawned else f"cuda:{device}"}


def describe(overrides: dict[str, Any]) -> str:
    from trainpipe.sweep.results import fmt

    return " ".join(f"{k}={fmt(v)}" for k, v in overrides.items()) or "(no varied parameters)"


class Objective:
    def __init__(self, wc: WorkerConfig, study: optuna.Study, *, distinct_points: bool = False) -> None:
        self.wc, self.study = wc, study
        self.distinct_points = distinct_points  # the method visits each point once (grid)
        self.trial_number: int | None = None
        self.disk_full = False  # a trial of this worker found the disk full: start no more
        self.link: TrialLink | None = None  # the running trial's line to the storage (`run_trial`)
        self.patience: Patience | None = None  # the storage's, for writes after Ctrl-C
        self.first_seen: dict[int, float] = {}  # trial number -> when `discard_reason` first waited for it

    def __call__(self, trial: optuna.Trial) -> float:
        wc, spec = self.wc, self.wc.spec
        self.trial_number = trial.number
        trial.set_user_attr("worker", st.worker_attr(trial.datetime_start))
        overrides = {**trial_overrides(trial, spec), **cf.seed_override(trial)}
        why = self.discard_reason(trial)
        if why:
            trial.set_user_attr("discarded", why)
            raise TrialDiscarded(why)
        run_dir = (Path(wc.sweep_dir) / "trials" / f"{trial.number:04d}").resolve()
        before = (trial.user_attrs.get("result") or {}).get("cause")  # a copy of a trial the machine failed
        history = st.trial_of(self.study, trial.number).system_attrs.get("retry_history") or []
        # A queued copy of a trial that was interrupted or lost its worker continues that trial's
        # run from its last checkpoint (mid-epoch after a signal), in its directory renamed to
        # this trial's number: no finished step is trained twice.
        resumed = bool(history) and _take_over(Path(str(trial.user_attrs.get("run_dir", ""))), run_dir)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("result", {"status": "running"})
        if not resumed and run_dir.exists() and any(run_dir.iterdir()):
            return self.fail(trial, f"{run_dir} already exists (from another study?); move it away")
        lost = f"failed: {failures.WHAT[before]}" if before in failures.CAUSES else "lost its worker or was interrupted"
        again = (f" (again: trial {history[-1]:04d} {lost}"
                 f"{'; continuing its run' if resumed else ''})") if history else ""
        wc.say(f"trial {trial.number:04d} started{again}: {describe(shown_params(overrides, spec))}")
        from trainpipe.run.resume import resume
        from trainpipe.run.train import train

        device = device_overrides(wc.device, wc.spawned)
        all_overrides = {**spec.constant_overrides(), **overrides, **device}
        assert self.link is not None, "run_trial gives the objective its trial's link"
        callbacks: list[Callback] = [ReportToStudy(self.link, spec.metric, prune=spec.hyperband is not None)]
        if spec.test != "all":
            callbacks.append(SkipTestSplit())
        command = f"{wc.command} (trial {trial.number:04d})"
        try:
            if resumed:
                result = resume(run_dir, [f"{k}={v}" for k, v in device.items()], quiet=wc.workers > 1,
                                command=command, callbacks=callbacks)
            else:
                result = train(spec.base, all_overrides, run_dir, quiet=wc.workers > 1, callbacks=callbacks,
                               command=command)
        except KeyboardInterrupt:
            reason = rundir.read_summary(run_dir).get("stop_reason") or "interrupted"
            with self.no_wait(), contextlib.suppress(Exception):
                trial.set_user_attr("result", {"status": "interrupted", "reason": f"interrupted ({reason})"})
            raise
        except Exception as e:
            mf = machine_failure_of(e, run_dir, all_overrides)
            if mf is not None:
                return self.fail_machine(trial, mf, run_dir)
            return self.fail(trial, f"{type(e).__name__}: {e}", run_dir=run_dir)
        if self.link is not None:
            self.link.close()  # the epochs' reports are written (waiting for the storage if it is away)
            if self.link.lost:
                raise TrialTakenOver()
        s = result.summary
        best = best_of(result.metrics, spec.metric, spec.goal)
        res = {"status": s.get("status"), "reason": s.get("stop_reason"), "best": best,
               "train_acc": s.get("final/train/acc"), "test_acc": s.get("test/acc"), "epochs": s.get("epochs_run"),
               "epoch_time_s": s.get("epoch_time_s"), "wall_time_s": s.get("wall_time_s")}
        if s.get("status") == "failed":
            return self.fail(trial, s.get("error") or s.get("stop_reason") or "failed", res=res)
        if s.get("stop_reason") == StopReason.PRUNED:
            res["status"], res["reason"] = "pruned", f"pruned after epoch {s.get('epochs_run')}"
            trial.set_user_attr("result", res)
            wc.say(f"trial {trial.number:04d} pruned after epoch {s.get('epochs_run')}: "
                   f"best {spec.metric} {_num(best)}")
            raise optuna.TrialPruned(res["reason"])
        if best is None:
            return self.fail(trial, f"the run logged no {spec.metric} (metric.name of the sweep); "
                                    f"val/* metrics need a validation split (data.val_split > 0)", res=res)
        trial.set_user_attr("result", res)
        test = f", test/acc {_num(s.get('test/acc'))}" if s.get("test/acc") is not None else ""
        wc.say(f"trial {trial.number:04d} completed: {spec.metric_label} {_num(best)}{test}, "
               f"{s.get('wall_time_s', 0):.1f}s")
        return best

    def fail(self, trial: optuna.Trial, reason: str, *, res: dict[str, Any] | None = None,
             run_dir: Path | None = None) -> NoReturn:
        res = dict(res or {})
        if run_dir is not None and (run_dir / rundir.SUMMARY).is_file():
            s = rundir.read_summary(run_dir)
            res.update({"epochs": s.get("epochs_run"), "wall_time_s": s.get("wall_time_s")})
        res.update({"status": "failed", "reason": reason[:500]})
        trial.set_user_attr("result", res)
        self.wc.say(f"trial {trial.number:04d} failed: {reason.splitlines()[0][:200]}")
        raise TrialFailed(reason)

    def fail_machine(self, trial: optuna.Trial, mf: failures.MachineFailure, run_dir: Path) -> NoReturn:
        """A failure of the machine (out of memory, disk full, a lost GPU): recorded with its cause,
        not ranked, not retried in this invocation; the next `trainpipe sweep` retries it."""
        res: dict[str, Any] = {}
        if (run_dir / rundir.SUMMARY).is_file():
            s = rundir.read_summary(run_dir)
            res.update({"epochs": s.get("epochs_run"), "wall_time_s": s.get("wall_time_s")})
        res.update({"status": "failed", "reason": mf.describe()[:500], **mf.record()})
        trial.set_user_attr("result", res)
        if mf.cause == failures.DISK_FULL:
            self.disk_full = True
        self.wc.say(f"trial {trial.number:04d} failed for a reason of the machine, {mf.describe()[:200]}; "
                    f"not counted as its configuration's result, retried when the sweep runs again")
        if mf.cause == failures.OOM:
            _free_gpu_cache()
        raise TrialFailed(mf.describe())

    def propose_unvisited(self, trials: list[Any], keys: list[str]) -> None:
        """random/bayes over a finite space proposed a configuration that already has a trial: queue
        the first one (in file order) that has none, so that the next trial trains something new."""
        space = self.wc.spec.finite_space()
        if space is None:
            return
        seen = {st.point_of(t, keys) for t in trials}
        fresh = next((p for p in space if tuple(repr(p[k]) for k in keys) not in seen), None)
        if fresh is not None:
            self.study.enqueue_trial(fresh, skip_if_exists=True)

    def no_wait(self) -> Any:
        """Storage calls in this block are tried once (clean-up after Ctrl-C: never wait for an outage)."""
        return self.patience.no_wait() if self.patience is not None else contextlib.nullcontext()

    def discard_reason(self, trial: optuna.Trial, settle_s: float = 30.0) -> str | None:
        """Checked after sampling, so that two workers racing for the last slot agree.

        Of two trials with the same point (of a grid) the lower number keeps it; a new trial
        beyond the cap (counting only lower numbers) gives way. Queued copies of a
        lost trial never count against the cap: they replace it. An earlier running trial
        still writing its values (they are stored one by one) may be heading for this
        trial's point: its values are waited for (up to `settle_s` seconds from when this
        worker first waited for that trial, so that one whose worker died is not waited for again).
        """
        spec = self.wc.spec
        keys = [p.display for p in spec.varied]
        while True:
            trials = self.study.get_trials(deepcopy=False)
            led = st.ledger(trials)
            me = next(t for t in trials if t.number == trial.number)
            earlier = [t for t in led.visible if t.number < me.number]
            if cf.is_confirmation(me):  # one trial per (configuration, seed); the cap counts screening only
                dup = cf.duplicate_of(me, earlier, spec)
                return None if dup is None else f"same configuration and seed as trial {dup.number:04d}"
            earlier = [t for t in earlier if not cf.is_confirmation(t)]
            if not self.distinct_points:
                break
            mine = st.point_of(me, keys)
            same = next((t for t in earlier if st.point_of(t, keys) == mine), None)
            if same is not None:
                self.propose_unvisited(led.visible, keys)
                return f"same point as trial {same.number:04d}"
            now = time.monotonic()
            unsettled = [t for t in earlier if t.state == TrialState.RUNNING and st.point_of(t, keys) is None
                         and all(t.params[k] == me.params.get(k) for k in t.params)
                         and now - self.first_seen.setdefault(t.number, now) < settle_s]
            if not unsettled:
                break
            time.sleep(0.1)
        is_copy = "failed_trial" in me.system_attrs
        if self.wc.total is not None and not is_copy and len(earlier) >= self.wc.total:
            return "the sweep already has all its trials"
        return None


def _take_over(previous: Path, run_dir: Path) -> bool:
    """Move an earlier attempt's run directory to `run_dir` when it holds a checkpoint to resume."""
    from trainpipe.run.checkpoints import resume_candidates

    if previous == run_dir:
        return bool(resume_candidates(run_dir / rundir.CHECKPOINTS))
    if not resume_candidates(previous / rundir.CHECKPOINTS) or (run_dir.exists() and any(run_dir.iterdir())):
        return False
    try:
        if run_dir.exists():
            run_dir.rmdir()
        previous.rename(run_dir)
    except OSError:
        return False
    return True


def machine_failure_of(e: BaseException, run_dir: Path, overrides: dict[str, Any]) -> failures.MachineFailure | None:
    """The machine's failure behind a trial's exception, with the facts its run recorded
    (batch size, peak memory) when it got that far."""
    s = rundir.read_summary(run_dir) if (run_dir / rundir.SUMMARY).is_file() else {}
    if s.get("cause") in failures.CAUSES and s.get("status") == "failed":
        facts = {k: s.get(k) for k in ("batch_size", "peak_memory_mb", "requested_mb")}
        return failures.MachineFailure(s["cause"], failures.one_line(e), facts)
    return failures.machine_failure(e, batch_size=overrides.get("data.batch_size"))


def _free_gpu_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------- the loop
def next_action(spec: SweepSpec, led: st.Ledger, total: int | None, points: int | None = None) -> str:
    """'run', 'wait' or 'done' (see the module docstring); `points`: how many the method visits, if a fixed list."""
    if led.by_state(TrialState.WAITING):
        return "run"
    room = total is None or len(led.visible) < total
    if points is not None:
        keys = [p.display for p in spec.varied]
        covered = {st.point_of(t, keys) for t in led.visible} - {None}
        room = room and len(covered) < points
    if room:
        return "run"
    return "wait" if led.by_state(TrialState.RUNNING) else "done"


def run_worker(wc: WorkerConfig) -> None:
    """Run trials until the sweep is complete. Ctrl-C re-queues the running trial and re-raises."""
    from trainpipe.sweep.results import write_results

    storage = st.make_storage(wc.storage_url, wc.db, say=wc.say, patient_open=True)
    search = wc.spec.search()
    study = optuna.load_study(study_name=wc.study_name, storage=storage, sampler=search.sampler(),
                              pruner=st.pruner_for(wc.spec, wc.epochs))
    finite = search.points is not None or wc.spec.finite_space() is not None
    objective = Objective(wc, study, distinct_points=finite)
    objective.patience = storage.patience
    points = wc.spec.space_size() if finite else None
    said_wait = False
    beat = st.Beat(wc.sweep_dir, wc.heartbeat_interval) if st.is_journal(wc.storage_url) else None
    took: list[float] = []  # how long each of this worker's trials took, from start to written results
    try:
        while True:
            check_stop()
            check_sweep_dir(Path(wc.sweep_dir))
            if wc.spawned and _parent_gone():
                wc.say("the sweep command is gone; this worker stops")
                return
            for n in st.reap_dead_trials(study, grace_period=wc.grace_period, sweep_dir=wc.sweep_dir,
                                         connectivity=storage.patience.connectivity):
                wc.say(f"trial {n:04d} lost its worker; queued again")
            led = st.ledger(study.get_trials(deepcopy=False))
            action = next_action(wc.spec, cf.screening(led), wc.total, points)
            confirming = None
            if wc.spec.confirm is not None:
                action, confirming = cf.step(wc, led, action, took)
            if action == "done":
                if search.points is None and points is not None and len(cf.screening(led).visible) >= points:
                    wc.say(f"the search space is exhausted: each of its {points} configurations has a trial")
                return
            if action == "wait":
                if not said_wait:
                    n = len(led.by_state(TrialState.RUNNING))
                    wc.say(f"waiting for {n} running trial{'s' if n > 1 else ''} of other workers")
                    said_wait = True
                time.sleep(wc.poll_s)
                continue
            said_wait = False
            if disk_full_here(led):
                wc.say("another worker on this machine found the disk full; this worker starts no more trials")
                return
            if wc.budget is not None and not fits_budget(wc, led.visible, took):
                return
            if confirming is not None:
                cf.enqueue(study, confirming)
            began = time.perf_counter()
            run_trial(study, objective, wc)
            objective.trial_number = None
            try:
                write_results(wc.sweep_dir, study, wc.spec)
            except StorageError as e:
                if failures.classify(e) != failures.DISK_FULL:
                    raise
                objective.disk_full = True
            if objective.disk_full:
                wc.say("the disk is full: this worker starts no more trials (the sweep says what to do when it ends)")
                return
            if wc.budget is not None:
                bd.touch(wc.sweep_dir)
                took.append(time.perf_counter() - began)
    except KeyboardInterrupt:
        with storage.patience.no_wait():
            release(study, objective.trial_number)
            try:
                write_results(wc.sweep_dir, study, wc.spec)
            except DatabaseUnreachable:
                pass  # the next start writes them
        raise
    except DatabaseUnreachable:
        raise
    except Exception:
        # Optuna then reports a failed write to its storage as "AssertionError: Should not reach."
        check_sweep_dir(Path(wc.sweep_dir))
        raise
    finally:
        if beat is not None:
            beat.stop()


def check_sweep_dir(d: Path) -> None:
    """Stop with a clear message when the sweep directory vanished while the sweep ran (a trial's
    writes may have made some of its folders again: its study.json tells)."""
    if not (d / st.SWEEP_META).is_file():
        raise ConfigError(f"the sweep directory {d} was deleted or moved while the sweep ran; its trials, results "
                          f"and (without --storage) its optuna.db went with it. Restore it and run `trainpipe sweep "
                          f"{d}` to continue, or start the sweep file again.") from None


def disk_full_here(led: st.Ledger) -> bool:
    """Whether a trial of this invocation failed on a full disk of this machine (a new invocation
    queues such trials again first, so a visible one is from this one)."""
    for t in led.by_state(TrialState.FAIL):
        res = t.user_attrs.get("result") or {}
        w = t.user_attrs.get("worker") or {}
        if res.get("cause") == failures.DISK_FULL and w.get("machine", rundir.machine_id()) == rundir.machine_id():
            return True
    return False


def fits_budget(wc: WorkerConfig, trials: list[Any], took: list[float]) -> bool:
    """Whether the next trial ends inside the budget; says so either way. When it does not, the
    sweep stops. The estimate: how long this worker's trials took (with writing the results),
    else how long the study's completed trials ran, else the dry run's timing."""
    b = wc.budget
    assert b is not None
    est = bd.trial_estimate(took or [bd.span_s(t) for t in trials if t.state == TrialState.COMPLETE],
                            b.fallback_trial_s)
    if b.fits(est):
        wc.say(b.progress(est, wc.workers))
        return True
    wc.say(f"stopping: the next trial (~{bd.fmt(est or 0)}) would not finish inside the budget "
           f"({bd.fmt(b.used_s())} of {bd.fmt(b.total_s)} used); running trials finish")
    bd.mark_stopped(wc.sweep_dir, wc.total)
    return False


def run_trial(study: optuna.Study, objective: Objective, wc: WorkerConfig) -> None:
    """Ask for a trial, run it with its `TrialLink`, tell its outcome.

    A failed or discarded trial is told FAIL and the worker goes on; Ctrl-C and any
    other exception are told FAIL (if the storage answers at once) and raised;
    `DatabaseUnreachable` is raised with the trial left running (the next start
    re-queues it, and its copy continues from its checkpoint). A trial another worker
    took over is dropped.
    """
    trial = study.ask()
    link = TrialLink(trial, wc.heartbeat_interval, prune=wc.spec.hyperband is not None,
                     connectivity=objective.patience.connectivity if objective.patience else None)
    objective.link = link
    link.start()
    try:
        value, state = None, TrialState.FAIL
        try:
            value, state = objective(trial), TrialState.COMPLETE
        except (TrialFailed, TrialDiscarded):
            pass
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        link.close()
        try:
            study.tell(trial, value, state=state)
        except (ValueError, RuntimeError) as e:  # finished already: another worker failed it meanwhile
            raise TrialTakenOver() from e
    except DatabaseUnreachable:
        link.abandon()
        raise
    except BaseException as e:
        link.abandon()
        if isinstance(e, TrialTakenOver) or trial_finished(e):
            wc.say(f"trial {trial.number:04d} was given to another worker while this one could not reach the "
                   f"database; this copy stops (its result would count twice)")
            return
        with objective.no_wait(), contextlib.suppress(Exception):
            study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        objective.link = None
        gc.collect()


class TrialLink(threading.Thread):
    """The running trial's line to the storage, off the training thread.

    Writes the trial's `heartbeat` user attribute every `interval` seconds (other
    workers take a trial whose heartbeat stands still for the grace period for dead,
    `study.Liveness`), and the per-epoch reports in order, each followed by the pruner's
    answer when pruning. While the storage is away these calls wait in this thread
    (the storage retries them) and training goes on. A write refused because the trial
    is finished means another worker took it over (`lost`); an outage past the retry
    limit ends the link (`unreachable`). Any other failed heartbeat is tried again at
    the next beat.
    """

    def __init__(self, trial: optuna.Trial, interval: float, *, prune: bool = False,
                 connectivity: Connectivity | None = None) -> None:
        super().__init__(name=f"trainpipe-trial-{trial.number}", daemon=True)
        self.trial, self.interval, self.prune, self.connectivity = trial, interval, prune, connectivity
        self.cv = threading.Condition()
        self.pending: list[tuple[int, float]] = []
        self.answers: dict[int, bool] = {}
        self.closing = self.abandoned = self.lost = False
        self.unreachable: DatabaseUnreachable | None = None

    def report(self, value: float, step: int) -> None:
        with self.cv:
            self.pending.append((step, value))
            self.cv.notify_all()

    def should_prune(self, step: int) -> bool:
        """The pruner's answer once the report of `step` is written; False (train on) while the storage is away."""
        with self.cv:
            while step not in self.answers and self.pending and not self.done:
                self.cv.wait(0.05)
                if self.pending and self.connectivity is not None and self.connectivity.down:
                    return False
            return self.answers.get(step, False)

    @property
    def done(self) -> bool:
        return self.lost or self.abandoned or self.unreachable is not None

    def run(self) -> None:
        next_beat = time.monotonic() + self.interval
        while True:
            with self.cv:
                while not self.pending and not self.closing and not self.abandoned \
                        and time.monotonic() < next_beat:
                    self.cv.wait(max(0.0, next_beat - time.monotonic()))
                if self.abandoned or (self.closing and not self.pending):
                    return
                item = self.pending[0] if self.pending else None
            try:
                if item is not None:
                    self.write_report(*item)
                elif time.monotonic() >= next_beat:
                    next_beat = time.monotonic() + self.interval
                    self.beat()
            except DatabaseUnreachable as e:
                self.end(unreachable=e)
                return
            except Exception:  # noqa: BLE001 - only a finished trial gets here (see write_report, beat)
                self.end(lost=True)
                return

    def write_report(self, step: int, value: float) -> None:
        answer = False
        try:
            self.trial.report(value, step=step)
            answer = self.prune and self.trial.should_prune()
        except Exception as e:  # noqa: BLE001 - a report Optuna refuses is dropped; training goes on
            if isinstance(e, DatabaseUnreachable) or trial_finished(e):
                raise
        with self.cv:
            self.pending.pop(0)
            self.answers[step] = answer
            self.cv.notify_all()

    def beat(self) -> None:
        try:
            self.trial.set_user_attr("heartbeat", dt.datetime.now().isoformat(timespec="seconds"))
        except Exception as e:  # noqa: BLE001 - the next beat tries again
            if isinstance(e, DatabaseUnreachable) or trial_finished(e):
                raise

    def end(self, *, lost: bool = False, unreachable: DatabaseUnreachable | None = None) -> None:
        with self.cv:
            self.lost = self.lost or lost
            self.unreachable = self.unreachable or unreachable
            self.cv.notify_all()

    def close(self) -> None:
        """Stop once the pending reports are written; raises `DatabaseUnreachable` if that failed."""
        with self.cv:
            self.closing = True
            self.cv.notify_all()
        while self.is_alive():  # waiting for the storage: Ctrl-C still stops the worker
            self.join(0.2)
            check_interrupt()
        if self.unreachable is not None:
            raise self.unreachable

    def abandon(self) -> None:
        """Stop without waiting for the storage (Ctrl-C, a lost trial, a lost storage)."""
        with self.cv:
            self.abandoned = True
            self.pending.clear()
            self.cv.notify_all()


def release(study: optuna.Study, number: int | None) -> None:
    """After Ctrl-C: queue a copy of the interrupted trial and free any trial this process holds."""
    try:
        if number is not None:
            st.retry_interrupted(study, number)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            w = t.user_attrs.get("worker") or {}
            if rundir.is_current(w):
                st.requeue(study, t.number)
    except Exception as e:  # the storage may be what failed; the next start reaps by pid anyway
        print(f"could not re-queue the interrupted trial ({type(e).__name__}: {e}); the next start will",
              file=sys.stderr)


def check_stop() -> None:
    """Raise KeyboardInterrupt if a signal stopped the worker outside a trial's training loop
    (called between epochs and trials): the terminal sends Ctrl-C to every worker and the
    parent forwards it too, and Python drops an exception raised while it runs a finaliser
    (a weakref callback in SQLAlchemy, say)."""
    signals.check()


def install_signal_handlers() -> Callable[[], None]:
    """SIGINT, SIGTERM and SIGUSR1 (a scheduler's stop) stop the sweep cleanly, once
    (`trainpipe.run.signals`): during a trial at its next step boundary, with a checkpoint
    there that the trial's queued copy resumes from; between trials at once.

    Returns a function that puts the previous handlers back. Outside the main thread
    (Python only lets that one handle signals) this does nothing.
    """
    return signals.install()


def _parent_gone() -> bool:
    # The process that started this one (the sweep command), also under the forkserver,
    # whose workers are children of the server rather than of the command.
    parent = multiprocessing.parent_process()
    return parent is not None and not parent.is_alive()


def worker_threads(workers: int) -> int:
    """Intra-op threads of one of `workers` sweep workers on this machine: OMP_NUM_THREADS
    when set, else the cores this process may use shared out (at least 1 each).

    Measured with two trainings at once on 2 cores (BENCHMARKS.md, section 8): one thread
    each against torch's default of one per core each. Cores come from the CPU affinity
    (what a Slurm job or a container is given), not from os.cpu_count() (the whole node)."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        return int(threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(workers, 1))


def worker_main(wc: WorkerConfig) -> None:
    """Entry point of a worker process (forked from the forkserver, or spawned)."""
    if wc.cwd is not None:
        os.chdir(wc.cwd)
    if wc.env is not None:
        os.environ.clear()
        os.environ.update(wc.env)
    if wc.device not in (None, "cpu"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [d for d in visible.split(",") if d.strip()] if visible else None
        # --devices indexes the GPUs this process could see, as torch numbers them.
        os.environ["CUDA_VISIBLE_DEVICES"] = ids[int(wc.device)] if ids and int(wc.device) < len(ids) else wc.device
        from trainpipe.data import PROCESSES_PER_GPU_ENV

        # Each worker's data-fit check takes its share of the GPU (see data.memory_budget).
        os.environ[PROCESSES_PER_GPU_ENV] = str(wc.device_share)
    import torch

    # OpenMP read OMP_NUM_THREADS when torch was imported, which under the forkserver
    # happened in the server: apply the command's value (or a fair share of the cores) here.
    torch.set_num_threads(worker_threads(wc.workers))
    install_signal_handlers()
    st.quiet_optuna()
    try:
        run_worker(wc)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except ConfigError as e:
        wc.say(f"error: {' '.join(str(e).split())}")
        sys.exit(2)
    except DatabaseUnreachable as e:
        wc.say(f"stopped: {e}")
        sys.exit(EXIT_RETRY)
