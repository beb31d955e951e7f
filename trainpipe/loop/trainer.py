"""The training loop: `Trainer.fit()` and `Trainer.evaluate()`.

The loop reads top to bottom. Precision, gradient accumulation, clipping and EMA
live here (the optimizer step itself, with clipping and the non-finite check, in
`trainpipe.loop.step`), not in callbacks; callbacks observe `trainer.state` and may set
`state.should_stop` with a reason. Metrics are summed on the device and read once
per epoch (and every `train.log_every` steps when a progress bar is shown), so a
step never waits for the host. The one exception is `train.on_nonfinite:
skip_step`, which must know before each optimizer step whether the gradients are
finite: one host sync per optimizer step, documented as the cost of that policy.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainpipe.loop import distributed
from trainpipe.loop.callbacks import Callback, run_hooks
from trainpipe.config import RunConfig
from trainpipe.loop.device import all_finite, autocast, is_better, resolve_precision
from trainpipe.loop.ema import ModelEma
from trainpipe.loop.rng import capture_rng, restore_rng
from trainpipe.loop.step import step_class
from trainpipe.loop.stop import StopReason


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_metric: float | None = None
    best_epoch: int | None = None
    should_stop: bool = False
    stop_reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's
    history: list[dict[str, float]] = field(default_factory=list)
    nonfinite: bool = False  # the last epoch left a non-finite loss or weight
    skipped_steps: int = 0  # optimizer steps skipped by on_nonfinite=skip_step
    rollbacks: int = 0  # reloads of the last good checkpoint by on_nonfinite=rollback (each halves
    # the lr through the schedule's "rollback" factor)
    final: dict[str, Any] = field(default_factory=dict)  # after the loop: test metrics, bests
    batch: int = 0  # batches done in the epoch in progress: 0 except in a checkpoint saved mid-epoch

    def state_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # A plain str in checkpoints (which load with weights_only=True) and summaries.
        d["stop_reason"] = None if self.stop_reason is None else str(self.stop_reason)
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        for k, v in d.items():
            if k in known:
                setattr(self, k, v)


@dataclass
class StopRequest:
    """A request from outside the loop (a signal handler, `trainpipe.run.signals`) to stop the run
    at the next step boundary; `reason` becomes the run's stop reason. Reading an attribute per
    step costs nothing next to a step."""

    reason: str | None = None


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    # F.cross_entropy takes class indices or class probabilities (MixUp/CutMix) alike.
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    return target.argmax(dim=1) if target.dim() == 2 else target


@torch.no_grad()
def predict(
    model: nn.Module, loader: Any, *, device: torch.device, amp_dtype: torch.dtype | None = None, tta: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, on the device) and labels of a whole split; `tta="flip"` averages
    the logits of each image and its horizontal mirror."""
    was_training = model.training
    model.eval()
    outs, labels = [], []
    for x, y in loader:
        with autocast(device, amp_dtype):
            logits = model(x).float()
            if tta == "flip" and x.dim() == 4:
                logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
        outs.append(logits)
        labels.append(y)
    model.train(was_training)
    return torch.cat(outs), torch.cat(labels)


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, prefix: str) -> dict[str, float]:
    """loss, top-1 accuracy and (with more than 5 classes) top-5 accuracy, as `prefix/name`."""
    y = hard_labels(y)
    loss = F.cross_entropy(logits, y)
    out = {f"{prefix}/loss": loss, f"{prefix}/acc": (logits.argmax(1) == y).float().mean()}
    if logits.shape[1] > 5:
        top5 = logits.topk(5, dim=1).indices
        out[f"{prefix}/top5"] = (top5 == y[:, None]).any(dim=1).float().mean()
    return {k: float(v) for k, v in out.items()}


def conform_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor (momentum, Adam's moments) its parameter's memory
    format. `Optimizer.load_state_dict` keeps the strides a tensor was saved with, so a
    checkpoint from a channels-last run resumed in the default format (or the reverse) would
    mix formats in one update, which the fused and foreach kernels leave their fast path for."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    optimizer.state[p][k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


# Each rollback halves the lr; after this many the run is declared failed (an lr
# divided by 8 that still diverges points at something other than the step size).
MAX_ROLLBACKS = 3

# Optimizer group keys that come from the config; on resume they are taken from the
# (possibly overridden) config rather than from the checkpoint, see `apply_config_hparams`.
_CONFIG_GROUP_KEYS = ("base_lr", "weight_decay")


# How an optimizer computes, chosen for the device it was built on (`optim._fast_path`):
# a checkpoint's groups carry the choice of the device that saved it.
_KERNEL_KEYS = ("fused", "foreach", "capturable")


def with_kernel_choice(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The saved optimizer state with `optimizer`'s kernel choice in each group, so that a run
    started on the CPU and resumed on a GPU gets the GPU's fused kernels (torch's
    load_state_dict would take the saved `fused=None`), and torch places each state (the
    step counts of fused kernels) by that choice."""
    groups = [{**g, **{k: fresh[k] for k in _KERNEL_KEYS if k in fresh}}
              for g, fresh in zip(saved.get("param_groups", []), optimizer.param_groups)]
    groups += saved.get("param_groups", [])[len(groups):]  # a count that differs is refused by torch
    return {**saved, "param_groups": groups}


def rank_rng(d: dict[str, Any], rank: int, world: int) -> tuple[dict[str, Any] | None, list[str]]:
    """The RNG states this rank resumes from: its own when the checkpoint holds every rank's
    (written under DDP), else the one saved (rank 0's); with a note when ranks share one."""
    ranks = d.get("rng_ranks") or []
    own = ranks[rank] if rank < len(ranks) else d.get("rng")
    saved_by = max(len(ranks), 1)
    notes = []
    if world > saved_by and d.get("rng") is not None:
        notes.append(f"the checkpoint holds the random states of {saved_by} process(es) and {world} resume it: "
                     f"ranks {saved_by} and up continue from rank 0's random streams")
    return own, notes


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Any,
        data: Any,
        *,
        device: torch.device,
        callbacks: Sequence[Callback] = (),
        progress: Any = None,
        last_good_state: Callable[[], tuple[dict[str, Any], Any] | None] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        stop_request: StopRequest | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.data = data
        self.callbacks = list(callbacks)
        self.progress = progress
        # `train.on_nonfinite: rollback` reloads the newest good full state from here
        # (the run's checkpoints); `on_event` hears of each rollback.
        self.last_good_state = last_good_state
        self.on_event = on_event
        self.stop_request = stop_request if stop_request is not None else StopRequest()
        self.state = TrainState()
        # The epoch in progress when a stop request cut it (its sums, the loader's random
        # streams), saved in a checkpoint; on resume, where that epoch continues from.
        self._in_epoch: dict[str, Any] | None = None
        self._resumed_train_time = 0.0  # seconds the cut epoch trained before it was resumed
        self.resumed = False
        self._pending_rng: dict[str, Any] | None = None
        self._rng_notes: list[str] = []
        # Under DDP, every rank's RNG states as the checkpoint writer (rank 0) saves them:
        # gathered before the hooks that may write a checkpoint.
        self.rank_rngs: list[dict[str, Any]] | None = None
        t = cfg.train
        step_cls = step_class(cfg.optim.name)  # plain or closure, as the optimizer's entry declares
        self.amp_dtype = resolve_precision(t.precision, device, fp16_ok=step_cls.fp16_ok)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.ema = ModelEma(model, t.ema.decay, t.ema.warmup) if t.ema is not None else None
        self.skip_nonfinite = t.on_nonfinite == "skip_step"
        self.step = step_cls(model, optimizer, self.scaler, grad_clip=t.grad_clip, skip_nonfinite=self.skip_nonfinite)
        self._skipped_this_epoch = 0
        self._config_hparams = self._group_hparams() if optimizer is not None else []
        step_model = distributed.wrap(model, device, sync_bn=t.sync_bn)  # DDP under several processes, else `model`
        self._ddp = step_model if step_model is not model else None
        if t.compile:
            # Fixed batch shapes (drop_last) keep the compiled graph from recompiling.
            self.forward = torch.compile(step_model)
        else:
            self.forward = step_model

    # ------------------------------------------------------------------ helpers
    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def _group_hparams(self) -> list[dict[str, Any]]:
        keys = set(_CONFIG_GROUP_KEYS) | set(self.cfg.optim.options())
        return [{k: g[k] for k in keys if k in g} for g in self.optimizer.param_groups]

    def apply_config_hparams(self) -> None:
        """Set the config's hyperparameters on every group, then let the schedule set the lr.

        A checkpoint's optimizer state carries the hyperparameters it was saved with;
        re-applying the config's makes resume-time overrides (weight decay, momentum)
        take effect, and is a no-op when nothing changed. The lr is the schedule's alone:
        it was built from the (possibly overridden) config's base lrs.
        """
        for g, fresh in zip(self.optimizer.param_groups, self._config_hparams):
            g.update(fresh)
        self.schedule.step(self.schedule.t)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "state": self.state.state_dict(),
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            "in_epoch": self._in_epoch if self.state.batch else None,
        }

    @property
    def stopped_by_request(self) -> bool:
        """The loop ended on a stop request (a signal): the state must be saved where it stopped."""
        reason = self.stop_request.reason
        return reason is not None and self.state.stop_reason == reason

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore a full checkpoint; its RNG state (if any) is restored when `fit` starts,
        after the callbacks' `on_fit_start`, so that nothing they do can shift it."""
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(with_kernel_choice(d["optimizer"], self.optimizer))
        conform_optimizer_state(self.optimizer)
        self.state.load_state_dict(d["state"])
        self.schedule.load_state_dict(d["schedule"])
        self.apply_config_hparams()
        if d["scaler"] or not self.scaler.is_enabled():
            # A run saved without a GradScaler (fp32, bf16, the CPU) and resumed in fp16
            # starts a fresh one: its loss scale calibrates itself in the first steps.
            self.scaler.load_state_dict(d["scaler"])
        if self.ema is not None and d.get("ema") is not None:
            self.ema.load_state_dict(d["ema"])
        saved = d.get("callbacks", {})
        for cb in self.callbacks:
            # Checkpoints written before state keys were used name callbacks by their class.
            state = saved.get(cb.state_key, saved.get(type(cb).__name__))
            if state is not None:
                cb.load_state_dict(state)
        self._pending_rng, self._rng_notes = rank_rng(d, distributed.rank(), distributed.world_size())
        self._in_epoch = d.get("in_epoch") if self.state.batch else None
        self.resumed = True

    # --------------------------------------------------------------------- loop
    def fit(self, finalize: Callable[["Trainer"], dict[str, Any]] | None = None) -> TrainState:
        """Train until `train.epochs` or a stop; then `finalize(trainer)` (unless the run
        failed) fills `state.final`, before `on_fit_end` lets trackers log it and close."""
        t = self.cfg.train
        try:
            self._gather_rng()
            run_hooks(self.callbacks, "on_fit_start", self)
            self.rank_rngs = None
            if self._pending_rng is not None:
                self._warn(self._rng_notes + restore_rng(self._pending_rng))
                self._pending_rng = None
            while self.state.epoch < t.epochs and not self.state.should_stop and not self._honour_stop_request():
                run_hooks(self.callbacks, "on_epoch_start", self)
                epoch = self.state.epoch
                start = time.perf_counter()
                metrics: dict[str, float] = {"epoch": epoch + 1}
                metrics.update(self.train_epoch(epoch))
                if self.state.batch:  # a stop request cut the epoch at a step boundary
                    self._honour_stop_request()
                    break
                train_time = time.perf_counter() - start + self._resumed_train_time
                if self.data.val is not None:
                    metrics.update(self.evaluate(self.data.val, prefix="val"))
                metrics["lr"] = self.schedule.current_lrs()[0]
                metrics["epoch_time_s"] = time.perf_counter() - start + self._resumed_train_time
                metrics["images_per_s"] = self.data.train.num_samples / max(train_time, 1e-9)
                self.state.epoch = epoch + 1
                self.state.metrics = metrics
                self.state.history.append(metrics)
                self.state.nonfinite = not self._epoch_finite(metrics)
                if not self.state.nonfinite:
                    self._track_best(metrics)
                    self.schedule.epoch_end(epoch, metrics.get(t.monitor))
                self._gather_rng()
                run_hooks(self.callbacks, "on_epoch_end", self)
                # Only what these hooks saved holds every rank's states; a checkpoint written
                # elsewhere (mid-epoch, on a stop request) holds rank 0's alone.
                self.rank_rngs = None
                if self.state.nonfinite:
                    self._after_nonfinite()
            if self.state.stop_reason is None:
                self.state.stop_reason = StopReason.MAX_EPOCHS
            if finalize is not None and self.state.stop_reason != StopReason.NON_FINITE and not self.stopped_by_request:
                self.state.final = finalize(self)
        finally:
            run_hooks(self.callbacks, "on_fit_end", self)
        return self.state

    def _honour_stop_request(self) -> bool:
        """True (and the stop recorded) when a stop was requested; under DDP, when any rank's was,
        so that every rank stops at the same epoch boundary."""
        reason = self.stop_request.reason
        if distributed.is_distributed():
            if not distributed.any_rank(reason is not None, self.device):
                return False
            reason = reason or StopReason.INTERRUPTED
            self.stop_request.reason = reason
        elif reason is None:
            return False
        self.state.should_stop, self.state.stop_reason = True, reason
        return True

    def _after_nonfinite(self) -> None:
        """What an epoch that left a non-finite loss or weight leads to (`train.on_nonfinite`).

        stop: end the run (status failed, stop reason non_finite_loss).
        skip_step: the loop already skipped the steps whose gradients were not finite; an
          epoch that still ends non-finite (every step skipped, or a non-finite validation
          loss) ends the run as with stop.
        rollback: reload the newest good full state (last.pt, falling back to previous.pt),
          halve the lr (the schedule's "rollback" factor) and go on from there; after MAX_ROLLBACKS the
          run ends as with stop.
        It runs after every callback's on_epoch_end, so each has seen the diverged epoch.
        """
        state = self.state
        if self.cfg.train.on_nonfinite == "rollback" and state.rollbacks < MAX_ROLLBACKS and self._rollback():
            return
        state.should_stop, state.stop_reason = True, StopReason.NON_FINITE

    def _rollback(self) -> bool:
        found = self.last_good_state() if self.last_good_state is not None else None
        if found is None:
            return False
        saved, path = found
        state = self.state
        diverged_epoch, skipped = state.epoch, state.skipped_steps
        rollbacks, factor = state.rollbacks + 1, self.schedule.factor("rollback") * 0.5
        self.load_state_dict(saved)
        state = self.state
        state.rollbacks, state.skipped_steps = rollbacks, skipped
        self.schedule.set_factor("rollback", factor)
        self._warn(self._rng_notes + restore_rng(self._pending_rng))
        self._pending_rng = None
        if self.on_event is not None:
            self.on_event({"event": "rollback", "diverged_epoch": diverged_epoch, "to_epoch": state.epoch,
                           "checkpoint": getattr(path, "name", str(path)), "lr_factor": factor,
                           "rollback": rollbacks})
        return True

    def _gather_rng(self) -> None:
        if distributed.is_distributed():
            self.rank_rngs = distributed.all_gather_object(capture_rng())

    def _warn(self, notes: list[str]) -> None:
        for note in notes if distributed.is_main() else ():
            print(f"warning: {note}", file=sys.stderr)

    def _track_best(self, metrics: dict[str, float]) -> None:
        t = self.cfg.train
        value = metrics.get(t.monitor)
        if value is not None and is_better(value, self.state.best_metric, t.monitor_mode):
            self.state.best_metric, self.state.best_epoch = float(value), self.state.epoch

    def _epoch_finite(self, metrics: dict[str, float]) -> bool:
        # One host sync per epoch: the losses are already host floats; the weights are
        # checked too, because the last step of an epoch can break them after its loss.
        for key in ("train/loss", "val/loss"):
            if key in metrics and not math.isfinite(metrics[key]):
                return False
        return bool(all_finite(list(self.model.parameters())))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        t = self.cfg.train
        model, loader = self.model, self.data.train
        model.train()
        loader.set_epoch(epoch)
        n_batches = len(loader)
        loss_sum = torch.zeros((), device=self.device)
        loss_count = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        accum = t.grad_accum_steps
        self._skipped_this_epoch = 0
        self._resumed_train_time = 0.0
        first = 0
        cut, self._in_epoch = self._in_epoch, None
        if cut is not None and self.state.batch:
            # Continue an epoch that a stop request cut: its sums so far, and the loader where it was.
            first = self.state.batch
            loss_sum.copy_(cut["loss_sum"])
            loss_count.copy_(cut["loss_count"])
            correct.copy_(cut["correct"])
            seen, self._skipped_this_epoch = int(cut["seen"]), int(cut["skipped"])
            self._resumed_train_time = float(cut.get("train_time_s", 0.0))
            loader.start_at(first, cut["loader"])
        self.state.batch = 0
        # Under DDP the ranks must agree where to stop; they do so at the epoch's end.
        can_cut = not distributed.is_distributed()
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        if self.progress is not None:
            self.progress.start_epoch(epoch, n_batches)
        for i, (x, y) in enumerate(loader, first):
            group_start = i - i % accum
            if i == group_start:
                self.schedule.step(epoch + i / n_batches)
            # The last group of an epoch may be short; its losses are averaged over its own size.
            group = min(accum, n_batches - group_start)
            loss, logits = self.train_step(x, y, group, i + 1 == group_start + group)
            bs = x.shape[0]
            loss = loss.detach().float()
            if self.skip_nonfinite:
                # Skipped batches stay out of train/loss, so that it says how the kept steps went.
                ok = loss.isfinite()
                loss_sum += torch.where(ok, loss, 0.0) * bs
                loss_count += ok * bs
            else:
                loss_sum += loss * bs  # every batch counts: loss_count is set once, after the loop
            correct += (logits.detach().argmax(dim=1) == hard_labels(y)).sum()
            seen += bs
            if self.progress is not None and ((i + 1) % t.log_every == 0 or i + 1 == n_batches):
                self.progress.update(i + 1, loss_sum, correct, seen)
            if self.stop_request.reason is not None and can_cut and i + 1 < n_batches \
                    and i + 1 == group_start + group:
                # A step boundary: the state is whole (no gradients pending), so it can be saved here.
                self.state.batch = i + 1
                self._in_epoch = {"loss_sum": loss_sum.cpu(), "loss_count": loss_count.cpu(), "correct": correct.cpu(),
                                  "seen": seen, "skipped": self._skipped_this_epoch, "loader": loader.position(),
                                  "train_time_s": self._resumed_train_time + time.perf_counter() - started}
                break
        if self.progress is not None:
            self.progress.end_epoch()
        if self.state.batch:
            return {}
        if not self.skip_nonfinite:
            # Set once instead of summed per step (a device op per step); the same value as the
            # float32 running sum of the batch sizes, which is exact up to 2**24 samples an epoch.
            loss_count.fill_(seen)
        # The one host sync of the epoch (and under DDP its one all-reduce).
        loss_sum, loss_count, correct, seen = distributed.all_reduce_sums(loss_sum, loss_count, correct, seen)
        distributed.average_buffers(self.model, self.eval_model)
        out = {"train/loss": (loss_sum / loss_count).item() if seen else math.nan,
               "train/acc": correct.item() / max(seen, 1)}
        if self.skip_nonfinite:
            out["skipped_steps"] = self._skipped_this_epoch
        return out

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits = self.forward(x)
        return soft_cross_entropy(logits, y, self.cfg.train.label_smoothing), logits

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, group: int, step_now: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of one batch (1/group of an optimizer step); the step
        itself (`self.step`: see `trainpipe.loop.step`) when `step_now` (the group's last batch)."""
        # Under DDP, the micro-batches before a group's last keep their gradients local
        # (no_sync); the last one's backward all-reduces the accumulated sum, once per step.
        local = not step_now and self._ddp is not None
        with self._ddp.no_sync() if local else contextlib.nullcontext():
            loss, logits = self._loss(x, y)
            # Dividing by 1 would still add an op and an autograd node: ~5% of a small net's CPU step.
            self.scaler.scale(loss / group if group > 1 else loss).backward()
        if not step_now:
            return loss, logits
        if not self.step(loss, lambda: self._loss(x, y)[0]):
            self.state.skipped_steps += 1
            self._skipped_this_epoch += 1
            return loss, logits
        self.state.step += 1
        if self.ema is not None and self.state.step % self.cfg.train.ema.every == 0:
            self.ema.update(self.model)
        return loss, logits

    # --------------------------------------------------------------- evaluation
    def predict(self, loader: Any, model: nn.Module | None = None, tta: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (float32, on the device) and labels for a whole split, with the run's
        precision and (unless `tta` says otherwise) its `train.tta`."""
        return predict(model if model is not None else self.eval_model, loader, device=self.device,
                       amp_dtype=self.amp_dtype, tta=tta if tta is not None else self.cfg.train.tta)

    def evaluate(self, loader: Any, *, prefix: str, model: nn.Module | None = None, tta: str | None = None) -> dict[str, float]:
        logits, y = self.predict(loader, model=model, tta=tta)
        logits, y = distributed.gather_rows(logits), distributed.gather_rows(y)  # each rank predicted its shard
        return metrics_from_logits(logits, y, prefix)
