"""SIGINT, SIGTERM and SIGUSR1 stop a run at the next step boundary, with a checkpoint there;
a second signal stops at once; the command exits with 128 + the signal's number."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainpipe.loop.trainer import StopRequest
from trainpipe.run import rundir, signals

TINY = ["model.width=8", "tracking.plots=false", "train.device=cpu"]


def test_sigterm_from_outside_ends_the_run_interrupted_with_its_resume_command(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.Popen([sys.executable, "-m", "trainpipe", "train", *TINY, "train.epochs=50", "--output", str(out),
                          "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not rundir.read_metrics(out) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    summary = rundir.read_summary(out)
    assert summary["status"] == "interrupted" and summary["stop_reason"] == "sigterm"
    assert f"trainpipe resume {out}" in err and "Traceback" not in err
    assert rundir.status(out) == "interrupted"


def _send(signum: int) -> None:
    os.kill(os.getpid(), signum)


def test_the_first_signal_is_a_request_and_a_second_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(signals.time, "monotonic", lambda: clock[0])
    request = StopRequest()
    with signals.handling(request):
        _send(signal.SIGUSR1)
        assert request.reason == "sigusr1"
        clock[0] += 0.2  # the same request from a second sender (a forwarded Ctrl-C): no effect
        _send(signal.SIGINT)
        clock[0] += 5
        with pytest.raises(KeyboardInterrupt):
            _send(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            signals.check()
    assert signals.received() == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handlers before are back


def test_outside_a_training_loop_a_signal_stops_at_once() -> None:
    with signals.handling():
        with pytest.raises(KeyboardInterrupt):
            _send(signal.SIGTERM)
    assert signals.exit_code(signals.received()) == 143


def test_a_workers_request_is_honoured_at_its_checks_and_by_the_next_run() -> None:
    worker = StopRequest()
    with signals.handling(worker):
        signals.check()
        _send(signal.SIGTERM)  # between trials: nothing breaks where the worker happens to be
        assert worker.reason == "sigterm"
        run = StopRequest()
        with signals.handling(run):
            assert run.reason == "sigterm"  # a run started now stops at its first step boundary
            signals.check()  # inside a run, the run's loop decides
        with pytest.raises(KeyboardInterrupt):
            signals.check()
