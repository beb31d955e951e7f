"""Sweeps ride out a database outage: a real PostgreSQL server stopped and started mid-sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from trainpipe.run import rundir
from trainpipe.sweep import study as st

from pg_kit import PgServer  # noqa: E402
from sweep_kit import TINY, sweep_file  # noqa: E402

LRS = {"optim.lr": {"values": [0.05, 0.2]}}


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    server = PgServer()
    yield server
    server.close()


def _as_from_a_terminal() -> None:
    # A test runner's worker may ignore SIGINT, and a child inherits that; a command started from
    # a terminal takes Ctrl-C with Python's default handler, which is what these tests are about.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def trainpipe_sweep(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainpipe", "sweep", *args],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_as_from_a_terminal)


def on_another_machine(machine: str, sweep: Path, storage: str, output: str) -> subprocess.Popen:
    """A sweep command that believes it runs on `machine` (so that the others judge its trials by their
    heartbeats, not by its process id), with a 1 s heartbeat and an 8 s grace period."""
    code = (f"import sys; from trainpipe.run import rundir; rundir.machine_id = lambda: {machine!r}\n"
            f"from trainpipe.sweep import run_sweep\n"
            f"out = run_sweep({str(sweep)!r}, {output!r}, storage={storage!r}, heartbeat_interval=1, grace_period=8)\n"
            f"sys.exit(0 if not (out.interrupted or out.unreachable) else 1)")
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until(cond: Callable[[], bool], procs: list[subprocess.Popen], timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not cond():
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"a sweep ended early ({p.returncode}):\n{p.stdout.read()}")
        if time.monotonic() > end:
            for p in procs:
                p.kill()
            pytest.fail("timed out waiting for the sweep")
        time.sleep(0.05)


def epoch_logged(trial_dir: Path) -> bool:
    return bool(rundir.read_metrics(trial_dir)) if trial_dir.is_dir() else False


def new_sweep(tmp_path: Path, pg: PgServer, name: str, epochs: int) -> tuple[str, Path]:
    """A new database on the server, and a sweep file of two learning rates in `tmp_path`."""
    return pg.database(), sweep_file(tmp_path, LRS, name=name, fixed={**TINY, "train.epochs": epochs})


def completed_once(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The trials that count; asserts each learning rate completed exactly once and nothing else completed."""
    storage = st.make_storage(url)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    storage.engine.dispose()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["optim.lr"] for t in done) == [0.05, 0.2], [(t.number, t.state, t.params) for t in trials]
    return done


@pytest.mark.slow
def test_a_ten_second_outage_mid_sweep_is_ridden_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     pg: PgServer) -> None:
    monkeypatch.chdir(tmp_path)  # restored after the test
    url, s = new_sweep(tmp_path, pg, "outage", epochs=4)
    p = trainpipe_sweep(str(s), "--storage", url, "--output", "out")
    wait_until(lambda: epoch_logged(tmp_path / "out" / "trials" / "0000"), [p])
    pg.stop()
    time.sleep(10)
    pg.start()
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    assert "database unreachable since" in out and "Traceback" not in out, out
    done = completed_once(url, "outage")
    assert len(done) == 2  # no trial lost, none repeated, none failed on the way
    for t in done:  # the reports of epochs trained while the database was away were written when it returned
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]


@pytest.mark.slow
def test_an_outage_past_the_retry_limit_stops_cleanly_and_a_rerun_completes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg: PgServer) -> None:
    monkeypatch.chdir(tmp_path)  # restored after the test
    url, s = new_sweep(tmp_path, pg, "limit", epochs=6)
    args = [str(s), "--storage", url, "--output", "out"]
    p = trainpipe_sweep(*args, "--db-retry-limit", "3")
    first = tmp_path / "out" / "trials" / "0000"
    wait_until(lambda: epoch_logged(first), [p])
    pg.stop()
    try:
        out = p.communicate(timeout=240)[0]
    finally:
        pg.start()
    assert p.returncode == 75, out
    assert "the database has been unreachable since" in out and "longer than the retry limit of 3 s" in out, out
    assert "resume with: trainpipe sweep out --storage URL" in out and "Traceback" not in out, out
    assert (first / "checkpoints" / "last.pt").is_file()  # the stopped trial keeps its checkpoint
    p = trainpipe_sweep(*args)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    completed_once(url, "limit")


@pytest.mark.slow
def test_heartbeats_missed_during_an_outage_never_make_a_second_copy_of_a_trial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg: PgServer) -> None:
    # Two machines train one trial each; the database goes away for longer than the grace period.
    monkeypatch.chdir(tmp_path)  # restored after the test
    url, s = new_sweep(tmp_path, pg, "beat", epochs=6)
    procs = [on_another_machine(m, s, url, m) for m in ("m1", "m2")]
    wait_until(lambda: sum(epoch_logged(d) for m in ("m1", "m2") for d in (tmp_path / m / "trials").glob("*"))
               >= 2, procs)  # each machine trains its trial
    pg.stop()
    time.sleep(10)
    pg.start()
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("lost its worker" in o or "given to another worker" in o for o in outs), outs
    storage = st.make_storage(url)
    trials = optuna.load_study(study_name="beat", storage=storage).get_trials()
    storage.engine.dispose()
    assert not any("failed_trial" in t.system_attrs for t in trials), [(t.number, t.state) for t in trials]
    completed_once(url, "beat")


# ------------------------------------------------- a server that never answers
@pytest.fixture
def silent_server() -> Iterator[tuple[int, list]]:
    """Accepts connections and never says a word (a hung server, a black-holing proxy)."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    accepted: list = []

    def accept() -> None:
        while True:
            try:
                accepted.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1], accepted
    srv.close()
    for c in accepted:
        c.close()


@pytest.mark.slow
def test_a_server_that_never_answers_times_out_and_ctrl_c_stops_the_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, silent_server: tuple[int, list]) -> None:
    pytest.importorskip("psycopg2")
    import signal

    monkeypatch.chdir(tmp_path)
    port, accepted = silent_server
    url = f"postgresql://u@127.0.0.1:{port}/sweeps"
    s = sweep_file(tmp_path, LRS, name="hung")
    p = trainpipe_sweep(str(s), "--storage", url, "--db-connect-timeout", "1")
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 2, out
    assert "cannot open the database" in out and "no answer from the database server within 1 s" in out, out
    # With the default timeout, Ctrl-C ends the wait at once (it used to wait for the socket to close).
    p = trainpipe_sweep(str(s), "--storage", url)
    n = len(accepted)
    wait_until(lambda: len(accepted) > n, [p])
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 130 and "Traceback" not in out, out
