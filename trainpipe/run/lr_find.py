"""`lr_find()`: the learning-rate range test (Smith 2015, "Cyclical Learning Rates").

The model, optimizer and data are built from the config exactly as `trainpipe train`
builds them, and the steps are the training loop's own (`Trainer.train_step`), so
precision, channels-last, gradient accumulation, clipping, augmentation and MixUp
behave as in training. Only the lr differs: it grows exponentially from `min_lr` to
`max_lr` over `steps` optimizer steps (PyTorch Lightning's `Tuner.lr_find` defaults:
1e-8 to 1 in 100 steps), and the test stops early once the smoothed loss passes 4x
its minimum (Lightning's `early_stop_threshold`) or the loss is no longer finite.
Every parameter group keeps its ratio to `optim.lr` (`optim.backbone_lr_mult`).

The loss is smoothed with a bias-corrected exponential moving average, as fastai and
Lightning do, over a window of 5% of the steps (see `default_beta`). The suggestion
is the lr where the smoothed loss falls fastest (the steepest-descent rule of
Lightning's `suggestion()` and fastai's `steep`), measured against log(lr) as the
plot shows it, before the loss's minimum, skipping the first 10 points and the last.
The range worth sweeping runs from a decade below the suggestion to the lr of the
lowest smoothed loss, at most a decade above the suggestion: Smith's bounds for a
cyclical schedule are "where the loss starts to fall" and "where it stops falling";
the cap keeps out a second dip in a noisy, already unstable tail.

Nothing is saved but the curve: the weights come from the config (and any
`model.weights` file, read only) and are discarded afterwards.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainpipe.errors import ConfigError
from trainpipe import files
from trainpipe.run import rundir
from trainpipe.loop.rng import global_rng_kept
from trainpipe.run.train import ConfigLike, build_parts, resolve

DEFAULT_MIN_LR, DEFAULT_MAX_LR, DEFAULT_STEPS = 1e-8, 1.0, 100
# Lightning stops when the smoothed loss exceeds 4x the best seen.
DIVERGE_FACTOR = 4.0
SKIP_BEGIN, SKIP_END = 10, 1
MIN_STEPS = 20  # fewer leaves almost nothing once the first 10 and the last point are skipped
# A smoothed loss that never falls 5% below its value after the first points is noise,
# not a decrease: there is no lr to suggest.
MIN_DROP = 0.05
# The per-step losses are read from the device in chunks: one host sync per chunk rather
# than one per step. A divergence is noticed at most READ_EVERY - 1 steps late; those
# extra steps run past the stop and are discarded.
READ_EVERY = 10

CSV_NAME, PNG_NAME, JSON_NAME = "lr_find.csv", "lr_find.png", "lr_find.json"


def default_beta(steps: int) -> float:
    """The EMA weight for `steps`: a window of 5% of the steps (1 / (1 - beta) = steps / 20),
    so the smoothed curve lags the lr by the same small part of the range at any step count.

    That is 0.8 at the default 100 steps and Lightning's and fastai's fixed 0.98 at 1000.
    Their 0.98 over 100 steps averages over half the curve; on the digits quickstart it
    moved Adam's suggestion from 0.008 to 0.024, a third of the lr where the loss diverged.
    """
    return 1.0 - 1.0 / max(1.0, steps / 20)


@dataclass
class LrFindResult:
    out_dir: Path
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float  # steepest descent of the smoothed loss against log(lr)
    lr_at_min_loss: float
    low: float  # the range worth sweeping
    high: float
    stop_reason: str  # "max_lr" (the whole range ran), "diverged" or "non_finite"
    stop_lr: float | None  # the lr at which the test stopped early
    config: Any = None

    @property
    def still_falling(self) -> bool:
        """The whole range ran and the loss was lowest at its end: where it turns is untested."""
        return self.stop_reason == "max_lr" and self.lr_at_min_loss >= self.lrs[-1 - SKIP_END]

    def sweep_snippet(self) -> str:
        """One line for a sweep file's `parameters:`."""
        return f"optim.lr: {{distribution: log_uniform_values, min: {_fmt(self.low)}, max: {_fmt(self.high)}}}"

    @property
    def csv_path(self) -> Path:
        return self.out_dir / CSV_NAME

    @property
    def png_path(self) -> Path:
        return self.out_dir / PNG_NAME


def _fmt(v: float) -> str:
    return f"{v:.2g}"


def check_arguments(steps: int, min_lr: float, max_lr: float, smoothing: float | None) -> None:
    if not isinstance(steps, int) or steps < MIN_STEPS:
        raise ConfigError(
            f"lr-find --steps: got {steps}, expected a whole number >= {MIN_STEPS}: the first {SKIP_BEGIN} "
            f"points and the last are skipped when choosing the lr, so fewer leave no curve to judge. "
            f"Use --steps 100 (the default) or more."
        )
    for name, v in (("--min-lr", min_lr), ("--max-lr", max_lr)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigError(f"lr-find {name}: got {v}, expected a positive number such as "
                              f"{DEFAULT_MIN_LR if name == '--min-lr' else DEFAULT_MAX_LR:g}.")
    if min_lr >= max_lr:
        raise ConfigError(
            f"lr-find --min-lr/--max-lr: the test grows the lr from --min-lr to --max-lr, so --min-lr must be "
            f"smaller, got --min-lr {min_lr:g} and --max-lr {max_lr:g}. The defaults, 1e-08 and 1, cover "
            f"most models and optimizers."
        )
    if smoothing is not None and not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"lr-find smoothing: got {smoothing}, expected a weight in [0, 1) "
                          f"(0 = no smoothing, 0.98 = Lightning's default).")



def lr_find(
    config: ConfigLike = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    output: str | Path | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    min_lr: float = DEFAULT_MIN_LR,
    max_lr: float = DEFAULT_MAX_LR,
    smoothing: float | None = None,
    quiet: bool = False,
    command: str | None = None,
) -> LrFindResult:
    """Run the range test on the config (as `trainpipe train` would build it) and write
    `lr_find.csv`, `lr_find.png`, `lr_find.json` and the resolved `config.yaml` into
    `output` (default `runs/lr-find-<name>-<time>/`).

    Raises ConfigError for bad arguments, and (after writing the curve) when the loss
    never decreased or diverged before there was a curve to judge.
    """
    check_arguments(steps, min_lr, max_lr, smoothing)
    cfg = resolve(config, overrides)
    beta = default_beta(steps) if smoothing is None else float(smoothing)
    out_dir = Path(output) if output is not None else rundir.fresh(f"lr-find-{cfg.name}")
    lrs, losses, stop_reason = _run(cfg, steps, min_lr, max_lr, beta)
    smoothed = smooth(losses, beta)
    stop_lr = None if stop_reason == "max_lr" else lrs[-1]

    out_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(out_dir, cfg, command or f"trainpipe.run.lr_find({config!r}, overrides={list(overrides)!r})")
    write_csv(out_dir / CSV_NAME, lrs, losses, smoothed)
    choice, problem = choose(lrs, smoothed, min_lr)
    result = LrFindResult(out_dir, lrs, losses, smoothed, math.nan, math.nan, math.nan, math.nan,
                          stop_reason, stop_lr, cfg)
    if choice is not None:
        result.suggestion, result.lr_at_min_loss, result.low, result.high = choice
    plot(result, out_dir / PNG_NAME)
    files.write_json(out_dir / JSON_NAME, {
        "suggestion": None if choice is None else result.suggestion,
        "range": None if choice is None else [result.low, result.high],
        "lr_at_min_loss": None if choice is None else result.lr_at_min_loss,
        "sweep": None if choice is None else result.sweep_snippet(),
        "still_falling_at_max_lr": choice is not None and result.still_falling,
        "stop": {"reason": stop_reason, "step": len(lrs) - 1 if stop_lr is not None else None, "lr": stop_lr},
        "steps_run": len(lrs), "steps": steps, "min_lr": min_lr, "max_lr": max_lr, "smoothing": beta,
        "diverge_factor": DIVERGE_FACTOR,
        "rule": "suggestion: steepest descent of the smoothed loss against log(lr), skipping the first "
                f"{SKIP_BEGIN} points and the last; range: suggestion/10 .. the lr of the lowest smoothed loss, "
                "at most 10x the suggestion",
    })
    if problem is not None:
        raise ConfigError(f"{problem} The curve is in {out_dir / PNG_NAME} and {out_dir / CSV_NAME}.")
    if not quiet:
        print_report(result, steps, min_lr, max_lr)
    return result


@global_rng_kept()  # the user's next draw does not depend on the test having run
def _run(cfg: Any, steps: int, min_lr: float, max_lr: float, beta: float) -> tuple[list[float], list[float], str]:
    """Train for up to `steps` optimizer steps with the lr growing exponentially: the lrs
    and losses (mean over accumulated batches) of the steps up to the stop, and why it
    stopped ("max_lr", "diverged" or "non_finite")."""
    from trainpipe.loop.device import resolve_device, run_settings, settings_for

    device = resolve_device(cfg.train.device)
    with run_settings(settings_for(cfg.train, device)):
        return _build_and_ramp(cfg, device, steps, min_lr, max_lr, beta)


def _build_and_ramp(cfg: Any, device: Any, steps: int, min_lr: float, max_lr: float,
          beta: float) -> tuple[list[float], list[float], str]:
    from trainpipe import sched
    from trainpipe.loop.trainer import Trainer

    data, model, optimizer, _ = build_parts(cfg, device)
    o = cfg.optim
    # Each group's base_lr becomes its ratio to optim.lr (backbone_lr_mult, muon's adamw_lr),
    # which the schedule multiplies by the test's lr (the config requires optim.lr > 0).
    for g in optimizer.param_groups:
        g["base_lr"] = g.get("base_lr", g["lr"]) / o.lr
    # The step index is the schedule's time: lr(i) = min_lr * (max_lr / min_lr) ** (i / (steps - 1)),
    # Lightning's exponential ramp, ending exactly at max_lr.
    ratio, last = max_lr / min_lr, steps - 1
    curve = sched.Curve(sched.Horizon(start=0.0, end=float(last), steps_per_epoch=1),
                        lambda u: min_lr * ratio ** (u / last))
    schedule = sched.Schedule(optimizer, curve, warmup_epochs=0.0, steps_per_epoch=1)
    trainer = Trainer(cfg, model, optimizer, schedule, data, device=device)
    model.train()
    batches = _endless(data.train)
    try:
        return _ramp(trainer, schedule, curve, batches, steps, cfg.train.grad_accum_steps, beta)
    finally:
        batches.close()  # a stream loader's worker processes end with its iterator


def _ramp(trainer: Any, schedule: Any, curve: Any, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
          steps: int, accum: int, beta: float) -> tuple[list[float], list[float], str]:
    lrs: list[float] = []
    losses: list[float] = []
    pending: list[torch.Tensor] = []
    avg, best = 0.0, math.inf
    for i in range(steps):
        schedule.step(float(i))
        lrs.append(curve(float(i)))
        step_loss = torch.zeros((), device=trainer.device)
        for j in range(accum):
            x, y = next(batches)
            loss, _ = trainer.train_step(x, y, accum, j + 1 == accum)
            step_loss += loss.detach().float()
        pending.append(step_loss / accum)
        if len(pending) == READ_EVERY or i == steps - 1:
            for value in torch.stack(pending).tolist():
                n = len(losses)
                losses.append(value)
                if not math.isfinite(value):
                    return lrs[: n + 1], losses, "non_finite"
                avg = beta * avg + (1 - beta) * value
                s = avg / (1 - beta ** (n + 1))
                if n > 1 and s > DIVERGE_FACTOR * best:
                    return lrs[: n + 1], losses, "diverged"
                best = min(best, s)
            pending.clear()
    return lrs, losses, "max_lr"


def _endless(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches epoch after epoch, each epoch with its own shuffle and augmentation."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise ConfigError("data.batch_size: leaves no training batch per epoch; lower the batch size.")
        epoch += 1


def smooth(losses: Sequence[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (fastai's and Lightning's); NaN once a loss is."""
    out, avg = [], 0.0
    for n, v in enumerate(losses):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (n + 1)))
    return out


def choose(
    lrs: Sequence[float], smoothed: Sequence[float], min_lr: float
) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """((suggestion, lr at the lowest smoothed loss, range low, range high), None), or
    (None, a message saying why no lr can be suggested)."""
    lr = np.asarray(lrs, dtype=float)
    sm = np.asarray(smoothed, dtype=float)
    window = np.arange(SKIP_BEGIN, len(sm) - SKIP_END)
    window = window[np.isfinite(sm[window])] if len(window) else window
    if len(window) < 3:
        where = f"at lr {lr[-1]:.2g}, after {len(lr)} steps" if len(lr) else "at once"
        return None, (
            f"lr-find: the loss diverged {where}, before there was a curve to judge (the first "
            f"{SKIP_BEGIN} points are skipped). Lower --min-lr (it was {min_lr:g}), or check the model "
            f"and data with `trainpipe train`: a loss that explodes at tiny lrs points to a broken setup."
        )
    ys, xs = sm[window], np.log10(lr[window])
    start, lowest = ys[0], int(np.argmin(ys))
    if ys[lowest] > (1 - MIN_DROP) * start:
        return None, (
            f"lr-find: the smoothed loss never decreased (from {start:.4g} it fell at most to {ys[lowest]:.4g}, "
            f"less than {MIN_DROP:.0%}) over lrs {lr[window[0]]:.2g} .. {lr[window[-1]]:.2g}, so there is no "
            f"lr to suggest. Raise --max-lr, or give the test more --steps; if the loss still does not move, "
            f"check that the model trains at all (model.freeze, the labels, optim.weight_decay)."
        )
    grads = np.gradient(ys, xs)
    steepest = int(np.argmin(grads[: lowest + 1]))
    suggestion = float(lr[window[steepest]])
    at_min = float(lr[window[lowest]])
    low = max(min(suggestion, at_min) / 10, min_lr)
    high = min(max(suggestion, at_min), 10 * suggestion)
    return (suggestion, at_min, low, high), None


def write_csv(path: Path, lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, row in enumerate(zip(lrs, losses, smoothed)):
            w.writerow([i, *(repr(float(v)) for v in row)])


def plot(result: LrFindResult, path: Path) -> None:
    from matplotlib.figure import Figure

    # A bare Figure renders with Agg and never touches pyplot's global state or a GUI backend.
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    lr, loss, sm = (np.asarray(v, dtype=float) for v in (result.lrs, result.losses, result.smoothed))
    ax.plot(lr, loss, color="0.75", lw=1, label="loss")
    ax.plot(lr, sm, color="C0", lw=2, label="smoothed loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    finite = sm[np.isfinite(sm)]
    if len(finite):
        # The exploding tail would squash the part of the curve that matters.
        top = float(np.max(finite[: SKIP_BEGIN + 1])) * 1.6
        ax.set_ylim(max(0.0, float(np.min(finite)) * 0.8 - 0.05 * top), top)
    if math.isfinite(result.suggestion):
        ax.axvspan(result.low, result.high, color="C2", alpha=0.15,
                   label=f"range to sweep {_fmt(result.low)} .. {_fmt(result.high)}")
        k = int(np.argmin(np.abs(np.log(lr) - math.log(result.suggestion))))
        ax.plot([result.suggestion], [sm[k]], "o", color="C3", ms=9,
                label=f"suggested lr {_fmt(result.suggestion)} (steepest descent)")
    if result.stop_lr is not None:
        ax.axvline(result.stop_lr, color="C3", ls="--", lw=1, label=f"stopped: {result.stop_reason} "
                                                                   f"at {_fmt(result.stop_lr)}")
    name = getattr(result.config, "name", "")
    ax.set_title(f"lr-find {name}: {len(lr)} steps".strip())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=110)


def print_report(result: LrFindResult, steps: int, min_lr: float, max_lr: float) -> None:
    r = result
    if r.stop_lr is not None:
        why = ("the loss was no longer finite" if r.stop_reason == "non_finite"
               else f"the smoothed loss passed {DIVERGE_FACTOR:g}x its minimum")
        ran = f"stopped after {len(r.lrs)} of {steps} steps, at lr {_fmt(r.stop_lr)}: {why}"
    else:
        ran = f"{steps} steps"
    lines = [
        f"lr-find: lr {min_lr:g} .. {max_lr:g}, {ran}",
        f"suggested lr: {_fmt(r.suggestion)} (where the smoothed loss falls fastest against log lr, "
        f"as Lightning's lr_find suggests)",
        f"lowest smoothed loss at lr {_fmt(r.lr_at_min_loss)}",
        f"range worth sweeping: {_fmt(r.low)} .. {_fmt(r.high)} (a decade below the suggestion .. "
        f"the lr of the lowest smoothed loss, at most a decade above the suggestion)",
        *([f"note: the loss was still falling at --max-lr {max_lr:g}; rerun with a larger --max-lr to see "
             f"where it stops, which may raise the suggestion and the range"] if r.still_falling else []),
        f"wrote {r.csv_path} and {r.png_path}",
        "paste under a sweep file's parameters:",
        f"  {r.sweep_snippet()}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
