"""`trainpipe sweep FILE --dry-run`: what would run, and how long it would take here.

Nothing is written and no study is opened. The estimate comes from the first
configuration, trained for a few steps on this machine through the ordinary run path
(data, model, optimizer, the loop), then one validation pass: per trial, the start-up
(data loading, model building) plus epochs x (steps x time per step + a validation
pass), plus a test pass where the sweep's `test:` asks for one.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from trainpipe.loop.callbacks import Callback
from trainpipe.sweep.spec import SweepSpec

WARMUP_STEPS = 3  # the first steps pay for allocation, cuDNN autotuning, compilation
TIMED_STEPS = 10
LISTED_TRIALS = 100


@dataclass
class Timing:
    startup_s: float  # from the call until training starts: data, model, optimizer
    step_s: float  # one optimizer step (loading the batch included)
    steps_per_epoch: int
    epochs: int
    val_s: float  # one pass over the validation split
    test_s: float  # one pass over the test split (estimated from the validation pass)
    device: str

    def trial_s(self, with_test: bool) -> float:
        return self.startup_s + self.epochs * (self.steps_per_epoch * self.step_s + self.val_s) \
            + (self.test_s if with_test else 0.0)


class _Enough(Exception):
    """Raised by the timer once it has measured what it needs; ends the timing run."""


class StepTimer(Callback):
    """Times the optimizer steps of the first epoch, then one validation pass, then stops the run."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.ends: list[float] = []
        self.timing: Timing | None = None

    def on_fit_start(self, trainer: Any) -> None:
        self.fit_start = time.perf_counter()
        inner = trainer.train_step

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.ends:
                self.ends.append(time.perf_counter())  # the first batch has been loaded
            out = inner(*args, **kwargs)
            _sync(trainer.device)
            self.ends.append(time.perf_counter())
            if len(self.ends) > WARMUP_STEPS + TIMED_STEPS + 1:
                self.finish(trainer)
            return out

        trainer.train_step = timed

    def on_epoch_end(self, trainer: Any) -> None:
        self.finish(trainer)  # an epoch shorter than the steps wanted

    def finish(self, trainer: Any) -> None:
        gaps = [b - a for a, b in zip(self.ends, self.ends[1:])]
        kept = gaps[WARMUP_STEPS:] or gaps[1:] or gaps
        val_s = 0.0
        if trainer.data.val is not None:
            t0 = time.perf_counter()
            trainer.evaluate(trainer.data.val, prefix="val")
            _sync(trainer.device)
            val_s = time.perf_counter() - t0
        info = trainer.data.info
        val_n, test_n = info.get("val_size") or 0, info.get("test_size") or 0
        # The test pass is the validation pass at the test split's size.
        per_sample = val_s / val_n if val_n else statistics.median(kept) / trainer.cfg.data.batch_size / 3
        self.timing = Timing(startup_s=self.fit_start - self.started, step_s=statistics.median(kept) if kept else 0.0,
                             steps_per_epoch=len(trainer.data.train), epochs=trainer.cfg.train.epochs,
                             val_s=val_s, test_s=per_sample * test_n, device=str(trainer.device))
        raise _Enough


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", "") == "cuda":
        torch.cuda.synchronize(device)


def first_configuration(spec: SweepSpec) -> dict[str, Any]:
    """The overrides of the sweep's first trial (a grid's first point; else each range's low end)."""
    points = spec.search().points
    if points:
        return points[0]
    return {p.key: p.candidates()[0] for p in spec.varied}


def time_first_configuration(spec: SweepSpec) -> Timing:
    """Train the first configuration for a few steps in a temporary directory; nothing is kept."""
    from trainpipe.run.train import train

    from trainpipe.registry import TRACKERS

    # No tracker but metrics.jsonl: neither the list, nor the aliases, nor an options section.
    quiet: dict[str, Any] = {"tracking.trackers": [], "tracking.plots": False, "tracking.tensorboard": False}
    quiet.update({f"tracking.{n}": None for n in TRACKERS.names() if f"tracking.{n}" not in quiet})
    overrides = {**spec.constant_overrides(), **first_configuration(spec), **quiet}
    timer = StepTimer(time.perf_counter())
    with tempfile.TemporaryDirectory(prefix="trainpipe-dry-run-") as tmp:
        try:
            train(spec.base, overrides, f"{tmp}/run", quiet=True, callbacks=[timer])
        except _Enough:
            pass
    if timer.timing is None:
        raise RuntimeError("the timing run ended before its first epoch")
    return timer.timing


def fmt_duration(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 90:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _yaml(v: Any) -> str:
    """A value as it would be written on the command line (false, null, [a, b])."""
    import yaml

    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def plan_lines(spec: SweepSpec, total: int | None, workers: int) -> list[str]:
    """What would run: the search, the trial count, what every trial sets, each listed point."""
    from trainpipe.sweep.final_test import WHEN
    from trainpipe.sweep.results import fmt

    search = spec.search()
    count = f"{total} trials" if total is not None else "trials until stopped (no run_cap or --trials)"
    lines = [f"sweep {spec.name} (dry run: nothing is written): {spec.method} search ({search.summary}), {count}, "
             f"{workers} worker{'s' if workers > 1 else ''}; metric {spec.metric_label} ({spec.goal})"]
    if search.points is not None:
        lines[0] += f"; {len(search.points)} {search.noun}"
    common = {k: v for k, v in spec.constant_overrides().items() if not k.startswith("train.monitor")}
    if common:
        lines.append("every trial: " + " ".join(f"{k}={_yaml(v)}" for k, v in common.items()))
    lines.append(f"test split: {WHEN[spec.test]}")
    if search.points is not None:
        by_key = {p.key: p for p in spec.varied}
        points = search.points[: total if total is not None else None]
        for i, combo in enumerate(points[:LISTED_TRIALS]):
            shown = " ".join(f"{by_key[k].display}={fmt(by_key[k].label_of(v))}" for k, v in combo.items())
            lines.append(f"  trial {i:04d}: {shown or '(no varied parameters)'}")
        if len(points) > LISTED_TRIALS:
            lines.append(f"  ... and {len(points) - LISTED_TRIALS} more")
    else:
        for p in spec.varied:
            lines.append(f"  {p.display}: {p.distribution} {fmt(list(p.labels or p.values)) if p.values else ''}"
                         f"{'' if p.low is None else f'[{p.low:g}, {p.high:g}]'}".rstrip())
    return lines


def estimate_lines(spec: SweepSpec, timing: Timing, total: int | None, workers: int) -> list[str]:
    per_trial = timing.trial_s(spec.test == "all")
    lines = [f"timed on {timing.device}: start-up {fmt_duration(timing.startup_s)}, {timing.step_s * 1000:.1f} ms "
             f"per step x {timing.steps_per_epoch} steps/epoch x {timing.epochs} epochs, validation pass "
             f"{fmt_duration(timing.val_s)}, test pass ~{fmt_duration(timing.test_s)}"]
    if total is None:
        lines.append(f"estimate: ~{fmt_duration(per_trial)} per trial; the sweep runs until stopped")
        return lines
    seeds = len(spec.seed_param.values) if spec.seed_param is not None and spec.seed_param.values else 1
    final_test = timing.test_s * seeds if spec.test == "best" else 0.0
    rounds = -(-total // workers)  # trials run side by side, `workers` at a time
    wall = rounds * per_trial + final_test
    lines.append(f"estimate: ~{fmt_duration(per_trial)} per trial, ~{fmt_duration(wall)} for {total} trials on "
                 f"{workers} worker{'s' if workers > 1 else ''} (from the first configuration; larger models, "
                 f"batch sizes or epochs take longer, workers sharing a device run slower, hyperband pruning "
                 f"shortens it)")
    return lines
