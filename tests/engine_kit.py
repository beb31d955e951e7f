"""Small pieces for building a `Trainer` by hand in tests: in-memory loaders and a builder."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

import trainpipe
from trainpipe import optim, sched
from trainpipe.loop.callbacks import Callback
from trainpipe.loop.trainer import Trainer


class TensorLoader:
    """Consecutive batches of fixed tensors, in order: the loader contract without shuffling."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.x)

    def set_epoch(self, epoch: int) -> None:
        pass

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.batch_size
        for i in range(len(self)):
            yield self.x[i * bs : (i + 1) * bs], self.y[i * bs : (i + 1) * bs]


def blobs(n: int = 160, features: int = 8, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, features, generator=g) * 2
    return centers[y] + torch.randn(n, features, generator=g), y


def mlp(features: int = 8, classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


def make_trainer(
    model: nn.Module,
    train: Any,
    *,
    overrides: Sequence[str] = (),
    val: Any = None,
    callbacks: Sequence[Callback] = (),
) -> Trainer:
    """A Trainer on the CPU over `train` (and `val`), plain SGD at a constant lr unless overridden."""
    base = ["optim.name=sgd", "optim.momentum=0", "optim.nesterov=false", "optim.weight_decay=0",
            "optim.lr=0.1", "sched.name=constant", "train.epochs=1", "train.device=cpu"]
    cfg = trainpipe.load_config(None, base + list(overrides))
    o = cfg.optim
    optimizer = optim.build(o.name, o.options(), model, lr=o.lr, weight_decay=o.weight_decay,
                            decay_norm_and_bias=o.decay_norm_and_bias, backbone_lr_mult=o.backbone_lr_mult)
    schedule = sched.build(cfg.sched.name, cfg.sched.options(), optimizer, epochs=cfg.train.epochs,
                           steps_per_epoch=max(len(train), 1))
    data = SimpleNamespace(train=train, val=val, test=None)
    return Trainer(cfg, model, optimizer, schedule, data, device=torch.device("cpu"), callbacks=callbacks)


class InjectNaN(Callback):
    """Turns the model's output into NaN at the given training forward calls (0-based, counted
    over the whole run); the counter is a Python int, so the injection costs no host sync."""

    def __init__(self, calls: Sequence[int]) -> None:
        self.calls, self.count, self.handle = set(calls), 0, None

    def on_fit_start(self, trainer: Any) -> None:
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
            if not module.training:
                return None
            self.count += 1
            return output * float("nan") if self.count - 1 in self.calls else None

        self.handle = trainer.model.register_forward_hook(hook)

    def on_fit_end(self, trainer: Any) -> None:
        if self.handle is not None:
            self.handle.remove()


def ddp_accumulation_rank(rank: int, world: int, init_file: str, out: str, batch: int, accum: int) -> None:
    """One rank of a gloo DDP run of `make_trainer` over `blobs()`: every global batch of
    `batch` rows is split in `world` consecutive parts, one per rank. Rank 0 saves the
    weights after one epoch and how many gradient all-reduces DDP made (`torch.multiprocessing.spawn` target)."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = blobs(64)
        part = batch // world
        rows = torch.arange(len(x)).view(-1, world, part)[:, rank].reshape(-1)
        trainer = make_trainer(mlp(), TensorLoader(x[rows], y[rows], part),
                               overrides=[f"train.grad_accum_steps={accum}"])
        reductions = []

        def counting_hook(group, bucket):  # noqa: ANN001, ANN202 (DDP rejects string annotations here)
            reductions.append(bucket.index())
            return allreduce_hook(group, bucket)

        trainer.forward.register_comm_hook(dist.group.WORLD, counting_hook)
        trainer.train_epoch(0)
        if rank == 0:
            torch.save({"model": trainer.model.state_dict(), "reductions": len(reductions),
                        "steps": trainer.state.step}, out)
    finally:
        dist.destroy_process_group()

