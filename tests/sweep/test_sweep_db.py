"""The sweep's storage rides out an outage: retries, one line per outage, a limit, a same-study check
that two first starts cannot both pass, one test evaluation per sweep."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc

from trainpipe.errors import ConfigError
from trainpipe.sweep import db
from trainpipe.sweep import study as st
from trainpipe.sweep.final_test import claim
from trainpipe.sweep.spec import parse_spec


def locked() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("UPDATE trials ...", {}, Exception("database is locked"))


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "BACKOFF_S", (0.001, 0.002))


def test_a_call_is_retried_through_an_outage_and_the_outage_is_said_once(fast_backoff: None) -> None:
    said: list[str] = []
    patience = db.Patience(limit=30, connectivity=db.Connectivity(said.append))
    failures = [locked(), locked(), locked()]

    def flaky() -> str:
        if failures:
            raise failures.pop()
        return "written"

    assert patience.call(flaky) == "written"
    assert [m.split(" since ")[0] for m in said] == ["database unreachable", "database reachable again after 0 s"]
    assert "retrying for up to 30 s (OperationalError" in said[0] and patience.connectivity.outages == 1


def test_an_outage_past_the_limit_raises_database_unreachable(fast_backoff: None) -> None:
    patience = db.Patience(limit=0.05, connectivity=db.Connectivity(lambda m: None))

    def down() -> None:
        raise locked()

    with pytest.raises(db.DatabaseUnreachable, match="longer than the retry limit of 0.05 s"):
        patience.call(down)
    with pytest.raises(ValueError):  # a real error is raised at once, never retried
        patience.call(lambda: int("x"))


def test_a_state_write_committed_before_its_connection_broke_is_not_an_error(tmp_path: Path,
                                                                            fast_backoff: None) -> None:
    storage = st.make_storage(f"sqlite:///{tmp_path / 'o.db'}")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    real = storage.inner.set_trial_state_values

    def commit_then_drop(*args: object, **kw: object) -> bool:
        real(*args, **kw)  # the database has it, the answer is lost
        storage.inner.set_trial_state_values = real
        raise locked()

    storage.inner.set_trial_state_values = commit_then_drop
    study.tell(trial, 0.5)  # retried: finds the trial completed with that value, as asked
    assert study.get_trials()[0].state == optuna.trial.TrialState.COMPLETE


def spec_of(lr: list[float]) -> object:
    return parse_spec({"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {"optim.lr": {"values": lr}}})


def test_two_first_starts_of_different_sweeps_under_one_name_cannot_both_pass(tmp_path: Path) -> None:
    storage = st.make_storage(f"sqlite:///{tmp_path / 'o.db'}")
    first, second = spec_of([0.1, 0.2]), spec_of([0.3])
    # The first start has created the study and not yet recorded its sweep's fingerprint
    # when the second start looks: the second must wait for it, not write its own.
    optuna.create_study(storage=storage, study_name="s", direction="maximize")

    def record() -> None:
        time.sleep(0.5)
        optuna.load_study(study_name="s", storage=storage).set_user_attr(st.FINGERPRINT_ATTR, first.fingerprint())

    threading.Thread(target=record).start()
    with pytest.raises(ConfigError, match="created from a different sweep"):
        st.open_study(second, storage, study_name="s", epochs=1)
    assert st.open_study(first, storage, study_name="s", epochs=1).user_attrs[st.FINGERPRINT_ATTR] == \
        first.fingerprint()


def test_a_trial_is_claimed_for_the_test_split_by_one_process_only(tmp_path: Path) -> None:
    storage = st.make_storage(f"sqlite:///{tmp_path / 'o.db'}")
    study = optuna.create_study(storage=storage, study_name="s")
    assert claim(study, storage, 3) is None  # this process evaluates it
    other = claim(study, storage, 3)  # any later claim (another machine's) finds it taken
    assert other is not None and other["pid"] > 0
    assert claim(study, storage, 4) is None


def test_what_counts_as_an_outage() -> None:
    import errno
    import sqlite3

    def wrapped(cls: type, orig: BaseException) -> BaseException:
        return cls("SELECT ...", {}, orig)

    assert db.transient(wrapped(sqlalchemy.exc.OperationalError, sqlite3.OperationalError("database is locked")))
    assert db.transient(wrapped(sqlalchemy.exc.OperationalError, Exception("server closed the connection")))
    # A damaged SQLite file, a missing table, a full disk: real errors, raised at once.
    assert not db.transient(wrapped(sqlalchemy.exc.DatabaseError, sqlite3.DatabaseError("file is not a database")))
    assert not db.transient(wrapped(sqlalchemy.exc.OperationalError, sqlite3.OperationalError("no such table: x")))
    assert db.transient(OSError(errno.ESTALE, "Stale file handle"))  # a journal on NFS
    assert not db.transient(OSError(errno.ENOSPC, "No space left on device"))


def test_a_locked_sqlite_file_is_waited_for(tmp_path: Path, fast_backoff: None) -> None:
    import sqlite3

    said: list[str] = []
    storage = st.make_storage(f"sqlite:///{tmp_path / 'o.db'}", db.DbSettings(statement_timeout=0.1),
                              say=said.append)
    study = optuna.create_study(storage=storage, study_name="s")
    other = sqlite3.connect(tmp_path / "o.db", check_same_thread=False)  # another writer holds the file
    other.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.0, other.rollback)
    release.start()
    study.set_user_attr("k", 1)  # waits for the lock, past SQLite's own timeout
    release.join()
    other.close()
    assert study.user_attrs["k"] == 1
    assert said[0].startswith("database unreachable since") and "database is locked" in said[0]


def test_a_journal_file_whose_file_system_stops_answering_is_waited_for(tmp_path: Path, fast_backoff: None) -> None:
    import errno

    said: list[str] = []
    storage = st.make_storage(st.journal_url(tmp_path / "o.journal"), say=said.append)
    study = optuna.create_study(storage=storage, study_name="s")
    real, fails = storage.inner.set_study_user_attr, [OSError(errno.ESTALE, "Stale file handle")] * 2

    def flaky(*args: object) -> None:
        if fails:
            raise fails.pop()
        real(*args)

    storage.inner.set_study_user_attr = flaky
    study.set_user_attr("k", 1)
    assert study.user_attrs["k"] == 1 and "Stale file handle" in said[0]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_an_outage_this_process_went_through_restarts_its_liveness_watch(tmp_path: Path) -> None:
    study = optuna.create_study(storage=st.make_storage(f"sqlite:///{tmp_path / 'o.db'}"), study_name="s")
    t = study.ask()
    t.suggest_categorical("optim.lr", [0.1, 0.2])
    t.set_user_attr("worker", {"machine": "elsewhere", "host": "elsewhere", "pid": 1})
    t.set_user_attr("heartbeat", "12:00:00")  # and never again: its worker is dead, or the database was away
    seen = db.Connectivity(lambda msg: None)
    assert st.reap_dead_trials(study, grace_period=1, connectivity=seen) == []
    time.sleep(1.3)
    seen.failed(Exception("connection refused"), limit=60)  # this process lost the database meanwhile
    seen.ok()
    assert st.reap_dead_trials(study, grace_period=1, connectivity=seen) == []  # what it saw says nothing
    time.sleep(1.3)
    assert st.reap_dead_trials(study, grace_period=1, connectivity=seen) == [t.number]


def test_a_stop_request_ends_the_wait_for_the_database() -> None:
    # In a sweep worker Ctrl-C sets the worker's stop request instead of raising where it lands:
    # a call waiting for the database must still give way to it at once, not after the retry limit.
    from trainpipe.loop.trainer import StopRequest
    from trainpipe.run import signals

    patience = db.Patience(limit=300, connectivity=db.Connectivity(lambda m: None))
    request, calls = StopRequest(), []

    def down() -> None:
        calls.append(1)
        request.reason = signals.reason_of(2)  # Ctrl-C arrives while the database is away
        raise locked()

    with signals.handling(request), pytest.raises(KeyboardInterrupt):
        patience.call(down)
    assert len(calls) == 1  # stopped in the first wait, not retried until the limit
