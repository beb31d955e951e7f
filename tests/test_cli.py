from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainpipe.cli import main


def test_check_prints_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "optim.lr=0.125"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["optim"]["lr"] == 0.125
    assert out["optim"]["nesterov"] is True  # a default of sgd, filled in
    assert out["data"]["dataset"] == "digits"


def test_check_bad_key_exits_2_with_one_paragraph(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr: unknown key" in err and "did you mean optim.lr?" in err
    assert "Traceback" not in err


def test_list_shows_every_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("quickstart", "digits", "cnn_small", "sgd", "cosine"):
        assert word in out


def test_list_one_family_and_unknown_family(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "cnn_small" in out and "dataset (config key" not in out
    assert main(["list", "modles"]) == 2
    assert "did you mean model?" in capsys.readouterr().err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path / "missing.yaml"), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "missing.yaml" in err and "does not exist" in err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_console_script_exit_codes(tmp_path: Path) -> None:
    """The installed entry point: bad input is exit 2 on stderr, no traceback."""
    r = subprocess.run([sys.executable, "-m", "trainpipe", "train", "train.epochs=-1"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "train.epochs" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "trainpipe", "--debug", "check", "train.epochs=-1"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_crash_inside_training_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from trainpipe.loop import trainer as engine

    def boom(self, epoch):  # noqa: ANN001
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(engine.Trainer, "train_epoch", boom)
    out = tmp_path / "run"
    assert main(["train", "train.epochs=1", "--output", str(out), "--quiet"]) == 1
    assert "disk on fire" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["stop_reason"] == "error"
    assert (out / "config.yaml").is_file()  # written first, kept


def test_options_and_overrides_mix_in_any_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    # the order people type: config, an option, an override, --quiet last
    assert main(["train", "quickstart", "--output", str(out), "train.epochs=1", "model.width=8",
                 "tracking.plots=false", "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # --quiet after the overrides was honoured
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 1
    assert main(["--quiet", "check", "optim.lr=0.5", "--debug"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 0.5


def test_debug_after_the_command_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "train.epochs=-1", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_an_override_without_a_value_says_key_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "train.epochs"]) == 2
    err = capsys.readouterr().err
    assert "override needs key=value" in err and "train.epochs=VALUE" in err and "does not exist" not in err


def test_a_wrong_option_prints_the_commands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "train.epochs=1", "--outptu", "x"])
    assert e.value.code == 2
    assert "usage: trainpipe train" in capsys.readouterr().err


HEAVY = ("torchvision", "timm", "optuna", "matplotlib", "tensorboard", "wandb", "sklearn")


def _modules_after(args: list[str]) -> set[str]:
    """The heavy libraries a fresh `trainpipe ARGS` process has imported when it exits."""
    code = ("import sys\nfrom trainpipe.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print('imported:', *(m for m in {HEAVY + ('torch',)!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    line = [l for l in r.stdout.splitlines() if l.startswith("imported:")][-1]
    return set(line.split()[1:])


def test_help_and_argument_errors_do_not_import_torch() -> None:
    assert _modules_after(["--help"]) == set()
    assert _modules_after(["train", "--outptu", "x"]) == set()


@pytest.mark.parametrize("args", [["check", "quickstart"], ["list"]])
def test_check_and_list_import_no_heavy_library(args: list[str]) -> None:
    assert not _modules_after(args) & set(HEAVY)


@pytest.mark.parametrize("output", ["", "  "])
@pytest.mark.parametrize("command", [["train", "train.epochs=1"], ["lr-find"], ["sweep", "lr.yaml"], ["report", "runs/x"]])
def test_empty_output_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                 command: list[str], output: str) -> None:
    """An empty --output would name the current directory: refused before anything is written there."""
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--output", output]) == 2
    assert "--output" in (err := capsys.readouterr().err) and "names no directory" in err
    assert list(tmp_path.iterdir()) == []


def test_empty_output_is_refused_by_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainpipe.errors import ConfigError
    from trainpipe.run.train import train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="names no directory"):
        train(None, ["train.epochs=1"], output="")
    assert list(tmp_path.iterdir()) == []
