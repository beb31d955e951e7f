"""Loaders: iterables of (inputs, targets) batches already on the training device.

Both loaders share one contract: `len(loader)` batches per epoch, `set_epoch(e)`
before iterating, a settable `batch_size` (read when an epoch starts), and batches
`(x, y)` on the device with x normalised float (channels-last when asked) and y int64
labels, or float soft targets (B, C) after MixUp/CutMix.

Everything random is a function of (seed, epoch): the sample order comes from a CPU
generator (so both loaders, on any device, visit samples in the same order), and the
augmentation and mixing draws from generators seeded from the same pair. An epoch's
batches therefore depend only on the seed and the epoch number: that is what makes
resume exact.

`DeviceLoader` keeps the whole split on the device and augments a whole batch at a
time with tensor ops (airbench's approach): no workers, no host round trip.
`StreamLoader` is a torch DataLoader applying per-sample torchvision v2 transforms in
worker processes: for ops without a batched form and for data too big for the device.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainpipe.data.augment import apply_batch
from trainpipe.data.base import Split

Mix = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]

# Independent random streams derived from one (seed, epoch) pair.
ORDER, AUGMENT, MIX = 0, 1, 2


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    # A large odd multiplier keeps (seed, epoch) pairs from colliding; 4 streams per pair.
    return ((seed * 1_000_003 + epoch) * 4 + stream) % (2**63)


def generator(seed: int, epoch: int, stream: int, device: torch.device | str = "cpu", rank: int = 0) -> torch.Generator:
    g = torch.Generator(device=device)
    # DDP ranks augment different samples and need their own draws; rank 0 keeps the
    # single-process stream (the offset is the 64-bit golden ratio, as in splitmix64).
    g.manual_seed((stream_seed(seed, epoch, stream) + rank * 0x9E3779B97F4A7C15) % (2**63))
    return g


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The sample order of an epoch (CPU int64), the same for both loaders."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=generator(seed, epoch, ORDER))


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    # drop_last never drops everything: a split smaller than one batch still gives one.
    if drop_last and n >= batch_size:
        return n // batch_size
    return -(-n // batch_size)


class _Normalize:
    """(x - mean) / std as one fused multiply-add, then channels-last: the same arithmetic in both loaders."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None, *, image: bool,
                 channels_last: bool, device: torch.device) -> None:
        shape = (1, -1, 1, 1) if image else (1, -1)
        self.scale = self.shift = None
        if mean is not None and std is not None:
            s = 1.0 / torch.tensor(std, dtype=torch.float64)
            self.scale = s.float().to(device).view(shape)
            self.shift = (-torch.tensor(mean, dtype=torch.float64) * s).float().to(device).view(shape)
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        to_cl = self.channels_last and x.dim() == 4
        if self.scale is None:
            return x.contiguous(memory_format=torch.channels_last) if to_cl else x
        # Writing straight into a channels-last buffer saves a pass over the batch.
        out = torch.empty_like(x, memory_format=torch.channels_last if to_cl else torch.contiguous_format)
        return torch.addcmul(self.shift, x, self.scale, out=out)


def to_unit_float(x: torch.Tensor, image: bool) -> torch.Tensor:
    """uint8 images -> float in [0, 1]; features -> float."""
    # torchvision's own uint8 -> float conversion (v2.ToDtype(scale=True)), bit for bit.
    return x.float().mul_(1.0 / 255.0) if image else x.float()


class _Base:
    split: Split

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        device: torch.device,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        shuffle: bool = False,
        drop_last: bool = False,
        mix: Mix | None = None,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        """The options every loader shares; each subclass adds its own keyword arguments."""
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self.device = torch.device(device)
        self.mix = mix
        self._n = len(split)
        self.rank, self.world_size = 0, 1
        # The random streams of the iteration in progress, and where the next one starts.
        self._live: dict[str, torch.Generator] = {}
        self._start: tuple[int, dict[str, torch.Tensor]] = (0, {})
        self._normalize = _Normalize(mean, std, image=split.is_image, channels_last=channels_last, device=self.device)

    def __len__(self) -> int:
        return num_batches(self._n, self.batch_size, self.drop_last)

    @property
    def channels_last(self) -> bool:
        """True when image batches come in the channels-last memory format."""
        return self._normalize.channels_last

    @property
    def num_samples(self) -> int:
        """Samples seen per epoch (fewer than the split when drop_last drops a tail)."""
        return min(self._n, len(self) * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def position(self) -> dict[str, torch.Tensor]:
        """Where the iteration in progress is: the states of its random streams (augmentation,
        mixing) after the last batch it yielded, for a checkpoint saved mid-epoch."""
        return {name: g.get_state() for name, g in self._live.items()}

    def start_at(self, batch: int, streams: dict[str, torch.Tensor]) -> None:
        """Make the next iteration of this epoch start at `batch`, its random streams as `position()`
        found them: the batches it yields are those an uninterrupted iteration yields from there."""
        self._start = (batch, dict(streams))

    def _begin(self) -> tuple[int, dict[str, torch.Tensor]]:
        start, self._start = self._start, (0, {})
        self._live = {}
        return start

    def _stream(self, name: str, stream: int, streams: dict[str, torch.Tensor]) -> torch.Generator:
        g = generator(self.seed, self.epoch, stream, self.device, self.rank)
        if name in streams:
            g.set_state(streams[name])
        self._live[name] = g
        return g

    def shard(self, rank: int, world_size: int) -> None:
        """Yield only samples rank, rank + world_size, ... of each batch (DDP: trainpipe.loop.distributed).

        `batch_size`, `len()` and `num_samples` stay global: every rank takes the same
        number of steps, each on its slice of the same global batch.
        """
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first, streams = self._begin()
        return self._mixed(self._batches(first, streams), streams)

    def _batches(self, first: int, streams: dict[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def _mixed(self, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
               streams: dict[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.mix is None:
            yield from batches
            return
        g = self._stream("mix", MIX, streams)
        for x, y in batches:
            yield self.mix(x, y, g)


class DeviceLoader(_Base):
    """The whole split on the device; batched augmentation with an independent draw per sample."""

    def __init__(self, split: Split, *, ops: Sequence[Any] = (), normalize_once: bool = False, **common: Any) -> None:
        """`ops`: batched augmentations, applied in order; `normalize_once`: without ops,
        convert and normalise the whole split once (a float32 copy of it is kept on the
        device) so that a batch is one gather; `common`: see `_Base.__init__`."""
        super().__init__(split, **common)
        self.split = split.to(self.device)
        self.ops = list(ops)
        self._is_image = split.is_image
        # Augmentations work on [0, 1] pixels, batch by batch, so only a loader without
        # them can do the conversion ahead; float features without a mean/std need none.
        work = (self._is_image or self._normalize.scale is not None) and self._n > 0
        self._ready = self._normalized_split() if normalize_once and work and not self.ops else None

    @property
    def normalized_once(self) -> bool:
        """True when batches are gathered from a split converted and normalised ahead."""
        return self._ready is not None

    def _normalized_split(self, chunk: int = 4096) -> tuple[torch.Tensor, bool]:
        """`prepare` of every sample (chunk by chunk, the same arithmetic as per batch), stored
        with a sample per row: (N, H, W, C) when batches are channels-last, so that a gather
        of rows gives the channels-last batch with no further copy. Returns (rows, nhwc)."""
        rows: torch.Tensor | None = None
        nhwc = False
        for a in range(0, self._n, chunk):
            idx = torch.arange(a, min(a + chunk, self._n), device=self.device)
            b = self.prepare(self.split.gather(idx), None)
            if rows is None:
                nhwc = b.dim() == 4 and b.stride()[1:] == (1, b.shape[3] * b.shape[1], b.shape[1])
                shape = (self._n, *b.shape[2:], b.shape[1]) if nhwc else (self._n, *b.shape[1:])
                rows = torch.empty(shape, dtype=b.dtype, device=self.device)
            rows[a : a + len(idx)] = b.permute(0, 2, 3, 1) if nhwc else b
        assert rows is not None  # only called for a split with samples
        return rows, nhwc

    def _batches(self, first: int, streams: dict[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(self._n, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle).to(self.device)
        g = self._stream("augment", AUGMENT, streams) if self.ops else None
        bs = self.batch_size
        rank, world = self.rank, self.world_size
        rows, nhwc = self._ready if self._ready is not None else (None, False)
        for b in range(first, len(self)):
            idx = order[b * bs : (b + 1) * bs]
            if world > 1:  # a view per batch costs microseconds; one process needs none
                idx = idx[rank::world]
            y = torch.index_select(self.split.y, 0, idx)
            if rows is None:
                yield self.prepare(self.split.gather(idx), g), y
            else:
                # A gather copies: a batch never shares memory with the stored split.
                x = torch.index_select(rows, 0, idx)
                yield (x.permute(0, 3, 1, 2) if nhwc else x), y

    def prepare(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Raw gathered inputs -> augmented (when `g` is given), normalised float batch."""
        x = to_unit_float(x, self._is_image)
        if g is not None:
            x = apply_batch(self.ops, x, g)
        return self._normalize(x)


class _SplitDataset(Dataset):
    """Samples of a split for worker processes; each item is (index, seed of its random draws).

    The DataLoader fetches a whole batch through `__getitems__`: one gather and one
    uint8 -> float conversion per batch, then the per-sample transforms.
    """

    def __init__(self, split: Split, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        self.split = split
        self.transform = transform
        self.is_image = split.is_image

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([item])
        return x[0], y[0]

    def __getitems__(self, items: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.tensor([i for i, _ in items], dtype=torch.int64)
        x = to_unit_float(self.split.gather(idx), self.is_image)
        if self.transform is not None:
            x = torch.stack(self._transformed(x, [s for _, s in items]))
        return x, torch.index_select(self.split.y, 0, idx)

    def _transformed(self, x: torch.Tensor, seeds: list[int]) -> list[torch.Tensor]:
        # Seeding per sample makes the draws independent of worker count, worker
        # assignment and persistent workers' history. Only the CPU generator is seeded
        # (torch.manual_seed would also queue CUDA seeding, at milliseconds per call),
        # and it is restored afterwards so that the caller's randomness is untouched.
        # Transforms written with `random` or numpy (registered from Python) get one seed
        # per batch instead, from its samples' seeds: as reproducible and as independent of
        # the workers, at a cost per batch, not per sample (seeding numpy takes ~15 us).
        cpu = torch.default_generator
        saved_torch, saved_random, saved_numpy = cpu.get_state(), random.getstate(), np.random.get_state()
        batch_seed = hash(tuple(seeds)) % 2**32
        random.seed(batch_seed)
        np.random.seed(batch_seed)
        try:
            out = []
            for xi, s in zip(x, seeds):
                cpu.manual_seed(s)
                out.append(self.transform(xi))
            return out
        finally:
            cpu.set_state(saved_torch)
            random.setstate(saved_random)
            np.random.set_state(saved_numpy)


def _batch_collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # `__getitems__` already built the batch


class _EpochBatches:
    """The batch sampler: the loader's current order, batch size and per-sample seeds."""

    def __init__(self, loader: "StreamLoader") -> None:
        # A weak reference: a cycle loader -> DataLoader -> sampler -> loader would leave the
        # workers to the garbage collector, whose teardown order makes their shutdown time out.
        self.loader = weakref.proxy(loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        ld = self.loader
        order = epoch_order(ld._n, seed=ld.seed, epoch=ld.epoch, shuffle=ld.shuffle).tolist()
        seeds = torch.randint(0, 2**62, (ld._n,), generator=generator(ld.seed, ld.epoch, AUGMENT)).tolist()
        bs = ld.batch_size
        # The per-sample seeds above are drawn for the whole epoch, so starting later needs no state.
        for b in range(ld._first, len(ld)):
            idx = order[b * bs : (b + 1) * bs][ld.rank :: ld.world_size]
            yield [(i, seeds[i]) for i in idx]


class StreamLoader(_Base):
    """A torch DataLoader over per-sample transforms, with workers; mixing happens on the device."""

    def __init__(
        self,
        split: Split,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        num_workers: int = 2,
        prefetch_factor: int = 4,
        **common: Any,
    ) -> None:
        """`transform`: per sample, in the workers; `common`: see `_Base.__init__`."""
        super().__init__(split, **common)
        self.split = split
        self._first = 0
        pin = self.device.type == "cuda"
        self._pin = pin
        g = torch.Generator()
        g.manual_seed(self.seed)
        self.dataloader = DataLoader(
            _SplitDataset(split, transform),
            batch_sampler=_EpochBatches(self),
            num_workers=num_workers,
            pin_memory=pin,
            # Workers that survive between epochs skip a fork and a dataset copy per epoch.
            persistent_workers=num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            collate_fn=_batch_collate,
            generator=g,
        )

    def _batches(self, first: int, streams: dict[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._first = first  # read by the batch sampler when the DataLoader starts its iteration
        for x, y in self.dataloader:
            x = x.to(self.device, non_blocking=self._pin)
            y = y.to(self.device, non_blocking=self._pin)
            yield self._normalize(x), y
