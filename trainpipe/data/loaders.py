"""Loaders: iterables of (inputs, targets) batches already on the training device.

`DeviceLoader` keeps the whole uint8 split on the device and augments a whole batch
at a time with tensor ops (airbench's approach): no worker processes, no host round
trip. Its shuffling and augmentation draws come from a generator re-seeded from
(seed, epoch) at the start of every epoch, so an epoch's batches depend only on
the seed and the epoch number: that is what makes resume exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from trainpipe.data.base import Split


class DeviceLoader:
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
        ops: Sequence = (),
        mix=None,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        self.split = split.to(device)
        self.device = device
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.ops = list(ops)
        self.mix = mix
        self.seed = seed
        self.epoch = 0
        self.channels_last = channels_last
        is_image = split.x.dtype == torch.uint8
        shape = (1, -1, 1, 1) if is_image else (1, -1)
        self._mean = None if mean is None else torch.tensor(mean, device=device, dtype=torch.float32).view(shape)
        self._std = None if std is None else torch.tensor(std, device=device, dtype=torch.float32).view(shape)
        self._is_image = is_image

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last and n >= self.batch_size else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        n = len(self.split)
        return len(self) * self.batch_size if self.drop_last and n >= self.batch_size else n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        # A large odd multiplier keeps (seed, epoch) pairs from colliding.
        g.manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
        return g

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        g = self._generator()
        order = torch.randperm(n, generator=g, device=self.device) if self.shuffle else torch.arange(n, device=self.device)
        bs = self.batch_size
        for b in range(len(self)):
            idx = order[b * bs : (b + 1) * bs]
            x = self.split.gather(idx)
            y = self.split.y[idx]
            x = self.prepare(x, g)
            if self.mix is not None:
                x, y = self.mix(x, y, g)
            yield x, y

    def prepare(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        if self._is_image:
            x = x.float().div_(255.0)
            if g is not None:
                for op in self.ops:
                    x = op.batch(x, g)
        else:
            x = x.float()
        if self._mean is not None:
            x = (x - self._mean) / self._std
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
