"""The Python API as a notebook or a script uses it: the names it exports, the objects it
returns, and what a run leaves behind in the process (nothing)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import trainpipe
from conftest import tiny_overrides
from kill_kit import interrupt_in_epoch


def test_the_api_mirrors_the_cli() -> None:
    from trainpipe.errors import ConfigError, DataError, StorageError, TrainingInterrupted
    from trainpipe.report import report
    from trainpipe.run.evaluate import evaluate_checkpoint
    from trainpipe.run.resume import resume

    assert trainpipe.resume is resume and trainpipe.evaluate is evaluate_checkpoint
    assert (trainpipe.ConfigError, trainpipe.DataError, trainpipe.StorageError, trainpipe.TrainingInterrupted) == (
        ConfigError, DataError, StorageError, TrainingInterrupted)
    # The sweep and report subpackages are called as functions, and stay importable as packages.
    import importlib

    assert importlib.import_module("trainpipe.sweep") is trainpipe.sweep
    assert callable(trainpipe.sweep) and callable(trainpipe.report) and trainpipe.report.report is report
    with pytest.raises(ConfigError, match="not a directory"):
        trainpipe.report("no/such/run")
    with pytest.raises(ConfigError):
        trainpipe.sweep("no-such-sweep.yaml")


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.random()), float(torch.rand(()))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_a_run_gives_the_global_generators_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_all(7)
    expected = draws()
    seed_all(7)
    r = trainpipe.train(None, tiny_overrides(**{"train.epochs": 1}), output=tmp_path / "a", quiet=True)
    assert r.status == "completed"
    assert draws() == expected
    # Also when the run ends with an interrupt.
    interrupt_in_epoch(monkeypatch, 1)
    seed_all(7)
    with pytest.raises(trainpipe.TrainingInterrupted) as stop:
        trainpipe.train(None, tiny_overrides(), output=tmp_path / "b", quiet=True)
    assert draws() == expected
    assert stop.value.run_dir == tmp_path / "b" and stop.value.result.status == "interrupted"
    assert f"trainpipe.resume({str(tmp_path / 'b')!r})" in stop.value._render_traceback_()[0]


def test_lr_find_gives_the_global_generators_back(tmp_path: Path) -> None:
    from trainpipe.run.lr_find import lr_find

    seed_all(3)
    expected = draws()
    seed_all(3)
    lr_find(None, tiny_overrides(), tmp_path, steps=20, quiet=True)
    assert draws() == expected


def test_an_interrupt_that_breaks_a_checkpoint_write_is_an_interrupt(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def torn_write(trainer: object) -> None:
        # What torch.save does when a KeyboardInterrupt lands inside it: its zip writer,
        # closed on the way out, raises its own error.
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5632 vs 5528")  # noqa: B012

    interrupt_in_epoch(monkeypatch, 1, before=torn_write)
    with pytest.raises(trainpipe.TrainingInterrupted):
        trainpipe.train(None, tiny_overrides(), output=tmp_path / "r", quiet=True)
    from trainpipe.run import rundir

    assert rundir.read_summary(tmp_path / "r")["status"] == "interrupted"


def test_an_interrupt_gives_the_console_streams_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal's live progress bar replaces sys.stdout/sys.stderr while it runs."""
    # Interrupted with the bar up, as in the middle of an epoch.
    interrupt_in_epoch(monkeypatch, 1, before=lambda trainer: trainer.progress.start_epoch(1, 10))
    out, err = sys.stdout, sys.stderr
    with pytest.raises(KeyboardInterrupt):
        trainpipe.train(None, tiny_overrides(**{"tracking.progress": "bar"}), output=tmp_path / "r")
    assert sys.stdout is out and sys.stderr is err


def test_results_read_as_short_objects_and_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = trainpipe.train(None, tiny_overrides(), output=tmp_path / "a", quiet=True)
    text = repr(r)
    assert text.startswith("RunResult(status='completed', best val/acc=") and "test/acc=" in text
    assert str(tmp_path / "a") in text and "Conv2d" not in text and len(text) < 300
    pd = pytest.importorskip("pandas")
    h = r.history
    assert isinstance(h, pd.DataFrame) and list(h.index) == [1, 2]
    assert list(h["val/acc"]) == [m["val/acc"] for m in r.metrics]
    monkeypatch.setitem(sys.modules, "pandas", None)  # pandas not installed
    table = r.history
    assert table == r.metrics and "val/acc" in table.columns
    lines = repr(table).splitlines()
    assert len(lines) == 3 and "val/acc" in lines[0] and "<td>" in table._repr_html_()
    assert r.plot()._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"
