"""Sweeps that train (digits, 2 epochs, a narrow net): the table, resume, failures, pruning, status."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from trainpipe import config as config_mod
from trainpipe.cli import main
from trainpipe.sweep import open_sweep, run_sweep

from sweep_kit import sweep_file  # noqa: E402




def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def best_val(run_dir: Path) -> float:
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return max(l["val/acc"] for l in lines)


def test_grid_2x2_runs_each_combination_once_and_writes_a_correct_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.2]}, "model.width": {"values": [8, 16]}})
    out = run_sweep(s)
    d = tmp_path / "sweeps" / "s"
    assert out.sweep_dir == Path("sweeps/s") and not out.interrupted
    spec, study = open_sweep(d)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted((t.params["optim.lr"], t.params["model.width"]) for t in trials) == \
        [(0.05, 8), (0.05, 16), (0.2, 8), (0.2, 16)]

    rows = read_csv(d / "results.csv")
    values = [float(r["best val/acc"]) for r in rows]
    assert values == sorted(values, reverse=True) and len(rows) == 4
    for r in rows:
        run_dir = d / "trials" / r["trial"]
        cfg = config_mod.load(run_dir / "config.yaml")
        # The row says what ran: the varied values, the best val/acc and the test accuracy of that run.
        assert (cfg.optim.lr, cfg.model.width) == (float(r["optim.lr"]), int(r["model.width"]))
        assert cfg.train.epochs == 2 and cfg.data.val_split == 0.2
        assert float(r["best val/acc"]) == pytest.approx(best_val(run_dir))
        summary = json.loads((run_dir / "summary.json").read_text())
        # test: best (the default): only the winner is evaluated on the test split, after the sweep.
        if r is rows[0]:
            assert float(r["test/acc"]) == pytest.approx(summary["test/acc"])
            assert summary["test_evaluated"] == "after the sweep (test: best)"
        else:
            assert r["test/acc"] == "" and "test/acc" not in summary
        assert r["state"] == "completed" and r["epochs"] == "2" and r["reason"] == "max_epochs"
    md = (d / "results.md").read_text()
    assert md.count("| completed |") == 4 and "4 of 4 trials finished" in md

    best = yaml.safe_load((d / "best.yaml").read_text())
    top = d / "trials" / rows[0]["trial"]
    assert best == config_mod.load(top / "config.yaml").to_dict()  # complete, ready for `trainpipe train`
    assert config_mod.validate(best).optim.lr == float(rows[0]["optim.lr"])
    assert yaml.safe_load((d / "sweep.yaml").read_text()) == yaml.safe_load(s.read_text())

    # The same command again: nothing re-runs.
    capsys.readouterr()
    assert main(["sweep", str(s)]) == 0
    assert len(study.get_trials()) == 4
    again = read_csv(d / "results.csv")
    assert [(r["trial"], r["best val/acc"]) for r in again] == [(r["trial"], r["best val/acc"]) for r in rows]

    capsys.readouterr()
    assert main(["sweep", str(d), "--status"]) == 0
    status = capsys.readouterr().out
    assert "4 of 4 trials finished (4 completed)" in status
    assert f"best so far: trial {rows[0]['trial']}, val/acc {float(rows[0]['best val/acc']):.4g}" in status
    assert status.count("| completed |") == 4


# A normalisation with three means turns digits' one channel into three: the net's first
# convolution then fails in the first training step (a RuntimeError from torch).
BROKEN = [{"name": "Normalize", "mean": [0.5, 0.5, 0.5], "std": [1.0, 1.0, 1.0]}]


@pytest.mark.parametrize("param,values,reason", [
    ("optim.lr", [1.0e6, 0.2], "non_finite_loss"),  # diverges: NaN loss
    ("data.augment", {"broken": BROKEN, "plain": []}, "RuntimeError"),  # named values: the table shows the names
], ids=["nan", "exception"])
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         param: str, values: list | dict, reason: str) -> None:
    monkeypatch.chdir(tmp_path)
    run_sweep(sweep_file(tmp_path, {param: {"values": values}}))
    d = tmp_path / "sweeps" / "s"
    rows = read_csv(d / "results.csv")
    by_state = {r["state"]: r for r in rows}
    assert set(by_state) == {"completed", "failed"}
    failed = by_state["failed"]
    cell = (lambda v: float(v)) if isinstance(values, list) else str  # noqa: E731
    first, second = values if isinstance(values, list) else list(values)
    assert cell(failed[param]) == first and reason in failed["reason"]
    assert rows[-1] is failed  # failed trials are listed, not ranked
    assert json.loads((d / "trials" / failed["trial"] / "summary.json").read_text())["status"] == "failed"
    assert cell(by_state["completed"][param]) == second  # the trial after the failure ran
    best = yaml.safe_load((d / "best.yaml").read_text())
    assert config_mod.validate(best).model_dump(mode="json") == best


def test_hyperband_prunes_a_clearly_worse_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # One bracket (max_iter / min_iter < eta): the second trial is compared with the first after epoch 1.
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.2, 1.0e-6]}},
                   early_terminate={"type": "hyperband", "min_iter": 1, "max_iter": 2, "eta": 3})
    run_sweep(s)
    spec, study = open_sweep(tmp_path / "sweeps" / "s")
    good, tiny = sorted(study.get_trials(), key=lambda t: -t.params["optim.lr"])
    assert good.state == TrialState.COMPLETE and tiny.state == TrialState.PRUNED
    assert sorted(good.intermediate_values) == [1, 2] and sorted(tiny.intermediate_values) == [1]
    summary = json.loads((Path(tiny.user_attrs["run_dir"]) / "summary.json").read_text())
    assert (summary["status"], summary["stop_reason"], summary["epochs_run"]) == ("pruned", "pruned", 1)
    rows = read_csv(tmp_path / "sweeps" / "s" / "results.csv")
    assert [r["state"] for r in rows] == ["completed", "pruned"]
    assert "pruned after epoch 1" in rows[1]["reason"]


def test_random_sweep_stops_at_run_cap_and_resumes_with_more_trials(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.3}},
                   method="random", run_cap=2)
    run_sweep(s)
    _, study = open_sweep(tmp_path / "sweeps" / "s")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    run_sweep(s, trials=3)  # --trials raises the total; the two finished trials stay
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3 and all(0.01 <= t.params["optim.lr"] <= 0.3 for t in trials)
    assert len(read_csv(tmp_path / "sweeps" / "s" / "results.csv")) == 3


def test_a_changed_sweep_file_does_not_mix_into_an_existing_sweep(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.2]}})
    run_sweep(s)
    sweep_file(tmp_path, {"optim.lr": {"values": [0.1]}})  # (adding a value would extend the sweep)
    assert main(["sweep", str(s)]) == 2
    assert "different sweep file" in capsys.readouterr().err
    _, study = open_sweep(tmp_path / "sweeps" / "s")
    assert len(study.get_trials()) == 1


def test_overrides_apply_to_every_trial_in_a_directory_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.2]}})
    assert main(["sweep", str(s), "train.epochs=1", "data.fraction=0.5"]) == 0
    d = tmp_path / "sweeps" / "s-train.epochs=1-data.fraction=0.5"  # never mixed into the real sweep's
    rows = read_csv(d / "results.csv")
    assert len(rows) == 2
    for r in rows:
        cfg = config_mod.load(d / "trials" / r["trial"] / "config.yaml")
        assert (cfg.train.epochs, cfg.data.fraction, cfg.optim.lr) == (1, 0.5, float(r["optim.lr"]))
        assert r["epochs"] == "1"
    assert main(["sweep", str(d)]) == 0  # resuming from the directory keeps its overrides: nothing re-runs
    _, study = open_sweep(d)
    assert len(study.trials) == 2
    capsys.readouterr()
    assert main(["sweep", str(d), "train.epochs=3"]) == 2  # other overrides: another sweep
    assert "was started with the overrides train.epochs=1 data.fraction=0.5" in capsys.readouterr().err
    assert main(["sweep", str(s), "optim.lr=0.1"]) == 2  # a varied parameter cannot be overridden
    assert "optim.lr is a parameter the sweep varies" in " ".join(capsys.readouterr().err.split())
    assert main(["sweep", str(s), "train.epoch=1"]) == 2
    assert "did you mean train.epochs" in capsys.readouterr().err
    assert not (tmp_path / "sweeps" / "s").exists()


def test_dry_run_lists_the_trials_and_estimates_the_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    s = sweep_file(tmp_path, {"optim.lr": {"values": [0.05, 0.2]}, "model.width": {"values": [4, 8]}})
    assert main(["sweep", str(s), "train.epochs=1", "--dry-run", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "grid search" in out and "4 trials" in out and "2 workers" in out
    assert "train.epochs=1" in out.splitlines()[1]  # what every trial sets, the override included
    for i, (lr, w) in enumerate([(0.05, 4), (0.05, 8), (0.2, 4), (0.2, 8)]):
        assert f"trial {i:04d}: optim.lr={lr} model.width={w}" in out
    assert "x 1 epochs" in out  # timed with the override applied
    per_trial, total = re.search(r"estimate: ~([\d.]+ m?s) per trial, ~([\d.]+ m?s) for 4 trials on 2 workers",
                                 out).groups()
    seconds = {"ms": 1e-3, "s": 1.0}
    to_s = lambda t: float(t.split()[0]) * seconds[t.split()[1]]  # noqa: E731
    assert to_s(total) >= 2 * to_s(per_trial) * 0.9  # 4 trials, 2 at a time
    assert not (tmp_path / "sweeps").exists()  # nothing written
    random = sweep_file(tmp_path, {"optim.lr": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.3}},
                        method="random")
    assert main(["sweep", str(random), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "RandomSampler" in out and "until stopped" in out and "per trial" in out
