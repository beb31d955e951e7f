"""Sweeps on Optuna's journal file: no server, safe on a shared file system; dead workers'
trials are queued again from trainpipe's own liveness files; SQLite on NFS is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep_kit import TINY, sweep_file
from trainpipe.errors import ConfigError
from trainpipe.run import rundir
from trainpipe.sweep import open_sweep, run_sweep
from trainpipe.sweep import study as st

REPO = Path(__file__).resolve().parents[2]


def test_a_journal_sweep_whose_worker_is_killed_finishes_with_no_trial_lost_or_repeated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.2]}}, fixed={**TINY, "train.epochs": 10})
    d = tmp_path / "sweeps" / "s"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-m", "trainpipe", "sweep", str(s), "--storage", "journal"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not rundir.read_metrics(d / "trials" / "0000") and time.monotonic() < deadline:
        assert p.poll() is None, p.stdout.read()
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert (d / st.JOURNAL_FILE).is_file() and not (d / "optuna.db").exists()

    # optuna.load_study opens it as the README says
    storage = optuna.storages.JournalStorage(st.journal_file(d / st.JOURNAL_FILE))
    study = optuna.load_study(study_name="s", storage=storage)
    assert study.get_trials()[0].state == TrialState.RUNNING

    out = run_sweep(d)  # the recorded storage is used; the dead worker's trial is queued again and resumed
    assert not out.interrupted and out.storage.startswith("journal:")
    _, study = open_sweep(d)
    visible = st.ledger(study.get_trials()).visible
    assert sorted(t.params["optim.lr"] for t in visible) == [0.05, 0.2]
    assert all(t.state == TrialState.COMPLETE for t in visible) and len(visible) == 2


def _journal_study(tmp_path: Path) -> optuna.Study:
    storage = st.make_storage(st.journal_url(tmp_path / st.JOURNAL_FILE))
    return optuna.create_study(study_name="s", storage=storage)


def test_a_silent_remote_worker_on_a_journal_is_found_by_its_liveness_file(tmp_path: Path) -> None:
    study = _journal_study(tmp_path)
    t = study.ask()
    t.suggest_categorical("optim.lr", [0.1, 0.2])
    started = study.get_trials()[0].datetime_start
    remote = {"pid": 4242, "host": "node7", "machine": "node7|boot|ns", "start": 99, "since": started.isoformat()}
    t.set_user_attr("worker", remote)
    beat = st.beat_file(tmp_path, remote)
    beat.parent.mkdir(parents=True)
    beat.touch()
    assert st.reap_dead_trials(study, grace_period=60, sweep_dir=tmp_path) == []  # it beat just now
    old = time.time() - 120
    os.utime(beat, (old, old))
    assert st.reap_dead_trials(study, grace_period=60, sweep_dir=tmp_path) == [t.number]
    (copy,) = study.get_trials(states=(TrialState.WAITING,))
    assert copy.params == study.get_trials()[0].params


def test_a_worker_beats_while_it_lives(tmp_path: Path) -> None:
    beat = st.Beat(tmp_path, interval=0.05)
    old = time.time() - 100
    os.utime(beat.path, (old, old))
    time.sleep(0.5)
    assert time.time() - beat.path.stat().st_mtime < 50
    beat.stop()
    assert not beat.path.exists()


def test_sqlite_on_a_network_file_system_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st, "filesystem_type", lambda path: "nfs4")
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.2]}})
    with pytest.raises(ConfigError, match="network file system \\(nfs4\\).*--storage journal"):
        run_sweep(s)
    assert not (tmp_path / "sweeps" / "s" / "optuna.db").exists()


def test_the_file_system_type_comes_from_the_mount_table(tmp_path: Path) -> None:
    assert st.filesystem_type(tmp_path / "not-yet" / "file") == st.filesystem_type(tmp_path)
    assert st.filesystem_type("/proc") == "proc"
