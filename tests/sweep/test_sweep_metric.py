"""A sweep metric that no trial logs is refused before the first trial starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trainpipe.cli import main


def test_a_metric_no_trial_logs_exits_2_before_any_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "method": "grid", "metric": {"name": "val/acz", "goal": "maximize"},
        "parameters": {"optim.lr": {"values": [0.1, 0.2]}},
        "fixed": {"train.epochs": 1, "model.width": 8, "tracking.plots": False}}))
    assert main(["sweep", "s.yaml"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "val/acz" in err and "not logged by any trial" in err and "did you mean val/acc?" in err
    assert not (tmp_path / "sweeps").exists()  # no sweep directory, no trial
