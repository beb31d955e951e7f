"""Sweep files: the W&B schema, the trial -> overrides mapping, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml

from trainpipe import config as config_mod
from trainpipe.cli import main
from trainpipe.errors import ConfigError
from trainpipe.sweep import check_against_config, load_spec, parse_spec, trial_overrides

TINY = {"train.epochs": 2, "model.width": 8, "tracking.plots": False, "data.val_split": 0.2}


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_wandb_file_with_nested_blocks_and_numbers_as_strings() -> None:
    # PyYAML reads 1e-4 (no dot) as a string: W&B files are full of those.
    text = """
program: train.py
method: bayes
metric: {name: val/acc, goal: maximize}
run_cap: 6
parameters:
  optim:
    parameters:
      lr: {distribution: log_uniform_values, min: 1e-4, max: 1e-1}
  model.width: {values: [8, 16]}
  train.epochs: {value: 2}
command: [python, train.py]
"""
    spec = parse_spec(yaml.safe_load(text))
    assert [p.key for p in spec.params] == ["optim.lr", "model.width", "train.epochs"]
    lr = spec.params[0]
    assert (lr.distribution, lr.low, lr.high) == ("log_uniform_values", 1e-4, 1e-1)
    assert [p.key for p in spec.varied] == ["optim.lr", "model.width"]
    assert spec.constant_overrides()["train.epochs"] == 2
    assert spec.constant_overrides()["train.monitor"] == "val/acc"
    assert spec.planned_trials() == 6


def test_distribution_inference_follows_wandb() -> None:
    spec = parse_spec({"method": "random", "metric": {"name": "val/loss"},
                       "parameters": {"a.x": {"min": 1, "max": 4}, "a.y": {"min": 0.1, "max": 0.5},
                                      "a.z": {"values": [1, 2]}, "a.w": {"value": 3}}})
    assert [p.distribution for p in spec.params] == ["int_uniform", "uniform", "categorical", "constant"]
    assert spec.goal == "minimize"  # W&B's default, fine for a loss


def test_trial_to_overrides_with_fixed_trial() -> None:
    spec = parse_spec({
        "method": "random", "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": {
            "optim": {"values": [{"name": "sgd", "lr": 0.1}, {"name": "adamw", "lr": 0.001}]},
            "optim.weight_decay": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-2},
            "model.width": {"values": [8, 16]},
            "train.epochs": {"distribution": "int_uniform", "min": 1, "max": 5},
            "data.batch_size": {"distribution": "q_uniform", "min": 16, "max": 128, "q": 16},
            "train.label_smoothing": {"distribution": "normal", "mu": 0.1, "sigma": 0.02},
            "train.grad_clip": {"distribution": "log_uniform", "min": -2, "max": 1},
        }})
    fixed = optuna.trial.FixedTrial({
        "optim": "adamw(lr=0.001)", "optim.weight_decay": 3e-4, "model.width": 16, "train.epochs": 3,
        "data.batch_size": 70.0, "train.label_smoothing": 0.975, "train.grad_clip": math.exp(0.5)})
    out = trial_overrides(fixed, spec)
    assert out["optim"] == {"name": "adamw", "lr": 0.001}  # lists/dicts are chosen by their label
    assert out["optim.weight_decay"] == 3e-4
    assert out["model.width"] == 16 and out["train.epochs"] == 3
    assert out["data.batch_size"] == 64 and isinstance(out["data.batch_size"], int)  # round(70/16)*16
    assert out["train.label_smoothing"] == pytest.approx(0.1 + 0.02 * 1.959964, rel=1e-5)  # quantile 0.975
    assert out["train.grad_clip"] == pytest.approx(math.exp(0.5))
    cfg = config_mod.load(None, {**spec.constant_overrides(), **out})
    assert (cfg.optim.name, cfg.optim.lr, cfg.data.batch_size) == ("adamw", 0.001, 64)


def test_grid_runs_in_file_order_and_covers_every_combination() -> None:
    spec = parse_spec({"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {"optim.lr": {"values": [0.1, 0.2]}, "model.width": {"values": [8, 16, 32]},
                                      "data.batch_size": {"distribution": "int_uniform", "min": 30, "max": 31}}})
    search = spec.search()
    assert len(search.points) == 12 and spec.planned_trials() == 12
    study = optuna.create_study(sampler=search.sampler())
    seen = []
    study.optimize(lambda t: seen.append(trial_overrides(t, spec)) or 0.0, n_trials=20)
    assert seen == search.points  # trial NNNN is the NNNN-th combination, last parameter fastest
    assert seen[:3] == [{"optim.lr": 0.1, "model.width": 8, "data.batch_size": b} for b in (30, 31)] + \
        [{"optim.lr": 0.1, "model.width": 16, "data.batch_size": 30}]


def test_base_is_relative_to_the_sweep_file_and_is_fingerprinted(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    base = write(tmp_path / "cfg" / "base.yaml", {"train": {"epochs": 3}, "model": {"name": "cnn_small"}})
    sweep = write(tmp_path / "cfg" / "s.yaml", {"method": "grid", "base": "base.yaml",
                                                "metric": {"name": "val/acc", "goal": "maximize"},
                                                "parameters": {"optim.lr": {"values": [0.1]}}})
    spec = load_spec(sweep)
    assert Path(spec.base) == base.resolve()
    assert check_against_config(spec).train.epochs == 3
    fp = spec.fingerprint()
    write(base, {"train": {"epochs": 4}})
    assert load_spec(sweep).fingerprint() != fp  # a changed base is another search


BAD = [
    ({"method": "hyperopt"}, "method", "bayes, grid, random"),
    ({"parameters": {"optim.lr": {"distribution": "log_uniformm", "min": 0.1, "max": 1}}}, "log_uniform", "Valid"),
    ({"parameters": {"model.widht": {"values": [8, 16]}}}, "model.widht", "model.width"),
    ({"parameters": {"learnin_rate": {"values": [0.1, 0.2]}}}, "learnin_rate", "optim.lr"),
    ({"parameters": {"optim.lr": {"min": 0.5, "max": 0.1}}}, "optim.lr", "greater than max"),
    ({"parameters": {"optim.lr": {"values": []}}}, "optim.lr", "non-empty"),
    ({"parameters": {"optim.lr": {"values": [0.1, -1.0]}}}, "optim.lr", "greater than 0"),
    ({"parameters": {"optim.lr": {"distribution": "uniform", "min": 0.1, "max": 0.2}}}, "optim.lr", "grid"),
    ({"metric": {"name": "val_acuracy", "goal": "maximize"}}, "val_acuracy", "val/acc"),
    ({"metric": {"name": "test_accuracy", "goal": "maximize"}}, "test_accuracy", "val/acc"),
    ({"test": "some"}, "test", "best"),
    ({"metric": {"name": "test/acc", "goal": "maximize"}}, "test/acc", "val/acc"),
    ({"metric": {"name": "val/acc"}}, "goal", "maximize"),
    ({"early_terminate": {"type": "median"}}, "early_terminate", "hyperband"),
    ({"fixed": {"train.epoch": 2}}, "train.epoch", "train.epochs"),
    ({"base": "nowhere.yaml"}, "nowhere.yaml", "not found"),
    ({"base": "bad_base.yaml"}, "train.devise", "base config"),
    ({"paramaters": {}}, "paramaters", "parameters"),
]


@pytest.mark.parametrize("change,names,hint", BAD, ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD)])
def test_bad_sweep_exits_2_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture, change: dict, names: str,
                                               hint: str) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "bad_base.yaml", {"train": {"devise": "cpu"}})
    data = {"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
            "parameters": {"optim.lr": {"values": [0.1, 0.2]}}, "fixed": TINY}
    data.update(change)
    write(tmp_path / "s.yaml", data)
    assert main(["sweep", "s.yaml"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert names in err and hint in err, err
    assert not (tmp_path / "sweeps").exists()  # nothing was created, no trial ran


def test_unknown_key_error_comes_from_the_config_layer() -> None:
    spec = parse_spec({"method": "random", "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {"model.widht": {"min": 8, "max": 32}}})
    with pytest.raises(ConfigError, match=r"parameters\.model\.widht = 8: model\.widht: unknown key.*did you mean model\.width"):
        check_against_config(spec)


def test_bad_cli_arguments_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "s.yaml", {"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                                "parameters": {"optim.lr": {"values": [0.1]}}, "fixed": TINY})
    assert main(["sweep", "s.yaml", "--devices", "gpu0"]) == 2
    assert main(["sweep", "s.yaml", "--workers", "0"]) == 2
    assert main(["sweep", "nothing-here", "--status"]) == 2
    assert main(["sweep", str(tmp_path), "--status"]) == 2  # a directory, but not a sweep's
    assert not (tmp_path / "sweeps").exists()


def test_devices_past_the_gpus_present_are_refused_naming_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from gpu_kit import A100, fake_gpus

    monkeypatch.chdir(tmp_path)
    write(tmp_path / "s.yaml", {"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                                "parameters": {"optim.lr": {"values": [0.1]}},
                                "fixed": {**TINY, "train.epochs": 1, "train.device": "cpu"}})
    fake_gpus(monkeypatch, [A100, A100])
    assert main(["sweep", "s.yaml", "--devices", "0,2"]) == 2
    err = capsys.readouterr().err
    assert "no GPU 2" in err and "0: emulated GPU" in err and "1: emulated GPU" in err and "0 to 1" in err
    fake_gpus(monkeypatch, [])
    assert main(["sweep", "s.yaml", "--devices", "0"]) == 2
    assert "no GPU that torch can use" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()  # refused before anything was written
