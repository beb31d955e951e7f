"""A signal to a sweep worker: its trial stops at a step boundary with a checkpoint, and the
next start continues that trial's run from there: no trial lost, none repeated, no step trained twice."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from sweep_kit import TINY, sweep_file
from trainpipe.run import rundir
from trainpipe.sweep import open_sweep, run_sweep
from trainpipe.sweep import study as st


def _signal_at_step(monkeypatch: pytest.MonkeyPatch, n: int, signum: int) -> None:
    from trainpipe.loop.trainer import Trainer

    real = Trainer.train_step
    calls = [0]

    def step(self: Trainer, *a: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signum)
        return real(self, *a)

    monkeypatch.setattr(Trainer, "train_step", step)


def test_a_signalled_trial_resumes_mid_epoch_in_the_next_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.2]}}, fixed={**TINY, "train.device": "cpu"})
    d = tmp_path / "sweeps" / "s"
    _signal_at_step(monkeypatch, 22, signal.SIGTERM)  # trial 0000, in epoch 2 (17 steps an epoch)
    assert run_sweep(s).interrupted
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    _, study = open_sweep(d)
    first = study.get_trials()[0]
    assert first.state == TrialState.FAIL and first.user_attrs["result"]["reason"] == "interrupted (sigterm)"
    stopped = rundir.read_summary(d / "trials" / "0000")["stopped_at"]
    assert stopped["epoch"] == 2 and stopped["batch"] > 0

    out = run_sweep(d)
    assert not out.interrupted and sorted(r.state for r in out.rows) == ["completed", "completed"]
    visible = st.ledger(study.get_trials()).visible
    assert sorted(t.params["optim.lr"] for t in visible) == [0.05, 0.2]  # none lost, none repeated
    copy = next(t for t in visible if t.system_attrs.get("retry_history") == [0])
    moved = d / "trials" / f"{copy.number:04d}"
    assert not (d / "trials" / "0000").exists() and copy.user_attrs["run_dir"] == str(moved.resolve())
    events = [json.loads(line) for line in (moved / "history.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["train", "resume"] and events[1]["from_epoch"] == 1
    assert [r["epoch"] for r in rundir.read_metrics(moved)] == [1, 2]  # each epoch logged once
    assert sorted(copy.intermediate_values) == [1, 2]  # the earlier epoch reported again for pruning
