"""Data-parallel training over several processes: DistributedDataParallel under torchrun.

`trainpipe train CONFIG --nproc N` runs the same command again in N processes on this
machine through torch's own launcher (`torch.distributed.run`, standalone rendezvous);
`torchrun --nproc_per_node N -m trainpipe train CONFIG` does the same and also spans
machines (`--nnodes`, `--rdzv-endpoint`). Every function below is a no-op in a plain
single-process run, so the loop calls them unconditionally.

How one run is split across W processes (ranks):

- `data.batch_size` is the global batch. Every rank draws the same permutation from
  (seed, epoch) and takes every W-th sample of each global batch, so steps per epoch,
  the learning-rate schedule and which samples share an optimizer step are those of a
  single-process run with the same batch size. It must be divisible by W.
- Each rank keeps the whole uint8 split on its own device (150 MB for CIFAR), as
  DistributedSampler reads from a full dataset, and gathers and augments only its slice.
- Gradients are averaged by DDP. BatchNorm statistics are per rank during an epoch and
  averaged across ranks at its end (the EMA copy's too), so every rank evaluates and
  saves the same weights.
- Train loss and accuracy sums are all-reduced once per epoch. Validation and test are
  sharded the same way; their logits are gathered and every rank computes the same
  metrics, so early stopping and plateau schedules decide the same on every rank.
- Only rank 0 writes the run directory, checkpoints, metrics, trackers and the console;
  rank 0 picks the run directory and sends its path to the others.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from trainpipe.errors import ConfigError

if TYPE_CHECKING:
    from trainpipe.config import RunConfig

T = TypeVar("T")
EXIT_CRASH = 1  # the CLI's code for a crash: a rank killed by a signal counts as one


def launched() -> bool:
    """True in a process started by torchrun (or `--nproc`) as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: from the process group, or from torchrun's RANK before joining it."""
    if is_distributed():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0, the only process that writes files and prints."""
    return rank() == 0


# --------------------------------------------------------------------------- launch
def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `trainpipe *argv` in `nproc` processes on this machine; returns the exit code.

    The exit code is the first failing rank's (0 when all succeed), so a bad input still
    exits with 2 and a crash with 1.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc: expected the number of processes (1 or more), got {nproc}.")
    if "LOCAL_RANK" in os.environ:
        raise ConfigError(
            "--nproc: this command already runs under torchrun (LOCAL_RANK is set); drop --nproc "
            "and let torchrun's --nproc_per_node choose the number of processes."
        )
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun would give every rank one thread; splitting the cores evenly is faster on
    # CPU (gloo) and changes nothing on GPUs.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    # The launcher logs each failing process at length; the ranks print their own error and
    # the line below says which one failed first.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    args = parse_args(["--standalone", f"--nproc_per_node={nproc}", "--module", "trainpipe", *argv])
    try:
        run(args)
    except ChildFailedError as e:
        first_rank, first = e.get_first_failure()
        print(f"error: {len(e.failures)} of {nproc} processes failed; rank {first_rank} was first, with exit "
              f"code {first.exitcode} (its message is above).", file=sys.stderr)
        return first.exitcode if first.exitcode > 0 else EXIT_CRASH
    except (KeyboardInterrupt, SignalException):
        return 130
    return 0


# ---------------------------------------------------------------------------- setup
def setup(device: torch.device) -> torch.device:
    """Join the process group when launched as a rank; returns this rank's device.

    Idempotent. The backend follows the device: NCCL for CUDA, gloo for the CPU; each
    rank trains on cuda:LOCAL_RANK (or the CPU).
    """
    if not launched():
        return device
    _check_device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kw)
        atexit.register(teardown)
    return device


def _check_device(device: torch.device) -> None:
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(
            f"train.device={device.type}: multi-process training runs on CUDA GPUs (NCCL) or on the CPU "
            "(gloo); set train.device=cuda or train.device=cpu, or train in one process."
        )


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        # Every rank must be done with the group before any rank closes its connections:
        # a gloo peer that sees a connection close mid-exchange aborts its process.
        try:
            dist.barrier()
        except Exception:  # a rank already gone: nothing left to wait for
            pass
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    # NCCL moves CUDA tensors only, gloo CPU tensors only.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------- collectives
def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any (one all-reduce; call it rarely)."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` on every rank (e.g. the run directory rank 0 picked)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order (`[obj]` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sums(*values: Any) -> tuple[Any, ...]:
    """Sum numbers and scalar tensors over ranks in one collective; each keeps its type."""
    if not is_distributed():
        return values
    comm = _comm_device()
    packed = torch.stack([torch.as_tensor(v).detach().to(comm, torch.float64).reshape(()) for v in values])
    dist.all_reduce(packed)
    out = []
    for v, s in zip(values, packed):
        if isinstance(v, torch.Tensor):
            out.append(s.to(v.device, v.dtype).reshape(v.shape))
        else:
            out.append(type(v)(s.item()))
    return tuple(out)


def average_buffers(*modules: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, in place."""
    if not is_distributed():
        return
    seen: set[int] = set()
    bufs = []
    for m in modules:
        for b in m.buffers():
            if b.is_floating_point() and id(b) not in seen:
                seen.add(id(b))
                bufs.append(b)
    if not bufs:
        return
    comm = _comm_device()
    flat = torch.cat([b.detach().reshape(-1).to(comm, torch.float32) for b in bufs])
    dist.all_reduce(flat)
    flat /= world_size()
    for b, part in zip(bufs, flat.split([b.numel() for b in bufs])):
        b.copy_(part.view_as(b).to(b.device, b.dtype))


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (rank order); the ranks may hold different counts."""
    if not is_distributed():
        return t
    comm = _comm_device()
    local = t.detach().to(comm)
    count = torch.tensor([local.shape[0]], device=comm)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    longest = max(sizes)
    # all_gather needs equal shapes: pad to the longest, trim afterwards.
    padded = torch.cat([local, local.new_zeros((longest - local.shape[0], *local.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(t.device)


# ----------------------------------------------------------------- model and data
def wrap(model: nn.Module, device: torch.device, *, sync_bn: bool = False) -> nn.Module:
    """The model as the training step should call it: DDP-wrapped when distributed.

    With `sync_bn`, BatchNorm layers become SyncBatchNorm first (in place, keeping their
    parameters and buffers, so the optimizer, EMA and checkpoints are unaffected): in
    training they normalise with the statistics of the global batch instead of each
    rank's slice. Checkpoints keep saving the unwrapped model, so they load in any process count.
    """
    if not is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # Buffers are averaged once per epoch (`average_buffers`) instead of broadcast from
    # rank 0 before every forward: one collective per epoch instead of one per step.
    # torch 2.14 renamed the option; older releases only know broadcast_buffers.
    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
    # Gradients that are views into DDP's buckets save a copy per step and a gradient's
    # worth of memory. The reducer warns when a gradient arrives with other strides than
    # its bucket view; for weights with a size-1 dimension (the first conv of a grey-image
    # net) both describe the same memory, and any real mismatch is still copied correctly.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   gradient_as_bucket_view=True, **{no_sync: False})


def batch_sizes(cfg: "RunConfig") -> list[int]:
    """Every global training batch size a run uses: data.batch_size and any scheduled ones."""
    return [cfg.data.batch_size, *(cfg.train.batch_size_schedule or {}).values()]


def check(cfg: "RunConfig", nproc: int) -> None:
    """Refuse, before any process starts, a config that cannot run on `nproc` processes."""
    bad = sorted({b for b in batch_sizes(cfg) if b % nproc})
    if bad:
        raise ConfigError(
            f"data.batch_size: with {nproc} processes the batch size is the global batch, split evenly "
            f"across processes, so it must be divisible by {nproc}; got {', '.join(map(str, bad))}. "
            f"Choose a multiple of {nproc} (also in train.batch_size_schedule)."
        )
    from trainpipe.loop.device import resolve_device

    device = resolve_device(cfg.train.device)
    _check_device(device)
    if cfg.train.sync_bn and nproc > 1 and device.type != "cuda":
        raise ConfigError(
            f"train.sync_bn: torch's SyncBatchNorm runs on GPUs only, and this run trains on {device.type}. "
            f"Set train.sync_bn=false (each process then normalises with its own slice of the batch)."
        )
    # Under torchrun (several machines) the world may exceed this machine's GPUs; `--nproc` is one machine.
    if device.type == "cuda" and not launched() and nproc > torch.cuda.device_count():
        raise ConfigError(
            f"--nproc {nproc}: each process trains on its own GPU, but this machine has "
            f"{torch.cuda.device_count()}. Use --nproc {max(torch.cuda.device_count(), 1)}, or "
            "train.device=cpu to run the processes on the CPU."
        )


def shard(data: Any, cfg: "RunConfig") -> None:
    """Give this rank its slice of every split's batches (see the module docstring)."""
    if not is_distributed():
        return
    check(cfg, world_size())
    w = world_size()
    for loader in (data.train, data.val, data.test):
        if loader is not None:
            loader.shard(rank(), w)
