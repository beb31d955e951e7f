"""A sweep stopped by a signal exits as a run does: 128 + the signal's number."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep_kit import TINY, sweep_file  # noqa: E402
from trainpipe.run import rundir


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_a_sweep_with_exit_143_and_the_trial_queued(tmp_path: Path, workers: int) -> None:
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.2]}}, fixed={**TINY, "train.epochs": 10})
    d = tmp_path / "sw"
    p = subprocess.Popen([sys.executable, "-m", "trainpipe", "sweep", str(s), "--output", str(d),
                          "--workers", str(workers)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + 180
    # Sent once a trial has logged its first epoch (nine more to go): it lands while the trial trains.
    while not any(rundir.read_metrics(t) for t in (d / "trials").glob("*")) if (d / "trials").is_dir() else True:
        assert p.poll() is None, p.stdout.read() if p.stdout else ""
        assert time.monotonic() < end, "timed out waiting for the sweep"
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 143, out
    assert "interrupted: running trials were marked and queued again" in out
