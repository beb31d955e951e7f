"""Callbacks: a small hook set that observes the loop.

Hooks do nothing by default. A callback that wants the run to end sets
`trainer.state.should_stop = True` and `trainer.state.stop_reason`; it never
breaks the loop itself. Callbacks with state implement `state_dict()` /
`load_state_dict()` so that resume restores them too. They run in list order;
the runner puts the checkpoint writer next to last, so it saves everyone's new
state, and the NaN guard last, so that a rollback happens after every other
callback has seen the diverged epoch.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainpipe import checkpoint as ckpt
from trainpipe.errors import ConfigError, did_you_mean

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

    def on_epoch_end(self, trainer: "Trainer") -> None:
        from trainpipe.engine import is_better

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
                trainer.state.stop_reason = "early_stopping"

    def on_fit_end(self, trainer: "Trainer") -> None:
        # stop_reason stays None when the loop was cut by an exception or Ctrl-C.
        if self.restore_best and self._best_weights is not None and trainer.state.stop_reason is not None:
            trainer.eval_model.load_state_dict(self._best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_weights": self._best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self._best_weights = state.get("best_weights")


class Checkpoint(Callback):
    """checkpoints/last.pt (the full state, for resume; the one before it kept as previous.pt),
    best.pt (the evaluated weights of the best epoch by `train.monitor`), and with `keep`
    the K newest epoch-NNNN.pt snapshots. An epoch that left non-finite values is never saved.
    """

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

    def on_fit_start(self, trainer: "Trainer") -> None:
        for partial in self.dir.glob(".*.tmp"):  # left by a process killed while writing
            partial.unlink(missing_ok=True)
        if trainer.resumed:
            return
        # A fresh run: files left by an earlier run in this directory must not be
        # mistaken for fallbacks. The epoch-0 state makes a run killed during its first
        # epoch resumable, and gives a rollback somewhere to go.
        for stale in [self.dir / ckpt.PREVIOUS, *self.dir.glob("epoch-*.pt")]:
            stale.unlink(missing_ok=True)
        ckpt.save_atomic(self.full_state(trainer), self.dir / ckpt.LAST)

    def on_epoch_end(self, trainer: "Trainer") -> None:
        st = trainer.state
        if st.nonfinite:
            return  # a non-finite state must never replace the last good checkpoint
        if self.save_best and st.best_epoch == st.epoch:
            ckpt.save_atomic(
                {"model": trainer.eval_model.state_dict(), "epoch": st.epoch, "metrics": st.metrics,
                 "config": self.config},
                self.dir / ckpt.BEST,
            )
        last_epoch = st.should_stop or st.epoch >= trainer.cfg.train.epochs
        if st.epoch % self.every == 0 or last_epoch:
            last = self.dir / ckpt.LAST
            ckpt.save_keeping_previous(self.full_state(trainer), last)
            if self.keep > 0:
                self._snapshot(last, self.dir / f"epoch-{st.epoch:04d}.pt")

    def _snapshot(self, last: Path, snap: Path) -> None:
        # Checkpoint files are only ever replaced by rename, never rewritten in place, so
        # a hard link is a safe copy that costs no second serialization.
        snap.unlink(missing_ok=True)
        try:
            os.link(last, snap)
        except OSError:  # a file system without hard links
            ckpt.save_atomic(ckpt.load(last), snap)
        snaps = sorted(self.dir.glob("epoch-*.pt"))
        for old in snaps[: -self.keep]:
            old.unlink(missing_ok=True)


# Each rollback halves the lr; after this many the run is declared failed (an lr
# divided by 8 that still diverges points at something other than the step size).
MAX_ROLLBACKS = 3


class NanGuard(Callback):
    """What happens after an epoch that left a non-finite loss or weight (`train.on_nonfinite`).

    stop: end the run; the runner reports status failed, stop reason non_finite_loss.
    skip_step: the loop already skipped the steps whose gradients were not finite; an
      epoch that still ends non-finite (every step skipped, or a non-finite validation
      loss) ends the run as with stop.
    rollback: reload the newest good full checkpoint (last.pt, falling back to
      previous.pt), halve the lr (`state.lr_factor`) and go on from there; after
      `max_rollbacks` the run ends as with stop.
    """

    def __init__(self, policy: str, checkpoint_dir: str | Path, *, max_rollbacks: int = MAX_ROLLBACKS,
                 log: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.policy = policy
        self.dir = Path(checkpoint_dir)
        self.max_rollbacks = max_rollbacks
        self.log = log

    def on_epoch_end(self, trainer: "Trainer") -> None:
        st = trainer.state
        if not st.nonfinite:
            return
        if self.policy == "rollback" and st.rollbacks < self.max_rollbacks and self._rollback(trainer):
            return
        st.should_stop, st.stop_reason = True, "non_finite_loss"

    def _rollback(self, trainer: "Trainer") -> bool:
        found = ckpt.find_resumable(self.dir, map_location=trainer.device)
        if found is None:
            return False
        saved, path = found
        diverged_epoch = trainer.state.epoch
        rollbacks, factor = trainer.state.rollbacks + 1, trainer.state.lr_factor * 0.5
        skipped = trainer.state.skipped_steps
        trainer.load_state_dict(saved)
        trainer.state.rollbacks, trainer.state.lr_factor = rollbacks, factor
        trainer.state.skipped_steps = skipped
        trainer.apply_config_hparams()
        ckpt.restore_rng(saved["rng"])
        trainer._pending_rng = None
        if self.log is not None:
            self.log({"event": "rollback", "diverged_epoch": diverged_epoch, "to_epoch": trainer.state.epoch,
                      "checkpoint": path.name, "lr_factor": factor, "rollback": rollbacks})
        return True


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
