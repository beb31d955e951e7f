"""The training loop: `Trainer.fit()` and `Trainer.evaluate()`.

The loop reads top to bottom. Precision, gradient accumulation, clipping and EMA
live here, not in callbacks; callbacks observe `trainer.state` and may set
`state.should_stop` with a reason. Metrics are summed on the device and read once
per epoch (and every `train.log_every` steps when a progress bar is shown), so a
step never waits for the host.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainpipe.callbacks import Callback, run_hooks
from trainpipe.config import RunConfig


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

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for k, v in d.items():
            setattr(self, k, v)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None  # fp32 on CPU: CPU autocast is slower than fp32 for these nets
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def is_better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best + min_delta if mode == "max" else value < best - min_delta


class ModelEma:
    """An exponential moving average of the weights (buffers copied as they are).

    timm's ModelEmaV3 does the same; ours keeps a `state_dict` that includes the
    update count so that the decay warm-up continues exactly after a resume.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool) -> None:
        import copy

        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay
        if self.warmup:
            # Early averages would be dominated by the random initialisation; the
            # (1 + n) / (10 + n) ramp is the one timm and TF use.
            d = min(d, (1 + self.updates) / (10 + self.updates))
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.module.load_state_dict(d["module"])
        self.updates = d["updates"]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    # F.cross_entropy takes class indices or class probabilities (MixUp/CutMix) alike.
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    return target.argmax(dim=1) if target.dim() == 2 else target


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
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.data = data
        self.callbacks = list(callbacks)
        self.progress = progress
        self.state = TrainState()
        t = cfg.train
        self.amp_dtype = resolve_precision(t.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.ema = ModelEma(model, t.ema.decay, t.ema.warmup) if t.ema is not None else None
        self.step_fn: Callable = self._train_step
        if t.compile:
            # Fixed batch shapes (drop_last) keep the compiled graph from recompiling.
            self.forward = torch.compile(model)
        else:
            self.forward = model

    # ------------------------------------------------------------------ helpers
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "state": self.state.state_dict(),
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.schedule.load_state_dict(d["schedule"])
        self.scaler.load_state_dict(d["scaler"])
        if self.ema is not None and d.get("ema") is not None:
            self.ema.load_state_dict(d["ema"])
        self.state.load_state_dict(d["state"])
        for cb in self.callbacks:
            if type(cb).__name__ in d.get("callbacks", {}):
                cb.load_state_dict(d["callbacks"][type(cb).__name__])

    # --------------------------------------------------------------------- loop
    def fit(self) -> TrainState:
        t = self.cfg.train
        run_hooks(self.callbacks, "on_fit_start", self)
        try:
            while self.state.epoch < t.epochs and not self.state.should_stop:
                epoch = self.state.epoch
                run_hooks(self.callbacks, "on_epoch_start", self)
                start = time.perf_counter()
                metrics = {"epoch": epoch + 1}
                metrics.update(self.train_epoch(epoch))
                train_time = time.perf_counter() - start
                if self.data.val is not None:
                    metrics.update(self.evaluate(self.data.val, prefix="val"))
                metrics["lr"] = self.schedule.current_lrs()[0]
                metrics["epoch_time_s"] = time.perf_counter() - start
                metrics["images_per_s"] = self.data.train.num_samples / max(train_time, 1e-9)
                self.state.epoch = epoch + 1
                self.state.metrics = metrics
                self.state.history.append(metrics)
                self._track_best(metrics)
                self.schedule.epoch_end(epoch, metrics.get(t.monitor))
                if not math.isfinite(metrics["train/loss"]) and t.on_nonfinite == "stop":
                    self.state.should_stop, self.state.stop_reason = True, "non_finite_loss"
                run_hooks(self.callbacks, "on_epoch_end", self)
            if self.state.stop_reason is None:
                self.state.stop_reason = "max_epochs"
        finally:
            run_hooks(self.callbacks, "on_fit_end", self)
        return self.state

    def _track_best(self, metrics: dict[str, float]) -> None:
        t = self.cfg.train
        value = metrics.get(t.monitor)
        if value is not None and is_better(value, self.state.best_metric, t.monitor_mode):
            self.state.best_metric, self.state.best_epoch = float(value), self.state.epoch

    def train_epoch(self, epoch: int) -> dict[str, float]:
        t = self.cfg.train
        model, loader = self.model, self.data.train
        model.train()
        loader.set_epoch(epoch)
        n_batches = len(loader)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        accum = t.grad_accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        if self.progress is not None:
            self.progress.start_epoch(epoch, n_batches)
        for i, (x, y) in enumerate(loader):
            if i % accum == 0:
                self.schedule.step(epoch + i / n_batches)
            last_in_group = (i + 1) % accum == 0 or i + 1 == n_batches
            loss, logits = self.step_fn(x, y, accum, last_in_group)
            bs = x.shape[0]
            loss_sum += loss.detach().float() * bs
            correct += (logits.detach().argmax(dim=1) == hard_labels(y)).sum()
            seen += bs
            if self.progress is not None and ((i + 1) % t.log_every == 0 or i + 1 == n_batches):
                self.progress.update(i + 1, loss_sum, correct, seen)
        if self.progress is not None:
            self.progress.end_epoch()
        # The one host sync of the epoch.
        return {"train/loss": (loss_sum / max(seen, 1)).item(), "train/acc": correct.item() / max(seen, 1)}

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits = self.forward(x)
        return soft_cross_entropy(logits, y, self.cfg.train.label_smoothing), logits

    def _train_step(
        self, x: torch.Tensor, y: torch.Tensor, accum: int, step_now: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.cfg.train
        loss, logits = self._loss(x, y)
        self.scaler.scale(loss / accum).backward()
        if step_now:
            if t.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            if getattr(self.optimizer, "requires_closure", False):
                # SAM-style optimizers re-evaluate the loss at perturbed weights.
                def closure() -> torch.Tensor:
                    loss2, _ = self._loss(x, y)
                    loss2.backward()
                    return loss2

                self.optimizer.step(closure)
            else:
                self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step += 1
            if self.ema is not None and self.state.step % t.ema.every == 0:
                self.ema.update(self.model)
        return loss, logits

    # --------------------------------------------------------------- evaluation
    @torch.no_grad()
    def predict(self, loader: Any, model: nn.Module | None = None, tta: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (float32, on the device) and labels for a whole split."""
        model = model if model is not None else self.eval_model
        tta = tta if tta is not None else self.cfg.train.tta
        was_training = model.training
        model.eval()
        outs, labels = [], []
        for x, y in loader:
            with self.autocast():
                logits = model(x).float()
                if tta == "flip" and x.dim() == 4:
                    logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
            outs.append(logits)
            labels.append(y)
        model.train(was_training)
        return torch.cat(outs), torch.cat(labels)

    def evaluate(self, loader: Any, *, prefix: str, model: nn.Module | None = None, tta: str | None = None) -> dict[str, float]:
        logits, y = self.predict(loader, model=model, tta=tta)
        return metrics_from_logits(logits, y, prefix)


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor, prefix: str) -> dict[str, float]:
    y = hard_labels(y)
    loss = F.cross_entropy(logits, y)
    out = {f"{prefix}/loss": loss, f"{prefix}/acc": (logits.argmax(1) == y).float().mean()}
    if logits.shape[1] > 5:
        top5 = logits.topk(5, dim=1).indices
        out[f"{prefix}/top5"] = (top5 == y[:, None]).any(dim=1).float().mean()
    return {k: float(v) for k, v in out.items()}
