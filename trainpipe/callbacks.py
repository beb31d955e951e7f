"""Callbacks: a small hook set that observes the loop.

Hooks do nothing by default. A callback that wants the run to end sets
`trainer.state.should_stop = True` and `trainer.state.stop_reason`; it never
breaks the loop itself. Callbacks with state implement `state_dict()` /
`load_state_dict()` so that resume restores them too. They run in list order;
the runner puts the checkpoint writer last, so it saves everyone's new state.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainpipe import checkpoint as ckpt

if TYPE_CHECKING:
    from trainpipe.engine import Trainer


class Callback:
    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_end(self, trainer: "Trainer") -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None:
        """Runs in a `finally`: after a normal end, a stop, an error or Ctrl-C."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def run_hooks(callbacks: Sequence[Callback], hook: str, trainer: "Trainer") -> None:
    for cb in callbacks:
        getattr(cb, hook)(trainer)


class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved for `patience` epochs."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float = 0.0, restore_best: bool = True) -> None:
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.restore_best = restore_best
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self._best_weights: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, trainer: "Trainer") -> None:
        from trainpipe.engine import is_better

        value = trainer.state.metrics.get(self.monitor)
        if value is None:
            return
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = float(value), trainer.state.epoch, 0
            if self.restore_best:
                self._best_weights = copy.deepcopy(trainer.eval_model.state_dict())
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                trainer.state.should_stop = True
                trainer.state.stop_reason = "early_stopping"

    def on_fit_end(self, trainer: "Trainer") -> None:
        if self.restore_best and self._best_weights is not None and trainer.state.stop_reason == "early_stopping":
            trainer.eval_model.load_state_dict(self._best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_weights": self._best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self._best_weights = state.get("best_weights")


class Checkpoint(Callback):
    """Writes checkpoints/last.pt (full state, for resume) and best.pt (by the monitor)."""

    def __init__(self, directory: str | Path, *, every: int = 1, keep: int = 0, save_best: bool = True,
                 config: dict[str, Any] | None = None) -> None:
        self.dir = Path(directory)
        self.every, self.keep, self.save_best = every, keep, save_best
        self.config = config or {}

    def full_state(self, trainer: "Trainer") -> dict[str, Any]:
        d = trainer.state_dict()
        d["rng"] = ckpt.capture_rng()
        d["config"] = self.config
        return d

    def on_epoch_end(self, trainer: "Trainer") -> None:
        st = trainer.state
        import math

        if not math.isfinite(st.metrics.get("train/loss", 0.0)):
            return  # a non-finite state must never replace the last good checkpoint
        if self.save_best and st.best_epoch == st.epoch:
            ckpt.save_atomic(
                {"model": trainer.eval_model.state_dict(), "epoch": st.epoch, "metrics": st.metrics,
                 "config": self.config},
                self.dir / "best.pt",
            )
        last_epoch = st.should_stop or st.epoch >= trainer.cfg.train.epochs
        if st.epoch % self.every == 0 or last_epoch:
            state = self.full_state(trainer)
            ckpt.save_atomic(state, self.dir / "last.pt")
            if self.keep > 0:
                ckpt.save_atomic(state, self.dir / f"epoch-{st.epoch:04d}.pt")
                snaps = sorted(self.dir.glob("epoch-*.pt"))
                for old in snaps[: -self.keep]:
                    old.unlink(missing_ok=True)


class BatchSizeSchedule(Callback):
    """Sets the training batch size at the epochs a `train.batch_size_schedule` names.

    The batch size and lr scale are pure functions of the epoch, so resume needs no
    extra state: the callback recomputes both at every epoch start.
    """

    def __init__(self, base: int, schedule: dict[int, int], lr_scaling: str) -> None:
        self.base, self.schedule, self.lr_scaling = base, dict(schedule), lr_scaling

    def on_epoch_start(self, trainer: "Trainer") -> None:
        from trainpipe.sched import batch_size_at, lr_scale_for

        bs = batch_size_at(trainer.state.epoch, self.base, self.schedule)
        trainer.data.train.batch_size = bs
        trainer.schedule.set_lr_scale(lr_scale_for(bs, self.base, self.lr_scaling))
