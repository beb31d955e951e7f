"""Step overhead: trainpipe's epoch against a plain hand-written PyTorch loop, same run.

Both sides get the same model (the same initial weights), the same data tensors (the
uint8 images or float features the DeviceLoader holds, on the same device), the same
optimizer (SGD, Nesterov momentum, weight decay), the same batch size and the same
cosine learning rate set before every step, and both report the epoch's mean loss and
accuracy (summed on the device, read once per epoch). trainpipe's side is
`Trainer.train_epoch` of a trainer built by `trainpipe.train()` itself (a callback
captures it when the fit starts), so config, data, model, optimizer and schedule
come from the real code path.

Protocol: one warm-up epoch each, then `rounds` epochs each in alternating order
(trainpipe first in even rounds), so that drifts of a shared machine hit both sides
alike; the ratio is the median over rounds of trainpipe / plain. On the CPU both sides run on one
thread and are timed in process CPU time (see `bench.timed`); on a GPU, in wall-clock
time after a device synchronisation.
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench import Section, add_write_option, hardware, median, publish, spread, table, timed, today

MAX_RATIO = 1.05  # the bound on the CPU: features, not cost


@dataclass(frozen=True)
class Workload:
    name: str
    inputs: tuple[int, ...]  # (C, H, W) images (uint8) or (D,) features (float)
    samples: int
    batch_size: int
    model: Sequence[str]  # config overrides of the model section
    train: Sequence[str] = ()  # further overrides, e.g. train.precision=bf16 (applied to both sides)
    classes: int = 10

    def overrides(self, path: Path) -> list[str]:
        return [
            "name=bench-step", "data.dataset=arrays", f"data.path={path}", "data.val_split=0",
            f"data.batch_size={self.batch_size}", "data.augment=[]", "data.loader=device",
            f"data.cache_dir={path.parent / 'cache'}",
            *self.model,
            "optim.name=sgd", "optim.lr=0.05", "optim.momentum=0.9", "optim.nesterov=true",
            "optim.weight_decay=5e-4", "optim.decay_norm_and_bias=true",
            "sched.name=cosine", "train.epochs=1000", "train.device=auto",
            "tracking.plots=false", "tracking.progress=none", "train.checkpoint.best=false",
            *self.train,
        ]


# A conv net whose steps are compute-bound on a CPU, and an MLP whose steps are so short
# that per-step Python overhead (the thing this benchmark is about) is most visible.
WORKLOADS = {
    "cnn": Workload("cnn_small (width 8) 32x32x3", (3, 32, 32), 2048, 128, ["model.name=cnn_small", "model.width=8"]),
    "mlp": Workload("mlp 64-256-256-10", (64,), 32768, 256, ["model.name=mlp", "model.widths=[256, 256]"]),
    "tiny": Workload("mlp 64-32-10", (64,), 32768, 64, ["model.name=mlp", "model.widths=[32]"]),
}


def write_arrays(w: Workload, folder: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, w.classes, size=w.samples)
    if len(w.inputs) == 3:
        x = rng.integers(0, 256, size=(w.samples, *w.inputs), dtype=np.uint8)
    else:
        # Features with a class signal, so that the loss actually moves.
        x = (rng.normal(size=(w.samples, *w.inputs)) + y[:, None] * 0.1).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{w.name.split()[0]}.npz"
    np.savez(path, train_x=x, train_y=y)
    return path


class PlainLoop:
    """What one writes by hand: permutation, slice, normalise, forward, loss, backward, step.

    With `amp_dtype`, `channels_last` and `compile` it does what a hand-tuned GPU loop
    does: autocast, channels-last batches, a compiled model, the fused optimizer on CUDA.
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mean: Any, std: Any, *,
                 batch_size: int, epochs: int, lr: float, seed: int, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False, compile: bool = False) -> None:
        self.model, self.x, self.y, self.batch_size = model, x, y, batch_size
        image = x.dtype == torch.uint8
        shape = (1, -1, 1, 1) if image else (1, -1)
        self.mean = torch.tensor(mean, device=x.device).view(shape)
        self.std = torch.tensor(std, device=x.device).view(shape)
        self.image = image
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                   fused=True if x.is_cuda else None)
        self.lr, self.epochs, self.seed = lr, epochs, seed
        self.amp_dtype, self.channels_last = amp_dtype, channels_last
        self.forward = torch.compile(model) if compile else model

    def epoch(self, epoch: int) -> tuple[float, float]:
        model, bs, device = self.model, self.batch_size, self.x.device
        model.train()
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        perm = torch.randperm(len(self.y), generator=g).to(device)
        steps = len(self.y) // bs
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        for i in range(steps):
            t = epoch + i / steps
            lr = self.lr * 0.5 * (1 + math.cos(math.pi * t / self.epochs))
            for group in self.opt.param_groups:
                group["lr"] = lr
            idx = perm[i * bs : (i + 1) * bs]
            x = self.x[idx]
            x = (x.float().div_(255) if self.image else x).sub_(self.mean).div_(self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = self.y[idx]
            if self.amp_dtype is not None:
                with torch.autocast(device.type, dtype=self.amp_dtype):
                    logits = self.forward(x)
            else:
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss_sum += loss.detach() * bs
            correct += (logits.detach().argmax(1) == y).sum()
        return (loss_sum / (steps * bs)).item(), correct.item() / (steps * bs)


@dataclass
class Measured:
    workload: Workload
    device: str
    steps: int
    plain: list[float]
    trainpipe: list[float]

    @property
    def images_per_s(self) -> float:
        """trainpipe's training throughput (median epoch)."""
        return self.steps * self.workload.batch_size / median(self.trainpipe)

    @property
    def ratio(self) -> float:
        """Median over rounds of trainpipe / plain, each pair measured back to back.

        Pairs adjacent in time see the same load from other processes; the median of
        their ratios drifts less than the ratio of two medians on a shared machine.
        """
        return median([t / p for t, p in zip(self.trainpipe, self.plain)])


def measure(w: Workload, *, rounds: int, folder: Path) -> Measured:
    import trainpipe
    from trainpipe.loop.callbacks import Callback

    path = write_arrays(w, folder)
    captured: dict[str, Any] = {}

    class Capture(Callback):
        def on_fit_start(self, trainer: Any) -> None:
            captured["trainer"] = trainer
            trainer.state.should_stop, trainer.state.stop_reason = True, "benchmark"

    trainpipe.train(None, w.overrides(path), output=folder / "run", quiet=True, callbacks=[Capture()])
    tr = captured["trainer"]
    loader, device = tr.data.train, tr.device
    # The baseline starts from the same weights as trainpipe's model.
    t = tr.cfg.train
    plain = PlainLoop(copy.deepcopy(tr.model), loader.split.x, loader.split.y, tr.data.mean, tr.data.std,
                      batch_size=loader.batch_size, epochs=t.epochs, lr=tr.cfg.optim.lr, seed=1,
                      amp_dtype=tr.amp_dtype, channels_last=t.channels_last, compile=t.compile)
    sides = {"trainpipe": lambda e: tr.train_epoch(e), "plain": plain.epoch}
    times: dict[str, list[float]] = {"trainpipe": [], "plain": []}
    cpu = device.type == "cpu"
    for fn in sides.values():  # warm-up: allocator, caches, first-call costs
        timed(lambda: fn(0), device)
    for r in range(rounds):
        order = ["trainpipe", "plain"] if r % 2 == 0 else ["plain", "trainpipe"]
        for name in order:
            times[name].append(timed(lambda: sides[name](r + 1), device, cpu_time=cpu))
    return Measured(w, str(device), len(loader), times["plain"], times["trainpipe"])


def report(results: Sequence[Measured]) -> str:
    rows = [[m.workload.name, m.device, m.workload.batch_size, m.steps, spread(m.plain), spread(m.trainpipe),
             f"{m.ratio:.3f}"] for m in results]
    return table(["workload", "device", "batch", "steps/epoch", "plain loop s/epoch (median, min-max)",
                  "trainpipe s/epoch", "ratio"], rows)


def run(quick: bool = False, *, workloads: Sequence[str] = tuple(WORKLOADS), rounds: int | None = None) -> Section:
    rounds = rounds or (2 if quick else 21)
    results = []
    threads = torch.get_num_threads()
    # One thread: process CPU time then measures work, not other threads spinning (bench.timed).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="trainpipe-bench-step-") as tmp:
            for key in workloads:
                w = WORKLOADS[key]
                if quick:
                    w = Workload(w.name, w.inputs, w.batch_size * 4, w.batch_size, w.model)
                results.append(measure(w, rounds=rounds, folder=Path(tmp) / key))
                print(f"  {w.name}: ratio {results[-1].ratio:.3f}", flush=True)
        where = hardware()
    finally:
        torch.set_num_threads(threads)
    body = report(results)
    print(body)
    worst = max(m.ratio for m in results)
    ok = worst <= MAX_RATIO
    clock = "process CPU time, one thread" if device == "cpu" else "wall-clock time after a device synchronisation"
    md = "\n".join([
        f"`python -m bench step` (also part of `make bench`), measured {today()} on {where}. "
        f"{rounds} epochs per side in alternating order after one warm-up epoch each; times are {clock}; "
        f"ratio = median over rounds of trainpipe / plain loop (each pair measured back to back)"
        f"{' (quick mode: tiny sizes, not for quoting)' if quick else ''}.",
        "",
        body,
        "",
        f"Worst ratio {worst:.3f} (bound on the CPU: {MAX_RATIO}): {'within' if ok else 'OVER'} the bound.",
    ])
    return Section("step", md, ok)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench step", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, 2 rounds: checks that it runs")
    p.add_argument("--rounds", type=int, default=None, help="timed epochs per side (default 21)")
    p.add_argument("--workload", choices=sorted(WORKLOADS), action="append", help="default: all")
    add_write_option(p)
    a = p.parse_args(argv)
    section = run(a.quick, workloads=a.workload or tuple(WORKLOADS), rounds=a.rounds)
    publish(section, a)
    return 0 if section.ok else 1
