"""The default run, end to end, through the same function the CLI calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import trainpipe
from trainpipe.cli import main


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> trainpipe.RunResult:
    out = tmp_path_factory.mktemp("qs") / "run"
    return trainpipe.train(None, ["train.epochs=12", "tracking.plots=false"], output=out, quiet=True)


def test_run_directory_has_every_file_and_key(quickstart_run: trainpipe.RunResult) -> None:
    d = quickstart_run.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "history.jsonl",
                 "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (d / name).is_file(), name
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 12 and cfg["model"]["width"] == 32  # overrides and defaults
    assert "# command:" in (d / "config.yaml").read_text()
    rows = [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 13))
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "epoch_time_s"):
        assert all(key in r for r in rows), key
    s = json.loads((d / "summary.json").read_text())
    for key in ("status", "best_epoch", "epochs_run", "best/val/acc", "test/acc", "test/loss",
                "wall_time_s", "stop_reason", "params", "macs_per_image"):
        assert key in s, key
    assert s["status"] == "completed" and s["stop_reason"] == "max_epochs" and s["epochs_run"] == 12
    assert s["best/val/acc"] == max(r["val/acc"] for r in rows)
    assert rows[s["best_epoch"] - 1]["val/acc"] == s["best/val/acc"]


def test_default_run_reaches_95_percent(quickstart_run: trainpipe.RunResult) -> None:
    assert quickstart_run.summary["test/acc"] >= 0.95


def test_checkpoints_hold_what_resume_needs(quickstart_run: trainpipe.RunResult) -> None:
    last = torch.load(quickstart_run.run_dir / "checkpoints/last.pt", weights_only=True)
    for key in ("model", "optimizer", "schedule", "state", "rng", "config"):
        assert key in last, key
    assert last["state"]["epoch"] == 12
    best = torch.load(quickstart_run.run_dir / "checkpoints/best.pt", weights_only=True)
    assert best["epoch"] == quickstart_run.summary["best_epoch"]


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    ov = ["train.epochs=2", "model.width=8", "tracking.plots=false"]
    a = trainpipe.train(None, ov, output=tmp_path / "a", quiet=True)
    b = trainpipe.train(None, ov, output=tmp_path / "b", quiet=True)
    c = trainpipe.train(None, ov + ["seed=1"], output=tmp_path / "c", quiet=True)
    strip = lambda rows: [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]  # noqa: E731
    assert strip(a.metrics) == strip(b.metrics)
    assert strip(a.metrics) != strip(c.metrics)


def test_cli_train_with_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "exact"
    assert main(["train", "train.epochs=1", "model.width=8", "tracking.plots=false", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test acc" in printed and str(out) in printed
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 1


def test_default_run_dir_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = trainpipe.train({"name": "mine", "train": {"epochs": 1}, "model": {"width": 8},
                         "tracking": {"plots": False}}, quiet=True)
    assert r.run_dir.parent == Path("runs") and r.run_dir.name.startswith("mine-")


def test_one_whole_line_per_epoch_without_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # capsys is not a terminal, like a log file or CI
    trainpipe.train(None, ["train.epochs=2", "model.width=8", "tracking.plots=false"], output=tmp_path / "r")
    lines = capsys.readouterr().out.splitlines()
    epochs = [l for l in lines if l.startswith("epoch ")]
    assert len(epochs) == 2
    assert all("train/loss" in l and "val/acc" in l and l.endswith("img/s") for l in epochs), epochs


def test_default_run_dir_says_config_and_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    monkeypatch.chdir(tmp_path)
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    np.savez(tmp_path / "a.npz", train_x=x, train_y=np.arange(60) % 3)
    common = ["train.epochs=1", "tracking.plots=false", "model.name=mlp"]
    r = trainpipe.train("quickstart", common + ["data.dataset=arrays", f"data.path={tmp_path / 'a.npz'}"], quiet=True)
    assert r.run_dir.name.startswith("quickstart-arrays-")
    assert trainpipe.train("quickstart", common, quiet=True).run_dir.name.startswith("quickstart-digits-")
    assert trainpipe.train("quickstart", common + ["name=mine"], quiet=True).run_dir.name.startswith("mine-")


def test_pyproject_license_is_an_spdx_string() -> None:
    import tomllib

    meta = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "MIT"  # the table form makes setuptools warn on every install
