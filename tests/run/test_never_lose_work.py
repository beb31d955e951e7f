"""A user's run is never lost or mixed with another: existing runs, full disks, unwritable
paths, killed and interrupted runs, runs that fail before their first epoch."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

import trainpipe
from kill_kit import interrupt_in_epoch, train_and_kill
from trainpipe import files
from trainpipe.cli import main
from trainpipe.errors import StorageError
from trainpipe.run import rundir

TINY = ["model.width=8", "tracking.plots=false", "train.device=cpu"]


def test_output_onto_an_existing_run_is_refused_unless_overwrite(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "train.epochs=2", "--output", str(out), "--quiet"]) == 0
    (out / "eval-best-test.json").write_text("{}")  # e.g. an evaluation of that run
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", *TINY, "train.epochs=1", "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"trainpipe resume {out}" in err and "--overwrite" in err
    assert (out / "metrics.jsonl").read_text() == before  # nothing of the old run was touched
    assert main(["train", *TINY, "train.epochs=1", "--output", str(out), "--overwrite", "--quiet"]) == 0
    assert len(rundir.read_metrics(out)) == 1
    assert not (out / "eval-best-test.json").exists()  # no file of the replaced run stays behind


def test_an_empty_output_directory_is_used(tmp_path: Path) -> None:
    r = trainpipe.train(None, [*TINY, "train.epochs=1"], output=tmp_path, quiet=True)
    assert r.status == "completed"


def _fail_fsync_of(name_part: str, after: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the disk "full" for files whose temporary name contains `name_part`, after `after` writes."""
    real = os.fsync
    seen = {"n": 0}

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if name_part in target:
            seen["n"] += 1
            if seen["n"] > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)


def test_a_full_disk_exits_2_keeps_the_last_checkpoint_and_resume_continues(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    # last.pt is written at the start (epoch 0) and after epochs 1, 2, 3: the third write fails
    _fail_fsync_of(".last.pt.", after=2, monkeypatch=monkeypatch)
    assert main(["train", *TINY, "train.epochs=3", "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "last.pt" in err and f"trainpipe resume {out}" in err
    assert "Traceback" not in err and "enforce fail" not in err
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == 1  # the last complete checkpoint, intact
    assert not list((out / "checkpoints").glob(".*.tmp"))  # no half-written file left
    assert rundir.read_summary(out)["stop_reason"] == "storage"
    monkeypatch.undo()
    assert main(["resume", str(out), "--quiet"]) == 0
    assert [r["epoch"] for r in rundir.read_metrics(out)] == [1, 2, 3]


def test_a_full_disk_inside_torch_save_is_recognised(tmp_path: Path) -> None:
    # torch reports a failed write as RuntimeError("[enforce fail at inline_container.cc ...")
    with pytest.raises(StorageError, match="disk is full"):
        files.atomic_write(tmp_path / "x.pt", lambda f: torch.save(torch.zeros(10), open("/dev/full", "wb")))


def test_unwritable_output_paths_exit_2_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["train", *TINY, "train.epochs=1", "--output", str(blocker / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(blocker / "run") in err and "not a directory" in err and "Traceback" not in err
    assert main(["train", *TINY, "train.epochs=1", "--output", "/proc/trainpipe-run", "--quiet"]) == 2
    assert "/proc/trainpipe-run" in capsys.readouterr().err


def test_a_run_failing_before_its_first_epoch_leaves_no_directory(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "data.dataset=arrays", f"data.path={tmp_path / 'missing.npz'}",
                 "--output", str(out), "--quiet"]) == 2
    assert "missing.npz" in capsys.readouterr().err
    assert not out.exists()


def test_ctrl_c_names_the_resume_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    interrupt_in_epoch(monkeypatch, 1)
    out = tmp_path / "run"
    assert main(["train", *TINY, "train.epochs=3", "--output", str(out), "--quiet"]) == 130
    assert f"trainpipe resume {out}" in capsys.readouterr().err
    assert rundir.read_summary(out)["status"] == "interrupted"


def test_a_killed_run_reads_as_interrupted_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs" / "killed"
    train_and_kill(out, [*TINY, "train.epochs=30"], kill_when=lambda: len(rundir.read_metrics(out)) >= 1)
    assert rundir.read_summary(out)["status"] == "running"  # what the killed process left
    assert rundir.status(out) == "interrupted"
    resume_cmd = f"trainpipe resume {out}"

    assert main(["list", "runs", str(out.parent)]) == 0
    assert "interrupted" in capsys.readouterr().out
    assert main(["report", str(out), "--no-eval", "--output", str(tmp_path / "rep")]) == 0
    capsys.readouterr()
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "interrupted" in report and resume_cmd in report
    assert main(["eval", str(out)]) == 0
    assert resume_cmd in capsys.readouterr().err
    assert main(["resume", str(out), "train.epochs=2"]) == 0
    assert "interrupted" in capsys.readouterr().out
    assert rundir.status(out) == "completed"


def test_a_run_still_running_is_not_resumed_twice(tmp_path: Path) -> None:
    from trainpipe.errors import ConfigError
    from trainpipe.run.resume import resume

    out = tmp_path / "run"
    trainpipe.train(None, [*TINY, "train.epochs=1"], output=out, quiet=True)
    summary = rundir.read_summary(out)
    rundir.write_summary(out, {**summary, "status": "running"})
    proc = rundir.read_process(out)
    parent = os.getppid()  # a live process that is not this one
    start = rundir._start_ticks(parent)
    (out / rundir.PROCESS).write_text(json.dumps({**proc, "pid": parent, "start": start}))
    with pytest.raises(ConfigError, match="still being trained by another process"):
        resume(out, quiet=True)
