"""The run record: how a run ended becomes its status, stop reason and summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import trainpipe
from trainpipe.errors import ConfigError, StorageError
from trainpipe.loop.stop import Status, StopReason, stop_status
from trainpipe.loop.trainer import TrainState
from trainpipe.run import rundir
from trainpipe.run.record import RunRecord


@pytest.mark.parametrize("reason, status", [
    (StopReason.MAX_EPOCHS, "completed"), (StopReason.EARLY_STOPPING, "completed"),
    (StopReason.NON_FINITE, "failed"), (StopReason.PRUNED, "pruned"), (StopReason.INTERRUPTED, "interrupted"),
    ("non_finite_loss", "failed"), ("my_callbacks_reason", "completed"), (None, "failed"),
])
def test_each_stop_reason_gives_one_status(reason: str | None, status: str) -> None:
    assert stop_status(reason) == status


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / rundir.SUMMARY).read_text())


@pytest.mark.parametrize("error, reason, message", [
    (RuntimeError("boom"), "error", "RuntimeError: boom"),
    (ConfigError("data.path: missing"), "config_error", "data.path: missing"),
])
def test_an_exception_becomes_the_runs_stop_reason_and_is_written(tmp_path: Path, error: Exception, reason: str,
                                                                  message: str) -> None:
    cfg = trainpipe.load_config(None, ["train.device=cpu"])
    record = RunRecord(tmp_path, cfg, prior_wall_time=5.0)
    assert _summary(tmp_path)["status"] == "running" and (tmp_path / rundir.PROCESS).is_file()
    with pytest.raises(type(error)), record.recording():
        record.note({"device": "cpu"})
        raise error
    s = _summary(tmp_path)
    assert (s["status"], s["stop_reason"], s["error"], s["device"]) == ("failed", reason, message, "cpu")
    assert s["wall_time_s"] >= 5.0


def test_a_storage_error_says_how_to_continue(tmp_path: Path) -> None:
    cfg = trainpipe.load_config(None, ["train.device=cpu"])
    record = RunRecord(tmp_path, cfg)
    with pytest.raises(StorageError, match="trainpipe resume"), record.recording():
        raise StorageError("disk full", path=tmp_path / "x", errno=28)
    assert _summary(tmp_path)["stop_reason"] == "storage"


def test_a_stop_reason_is_a_plain_string_in_checkpoints(tmp_path: Path) -> None:
    state = TrainState(stop_reason=StopReason.EARLY_STOPPING)
    saved = state.state_dict()
    assert type(saved["stop_reason"]) is str
    torch.save(saved, tmp_path / "s.pt")
    assert torch.load(tmp_path / "s.pt", weights_only=True)["stop_reason"] == "early_stopping"
    assert Status.COMPLETED == "completed"
