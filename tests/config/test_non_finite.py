"""inf and nan pass range checks such as lr > 0 but cannot train: every number of a config
must be finite, refused at load (so `check`, `train` and a sweep agree), naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainpipe.cli import main
from trainpipe.config import load
from trainpipe.errors import ConfigError
from trainpipe.sweep.check import check_against_config, load_checked_spec


@pytest.mark.parametrize("override, key", [
    ("optim.lr=inf", "optim.lr"),  # YAML reads `inf` as a string, which pydantic would take as inf
    ("optim.lr=.inf", "optim.lr"),
    ("optim.lr=.nan", "optim.lr"),
    ("train.grad_clip=.inf", "train.grad_clip"),
    ("optim.momentum=-.inf", "optim.momentum"),  # a component's option
    ("sched.name=plateau", None),  # (a valid control: no non-finite number)
    ("data.augment=[{name: RandomErasing, value: .nan}]", "data.augment[0].value"),  # an untyped option
])
def test_non_finite_number_is_refused_naming_the_key(override: str, key: str | None) -> None:
    if key is None:
        load(None, [override])
        return
    with pytest.raises(ConfigError, match="finite") as e:
        load(None, [override])
    assert str(e.value).startswith(f"{key}:")


def test_check_and_train_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "optim.lr=inf"]) == 2
    said = capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["train", "optim.lr=inf", "--output", str(out)]) == 2
    assert capsys.readouterr().err == said and "optim.lr" in said
    assert not out.exists()


def test_non_finite_in_a_config_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  ema: {decay: .nan}\n")
    with pytest.raises(ConfigError, match=r"^train\.ema\.decay: .*finite"):
        load(p)


@pytest.mark.parametrize("param, where", [
    ("{values: [1.0, .inf]}", "parameters.train.grad_clip"),
    ("{min: 0.5, max: .inf}", "parameters.train.grad_clip.max"),
    ("{value: .nan}", "train.grad_clip"),
])
def test_non_finite_in_a_sweep_file(tmp_path: Path, param: str, where: str) -> None:
    p = tmp_path / "sweep.yaml"
    p.write_text(f"method: grid\nmetric: {{name: val/acc, goal: maximize}}\nparameters:\n  train.grad_clip: {param}\n")
    with pytest.raises(ConfigError, match="finite") as e:
        check_against_config(load_checked_spec(p))
    assert where in str(e.value)
