"""Trials that fail for a reason of the machine (out of memory, a full disk) are not results of their
configuration: recorded with their cause, not ranked, the sweep exits 75 saying what to do, and
running it again retries them, leaving every finished trial's files byte-identical."""

from __future__ import annotations

import csv
import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

from sweep_kit import TINY, sweep_file  # noqa: E402
from trainpipe import files
from trainpipe.cli import main
from trainpipe.loop.trainer import Trainer
from trainpipe.run import failures, rundir


QUICK = {**TINY, "train.epochs": 1, "data.fraction": 0.3}  # a trial in about a second

def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def rows(d: Path) -> list[dict[str, str]]:
    with (d / "results.csv").open() as f:
        return list(csv.DictReader(f))


def allocate_too_much_from_batch(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials with batch size >= `size` ask the CPU allocator for 2**60 bytes: a real allocation failure."""
    real = Trainer.train_epoch

    def train_epoch(self, epoch):  # noqa: ANN001, ANN202
        if self.data.train.batch_size >= size:
            torch.empty(2**60, dtype=torch.uint8)
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def test_out_of_memory_is_recorded_the_sweep_goes_on_and_a_rerun_retries_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"data.batch_size": {"values": [256, 16, 32]}}, test="all", fixed=QUICK)
    d = tmp_path / "sweeps" / "s"
    allocate_too_much_from_batch(256, monkeypatch)
    assert main(["sweep", str(s)]) == 75
    out, err = capsys.readouterr()
    assert "1 trial failed for a reason of the machine" in err and "0000 (out of memory)" in err
    assert "lower data.batch_size" in err and "--workers per GPU" in err and "trainpipe sweep sweeps/s" in err
    summary = rundir.read_summary(d / "trials" / "0000")
    assert summary["cause"] == "oom" and summary["stop_reason"] == "oom" and summary["batch_size"] == 256
    assert summary["peak_memory_mb"] > 0 and summary["requested_mb"] > 2**39
    by_trial = {r["trial"]: r for r in rows(d)}
    assert by_trial["0000"]["state"] == "failed" and by_trial["0000"]["cause"] == "oom"
    assert [r["trial"] for r in rows(d)][-1] == "0000"  # not ranked
    assert {by_trial[n]["state"] for n in ("0001", "0002")} == {"completed"}  # the sweep went on
    md = (d / "results.md").read_text()
    assert "## Trials that failed for a reason of the machine" in md and "| 0000 | out of memory | 256 | 256 |" in md
    assert "lower data.batch_size" in md
    assert main(["report", "sweeps/s", "--no-eval"]) == 0
    report = (d / "report.md").read_text()
    assert "## Trials that failed for a reason of the machine" in report and "lower data.batch_size" in report
    finished = {n: snapshot(d / "trials" / n) for n in ("0001", "0002")}
    kept = {(r["trial"], r["best val/acc"], r["test/acc"]) for r in rows(d) if r["state"] == "completed"}

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(d)]) == 0
    out = capsys.readouterr().out
    assert "retrying 1 trial that failed for a reason of the machine last time: 0000 (out of memory)" in out
    assert {n: snapshot(d / "trials" / n) for n in finished} == finished  # finished trials: byte-identical
    after = rows(d)
    assert {r["state"] for r in after} == {"completed"} and len(after) == 3
    assert kept <= {(r["trial"], r["best val/acc"], r["test/acc"]) for r in after}
    assert "failed for a reason of the machine" not in (d / "results.md").read_text()
    assert main(["report", "sweeps/s", "--no-eval"]) == 0
    assert "failed for a reason of the machine" not in (d / "report.md").read_text()
    assert main(["sweep", str(d)]) == 0  # nothing left: nothing runs again
    assert "retrying" not in capsys.readouterr().out and len(rows(d)) == 3


def test_a_full_disk_stops_starting_trials_and_a_rerun_finishes_the_sweep(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.1, 0.2]}}, test="all", fixed=QUICK)
    d = tmp_path / "sweeps" / "s"
    real = os.fsync

    def fsync(fd: int) -> None:  # the disk "fills up" while trial 0001 writes its checkpoints
        if f"{os.sep}trials{os.sep}0001{os.sep}checkpoints" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    assert main(["sweep", str(s)]) == 75
    out, err = capsys.readouterr()
    assert "0001 (disk full)" in err and "no more trials were started" in err and "free disk space" in err
    assert "trainpipe resume" not in out + err  # a lone run's advice: here the sweep retries the trial
    assert not (d / "trials" / "0002").exists()  # nothing started after the disk filled up
    assert rundir.read_summary(d / "trials" / "0001")["cause"] == "disk_full"
    assert {r["trial"]: r["cause"] for r in rows(d)} == {"0000": "", "0001": "disk_full"}
    first = snapshot(d / "trials" / "0000")

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(d)]) == 0
    assert snapshot(d / "trials" / "0000") == first
    done = rows(d)
    assert len(done) == 3 and {r["state"] for r in done} == {"completed"}
    assert sorted(float(r["optim.lr"]) for r in done) == [0.05, 0.1, 0.2]


@pytest.mark.parametrize("exc,cause", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 1152921504606846976 bytes."), "oom"),
    (MemoryError(), "oom"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (OSError(errno.ENOSPC, "No space left on device"), "disk_full"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk_full"),
    (RuntimeError("CUDA error: unspecified launch failure"), "device_lost"),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x2)"), None),
    (ValueError("out of range"), None),
])
def test_the_machine_failures_are_told_apart_from_the_configurations(exc: BaseException, cause: str | None) -> None:
    assert failures.classify(exc) == cause
    wrapped = RuntimeError("a library's own words")
    wrapped.__cause__ = exc
    assert failures.classify(wrapped) == cause


def test_workers_are_capped_at_the_trials_that_can_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import trainpipe.sweep.run as sweep_run

    started: list[int] = []
    monkeypatch.setattr(sweep_run, "run_processes", lambda configs: started.append(len(configs)) or False)
    monkeypatch.setattr(sweep_run, "run_in_process", lambda wc: started.append(1) or False)
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.1, 0.2, 0.3]}}, test="none", fixed=QUICK)
    assert main(["sweep", str(s), "--workers", "64"]) == 0
    assert started == [4] and "--workers 64: only 4 trials can run, so 4 workers start" in capsys.readouterr().out


def test_a_sweep_directory_deleted_mid_sweep_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.1]}}, test="none", fixed=QUICK)
    d = tmp_path / "sweeps" / "s"
    real = Trainer.train_epoch

    def train_epoch(self, epoch):  # noqa: ANN001, ANN202
        if (d / "trials" / "0001").exists():
            shutil.rmtree(d)
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    assert main(["sweep", str(s)]) == 2
    err = capsys.readouterr().err
    assert "was deleted or moved while the sweep ran" in err and "AssertionError" not in err


def test_a_gpu_out_of_memory_records_the_batch_size_and_the_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here: the CUDA allocator's peak is what torch.cuda.max_memory_allocated reports
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    e = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                     "of 79.1 GiB of which 1.2 GiB is free.")
    mf = failures.machine_failure(e, batch_size=512, device="cuda:0")
    assert mf is not None and mf.record() == {"cause": "oom", "batch_size": 512, "peak_memory_mb": 3072.0,
                                              "requested_mb": 2048.0}
    assert mf.describe().startswith("out of memory (batch size 512, peak 3.0 GiB, tried to allocate 2.0 GiB): ")
