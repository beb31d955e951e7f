"""W&B-style sweep files: flat parameter names, metric names, ignored keys, labels, all problems at once."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from trainpipe import config as config_mod
from trainpipe.cli import main
from trainpipe.errors import ConfigError
from trainpipe.sweep import check_against_config, open_sweep, parse_spec, trial_overrides
from trainpipe.sweep.names import METRIC_ALIASES, PARAM_ALIASES, make_labels
from trainpipe.sweep.space import choices

# A value each config key accepts, different from the quickstart's own.
VALUE_FOR = {
    "optim.lr": 0.013, "optim.name": "adam", "optim.momentum": 0.8, "optim.nesterov": False,
    "optim.weight_decay": 0.0001, "data.batch_size": 32, "data.dataset": "digits", "data.val_split": 0.2,
    "data.augment": ["hflip"], "train.epochs": 3, "sched.name": "constant", "sched.warmup_epochs": 1.0,
    "sched.warmup_steps": 5, "train.label_smoothing": 0.1, "train.grad_clip": 1.5, "train.precision": "fp32",
    "model.dropout": 0.1, "seed": 3, "model.name": "lenet", "data.mix.mixup_alpha": 0.2,
    "data.mix.cutmix_alpha": 0.3,
}


def resolved(cfg: config_mod.RunConfig, key: str) -> object:
    node = cfg.to_dict()
    for part in key.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("name", sorted(PARAM_ALIASES))
def test_every_flat_name_sets_its_config_key(name: str) -> None:
    key = PARAM_ALIASES[name]
    value = VALUE_FOR[key]  # a KeyError here: a new alias needs a value in VALUE_FOR
    other = 0.0123 if key == "optim.lr" else None
    values = [value] if other is None else [value, other]
    spec = parse_spec({"method": "grid", "metric": {"name": "val_accuracy", "goal": "maximize"},
                       "parameters": {name: {"values": values}}})
    (p,) = spec.varied
    assert (p.key, p.display) == (key, name)
    check_against_config(spec)
    stored = choices(p)[0]
    out = trial_overrides(optuna.trial.FixedTrial({name: stored}), spec)
    cfg = config_mod.load(None, {**spec.constant_overrides(), **out})
    assert resolved(cfg, key) == resolved(config_mod.load(None, {key: value}), key)


@pytest.mark.parametrize("section,key,value", [("optim", "optim.name", "adamw"), ("model", "model.name", "mlp"),
                                               ("sched", "sched.name", "linear"), ("data", "data.dataset", "digits")])
def test_a_section_name_with_plain_names_picks_the_component(section: str, key: str, value: str) -> None:
    spec = parse_spec({"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {section: {"values": [value]}}})
    assert spec.varied[0].key == key
    check_against_config(spec)


def test_dict_values_of_a_flat_name_set_the_whole_section() -> None:
    spec = parse_spec({"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {"optimizer": {"values": [{"name": "adamw", "lr": 0.001},
                                                               {"name": "sgd", "lr": 0.1}]}}})
    (p,) = spec.varied
    assert p.key == "optim" and p.labels == ("adamw(lr=0.001)", "sgd(lr=0.1)")
    out = trial_overrides(optuna.trial.FixedTrial({"optimizer": "sgd(lr=0.1)"}), spec)
    assert config_mod.load(None, out).optim.name == "sgd"


@pytest.mark.parametrize("name", sorted(METRIC_ALIASES))
def test_every_logged_metric_name_maps_to_trainpipes(name: str) -> None:
    data = {"method": "grid", "metric": {"name": name, "goal": "maximize"}, "parameters": {"lr": {"values": [0.1]}}}
    key = METRIC_ALIASES[name]
    if key.startswith("test/"):  # selecting on the test split is refused, whatever its name
        with pytest.raises(ConfigError, match="never on the test set"):
            parse_spec(data)
        return
    spec = parse_spec(data)
    assert (spec.metric, spec.metric_label) == (key, name)
    assert spec.constant_overrides()["train.monitor"] == key


WANDB_FILE = """\
program: train.py
project: digits
entity: someone
description: a sweep written for wandb agent
name: wandb-style
method: grid
metric:
  name: val_accuracy
  goal: maximize
parameters:
  learning_rate:
    values: [0.05, 0.2]
  optimizer:
    value: sgd
  batch_size:
    value: 32
  epochs:
    value: 1
  weight_decay:
    value: 0.0001
fixed: {model.width: 8, tracking.plots: false, data.val_split: 0.2}
command:
  - ${env}
  - python
  - ${program}
  - ${args}
"""


def test_a_wandb_file_runs_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.yaml").write_text(WANDB_FILE)
    assert main(["sweep", "sweep.yaml"]) == 0
    out = capsys.readouterr().out
    assert "ignored: program, project, entity, description, command" in out
    d = tmp_path / "sweeps" / "wandb-style"  # name: names the sweep
    with (d / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["trial", "state", "learning_rate", "best val_accuracy"]  # the user's names
    assert sorted(float(r["learning_rate"]) for r in rows) == [0.05, 0.2]
    for r in rows:  # each trial ran with the value sampled for it and the constants
        cfg = config_mod.load(d / "trials" / r["trial"] / "config.yaml")
        assert cfg.optim.lr == float(r["learning_rate"])
        assert (cfg.optim.name, cfg.data.batch_size, cfg.train.epochs, cfg.optim.weight_decay) == ("sgd", 32, 1, 1e-4)
        assert cfg.train.monitor == "val/acc"
    _, study = open_sweep(d)
    assert sorted(t.params["learning_rate"] for t in study.trials) == [0.05, 0.2]


def test_a_file_that_does_not_fit_gets_every_problem_in_one_message(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""\
        method: grid
        metric: {name: val_f1, goal: maximize}
        parameters:
          learnin_rate: {values: [0.1, 0.2]}
          optimizer: {values: [sgd, adamm]}
          epochs: {min: 5, max: 1}
          batch_size: {values: [32]}
    """))
    assert main(["sweep", "s.yaml"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "4 problems" in err, err
    assert "metric.name 'val_f1'" in err
    assert "learnin_rate" in err and "did you mean optim.lr?" in err  # the full key, not a section
    assert "optimizer = 'adamm'" in err and "adam" in err
    assert "parameters.epochs: min (5) is greater than max (1)" in err
    assert not (tmp_path / "sweeps").exists()


def test_two_names_for_one_key_are_refused() -> None:
    with pytest.raises(ConfigError, match="lr and optim.lr both set optim.lr"):
        parse_spec({"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                    "parameters": {"lr": {"values": [0.1]}, "optim.lr": {"values": [0.2]}}})


# ------------------------------------------------------------------------ labels
def test_labels_are_short_distinct_and_stable() -> None:
    values = [["hflip", {"name": "random_crop", "padding": 4}], [], {"name": "adamw", "lr": 0.001},
              {"mixup_alpha": 0.2}]
    assert make_labels(values) == ("hflip+random_crop(padding=4)", "none", "adamw(lr=0.001)", "mixup_alpha=0.2")
    assert make_labels([[1], ["1"]]) == ("1#1", "1#2")  # read the same: told apart by position
    long = [[{"name": "random_crop", "padding": 4}, {"name": "cutout", "size": 8}, "hflip", "vflip"]]
    (lab,) = make_labels(long)
    assert len(lab) <= 40 and lab == make_labels(long)[0]


def test_the_user_may_name_each_value() -> None:
    spec = parse_spec({"method": "grid", "metric": {"name": "val/acc", "goal": "maximize"},
                       "parameters": {"data.augment": {"values": {"flip": ["hflip"], "plain": []}}}})
    (p,) = spec.varied
    assert p.labels == ("flip", "plain") and p.values == (["hflip"], [])
    assert trial_overrides(optuna.trial.FixedTrial({"data.augment": "plain"}), spec) == {"data.augment": []}
    assert yaml.safe_load(yaml.safe_dump(spec.raw))  # the file as given stays plain YAML
