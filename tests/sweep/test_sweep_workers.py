"""Sweeps that survive: killed and interrupted runs, dead workers, two workers, two machines on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from trainpipe import config as config_mod
from trainpipe.sweep import open_sweep, run_sweep

from sweep_kit import TINY, sweep_file  # noqa: E402
from trainpipe.run import rundir
from trainpipe.sweep import study as st
from trainpipe.sweep import worker as worker_mod
from trainpipe.sweep.results import trial_rows
from trainpipe.sweep.spec import parse_spec

GRID = {"optim.lr": {"values": [0.05, 0.2]}, "model.width": {"values": [4, 8]}}
ALL_POINTS = [(0.05, 4), (0.05, 8), (0.2, 4), (0.2, 8)]



def sweep_cmd(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "trainpipe", "sweep", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail("timed out waiting for the sweep")
        time.sleep(0.05)


def completed_points(study: optuna.Study) -> list[tuple]:
    return sorted((t.params["optim.lr"], t.params["model.width"])
                  for t in st.ledger(study.get_trials()).visible if t.state == TrialState.COMPLETE)


@pytest.mark.slow
def test_interrupted_then_killed_sweep_resumes_with_no_repeated_and_no_lost_configuration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Trials long enough that each signal lands while its trial trains, however busy the machine:
    # the signal is sent once the trial has logged its first epoch, with 9 still to go (seconds).
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.2]}}, fixed={**TINY, "train.epochs": 10})
    d = tmp_path / "sweeps" / "s"

    def first_epoch_logged(trial: str) -> bool:
        return bool(rundir.read_metrics(d / "trials" / trial))

    # Ctrl-C during the first trial: exit 130, the trial is marked and queued again.
    p = sweep_cmd(str(s))
    wait_until(lambda: first_epoch_logged("0000"), p)
    p.send_signal(signal.SIGINT)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130, out
    _, study = open_sweep(d)
    first = study.get_trials()[0]
    assert first.state == TrialState.FAIL and first.user_attrs["result"]["status"] == "interrupted"
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert [t.params for t in queued] == [first.params]

    # SIGKILL during the queued copy: no clean-up at all this time.
    p = sweep_cmd(str(s))
    wait_until(lambda: first_epoch_logged("0001"), p)
    p.kill()
    p.communicate(timeout=60)
    killed = study.get_trials()[1]
    assert killed.state == TrialState.RUNNING and killed.params == first.params

    # Resuming (here from the directory) finishes the sweep: the dead trial is seen at once (its pid is gone).
    out = run_sweep(d)
    assert not out.interrupted
    lrs = sorted(t.params["optim.lr"] for t in st.ledger(study.get_trials()).visible)
    assert lrs == [0.05, 0.2]  # each configuration exactly once, none lost
    assert all(r.state == "completed" for r in out.rows) and len(out.rows) == 2
    assert study.get_trials()[1].state == TrialState.FAIL  # the killed one, superseded by its copy
    assert sum(t.state == TrialState.COMPLETE for t in study.get_trials()) == 2


@pytest.mark.slow
def test_two_workers_on_one_sqlite_study_never_run_the_same_configuration(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = run_sweep(sweep_file(tmp_path, GRID), workers=2, devices="cpu")  # both share one device
    d = tmp_path / "sweeps" / "s"
    _, study = open_sweep(d)
    assert completed_points(study) == ALL_POINTS
    visible = st.ledger(study.get_trials()).visible
    assert len(visible) == 4 and len({t.user_attrs["worker"]["pid"] for t in visible}) == 2
    # Only trials that count ever trained: one run directory each, each with its own config.
    dirs = sorted((d / "trials").iterdir())
    assert [p.name for p in dirs] == sorted(f"{t.number:04d}" for t in visible)
    configs = [config_mod.load(p / "config.yaml") for p in dirs]
    assert sorted((c.optim.lr, c.model.width) for c in configs) == ALL_POINTS
    assert {c.train.device for c in configs} == {"cpu"}
    assert len(out.rows) == 4


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is missing


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process states from /proc")
def test_workers_stop_when_the_sweep_command_is_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, GRID)
    d = tmp_path / "sweeps" / "s"
    p = sweep_cmd(str(s), "--workers", "2")
    wait_until(lambda: all((d / "trials" / n / "summary.json").is_file() for n in ("0000", "0001")), p)
    p.kill()
    p.communicate(timeout=60)
    _, study = open_sweep(d)
    pids = {t.user_attrs["worker"]["pid"] for t in study.get_trials() if "worker" in t.user_attrs}
    assert len(pids) == 2
    # Each worker finishes the trial it is in, sees that the command is gone, and exits.
    end = time.monotonic() + 120
    while any(_running(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.2)
    assert not any(_running(pid) for pid in pids), "orphaned sweep workers kept running"
    assert len(list((d / "trials").iterdir())) == 2  # no trial started after the command died


def test_a_worker_process_takes_the_commands_directory_and_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A forked worker starts from the forkserver, whose directory and environment date from
    # when it was started: worker_main must adopt the sweep command's current ones.
    seen = {}

    def fake_run(wc: worker_mod.WorkerConfig) -> None:
        seen.update(cwd=os.getcwd(), marker=os.environ.get("TRAINPIPE_TEST_MARKER"),
                    stale=os.environ.get("TRAINPIPE_TEST_STALE"))

    monkeypatch.setattr(worker_mod, "run_worker", fake_run)
    monkeypatch.setattr(worker_mod, "install_signal_handlers", lambda: (lambda: None))
    monkeypatch.setenv("TRAINPIPE_TEST_STALE", "1")
    monkeypatch.setattr(os, "environ", dict(os.environ))  # the test's own copy, thrown away after
    monkeypatch.chdir(Path.cwd())  # restored after the test
    wc = worker_mod.WorkerConfig(spec=parse_spec({"method": "grid", "parameters": GRID}), sweep_dir="sweeps/s",
                                 storage_url="sqlite://", study_name="s", total=4, epochs=2, workers=2,
                                 cwd=str(tmp_path), env={**os.environ, "OMP_NUM_THREADS": "1",
                                                         "TRAINPIPE_TEST_MARKER": "from the command"})
    del wc.env["TRAINPIPE_TEST_STALE"]
    worker_mod.worker_main(wc)
    assert seen == {"cwd": str(tmp_path), "marker": "from the command", "stale": None}


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty database on the server .ci/run starts (so machines race to create Optuna's tables)."""
    url = os.environ.get("TRAINPIPE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL server: TRAINPIPE_TEST_POSTGRES_URL is not set (.ci/run starts one from "
                    "Debian's postgresql package when it can)")
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        admin = sqlalchemy.create_engine(st.with_driver(url), isolation_level="AUTOCOMMIT")
        admin.connect().close()
    except Exception as e:
        pytest.skip(f"no PostgreSQL server at {st.redact(url)}: {str(e).splitlines()[0]}")
    name = f"trainpipe_sweep_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield make_url(url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.mark.slow
def test_postgres_two_machines_share_one_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               postgres_url: str) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, GRID, name="pg")
    # Two `trainpipe sweep` commands, as on two machines: same file and storage, own directories.
    procs = [sweep_cmd(str(s), "--storage", postgres_url, "--output", f"machine{i}") for i in (1, 2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    storage = st.make_storage(postgres_url)
    study = optuna.load_study(study_name="pg", storage=storage)
    assert completed_points(study) == ALL_POINTS
    visible = st.ledger(study.get_trials()).visible
    ran = {m: sorted(p.name for p in (tmp_path / m / "trials").iterdir()) for m in ("machine1", "machine2")}
    assert sorted(ran["machine1"] + ran["machine2"]) == sorted(f"{t.number:04d}" for t in visible)
    for m in ran:  # each machine's table lists every trial, wherever it ran
        rows = (tmp_path / m / "results.csv").read_text().splitlines()[1:]
        assert len(rows) == 4 and all(",completed," in r for r in rows)
    storage.engine.dispose()


# ------------------------------------------------------ dead workers, no training
def _study(tmp_path: Path) -> tuple[optuna.Study, object]:
    storage = st.make_storage(f"sqlite:///{tmp_path / 'o.db'}")
    spec = parse_spec({"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {"optim.lr": {"values": [0.1, 0.2]}}})
    return optuna.create_study(storage=storage, study_name="t", direction="maximize",
                               sampler=st.sampler_for(spec)), spec


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() stands in for a worker
def test_a_trial_whose_local_worker_died_is_queued_again_at_once(tmp_path: Path) -> None:
    study, spec = _study(tmp_path)
    dead, alive = study.ask(), study.ask()
    dead.suggest_categorical("optim.lr", [0.1, 0.2])
    alive.suggest_categorical("optim.lr", [0.1, 0.2])
    since = {t.number: t.datetime_start for t in study.get_trials()}
    # Records as those processes would have written them: their pid and start time.
    gone_pid, parent = _dead_pid(), os.getppid()
    dead.set_user_attr("worker", {**st.worker_attr(since[dead.number]), "pid": gone_pid,
                                  "start": rundir._start_ticks(gone_pid)})
    alive.set_user_attr("worker", {**st.worker_attr(since[alive.number]), "pid": parent,
                                   "start": rundir._start_ticks(parent)})
    assert st.reap_dead_trials(study) == [dead.number]
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL and trials[alive.number].state == TrialState.RUNNING
    (copy,) = study.get_trials(states=(TrialState.WAITING,))
    assert copy.params == trials[dead.number].params
    led = st.ledger(trials)
    assert dead.number in led.superseded and [t.number for t in led.visible] == [alive.number, copy.number]
    rows = trial_rows(study, spec)
    assert sorted(r.state for r in rows) == ["running", "waiting"]
    # The copy starts with its original's worker record (a dead pid): that must not condemn it.
    popped = study.ask()
    assert popped.number == copy.number and popped.user_attrs["worker"]["pid"] != os.getpid()
    assert st.reap_dead_trials(study) == []
    assert study.get_trials()[copy.number].state == TrialState.RUNNING


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() stands in for a worker
def test_a_trial_of_a_silent_remote_worker_is_queued_again_after_the_grace_period(tmp_path: Path) -> None:
    study, _ = _study(tmp_path)
    t = study.ask()
    t.suggest_categorical("optim.lr", [0.1, 0.2])
    t.set_user_attr("worker", {"machine": "elsewhere", "host": "elsewhere", "pid": 1})
    t.set_user_attr("heartbeat", "2026-01-01T12:00:00")  # as its worker's heartbeat thread writes it
    assert st.reap_dead_trials(study, grace_period=1) == []  # still beating
    assert study.get_trials()[0].state == TrialState.RUNNING
    time.sleep(2.5)
    st.reap_dead_trials(study, grace_period=1)
    assert study.get_trials()[0].state == TrialState.FAIL
    (copy,) = study.get_trials(states=(TrialState.WAITING,))
    assert copy.params == study.get_trials()[0].params


def test_a_ctrl_c_lost_in_a_finaliser_still_stops_the_trial_at_the_next_epoch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import weakref

    from trainpipe.sweep.worker import ReportToStudy, install_signal_handlers

    restore = install_signal_handlers()
    try:
        class Thing:
            pass

        dropped: list[type] = []
        monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
        thing = Thing()
        # The handler's KeyboardInterrupt is raised inside a weakref callback, where Python drops it.
        ref = weakref.ref(thing, lambda _: os.kill(os.getpid(), signal.SIGINT))
        del thing
        assert ref() is None and dropped == [KeyboardInterrupt]
        with pytest.raises(KeyboardInterrupt):
            ReportToStudy(link=None, metric="val/acc", prune=False).on_epoch_end(trainer=None)
    finally:
        restore()


def test_workers_fork_from_a_preloaded_server_on_linux_and_are_spawned_elsewhere(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from trainpipe.sweep import run as run_mod

    monkeypatch.setattr(sys, "platform", "darwin")
    assert run_mod.worker_context().get_start_method() == "spawn"
    monkeypatch.setattr(sys, "platform", "linux")
    ctx = run_mod.worker_context()
    assert ctx.get_start_method() == "forkserver"
    from multiprocessing import forkserver

    assert "trainpipe.run.train" in forkserver._forkserver._preload_modules


def test_each_worker_takes_its_share_of_the_cores_it_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    # A job given 4 cores of a 64-core node: os.cpu_count() says 64, the affinity 4.
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert [worker_mod.worker_threads(n) for n in (1, 2, 3, 8)] == [4, 2, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker_mod.worker_threads(2) == 3
