"""Exact resume: a run killed with SIGKILL and resumed ends where an uninterrupted run ends.

The killed runs train in fresh child processes (`kill_kit`, one torch thread like the
test process); the reference run and the resumes run in the test process. Equality is exact: torch.equal on every tensor, == on every metric but timings.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import trainpipe
from kill_kit import die_at_step, die_in_save, signal_at_step, train_and_kill, train_and_signal
from trainpipe.run import checkpoints as ckpt
from trainpipe.cli import main
from trainpipe.errors import ConfigError
from trainpipe.run.resume import resume

STEPS_PER_EPOCH = 19  # digits: 1222 training images in batches of 64
EPOCHS = 6
# Every kind of state a resume must restore: dropout (torch RNG), augmentation (the loader's
# (seed, epoch) streams), EMA, early-stopping counters, momentum, the cosine schedule.
EXACT = ["model.width=8", "model.dropout=0.1", "data.augment=[random_crop]", "train.ema={decay: 0.9}",
         "train.early_stopping={patience: 20}", "train.deterministic=true", "tracking.plots=false",
         "train.device=cpu", f"train.epochs={EPOCHS}"]


def _strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    trainpipe.train(None, EXACT, output=out, quiet=True)
    return out


# One-cycle also cycles SGD's momentum (torch's OneCycleLR default): resume must restore it too.
ONECYCLE = EXACT + ["sched.name=onecycle", "optim.name=sgd", "optim.momentum=0.9"]


@pytest.fixture(scope="module")
def onecycle_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onecycle") / "run"
    trainpipe.train(None, ONECYCLE, output=out, quiet=True)
    return out


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    a = torch.load(reference / "checkpoints/last.pt", weights_only=True)
    b = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert b["state"]["epoch"] == EPOCHS and b["state"]["step"] == a["state"]["step"]
    for part in ("model",):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), k
    for k, v in a["ema"]["module"].items():
        assert torch.equal(v, b["ema"]["module"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert _strip(_rows(run_dir)) == _strip(_rows(reference))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (reference, run_dir))
    assert sb["status"] == "completed" and sb["test/acc"] == sa["test/acc"] and sb["test/loss"] == sa["test/loss"]


def test_killed_from_outside_after_two_epochs(tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"
    train_and_kill(run_dir, EXACT, kill_when=lambda: metrics.is_file() and metrics.read_text().count("\n") >= 2)
    assert len(_rows(run_dir)) < EPOCHS
    resume(run_dir, quiet=True)
    _assert_same_run(run_dir, reference)


def _die_at_step(epoch: int) -> Callable[[], None]:
    return die_at_step((epoch - 1) * STEPS_PER_EPOCH + 7)  # 7 steps into the epoch


@pytest.mark.parametrize("epoch", [1, 4])  # 1: before any epoch's checkpoint, from the epoch-0 state
def test_killed_in_the_middle_of_an_epoch(tmp_path: Path, reference: Path, epoch: int) -> None:
    run_dir = tmp_path / "run"
    train_and_kill(run_dir, EXACT, hook=_die_at_step(epoch))
    assert [r["epoch"] for r in _rows(run_dir)] == list(range(1, epoch))
    resume(run_dir, quiet=True)
    _assert_same_run(run_dir, reference)


def test_onecycle_momentum_resumes_exactly(tmp_path: Path, onecycle_reference: Path) -> None:
    run_dir = tmp_path / "run"
    train_and_kill(run_dir, ONECYCLE, hook=_die_at_step(4))
    resume(run_dir, quiet=True)
    _assert_same_run(run_dir, onecycle_reference)
    # The momentum was cycled: torch's OneCycleLR leaves max_momentum (0.95) at the last step.
    groups = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert groups and all(g["momentum"] == pytest.approx(0.95) for g in groups)


def test_killed_while_writing_a_checkpoint(tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "run"
    # The fifth save: epoch 0's last.pt, then best.pt and last.pt of epochs 1 and 2.
    train_and_kill(run_dir, EXACT, hook=die_in_save(5))
    d = run_dir / "checkpoints"
    assert list(d.glob(".*.tmp")), "the kill should have left a half-written temporary file"
    assert ckpt.load(d / "last.pt")["state"]["epoch"] == 1  # the old file, whole
    resume(run_dir, quiet=True)
    assert not list(d.glob(".*.tmp"))
    _assert_same_run(run_dir, reference)


def test_truncated_last_checkpoint_falls_back_to_the_previous(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ["model.width=8", "tracking.plots=false", "train.device=cpu"]
    trainpipe.train(None, tiny + ["train.epochs=3"], output=tmp_path, quiet=True)
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:5000])
    with pytest.raises(ConfigError, match="last.pt.*corrupt or truncated"):
        ckpt.load(last)
    r = resume(tmp_path, ["train.epochs=4"], quiet=True)
    err = capsys.readouterr().err
    assert "last.pt" in err and "corrupt or truncated" in err
    assert r.status == "completed" and [row["epoch"] for row in _rows(tmp_path)] == [1, 2, 3, 4]
    event = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()][-1]
    assert event["checkpoint"] == "previous.pt" and event["from_epoch"] == 2

    for name in ("last.pt", "previous.pt"):
        p = tmp_path / "checkpoints" / name
        p.write_bytes(p.read_bytes()[:100])
    assert main(["resume", str(tmp_path), "train.epochs=5"]) == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "previous.pt" in err


def test_extending_a_finished_run_continues_the_schedule_on_the_new_horizon(tmp_path: Path) -> None:
    tiny = ["model.width=8", "tracking.plots=false", "train.device=cpu"]
    fresh = trainpipe.train(None, tiny + ["train.epochs=5"], output=tmp_path / "fresh", quiet=True)
    run = tmp_path / "run"
    trainpipe.train(None, tiny + ["train.epochs=3"], output=run, quiet=True)
    assert main(["resume", str(run), "train.epochs=5", "optim.lr=0.025", "--quiet"]) == 0

    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    # lr(t) of a 5-epoch cosine, from the resume-time base lr (half the original)
    for row, ref in zip(rows[3:], fresh.metrics[3:]):
        assert row["lr"] == pytest.approx(ref["lr"] / 2)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 5 and cfg["optim"]["lr"] == 0.025
    assert "trainpipe resume" in (run / "config.yaml").read_text()
    event = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()][-1]
    assert event["event"] == "resume" and event["overrides"] == ["train.epochs=5", "optim.lr=0.025"]
    assert event["previous_config"]["train"]["epochs"] == 3 and event["from_epoch"] == 3
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["epochs_run"] == 5


def test_resuming_a_finished_run_without_overrides_does_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ["model.width=8", "tracking.plots=false", "train.device=cpu", "train.epochs=1"]
    trainpipe.train(None, tiny, output=tmp_path, quiet=True)
    before = (tmp_path / "metrics.jsonl").read_text()
    assert main(["resume", str(tmp_path)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_resume_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resume", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    tiny = ["model.width=8", "tracking.plots=false", "train.device=cpu", "train.epochs=1"]
    trainpipe.train(None, tiny, output=tmp_path / "run", quiet=True)
    with pytest.raises(ConfigError, match=r"last.pt.*does not fit.*model"):
        resume(tmp_path / "run", ["model.width=16", "train.epochs=2"], quiet=True)


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path: Path) -> None:
    tiny = ["model.width=8", "tracking.plots=false", "train.device=cpu", "train.epochs=1"]
    cfg = trainpipe.load_config(None, tiny)
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    r = resume(tmp_path, quiet=True)
    assert r.status == "completed" and (tmp_path / "checkpoints" / "last.pt").is_file()


def _signalled_then_resumed(run_dir: Path, overrides: list[str], step: int, signum: int) -> dict[str, Any]:
    assert train_and_signal(run_dir, overrides, signal_at_step(step, signum)) == 128 + signum
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stop_reason"] == signal.Signals(signum).name.lower()
    last = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert last["state"]["step"] == step and last["state"]["batch"] == step % STEPS_PER_EPOCH
    resume(run_dir, quiet=True)
    return summary


def test_a_signal_mid_epoch_saves_there_and_resume_continues_bit_identically(tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "run"
    step = 3 * STEPS_PER_EPOCH + 7  # in epoch 4
    summary = _signalled_then_resumed(run_dir, EXACT, step, signal.SIGUSR1)
    assert summary["stopped_at"] == {"epoch": 4, "batch": 7, "step": step}
    _assert_same_run(run_dir, reference)


# The stream loader (per-sample seeds) and MixUp/CutMix (the mixing stream) continue mid-epoch too.
STREAM_MIX = ["model.width=8", "data.loader=stream", "data.num_workers=1", "data.augment=[random_crop]",
              "data.mix={mixup_alpha: 0.8, cutmix_alpha: 1.0, switch_prob: 0.5}", "train.deterministic=true",
              "tracking.plots=false", "train.device=cpu", "train.epochs=2"]


def test_a_sigterm_mid_epoch_resumes_exactly_with_the_stream_loader_and_mixing(tmp_path: Path) -> None:
    reference = trainpipe.train(None, STREAM_MIX, output=tmp_path / "reference", quiet=True)
    run_dir = tmp_path / "run"
    _signalled_then_resumed(run_dir, STREAM_MIX, STEPS_PER_EPOCH + 5, signal.SIGTERM)
    a = torch.load(reference.run_dir / "checkpoints/last.pt", weights_only=True)
    b = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert _strip(_rows(run_dir)) == _strip(_rows(reference.run_dir))
