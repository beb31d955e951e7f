"""A sweep whose local optuna.db is lost or damaged rebuilds its study from the trial directories:
finished trials are not run again, their files and the results stay byte-identical, and a
database that no longer knows some trials never replaces the results with a worse table."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sweep_kit import TINY, sweep_file  # noqa: E402
from trainpipe.cli import main


QUICK = {**TINY, "train.epochs": 1, "data.fraction": 0.3}  # a trial in about a second

def snapshot(root: Path) -> dict[str, bytes]:
    """The sweep's results and trials (not its database, nor results.md's time stamp)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(("optuna.db", "results.md"))}


@pytest.mark.parametrize("damage", ["missing", "truncated", "empty"])
def test_a_lost_or_damaged_database_is_rebuilt_from_the_trials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.1, 0.2]}, "model.width": {"values": [8]}},
                   fixed=QUICK)
    d = tmp_path / "sweeps" / "s"
    assert main(["sweep", str(s), "--trials", "2"]) == 0
    before = snapshot(d)
    db = d / "optuna.db"
    if damage == "missing":
        db.unlink()
    else:
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 2 if damage == "truncated" else 0)
    capsys.readouterr()
    if damage == "truncated":
        assert main(["sweep", "sweeps/s", "--status"]) == 2
        err = capsys.readouterr().err
        assert "the sweep's local Optuna database, is damaged" in err and f"trainpipe sweep {d.resolve()}" in err
        assert "server" not in err and "rebuild the study" in err
    assert main(["sweep", "sweeps/s", "--trials", "2"]) == 0  # nothing left to run
    out = capsys.readouterr().out
    assert "rebuilt the study from 2 trial directories" in out
    assert snapshot(d) == before  # trials, results.csv, best.yaml: byte-identical
    assert len(list(d.glob("optuna.db.damaged-*"))) == (damage != "missing")  # kept, never deleted
    assert main(["sweep", "sweeps/s"]) == 0  # the third point runs, under the next number
    assert (d / "trials" / "0002").is_dir() and not (d / "trials" / "0003").exists()
    assert "3 of 3 trials finished (3 completed)" in (d / "results.md").read_text()
    for name in ("0000", "0001"):
        assert {k: v for k, v in snapshot(d).items() if k.startswith(f"trials/{name}/")} == \
            {k: v for k, v in before.items() if k.startswith(f"trials/{name}/")}


def test_an_older_database_is_refused_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.1, 0.2]}}, fixed=QUICK)
    d = tmp_path / "sweeps" / "s"
    assert main(["sweep", str(s), "--trials", "1"]) == 0
    shutil.copy(d / "optuna.db", tmp_path / "old.db")
    assert main(["sweep", "sweeps/s", "--trials", "2"]) == 0
    shutil.copy(tmp_path / "old.db", d / "optuna.db")  # a backup from before trial 0001
    before = {**snapshot(d), "results.md": (d / "results.md").read_bytes()}
    capsys.readouterr()
    assert main(["sweep", "sweeps/s"]) == 2
    err = capsys.readouterr().err
    assert "does not know trials 0001" in err and "mv " in err and "Nothing was run or written" in err
    assert {**snapshot(d), "results.md": (d / "results.md").read_bytes()} == before
