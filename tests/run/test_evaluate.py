"""`trainpipe eval`: metrics, per-class accuracy, confusion matrix image and JSON next to the run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import trainpipe
from trainpipe.cli import main
from trainpipe.errors import ConfigError
from trainpipe.run.evaluate import evaluate_checkpoint

TINY = ["model.width=8", "tracking.plots=false", "train.device=cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> trainpipe.RunResult:
    out = tmp_path_factory.mktemp("eval") / "run"
    return trainpipe.train(None, TINY + ["train.epochs=3", "train.ema={decay: 0.9}"], output=out, quiet=True)


def test_eval_of_a_run_directory(run: trainpipe.RunResult, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(run.run_dir)]) == 0
    printed = capsys.readouterr().out
    assert "test/acc" in printed and "test/top5" in printed and "per-class accuracy" in printed
    data = json.loads((run.run_dir / "eval-best-test.json").read_text())
    # best.pt on the test split: the same numbers the run's summary reports
    assert data["metrics"]["test/acc"] == pytest.approx(run.summary["test/acc"], abs=1e-6)
    assert data["metrics"]["test/loss"] == pytest.approx(run.summary["test/loss"], rel=1e-5)
    cm = np.array(data["confusion"])
    assert cm.shape == (10, 10) and cm.sum() == data["samples"] == run.summary["test_size"]
    assert np.trace(cm) / cm.sum() == pytest.approx(data["metrics"]["test/acc"], abs=1e-6)
    per_class = np.array([data["per_class_accuracy"][c] for c in data["classes"]])
    np.testing.assert_allclose(per_class, np.diag(cm) / cm.sum(axis=1))
    with Image.open(run.run_dir / "confusion-best-test.png") as im:
        im.verify()


def test_eval_val_split_with_tta_and_a_checkpoint_path(run: trainpipe.RunResult) -> None:
    last = run.run_dir / "checkpoints" / "last.pt"
    r = evaluate_checkpoint(last, split="val", tta=True)
    assert r.json_path == run.run_dir / "eval-last-val-tta.json" and r.image_path.is_file()
    assert r.metrics.keys() == {"val/loss", "val/acc", "val/top5"}
    # a full checkpoint is evaluated with its EMA weights, as the run evaluated them
    plain = evaluate_checkpoint(last, split="val")
    assert plain.metrics["val/acc"] == pytest.approx(run.metrics[-1]["val/acc"], abs=1e-6)
    assert plain.metrics["val/loss"] == pytest.approx(run.metrics[-1]["val/loss"], rel=1e-5)
    assert r.metrics["val/loss"] != pytest.approx(plain.metrics["val/loss"], rel=1e-4)  # TTA changed the logits


def test_eval_of_last_keeps_the_evaluation_of_best(run: trainpipe.RunResult) -> None:
    best = evaluate_checkpoint(run.run_dir, split="test")
    last = evaluate_checkpoint(run.run_dir / "checkpoints" / "last.pt", split="test")
    assert best.json_path != last.json_path and best.image_path != last.image_path
    assert json.loads(best.json_path.read_text())["checkpoint"].endswith("best.pt")
    assert json.loads(last.json_path.read_text())["checkpoint"].endswith("last.pt")


def test_eval_uses_raw_weights_without_ema(tmp_path: Path) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=1"], output=tmp_path, quiet=True)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["ema"] is None
    e = evaluate_checkpoint(tmp_path / "checkpoints" / "last.pt", split="val")
    assert e.metrics["val/acc"] == pytest.approx(r.metrics[-1]["val/acc"], abs=1e-6)


def test_eval_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    trainpipe.train(None, TINY + ["train.epochs=1", "data.val_split=0"], output=tmp_path / "noval", quiet=True)
    with pytest.raises(ConfigError, match="no val split.*--split test"):
        evaluate_checkpoint(tmp_path / "noval", split="val")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["eval", str(tmp_path / "junk.pt")]) == 2
    assert "junk.pt" in capsys.readouterr().err


def test_eval_of_a_gpu_run_on_a_machine_without_one(run: trainpipe.RunResult, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint trained on cuda, evaluated where there is no GPU: refused, saying to pass --device."""
    from trainpipe.run import checkpoints as ckpt

    state = ckpt.load(run.run_dir / "checkpoints" / "best.pt")
    state["config"]["train"]["device"] = "cuda"
    path = tmp_path / "gpu-run.pt"
    ckpt.save_atomic(state, path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"eval: the run trained on train\.device=cuda.*pass --device") as e:
        evaluate_checkpoint(path)
    assert "This machine has cpu" in str(e.value)
    assert evaluate_checkpoint(path, device="cpu").metrics["test/acc"] == pytest.approx(run.summary["test/acc"],
                                                                                        abs=1e-6)
