"""Built-in callbacks: early stopping, checkpoints (every N, keep K), the NaN guard's three policies."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_kit import InjectNaN, TensorLoader, blobs, make_trainer, mlp

import trainpipe
from trainpipe.loop.callbacks import Callback, EarlyStopping
from trainpipe.cli import main
from trainpipe.errors import ConfigError

TINY = ["model.width=8", "tracking.plots=false", "train.device=cpu"]


class Scripted(Callback):
    """Writes a scripted value as metric `scripted` each epoch and remembers the weights of every epoch."""

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.weights: dict[int, torch.Tensor] = {}

    def on_epoch_end(self, trainer: Any) -> None:
        epoch = trainer.state.epoch
        trainer.state.metrics["scripted"] = self.values[epoch - 1]
        self.weights[epoch] = trainer.eval_model[0].weight.detach().clone()


def test_early_stopping_stops_at_the_expected_epoch_and_restores_the_best_weights() -> None:
    # best 0.70 at epoch 2; 0.69 and 0.705 do not beat it by min_delta 0.01: patience 2 runs out at epoch 4
    script = Scripted([0.5, 0.7, 0.69, 0.705, 0.9, 0.95])
    es = EarlyStopping("scripted", "max", patience=2, min_delta=0.01)
    x, y = blobs(64)
    tr = make_trainer(mlp(), TensorLoader(x, y, 32), overrides=["train.epochs=6"], callbacks=[script, es])
    state = tr.fit()
    assert state.stop_reason == "early_stopping" and state.epoch == 4 and es.best_epoch == 2
    assert torch.equal(tr.model[0].weight, script.weights[2])
    assert not torch.equal(script.weights[2], script.weights[4])


def test_early_stopping_in_min_mode_with_patience_one() -> None:
    script = Scripted([3.0, 2.0, 2.5, 1.0])
    es = EarlyStopping("scripted", "min", patience=1, restore_best=False)
    x, y = blobs(64)
    tr = make_trainer(mlp(), TensorLoader(x, y, 32), overrides=["train.epochs=4"], callbacks=[script, es])
    tr.fit()
    assert tr.state.epoch == 3 and es.best == 2.0
    assert torch.equal(tr.model[0].weight, script.weights[3])  # no restore asked: the last weights stay


def test_early_stopping_on_an_unlogged_metric_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="early_stopping.monitor.*val/acc"):
        trainpipe.train(None, TINY + ["train.early_stopping={monitor: val/accuracy}"], output=tmp_path, quiet=True)


def test_early_stopping_from_the_config_ends_the_run(tmp_path: Path) -> None:
    # train/loss falls every epoch, so in max mode nothing after epoch 1 is an improvement
    r = trainpipe.train(None, TINY + ["train.epochs=6", "train.early_stopping={monitor: train/loss, mode: max, "
                                      "patience: 2}"], output=tmp_path, quiet=True)
    assert r.status == "completed" and r.summary["stop_reason"] == "early_stopping"
    assert r.summary["epochs_run"] == 3 and len(r.metrics) == 3
    last = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    key = "EarlyStopping{monitor=train/loss, mode=max}"
    assert last["callbacks"][key]["bad_epochs"] == 2 and last["state"]["epoch"] == 3
    # the weights left in memory are epoch 1's, kept by the callback
    best = last["callbacks"][key]["best_weights"]
    for k, v in r.model.state_dict().items():
        assert torch.equal(v, best[k])


def test_checkpoint_every_n_and_keep_k(tmp_path: Path) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=5", "train.checkpoint={every: 2, keep: 2}"],
                        output=tmp_path, quiet=True)
    d = tmp_path / "checkpoints"
    assert sorted(p.name for p in d.glob("epoch-*.pt")) == ["epoch-0004.pt", "epoch-0005.pt"]
    epoch_of = lambda name: torch.load(d / name, weights_only=True)["state"]["epoch"]  # noqa: E731
    assert epoch_of("last.pt") == 5 and epoch_of("previous.pt") == 4 and epoch_of("epoch-0004.pt") == 4
    assert torch.load(d / "best.pt", weights_only=True)["epoch"] == r.summary["best_epoch"]
    assert not list(d.glob(".*.tmp"))  # no temporary file left behind


def _history(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def _weights_finite(path: Path) -> bool:
    return all(torch.isfinite(v).all() for v in torch.load(path, weights_only=True)["model"].values()
               if v.is_floating_point())


def test_nan_stop_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    code = main(["train", *TINY, "train.epochs=4", "optim.lr=1e6", "--output", str(tmp_path), "--quiet"])
    s = json.loads((tmp_path / "summary.json").read_text())
    assert code == 1 and s["status"] == "failed" and s["stop_reason"] == "non_finite_loss"
    assert s["epochs_run"] == 1
    last = tmp_path / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=True)["state"]["epoch"] == 0 and _weights_finite(last)
    assert not (tmp_path / "checkpoints" / "best.pt").exists()


def test_nan_stop_after_good_epochs(tmp_path: Path) -> None:
    # 19 steps per epoch: a NaN in the 3rd epoch's 2nd step
    r = trainpipe.train(None, TINY + ["train.epochs=4"], output=tmp_path, quiet=True, callbacks=[InjectNaN([39])])
    assert r.status == "failed" and r.summary["epochs_run"] == 3 and len(r.metrics) == 3
    assert math.isnan(r.metrics[-1]["train/loss"])
    last = tmp_path / "checkpoints" / "last.pt"
    assert torch.load(last, weights_only=True)["state"]["epoch"] == 2 and _weights_finite(last)
    assert r.summary["best_epoch"] <= 2


def test_skip_step_skips_the_non_finite_steps_only(tmp_path: Path) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=3", "train.on_nonfinite=skip_step"], output=tmp_path,
                        quiet=True, callbacks=[InjectNaN([3, 25, 26])])
    assert r.status == "completed" and r.summary["skipped_steps"] == 3
    assert [m["skipped_steps"] for m in r.metrics] == [1, 2, 0]
    assert all(math.isfinite(m["train/loss"]) for m in r.metrics)
    assert _weights_finite(tmp_path / "checkpoints" / "last.pt")
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["state"]["step"] == 3 * 19 - 3


def test_skip_step_fails_when_nothing_is_left_to_train(tmp_path: Path) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=3", "train.on_nonfinite=skip_step"], output=tmp_path,
                        quiet=True, callbacks=[InjectNaN(range(19, 38))])  # all of epoch 2
    assert r.status == "failed" and r.summary["stop_reason"] == "non_finite_loss" and r.summary["epochs_run"] == 2


def test_rollback_reloads_the_last_good_epoch_with_half_the_lr(tmp_path: Path) -> None:
    clean = trainpipe.train(None, TINY + ["train.epochs=4"], output=tmp_path / "clean", quiet=True)
    r = trainpipe.train(None, TINY + ["train.epochs=4", "train.on_nonfinite=rollback"], output=tmp_path / "rb",
                        quiet=True, callbacks=[InjectNaN([40])])  # once, in epoch 3
    assert r.status == "completed" and r.summary["rollbacks"] == 1 and r.summary["lr_factor"] == 0.5
    rows = [json.loads(line) for line in (tmp_path / "rb" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    strip = lambda row: {k: v for k, v in row.items() if "time" not in k and "per_s" not in k}  # noqa: E731
    assert [strip(row) for row in rows[:2]] == [strip(m) for m in clean.metrics[:2]]  # before: untouched
    for row, ref in zip(rows[2:], clean.metrics[2:]):
        assert row["lr"] == pytest.approx(ref["lr"] / 2)
    events = [e for e in _history(tmp_path / "rb") if e["event"] == "rollback"]
    assert len(events) == 1 and events[0]["diverged_epoch"] == 3 and events[0]["to_epoch"] == 2


def test_rollback_gives_up_after_three(tmp_path: Path) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=4", "optim.lr=1e6", "train.on_nonfinite=rollback"],
                        output=tmp_path, quiet=True)
    assert r.status == "failed" and r.summary["stop_reason"] == "non_finite_loss"
    assert r.summary["rollbacks"] == 3 and r.summary["lr_factor"] == 0.125
    assert [e["lr_factor"] for e in _history(tmp_path) if e["event"] == "rollback"] == [0.5, 0.25, 0.125]
    assert _weights_finite(tmp_path / "checkpoints" / "last.pt")


def test_two_early_stoppings_keep_their_own_state_through_a_checkpoint() -> None:
    """State is saved under each callback's state_key, so two instances of one class do not collide."""
    x, y = blobs()
    watch_loss = EarlyStopping("train/loss", "min", patience=50)
    watch_acc = EarlyStopping("train/acc", "max", patience=50)
    tr = make_trainer(mlp(), TensorLoader(x, y, 16), overrides=["train.epochs=2"],
                      callbacks=[watch_loss, watch_acc])
    tr.fit()
    saved = tr.state_dict()["callbacks"]
    assert set(saved) == {"EarlyStopping{monitor=train/loss, mode=min}", "EarlyStopping{monitor=train/acc, mode=max}"}
    fresh_loss, fresh_acc = EarlyStopping("train/loss", "min", 50), EarlyStopping("train/acc", "max", 50)
    other = make_trainer(mlp(), TensorLoader(x, y, 16), overrides=["train.epochs=2"],
                         callbacks=[fresh_acc, fresh_loss])  # another order: still matched by key
    other.load_state_dict(tr.state_dict())
    assert (fresh_loss.best, fresh_acc.best) == (watch_loss.best, watch_acc.best)
    assert fresh_loss.best != fresh_acc.best


def test_resuming_an_early_stopped_run_with_more_epochs_starts_patience_over(tmp_path: Path) -> None:
    r = trainpipe.train(None, TINY + ["train.epochs=6", "train.early_stopping={monitor: train/loss, mode: max, "
                                      "patience: 2}"], output=tmp_path, quiet=True)
    assert r.summary["stop_reason"] == "early_stopping" and r.summary["epochs_run"] == 3
    # train/loss "improving" under mode max never happens here, so each resumed epoch is bad:
    # with patience started over the run goes exactly 2 more epochs.
    from trainpipe.run.resume import resume

    r2 = resume(tmp_path, ["train.epochs=10"], quiet=True)
    assert r2.summary["stop_reason"] == "early_stopping" and r2.summary["epochs_run"] == 5
