"""The Optuna side of a sweep: storage, study, sampler, pruner, and the trial ledger.

Storage is an `RDBStorage` (SQLite file in the sweep directory by default, any
SQLAlchemy URL otherwise). Every worker beats for its running trial (a `heartbeat` user
attribute, rewritten every `heartbeat_interval` seconds): a trial whose heartbeat another
worker has watched stand still for `grace_period` seconds is failed and re-queued as a
WAITING copy with the same parameters (the bookkeeping of Optuna's retry callback). On
one machine a dead worker is noticed at once from its process id instead.

Only Optuna's public API is used (`Study.ask`/`tell`/`get_trials`/`add_trial`,
`FrozenTrial`, `create_trial`, the storage classes' documented arguments), so that a
new Optuna release breaks nothing here; the range tested is in the README.

Some trials exist only for bookkeeping and are hidden from results: a trial that was
re-queued (its copy carries on), and a trial *discarded* because another worker had
already claimed the same point of a grid or the run cap was reached in the meantime.
`ledger()` sorts that out once for everyone (results, status, the worker loop).
"""

from __future__ import annotations

import datetime as dt
import math
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from trainpipe.errors import ConfigError
from trainpipe.run import rundir
from trainpipe.sweep import db
from trainpipe.sweep.spec import SweepSpec

HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 120
# A worker that dies over and over on the same configuration (out of memory, say)
# stops being retried after this many attempts; the trial then shows as failed.
MAX_RETRIES = 3
FINGERPRINT_ATTR = "trainpipe:fingerprint"
SWEEP_META = "study.json"  # study name, storage, base config, fingerprint: written when a sweep starts


def quiet_optuna() -> None:
    """We print our own one line per trial; Optuna's per-trial logs and experimental notes would repeat it."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def default_storage_url(sweep_dir: str | Path) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"


def redact(url: str) -> str:
    """The URL without its password, for files and messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def with_driver(url: str) -> str:
    """`postgresql://` with whichever driver is installed.

    SQLAlchemy 2.1 maps a bare postgresql:// to psycopg (3); the `postgres` extra and
    many environments have psycopg2 only.
    """
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


JOURNAL = "journal:"  # the storage URL of an Optuna journal file: journal:/path/to/optuna.journal
JOURNAL_FILE = "optuna.journal"
# File systems where SQLite's locks do not hold between machines (and can corrupt the database).
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "fuse.glusterfs",
              "glusterfs", "fuse.sshfs", "afs", "panfs", "wekafs")


def journal_url(path: str | Path) -> str:
    return JOURNAL + str(Path(path).resolve())


def is_journal(url: str | None) -> bool:
    return bool(url) and str(url).startswith(JOURNAL)


def filesystem_type(path: str | Path) -> str | None:
    """The type of the file system holding `path` (from /proc/mounts), or None where unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    p = Path(path).resolve()
    while not p.exists():
        p = p.parent
    best, kind = "", None
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (str(p) == point or str(p).startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def refuse_sqlite_on_network_fs(url: str) -> None:
    """SQLite's file locks are not reliable on network file systems: workers on several machines
    would corrupt the study. Refused where /proc/mounts says so."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(url[len("sqlite:///"):])
    kind = filesystem_type(path.parent)
    if kind in NETWORK_FS:
        raise ConfigError(
            f"the study database {path} would be on a network file system ({kind}), where SQLite is not safe "
            f"(its locks do not hold between machines and the database can be corrupted). Use --storage journal "
            f"(an Optuna journal file in the sweep directory, made for shared file systems), or a PostgreSQL URL.")


def journal_file(path: str | Path) -> Any:
    """Optuna's journal file backend for `path`: `optuna.storages.journal.JournalFileBackend` since
    Optuna 4.0; before, the same public class was `optuna.storages.JournalFileStorage` (deprecated in
    4.0, to be removed in 6.0). Checked on Optuna 3.6.0 and 5.1.0."""
    try:
        from optuna.storages.journal import JournalFileBackend
    except ImportError:  # Optuna 3.x
        return optuna.storages.JournalFileStorage(str(path))
    return JournalFileBackend(str(path))


def make_storage(url: str, settings: db.DbSettings | None = None, *, say: Callable[[str], None] | None = None,
                 patient_open: bool = False) -> db.PatientStorage:
    """The sweep's storage: Optuna's RDBStorage or JournalStorage, each call retried through
    an outage (`trainpipe.sweep.db`).

    `settings`: the retry limit and PostgreSQL's timeouts; `say` prints the outage lines.
    Opening a local file (a locked SQLite file, a journal on a network file system that
    does not answer) rides out an outage too; a database server only with `patient_open`
    (a worker joining a running sweep): otherwise a server that cannot be reached when the
    sweep starts is a bad --storage.
    """
    quiet_optuna()
    settings = settings or db.DbSettings()
    patience = db.Patience(settings.retry_limit, db.Connectivity(say))
    server = not (url.startswith("sqlite") or is_journal(url))
    if patient_open or not server:
        return db.PatientStorage(patience.call(_open_storage, url, settings, retry=True), patience)
    return db.PatientStorage(_open_storage(url, settings, retry=False), patience)


def _open_storage(url: str, settings: db.DbSettings, *, retry: bool) -> optuna.storages.BaseStorage:
    """Optuna's storage for `url`; with `retry`, an outage's error is raised as it is (for the
    caller's `Patience` to retry), else as a bad --storage."""
    if is_journal(url):
        # Optuna's journal file: an append-only log on a (shared) file system, no server. Trials of dead
        # workers are found from trainpipe's worker records and liveness files (`reap_dead_trials`, `Beat`).
        path = Path(url[len(JOURNAL):])
        try:
            return optuna.storages.JournalStorage(journal_file(path))
        except OSError as e:
            if retry and db.transient(e):
                raise
            raise ConfigError(f"--storage {url}: cannot open the journal file ({e.strerror or e}); check that "
                              f"its directory exists and is writable.") from None
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several worker processes write to one file; SQLite waits this long for the lock
        # itself, then the retries take over.
        engine_kwargs["connect_args"] = {"timeout": settings.statement_timeout}
    else:
        engine_kwargs["pool_pre_ping"] = True
    if url.startswith("postgres"):
        engine_kwargs["connect_args"] = db.postgres_connect_args(settings)
        db.install_psycopg2_wait(settings)
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(with_driver(url), engine_kwargs=engine_kwargs)
        except ImportError as e:
            raise ConfigError(f"--storage {redact(url)}: the database driver is not installed ({e}). For "
                              f"PostgreSQL: pip install 'trainpipe[postgres]'.") from None
        except Exception as e:
            if not type(e).__module__.startswith("sqlalchemy"):
                raise
            if attempt < 4 and type(e).__name__ in ("IntegrityError", "ProgrammingError"):
                # Machines that start together on an empty database race to create
                # Optuna's tables; the loser finds them made on the next try.
                time.sleep(1 + attempt)
                continue
            if retry and db.transient(e):
                raise
            if url.startswith("sqlite:///"):
                raise damaged_database(url, e) from None
            raise ConfigError(f"--storage {redact(url)}: cannot open the database: "
                              f"{str(e).strip().splitlines()[0]}. Check the URL, that the server runs and "
                              f"accepts this user, and that the database exists.") from None
    raise AssertionError("unreachable")


class DamagedDatabase(ConfigError):
    """A sweep's local SQLite file cannot be read (truncated, overwritten, not a database)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def damaged_database(url: str, e: BaseException) -> DamagedDatabase:
    """The local database file named by `url` is damaged: say which file, why, and how to recover."""
    path = Path(url[len("sqlite:///"):])
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    first = first.split(") ", 1)[-1] if first.startswith("(") else first  # without SQLAlchemy's "(sqlite3...)"
    d = path.parent
    return DamagedDatabase(
        f"{path}, the sweep's local Optuna database, is damaged ({first}). Its trials are also kept in "
        f"{d / 'trials'} (each trial's config.yaml, summary.json and metrics.jsonl): run `trainpipe sweep {d}` "
        f"to keep the damaged file as optuna.db.damaged-TIME and rebuild the study from them; results.csv and "
        f"results.md are not replaced by a table with fewer finished trials.", path)


def is_database_error(e: BaseException) -> bool:
    """An error raised by the database (SQLAlchemy, sqlite3) rather than by trainpipe or Optuna."""
    return type(e).__module__.split(".")[0] in ("sqlalchemy", "sqlite3")


def sampler_for(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """The sampler of the sweep's method (`trainpipe.sweep.methods`)."""
    return spec.search().sampler()


def pruner_for(spec: SweepSpec, epochs: int) -> optuna.pruners.BasePruner:
    hb = spec.hyperband
    if hb is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.HyperbandPruner(min_resource=hb.min_iter, max_resource=hb.max_iter or max(epochs, 1),
                                          reduction_factor=hb.eta)


def open_study(spec: SweepSpec, storage: optuna.storages.BaseStorage, *, study_name: str,
               epochs: int, wait_s: float = 60.0) -> optuna.Study:
    """Create the study or join it; a study made from a different sweep file is refused.

    Atomic: of machines starting together, exactly one creates the study (the storage
    refuses a second study of that name) and records its sweep's fingerprint; the
    others wait for that record (up to `wait_s` seconds) and compare theirs with it.
    """
    kw: dict[str, Any] = dict(storage=storage, study_name=study_name, sampler=sampler_for(spec),
                              pruner=pruner_for(spec, epochs))
    try:
        study = optuna.create_study(direction=spec.direction, **kw)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kw)
        created = False
    fp = study.user_attrs.get(FINGERPRINT_ATTR)
    end = time.monotonic() + wait_s
    while fp is None and not created and time.monotonic() < end:
        time.sleep(0.2)  # the creator records it right after creating the study
        fp = study.user_attrs.get(FINGERPRINT_ATTR)
    if fp is None:  # ours, or a creator that died before it recorded its own
        study.set_user_attr(FINGERPRINT_ATTR, spec.fingerprint())
        study.set_user_attr("trainpipe:sweep", {"method": spec.method, "metric": spec.metric, "goal": spec.goal,
                                                "params": [p.display for p in spec.varied], "name": spec.name})
    elif fp != spec.fingerprint():
        raise ConfigError(
            f"study {study_name!r} in the storage was created from a different sweep (its method, metric, "
            f"parameters, base config or fixed values differ). Use the original sweep file, or give this "
            f"sweep another name (the sweep file's name: key) so that it gets a study of its own.")
    if study.direction.name.lower() != spec.direction:
        raise ConfigError(f"study {study_name!r} optimises in the other direction; give this sweep another name.")
    return study


# ------------------------------------------------------------------- the ledger
@dataclass
class Ledger:
    """The trials that count, and why the others don't."""

    visible: list[FrozenTrial] = field(default_factory=list)
    superseded: set[int] = field(default_factory=set)  # numbers re-queued under a new trial
    discarded: list[FrozenTrial] = field(default_factory=list)

    def by_state(self, *states: TrialState) -> list[FrozenTrial]:
        return [t for t in self.visible if t.state in states]


def ledger(trials: Iterable[FrozenTrial]) -> Ledger:
    trials = list(trials)
    superseded = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    led = Ledger(superseded=superseded)
    for t in sorted(trials, key=lambda t: t.number):
        if t.user_attrs.get("discarded"):
            led.discarded.append(t)
        elif t.number not in superseded:
            led.visible.append(t)
    return led


def point_of(trial: FrozenTrial, keys: list[str]) -> tuple | None:
    """A trial's point (Optuna's stored values), or None while not all are sampled."""
    if not all(k in trial.params for k in keys):
        return None
    return tuple(repr(trial.params[k]) for k in keys)


# ---------------------------------------------------------------- who is alive
def worker_attr(started: dt.datetime | None = None) -> dict[str, Any]:
    """Who runs a trial (`rundir.this_process()`). `since` is the trial's start: a queued copy
    inherits its original's record, and must not be judged by the original's (dead) process."""
    return {**rundir.this_process(), "since": started.isoformat() if started else None}


def trial_of(study: optuna.Study, number: int) -> FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def queue_copy(study: optuna.Study, trial: FrozenTrial, *, max_retry: int | None) -> bool:
    """Queue a WAITING copy of `trial` with its parameters; False when it was retried `max_retry` times.

    The copy carries the bookkeeping of Optuna's retry callback (system attributes
    `failed_trial`: the first trial of the series, `retry_history`: every one before it),
    which optuna-dashboard shows; written here because the callback's class was renamed
    in Optuna 4.9 and its old name goes in 6.0.
    """
    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    if max_retry is not None and len(system_attrs["retry_history"]) > max_retry:
        return False
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions, user_attrs=trial.user_attrs,
                                              system_attrs=system_attrs))
    return True


def requeue(study: optuna.Study, number: int) -> bool:
    """Fail a running trial (if nobody else did) and queue a copy; True when this call did it.

    `Study.tell` is the atomic step: of two processes failing one trial, the storage lets
    one through and refuses the other (the trial is finished by then).
    """
    try:
        study.tell(number, state=TrialState.FAIL)
    except (ValueError, RuntimeError):  # not running any more: told, or failed by another worker
        return False
    frozen = trial_of(study, number)
    # A trial that never sampled its values (its worker died at once, or a retried
    # request created it twice) leaves nothing to repeat: the sweep makes a new one if it has room.
    if not frozen.user_attrs.get("discarded") and frozen.params:
        queue_copy(study, frozen, max_retry=MAX_RETRIES)
    return True


def retry_interrupted(study: optuna.Study, number: int) -> None:
    """Queue a copy of a trial that Ctrl-C ended (the worker has told it failed)."""
    frozen = trial_of(study, number)
    status = (frozen.user_attrs.get("result") or {}).get("status")
    if frozen.state == TrialState.FAIL and status in ("interrupted", "running") and not frozen.user_attrs.get("discarded"):
        queue_copy(study, frozen, max_retry=None)


class Liveness:
    """What this process has seen of the running trials' heartbeats.

    A trial whose heartbeat (and worker record) stayed the same for `grace_period`
    seconds of this process's own watch is dead. Clocks of other machines are never
    compared, and `forget` restarts every watch: a process that lost the database
    (`trainpipe.sweep.db`) saw nothing meanwhile, and must not take the silence of
    others during that outage for their death.
    """

    def __init__(self) -> None:
        self.seen: dict[int, tuple[str, float]] = {}
        self.outages = 0
        self.restarted = -math.inf  # when `forget` last restarted the watch (time.monotonic)

    def silent_for(self, trial: FrozenTrial, now: float) -> float:
        sign = repr((trial.user_attrs.get("heartbeat"), trial.user_attrs.get("worker")))
        prev = self.seen.get(trial.number)
        if prev is None or prev[0] != sign:
            self.seen[trial.number] = (sign, now)
            return 0.0
        return now - prev[1]

    def forget(self) -> None:
        self.seen.clear()
        self.restarted = time.monotonic()

    def sync(self, connectivity: db.Connectivity) -> None:
        """Forget what was seen before an outage this process went through (or is in)."""
        if connectivity.down or connectivity.outages != self.outages:
            self.forget()
            self.outages = connectivity.outages


_LIVENESS: weakref.WeakKeyDictionary[optuna.Study, Liveness] = weakref.WeakKeyDictionary()


def liveness(study: optuna.Study) -> Liveness:
    if study not in _LIVENESS:
        _LIVENESS[study] = Liveness()
    return _LIVENESS[study]


def retry_machine_failures(study: optuna.Study, causes: Iterable[str]) -> list[FrozenTrial]:
    """Queue a copy of every trial that failed for a reason of the machine (its result's `cause`
    is one of `causes`: out of memory, disk full, a lost device); returns those trials. Called
    when a sweep starts, so that each invocation retries them once."""
    wanted = set(causes)
    led = ledger(study.get_trials(deepcopy=False))
    retried = []
    for t in led.by_state(TrialState.FAIL):
        if (t.user_attrs.get("result") or {}).get("cause") in wanted:
            queue_copy(study, t, max_retry=None)
            retried.append(t)
    return retried


# --------------------------------------------------- liveness without a heartbeat
def beat_file(sweep_dir: str | Path, rec: dict[str, Any]) -> Path:
    """Where the worker process `rec` (`rundir.this_process()`) records that it is alive."""
    name = f"{rec.get('host')}-{rec.get('pid')}-{rec.get('start')}".replace("/", "_")
    return Path(sweep_dir) / "workers" / f"{name}.alive"


class Beat:
    """Touches this process's file in `sweep_dir/workers/` every `interval` seconds, from a thread:
    the heartbeat of storages that have none (Optuna's journal file), read by `reap_dead_trials`."""

    def __init__(self, sweep_dir: str | Path, interval: float) -> None:
        import threading

        self.path = beat_file(sweep_dir, rundir.this_process())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True, name="trainpipe-beat")
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.path.touch()
            except OSError:
                pass  # a full or unreachable disk: the next beat tries again

    def stop(self) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)


def _silent_for(sweep_dir: str | Path, rec: dict[str, Any], started: dt.datetime | None) -> float:
    """Seconds since the worker `rec` last beat (since the trial started when it never did)."""
    try:
        return time.time() - beat_file(sweep_dir, rec).stat().st_mtime
    except OSError:
        return (dt.datetime.now() - (started or dt.datetime.now())).total_seconds()


def reap_dead_trials(study: optuna.Study, *, grace_period: float = GRACE_PERIOD_S,
                     sweep_dir: str | Path | None = None, connectivity: db.Connectivity | None = None) -> list[int]:
    """Re-queue running trials whose worker is gone; returns their numbers.

    Same machine: the worker's process id is checked directly. Otherwise: the trial's
    heartbeat stood still for `grace_period` seconds (`Liveness`), for any storage (the
    heartbeat is a trial attribute); a trial that died before it recorded its worker is
    judged the same way. A worker on a journal file also touches a liveness file in
    `sweep_dir/workers/`: where that file is, its age decides. Either way the watch
    restarts after an outage this process went through (`connectivity`), so heartbeats
    missed while the storage was away condemn nobody.
    """
    reaped = []
    watch, now = liveness(study), time.monotonic()
    if connectivity is not None:
        watch.sync(connectivity)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        silent = watch.silent_for(t, now) > grace_period
        ours = w is not None and w.get("since") == (t.datetime_start.isoformat() if t.datetime_start else None)
        gone = None if not ours else False if rundir.is_current(w) else rundir.gone(w)
        if gone is None and ours and sweep_dir is not None and beat_file(sweep_dir, w).is_file():
            # its liveness file (journal), judged only once this process has watched for a grace period
            gone = _silent_for(sweep_dir, w, t.datetime_start) > grace_period and now - watch.restarted > grace_period
        dead = gone if gone is not None else silent
        if dead and requeue(study, t.number):
            reaped.append(t.number)
    return reaped
