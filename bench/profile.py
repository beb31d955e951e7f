"""Where the training time goes: `python -m bench profile [CONFIG] [KEY=VALUE ...] [options]`.

Trains CONFIG (with its overrides) through `trainpipe.train()` and profiles its last epoch
with torch.profiler, after the earlier epochs have warmed up (compiled, cudnn autotuned,
caches filled): CPU activity, plus CUDA kernels when training on a GPU. Prints the ops by
self time, so that what dominates a step (convolutions, the loader's gathers, an
optimizer, a sync) is one glance away; `--trace FILE` also writes a Chrome trace
(open it in https://ui.perfetto.dev or chrome://tracing).

Keep it short with a small `data.fraction` (the table is per epoch, not per image). Not
part of `make bench`: it checks no requirement and writes nothing to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

import trainpipe
from trainpipe.loop.callbacks import Callback


class ProfileLastEpoch(Callback):
    """Profiles the final epoch (training and, if any, validation) of a run."""

    def __init__(self) -> None:
        self.prof: profile | None = None

    def on_epoch_start(self, trainer: Any) -> None:
        if trainer.state.epoch + 1 != trainer.cfg.train.epochs:
            return
        activities = [ProfilerActivity.CPU]
        if trainer.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.prof = profile(activities=activities)
        self.prof.__enter__()

    def on_epoch_end(self, trainer: Any) -> None:
        if self.prof is not None and trainer.state.epoch == trainer.cfg.train.epochs:
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
            self.prof.__exit__(None, None, None)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench profile", description=__doc__.splitlines()[0])
    p.add_argument("args", nargs="*", help="[CONFIG] [KEY=VALUE ...], as for `trainpipe train`")
    p.add_argument("--epochs", type=int, default=2, help="epochs to train; the last is profiled (default 2)")
    p.add_argument("--rows", type=int, default=20, help="ops to list (default 20)")
    p.add_argument("--trace", type=Path, default=None, help="write a Chrome trace of the profiled epoch")
    a = p.parse_args(argv)
    if a.epochs < 1:
        p.error("--epochs must be at least 1")
    config = a.args[0] if a.args and "=" not in a.args[0] else None
    overrides = [x for x in a.args if x != config]
    overrides += [f"train.epochs={a.epochs}", "tracking.progress=none", "tracking.plots=false"]
    cb = ProfileLastEpoch()
    with tempfile.TemporaryDirectory(prefix="trainpipe-profile-") as out:
        result = trainpipe.train(config, overrides, output=Path(out) / "run", quiet=True, callbacks=[cb])
    if cb.prof is None:
        print("bench profile: the run ended before its last epoch; nothing was profiled.")
        return 1
    cuda = any(e.device_type == torch.autograd.DeviceType.CUDA for e in cb.prof.events())
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"{result.summary.get('name')}: epoch {a.epochs} of {a.epochs} profiled on {result.summary.get('device')}, "
          f"{result.summary.get('train_size')} training samples; ops by {sort.replace('_', ' ')}")
    print(cb.prof.key_averages().table(sort_by=sort, row_limit=a.rows))
    if a.trace is not None:
        cb.prof.export_chrome_trace(str(a.trace))
        print(f"trace: {a.trace}")
    return 0
