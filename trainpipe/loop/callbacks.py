"""Callbacks: a small hook set that observes the loop.

Where each hook fires in `Trainer.fit` (loop/trainer.py):

    on_fit_start                       after a resume's state is loaded
    while epochs remain and no stop:
        on_epoch_start                 before the epoch's first batch
        train one epoch; validate; track the best value of train.monitor
        on_epoch_end                   trainer.state.metrics holds the epoch's metrics
        (the trainer's own non-finite policy runs here, after every callback)
    finalize (test evaluation)
    on_fit_end                         in a `finally`: also after an error or Ctrl-C

Hooks do nothing by default. A callback that wants the run to end sets
`trainer.state.should_stop = True` and `trainer.state.stop_reason`; it never breaks
the loop itself. Callbacks with state implement `state_dict()` / `load_state_dict()`,
saved in every checkpoint under their `state_key`, so that resume restores them too.
Their order is one list, decided in `trainpipe.run.train.callbacks_for`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from trainpipe.errors import ConfigError, did_you_mean
from trainpipe.loop.device import is_better
from trainpipe.loop.stop import StopReason

if TYPE_CHECKING:
    from trainpipe.loop.trainer import Trainer


class Callback:
    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_end(self, trainer: "Trainer") -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None:
        """Runs in a `finally`: after a normal end, a stop, an error or Ctrl-C."""

    @property
    def state_key(self) -> str:
        """Names this callback's state in a checkpoint: the class, plus (in subclasses) the
        arguments that tell two instances of it apart, as Lightning's `Callback.state_key`."""
        return type(self).__qualname__

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def run_hooks(callbacks: Sequence[Callback], hook: str, trainer: "Trainer") -> None:
    for cb in callbacks:
        getattr(cb, hook)(trainer)


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    With `restore_best`, a copy of the evaluated weights is kept at every improvement
    (on the device, and in last.pt so that resume keeps it) and loaded back when the
    loop ends, so the model left in memory is the best one, not the last.
    """

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float = 0.0, restore_best: bool = True) -> None:
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.restore_best = restore_best
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self._best_weights: dict[str, torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return f"EarlyStopping{{monitor={self.monitor}, mode={self.mode}}}"

    def on_fit_start(self, trainer: "Trainer") -> None:
        # A run that stopped early and is resumed with more epochs starts its patience over.
        if self.bad_epochs >= self.patience:
            self.bad_epochs = 0

    def on_epoch_end(self, trainer: "Trainer") -> None:
        metrics = trainer.state.metrics
        if self.monitor not in metrics:
            logged = [k for k in metrics if k != "epoch"]
            raise ConfigError(
                f"train.early_stopping.monitor: metric {self.monitor!r} is not logged by this run"
                f"{did_you_mean(self.monitor, logged) or '.'} Logged metrics: {', '.join(logged)} "
                f"(val/* needs data.val_split > 0)."
            )
        value = float(metrics[self.monitor])
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, trainer.state.epoch, 0
            if self.restore_best:
                self._best_weights = copy.deepcopy(trainer.eval_model.state_dict())
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                trainer.state.should_stop = True
                trainer.state.stop_reason = StopReason.EARLY_STOPPING

    def on_fit_end(self, trainer: "Trainer") -> None:
        # stop_reason stays None when the loop was cut by an exception or Ctrl-C; a stop request
        # (a signal) ends a run that will be resumed: its weights are saved as they are.
        if (self.restore_best and self._best_weights is not None and trainer.state.stop_reason is not None
                and not trainer.stopped_by_request):
            trainer.eval_model.load_state_dict(self._best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_weights": self._best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self._best_weights = state.get("best_weights")


class BatchSizeSchedule(Callback):
    """Sets the training batch size at the epochs a `train.batch_size_schedule` names, and
    the lr scaling that goes with it as the schedule's "batch_size" factor.

    The batch size and lr scale are pure functions of the epoch, so resume needs no
    extra state: the callback recomputes both at every epoch start.
    """

    def __init__(self, base: int, schedule: dict[int, int], lr_scaling: str) -> None:
        self.base, self.schedule, self.lr_scaling = base, dict(schedule), lr_scaling

    def on_epoch_start(self, trainer: "Trainer") -> None:
        from trainpipe.sched.batch_size import batch_size_at, lr_scale_for

        bs = batch_size_at(trainer.state.epoch, self.base, self.schedule)
        trainer.data.train.batch_size = bs
        trainer.schedule.set_factor("batch_size", lr_scale_for(bs, self.base, self.lr_scaling))
