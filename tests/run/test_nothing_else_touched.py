"""trainpipe deletes and rewrites only what it wrote itself, and only for a run that can go on:
`--overwrite` removes a run's own files (by name) and nothing of the user's; a run another
process is training is never replaced; a resume that cannot start leaves every file as it was."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import trainpipe
from trainpipe.cli import main
from trainpipe.run import rundir

TINY = ["model.width=8", "tracking.plots=false", "train.device=cpu"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (path -> bytes): two equal snapshots mean nothing was touched."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def user_files(root: Path) -> None:
    """What a project folder holds: code, data, notes, its own config.yaml."""
    (root / "src").mkdir(parents=True)
    (root / "src" / "model.py").write_text("print('mine')\n")
    (root / "data").mkdir()
    (root / "data" / "x.npy").write_bytes(b"\x93NUMPY" + bytes(range(50)))
    (root / "README.txt").write_text("my project\n")
    (root / "notes.txt").write_text("results so far\n")


# ------------------------------------------------------------------ --overwrite
def test_overwrite_of_the_current_directory_is_refused_and_deletes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    user_files(project)
    (project / "config.yaml").write_text("lr: 0.1\n")  # the project's own config, not a run's
    monkeypatch.chdir(project)
    before = snapshot(project)
    for target in (".", str(project), str(project / "src" / "..")):
        assert main(["train", *TINY, "train.epochs=1", "--output", target, "--overwrite", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "current directory" in err and "never deletes" in err and "Traceback" not in err
    monkeypatch.chdir(project / "src")  # a parent of the current directory
    assert main(["train", *TINY, "train.epochs=1", "--output", "..", "--overwrite", "--quiet"]) == 2
    assert "holds the current directory" in capsys.readouterr().err
    assert snapshot(project) == before


def test_home_and_root_are_never_targets_of_deletion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    user_files(home)
    trainpipe.train(None, [*TINY, "train.epochs=1"], output=home / "run", quiet=True)
    (home / "config.yaml").write_text((home / "run" / "config.yaml").read_text())  # looks like a run
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    before = snapshot(home)
    assert main(["train", *TINY, "train.epochs=1", "--output", str(home), "--overwrite", "--quiet"]) == 2
    assert "home directory" in capsys.readouterr().err
    assert snapshot(home) == before
    assert rundir.protected_target("/") == "it is the root of the file system"  # never tried for real
    assert rundir.protected_target(tmp_path / "elsewhere") is None


def test_a_folder_whose_run_files_trainpipe_did_not_write_is_neither_replaced_nor_deleted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "folder"
    user_files(folder)
    (folder / "config.yaml").write_text("lr: 0.1\n")
    (folder / "summary.json").write_text('{"mine": 1}\n')
    before = snapshot(folder)
    for extra in ([], ["--overwrite"]):
        assert main(["train", *TINY, "train.epochs=1", "--output", str(folder), *extra, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "trainpipe did not write" in err and "config.yaml" in err
    assert snapshot(folder) == before
    other = tmp_path / "other"
    user_files(other)
    (other / "curves.png").write_bytes(b"my own plot")  # a name a run writes, though no run is there
    before = snapshot(other)
    assert main(["train", *TINY, "train.epochs=1", "--output", str(other), "--quiet"]) == 2
    assert "curves.png, which a run writes" in capsys.readouterr().err
    assert snapshot(other) == before


def test_overwrite_deletes_the_runs_files_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "train.epochs=2", "--output", str(out), "--quiet"]) == 0
    user_files(out)  # the user keeps notes and code beside the run ...
    (out / "checkpoints" / "mine.pt").write_bytes(b"my own weights")  # ... and a file among its checkpoints
    (out / "tb").mkdir()
    (out / "tb" / "notes.md").write_text("tensorboard notes\n")
    mine = {k: v for k, v in snapshot(out).items() if k.split("/")[0] in ("src", "data", "README.txt", "notes.txt")
            or k in ("checkpoints/mine.pt", "tb/notes.md")}
    assert main(["train", *TINY, "train.epochs=1", "--output", str(out), "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "kept what trainpipe did not write" in err and "notes.txt" in err
    after = snapshot(out)
    assert {k: after[k] for k in mine} == mine  # byte-identical
    assert len(rundir.read_metrics(out)) == 1  # and the old run is gone
    assert not (out / "checkpoints" / "epoch-0002.pt").exists()


def test_every_file_trainpipe_writes_into_a_run_is_its_own(tmp_path: Path) -> None:
    """train, eval, report and the trackers write only names that `--overwrite` knows, so that
    deleting those leaves exactly the user's files (and a run directory with none is removed)."""
    out = tmp_path / "run"
    trainpipe.train(None, [*TINY, "train.epochs=2", "tracking.plots=true", "tracking.tensorboard=true",
                           "train.checkpoint.keep=2"], output=out, quiet=True)
    assert main(["eval", str(out), "--quiet"]) == 0
    assert main(["report", str(out), "--quiet"]) == 0
    (out / "checkpoints" / ".last.pt.x1y2.tmp").write_bytes(b"half")  # a write cut short
    written = snapshot(out)
    assert {"curves.png", "report.md", "history.jsonl", "process.json"} <= set(written)
    assert any(k.startswith("tb/") for k in written) and any(k.startswith("eval-") for k in written)
    assert {str(p.relative_to(out)) for p in rundir.own_entries(out) if p.is_file()} == set(written)
    assert rundir.remove_run(out) == [] and not out.exists()


# ------------------------------------------------------------- a run being trained
def live_other_process(out: Path, monkeypatch: pytest.MonkeyPatch) -> subprocess.Popen[bytes]:
    """Make `out` look like a run that another live process is training."""
    other = subprocess.Popen(["sleep", "60"])
    rundir.write_summary(out, {**rundir.read_summary(out), "status": "running"})
    rec = {**rundir.read_process(out), "pid": other.pid, "start": rundir._start_ticks(other.pid)}
    (out / rundir.PROCESS).write_text(json.dumps(rec))
    return other


def test_overwrite_of_a_run_being_trained_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "train.epochs=1", "--output", str(out), "--quiet"]) == 0
    other = live_other_process(out, monkeypatch)
    try:
        before = snapshot(out)
        assert main(["train", *TINY, "train.epochs=1", "--output", str(out), "--overwrite", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "being trained right now by another process" in err and f"pid {other.pid}" in err
        assert snapshot(out) == before
    finally:
        other.kill()
        other.wait()
    # once that process is gone, the run reads as interrupted and may be replaced
    assert main(["train", *TINY, "train.epochs=1", "--output", str(out), "--overwrite", "--quiet"]) == 0


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize("override", [["model.width=16"], ["data.dataset=arrays", "data.path=missing.npz"],
                                      ["optim.name=adamw"]])
def test_a_resume_that_cannot_start_changes_no_file(tmp_path: Path, override: list[str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A rejected override (a different model, a data file that is missing, an optimizer whose state
    does not fit) leaves config.yaml, summary.json and every other file byte-identical, so a
    plain resume still works."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "train.epochs=2", "--output", str(out), "--quiet"]) == 0
    before = snapshot(out)
    assert main(["resume", str(out), *override, "train.epochs=3", "--quiet"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert snapshot(out) == before
    assert rundir.read_summary(out)["status"] == "completed" and "test/acc" in rundir.read_summary(out)
    assert main(["resume", str(out), "train.epochs=3", "--quiet"]) == 0
    assert [r["epoch"] for r in rundir.read_metrics(out)] == [1, 2, 3]


def test_a_hand_edited_config_that_fails_validation_changes_no_file(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "train.epochs=1", "--output", str(out), "--quiet"]) == 0
    cfg = out / "config.yaml"
    written = cfg.read_text()
    for edit in ("width: -3", "width: 16"):  # invalid; valid but not the checkpoint's model
        cfg.write_text(written.replace("width: 8", edit))
        before = snapshot(out)
        assert main(["resume", str(out), "train.epochs=2", "--quiet"]) == 2
        assert "model.width" in capsys.readouterr().err or edit == "width: 16"
        assert snapshot(out) == before
    cfg.write_text(written)  # the edit undone, the run continues
    assert main(["resume", str(out), "train.epochs=2", "--quiet"]) == 0


# ------------------------------------------------------------------ labels
def test_a_stray_label_is_refused_before_the_run_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    data = tmp_path / "data.npz"
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    y = np.arange(40) % 4
    y[7] = 10**12
    np.savez(data, train_x=x, train_y=y)
    before = snapshot(tmp_path)
    out = tmp_path / "runs" / "r"
    assert main(["train", *TINY, "data.dataset=arrays", f"data.path={data}", "--output", str(out), "--quiet"]) == 2
    assert "labels 1000000000000 are far outside" in capsys.readouterr().err
    assert not out.exists() and snapshot(tmp_path) == before


# ------------------------------------------------------------------ eval
def test_eval_of_a_file_that_is_not_a_checkpoint_says_so_and_never_advises_deleting_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    import torch

    notes = tmp_path / "notes.pt"
    notes.write_text("my notes, not weights\n")
    arrays = tmp_path / "arrays.pt"
    with arrays.open("wb") as f:
        np.savez(f, x=np.zeros(3))
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    before = snapshot(tmp_path)
    for path, words in ((notes, "is not a file that torch.save writes"), (arrays, "without the data.pkl"),
                        (tensor, "holds a Tensor")):
        assert main(["eval", str(path)]) == 2
        err = capsys.readouterr().err
        assert "not a checkpoint" in err and words in err and "delete" not in err.lower()
    out = tmp_path / "run"
    trainpipe.train(None, [*TINY, "train.epochs=1"], output=out, quiet=True)
    best = out / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:200])  # a checkpoint cut short
    assert main(["eval", str(best)]) == 2
    err = capsys.readouterr().err
    assert "corrupt or truncated" in err and "delete" not in err.lower()
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("run/")} == before


def test_a_metrics_line_cut_short_is_named_on_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "train.epochs=2", "--output", str(out), "--quiet"]) == 0
    metrics = out / "metrics.jsonl"
    rows = metrics.read_text()
    metrics.write_text(rows + '{"epoch": 3, "train/lo')  # a process killed while appending epoch 3's row
    capsys.readouterr()
    assert main(["resume", str(out), "train.epochs=3", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "metrics.jsonl: line 3 cut short" in err and "dropped" in err and "lost" not in err
    assert [r["epoch"] for r in rundir.read_metrics(out)] == [1, 2, 3]
    first, *rest = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(first[:-9] + "\n" + "".join(rest))  # epoch 1's row damaged: it cannot come back
    assert main(["resume", str(out), "train.epochs=4", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "line 1 cut short" in err and "the rows of epochs 1 are lost" in err
