"""Extend a sweep instead of starting over: new values keep the finished trials, other changes are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainpipe.errors import ConfigError
from trainpipe.sweep import confirm as cf
from trainpipe.sweep import open_sweep, run_sweep
from trainpipe.sweep import study as st

from sweep_kit import ONE_EPOCH, read_csv, sweep_file  # noqa: E402


def _rewrite(path: Path, **changes: object) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _points(d: Path) -> dict[str, tuple]:
    _, study = open_sweep(d)
    return {f"{t.number:04d}": (t.params["optim.lr"], t.params["model.width"])
            for t in st.ledger(study.get_trials()).visible}


def test_adding_a_grid_value_runs_only_the_new_points(tmp_path: Path) -> None:
    from trainpipe.report import report

    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.1, 0.02]}, "model.width": {"values": [4, 8]}},
                   fixed={k: v for k, v in ONE_EPOCH.items() if k != "model.width"}, test="none")
    d = tmp_path / "sw"
    run_sweep(s, d)
    first = _points(d)
    assert sorted(first.values()) == [(0.02, 4), (0.02, 8), (0.1, 4), (0.1, 8)]
    stamps = {n: (d / "trials" / n / "summary.json").stat().st_mtime_ns for n in first}

    # A value added in the middle of the first parameter: the grid's order changes, the finished trials stay.
    _rewrite(s, parameters={"optim.lr": {"values": [0.1, 0.05, 0.02]}, "model.width": {"values": [4, 8]}})
    out = run_sweep(s, d)
    now = _points(d)
    assert {n: p for n, p in now.items() if n in first} == first
    assert {n: p for n, p in now.items() if n not in first} == {"0004": (0.05, 4), "0005": (0.05, 8)}
    assert all(r.state == "completed" for r in out.rows) and len(out.rows) == 6
    assert {n: (d / "trials" / n / "summary.json").stat().st_mtime_ns for n in first} == stamps  # not rerun
    assert sorted(p.name for p in (d / "trials").iterdir()) == sorted(now)
    assert len(read_csv(d / "results.csv")) == 6
    md = (d / "results.md").read_text()
    assert "## Extensions of the sweep" in md and "parameters.optim.lr: added 0.05; 4 finished trials kept" in md
    history = json.loads((d / "extensions.json").read_text())
    assert len(history) == 1 and history[0]["kept"] == 4 and history[0]["queued"] == 2
    rep = report([d], evaluate=False).read_text()
    assert all(f"| {n} |" in rep for n in now)

    # Extended again, with a confirm: block: the new width runs, then the best configuration is confirmed;
    # resuming once more runs nothing.
    _rewrite(s, confirm={"top": 1, "seeds": 2},
             parameters={"optim.lr": {"values": [0.1, 0.05, 0.02]}, "model.width": {"values": [4, 8, 6]}})
    out = run_sweep(s, d)
    _, study = open_sweep(d)
    assert study.study_name == "s.extended-2"
    visible = st.ledger(study.get_trials()).visible
    assert {f"{t.number:04d}": (t.params["optim.lr"], t.params["model.width"]) for t in visible
            if t.number < 6} == now
    screened = sorted((t.params["optim.lr"], t.params["model.width"]) for t in visible if not cf.is_confirmation(t))
    assert screened == sorted((lr, w) for lr in (0.1, 0.05, 0.02) for w in (4, 8, 6))
    assert len([t for t in visible if cf.is_confirmation(t)]) == 1 and len(out.rows) == 10
    assert len(json.loads((d / "extensions.json").read_text())) == 2
    assert len(run_sweep(d).rows) == 10


def test_a_change_that_invalidates_finished_trials_is_refused_naming_the_key(tmp_path: Path) -> None:
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.1, 0.02]}}, fixed=ONE_EPOCH, test="none")
    d = tmp_path / "sw"
    run_sweep(s, d)
    meta = (d / "study.json").read_text()
    original = s.read_text()

    _rewrite(s, fixed={**ONE_EPOCH, "train.epochs": 2})
    with pytest.raises(ConfigError) as e:
        run_sweep(s, d)
    assert "fixed.train.epochs is 2, was 1 (the finished trials ran with the old value)" in str(e.value)

    s.write_text(original)
    _rewrite(s, parameters={"optim.lr": {"values": [0.1, 0.5]}}, method="random")
    r = subprocess.run([sys.executable, "-m", "trainpipe", "sweep", str(s), "--output", str(d)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    err = " ".join(r.stderr.split())
    assert "method is random, was grid" in err and "parameters.optim.lr drops 0.02" in err
    # Nothing was written: the sweep is as it was, and resuming it with the original file runs nothing.
    assert (d / "study.json").read_text() == meta and not (d / "extensions.json").exists()
    s.write_text(original)
    assert len(run_sweep(s, d).rows) == 2

    # A seed parameter whose values hold the seed the finished trials ran with (the base config's, 0) extends it.
    _rewrite(s, parameters={"optim.lr": {"values": [0.1, 0.02]}, "seed": {"values": [0, 1]}})
    out = run_sweep(s, d)
    _, study = open_sweep(d)
    visible = st.ledger(study.get_trials()).visible
    assert sorted((t.number, t.params["optim.lr"], t.params["seed"]) for t in visible) == \
        [(0, 0.1, 0), (1, 0.02, 0), (2, 0.1, 1), (3, 0.02, 1)]
    assert len(out.rows) == 4 and "parameters.seed is new; the finished trials ran with 0, one of its values" in \
        (d / "results.md").read_text()


def test_the_dry_run_says_whether_a_changed_file_extends_the_sweep(tmp_path: Path) -> None:
    from trainpipe.sweep.run import dry_run

    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.1]}}, fixed=ONE_EPOCH, test="none")
    d = tmp_path / "sw"
    run_sweep(s, d)
    _rewrite(s, parameters={"optim.lr": {"values": [0.1, 0.02]}})
    lines = dry_run(s, d, timed=False)
    assert "extends the sweep: parameters.optim.lr: added 0.02 (the finished trials are kept)" in lines
    _rewrite(s, fixed={**ONE_EPOCH, "train.epochs": 3})
    assert any(line.startswith("refused: ") and "fixed.train.epochs is 3, was 1" in line
               for line in dry_run(s, d, timed=False))
    assert not (d / "extensions.json").exists()  # a dry run writes nothing
