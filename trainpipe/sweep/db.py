"""The sweep's storage calls ride out an outage.

A database server restarts, fails over, drops connections; an SQLite file is locked
by another writer for a while; a journal file on a network file system stops answering
for a moment. Every storage call of a sweep goes through `PatientStorage`, which
retries a call that failed for such a reason with backoff (0.5 s doubling to 10 s)
until it succeeds or the outage has lasted `retry_limit` seconds; then
`DatabaseUnreachable` is raised and the sweep stops cleanly. Each outage is said once
("database unreachable since 12:03:10; retrying ...").

A call that failed for another reason (an integrity error, a finished trial, a damaged
SQLite file) is raised at once. A retried write may have reached the database before
its connection broke; the calls where that matters are made safe here
(`set_trial_state_values`) or in the worker (a trial created twice is never run twice).

PostgreSQL gets a connect timeout and a statement timeout, and, with psycopg2, a wait
callback that lets Ctrl-C through while a call waits for the server and gives up on a
server that accepted the connection but never answers.
"""

from __future__ import annotations

import abc
import datetime as dt
import errno
import select
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna

T = TypeVar("T")

RETRY_LIMIT_S = 300.0
CONNECT_TIMEOUT_S = 10.0
STATEMENT_TIMEOUT_S = 60.0
# The client gives up on a statement this long after the server should have cancelled it.
CLIENT_MARGIN_S = 10.0
BACKOFF_S = (0.5, 10.0)  # first wait, longest wait


class DatabaseUnreachable(Exception):
    """The database stayed unreachable for longer than the retry limit."""

    def __init__(self, since: float, limit: float, cause: str) -> None:
        self.since, self.limit, self.cause = since, limit, cause
        super().__init__(f"the database has been unreachable since {clock(since)} (longer than the retry limit "
                         f"of {limit:g} s): {cause}")


@dataclass(frozen=True)
class DbSettings:
    """How long the sweep waits for its database (`trainpipe sweep --db-...` options)."""

    retry_limit: float = RETRY_LIMIT_S  # an outage longer than this stops the sweep
    connect_timeout: float = CONNECT_TIMEOUT_S  # PostgreSQL: opening a connection
    statement_timeout: float = STATEMENT_TIMEOUT_S  # PostgreSQL: one statement


def clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%H:%M:%S")


# A journal file on a network file system: errors of the file system's server, not of the file.
TRANSIENT_ERRNO = {errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.ENOLCK, errno.EHOSTDOWN,
                   errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETUNREACH, errno.ECONNRESET, errno.ECONNREFUSED,
                   errno.ECONNABORTED, errno.EINTR}
SQLITE_TRANSIENT = ("database is locked", "database table is locked", "database is busy")


def transient(e: BaseException | None) -> bool:
    """Whether `e` is the storage being away (retry) rather than a real error (raise).

    PostgreSQL (or another server): a lost, refused or timed-out connection. SQLite: a
    locked file only (a damaged one, a missing table are real errors). A journal file:
    an error of the file system's server (`TRANSIENT_ERRNO`), not a full disk.
    """
    from sqlalchemy import exc

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        orig = getattr(e, "orig", None)
        if isinstance(e, exc.DBAPIError) and type(orig).__module__.startswith("sqlite3"):
            return any(m in str(orig).lower() for m in SQLITE_TRANSIENT)
        if type(e).__module__.startswith("sqlite3"):
            return any(m in str(e).lower() for m in SQLITE_TRANSIENT)
        if isinstance(e, exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, exc.TimeoutError)):
            return True
        if type(e).__module__.startswith("psycopg") and type(e).__name__ in ("OperationalError", "InterfaceError"):
            return True
        if isinstance(e, OSError) and (e.errno in TRANSIENT_ERRNO or isinstance(e, (ConnectionError, TimeoutError))):
            return True
        e = e.__cause__  # Optuna wraps a failed commit in StorageInternalError (raise ... from)
    return False


def trial_finished(e: BaseException) -> bool:
    """Whether `e` is Optuna refusing a write to a finished trial.

    Checked on Optuna 3.6.0, which raises a plain RuntimeError ("Trial#N has already
    finished and can not be updated"), and 4.x to 5.1.0, which raise
    UpdateFinishedTrialError (a RuntimeError with that message).
    """
    cls = getattr(optuna.exceptions, "UpdateFinishedTrialError", None)
    if cls is not None and isinstance(e, cls):
        return True
    return isinstance(e, RuntimeError) and "has already finished" in str(e)


class Connectivity:
    """One process's view of its database: whether it is away, since when, how many outages.

    Shared by every thread of the process (the worker and its trial's heartbeat), so
    that one outage is logged once, and `outages` tells the liveness watch that this
    process saw nothing of the others for a while.
    """

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.lock = threading.Lock()
        self.down_since: float | None = None
        self.outages = 0
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def failed(self, e: BaseException, limit: float) -> float:
        with self.lock:
            if self.down_since is None:
                self.down_since = time.time()
                self.outages += 1
                self.say(f"database unreachable since {clock(self.down_since)}; retrying for up to {limit:g} s "
                         f"({short(e)})")
            return self.down_since

    def ok(self) -> None:
        if self.down_since is not None:
            with self.lock:
                if self.down_since is not None:
                    self.say(f"database reachable again after {time.time() - self.down_since:.0f} s")
                    self.down_since = None

    @property
    def down(self) -> bool:
        return self.down_since is not None


def short(e: BaseException) -> str:
    cause = e
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


class Patience:
    """Retries a call while the database is away, up to `limit` seconds of outage."""

    def __init__(self, limit: float = RETRY_LIMIT_S, connectivity: Connectivity | None = None) -> None:
        self.limit = limit
        self.connectivity = connectivity or Connectivity()
        self.local = threading.local()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        wait = BACKOFF_S[0]
        while True:
            try:
                out = fn(*args, **kwargs)
            except Exception as e:
                if not transient(e):
                    raise
                limit = self.limit if getattr(self.local, "limit", None) is None else self.local.limit
                if limit <= 0:  # no_wait: nothing to say, the caller copes
                    raise DatabaseUnreachable(time.time(), limit, short(e)) from None
                since = self.connectivity.failed(e, self.limit)
                if time.time() - since + wait > limit:
                    raise DatabaseUnreachable(since, self.limit, short(e)) from None
                interruptible_sleep(wait)
                wait = min(wait * 2, BACKOFF_S[1])
                continue
            self.connectivity.ok()
            return out

    def no_wait(self) -> _NoWait:
        """`with patience.no_wait():` calls in this thread are tried once (clean-up after Ctrl-C)."""
        return _NoWait(self.local)


def check_interrupt() -> None:
    """Raise KeyboardInterrupt in the main thread if Ctrl-C (or SIGTERM, SIGUSR1) asked to stop.

    A signal raises KeyboardInterrupt by itself outside a run; inside a sweep worker's
    handling block it sets the worker's stop request instead, which `signals.check` turns
    into the KeyboardInterrupt here, so that no wait for the database outlasts a Ctrl-C.
    (Looked up in `sys.modules`: where the signals module was never imported, no handler
    of ours is installed.)
    """
    signals = sys.modules.get("trainpipe.run.signals")
    if signals is not None and threading.current_thread() is threading.main_thread():
        signals.check()


def interruptible_sleep(seconds: float) -> None:
    """`time.sleep` that `check_interrupt` ends."""
    end = time.monotonic() + seconds
    while True:
        check_interrupt()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.2))


class _NoWait:
    def __init__(self, local: threading.local) -> None:
        self.local = local

    def __enter__(self) -> None:
        self.prev = getattr(self.local, "limit", None)
        self.local.limit = 0.0

    def __exit__(self, *exc: object) -> None:
        self.local.limit = self.prev


# ------------------------------------------------------------------ the storage
class PatientStorage(optuna.storages.BaseStorage):
    """Any Optuna storage (`inner`: an RDBStorage, a JournalStorage), each call retried
    through a `Patience`. Implementing `BaseStorage` is Optuna's documented way to plug in
    a storage; other attributes (an RDBStorage's `engine`) are those of `inner`."""

    def __init__(self, inner: optuna.storages.BaseStorage, patience: Patience) -> None:
        self.inner, self.patience = inner, patience

    def __getattr__(self, name: str) -> Any:
        if name in ("inner", "patience"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
        # The write may have been committed before the connection broke: a retry then
        # finds the trial finished. If it is finished the way this call wanted, that is success.
        tries = {"n": 0}

        def once() -> bool:
            tries["n"] += 1
            try:
                return self.inner.set_trial_state_values(trial_id, state, values)
            except RuntimeError as e:
                if tries["n"] > 1 and trial_finished(e):
                    t = self.inner.get_trial(trial_id)
                    if t.state == state and (values is None or list(t.values or []) == list(values)):
                        return True
                raise

        return self.patience.call(once)


def _patient(name: str) -> Callable[..., Any]:
    def method(self: PatientStorage, *args: Any, **kwargs: Any) -> Any:
        return self.patience.call(getattr(self.inner, name), *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    return method


# Every public method of the storage interface, whatever the Optuna version defines.
for _name in dir(optuna.storages.BaseStorage):
    if not _name.startswith("_") and _name not in vars(PatientStorage) and callable(
            getattr(optuna.storages.BaseStorage, _name)):
        setattr(PatientStorage, _name, _patient(_name))
abc.update_abstractmethods(PatientStorage)


# ------------------------------------------------------------------ PostgreSQL
def postgres_connect_args(settings: DbSettings) -> dict[str, Any]:
    """libpq's connect timeout and the server's statement timeout (psycopg2 and psycopg)."""
    return {"connect_timeout": max(1, round(settings.connect_timeout)),
            "options": f"-c statement_timeout={max(1, round(settings.statement_timeout * 1000))}"}


_wait_limits = {"connect": CONNECT_TIMEOUT_S, "statement": STATEMENT_TIMEOUT_S + CLIENT_MARGIN_S}


def install_psycopg2_wait(settings: DbSettings) -> None:
    """Make psycopg2 wait for the server in Python: Ctrl-C then works while it waits, and
    a server that never answers is given up after the timeouts (libpq's own connect
    timeout does not apply once psycopg2 waits itself). Process-wide, like psycopg2's
    own `set_wait_callback`; psycopg (3) waits this way by itself."""
    try:
        import psycopg2.extensions
    except ImportError:
        return
    _wait_limits.update(connect=settings.connect_timeout, statement=settings.statement_timeout + CLIENT_MARGIN_S)
    psycopg2.extensions.set_wait_callback(_wait)


def _wait(conn: Any) -> None:
    import psycopg2
    import psycopg2.extensions as ext

    connecting = conn.status == ext.STATUS_SETUP
    limit = _wait_limits["connect" if connecting else "statement"]
    deadline = time.monotonic() + limit
    while True:
        state = conn.poll()
        if state == ext.POLL_OK:
            return
        # A signal inside a sweep's handling block sets a stop request rather than raising:
        # honour it here, or the wait would last until the timeout.
        check_interrupt()
        left = deadline - time.monotonic()
        if left <= 0:
            # Worded as a lost connection, so that SQLAlchemy throws the connection away.
            what = "timeout expired while connecting" if connecting else "could not receive data from server"
            raise psycopg2.OperationalError(f"{what}: no answer from the database server within {limit:g} s")
        if state == ext.POLL_READ:
            select.select([conn.fileno()], [], [], min(left, 1.0))
        elif state == ext.POLL_WRITE:
            select.select([], [conn.fileno()], [], min(left, 1.0))
        else:
            raise psycopg2.OperationalError(f"bad state from poll: {state}")
