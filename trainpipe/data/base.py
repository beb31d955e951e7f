"""Containers shared by dataset sources, loaders and models.

Sources return whole splits as tensors: images stay uint8 (N, C, H, W) so that a
CIFAR-sized set takes 150 MB and can live on the training device; feature vectors
are float32 (N, D). Loaders turn splits into normalised float batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its input and output."""

    in_shape: tuple[int, ...]  # (C, H, W) for images, (D,) for feature vectors
    num_classes: int
    classes: tuple[str, ...] = ()

    @property
    def is_image(self) -> bool:
        return len(self.in_shape) == 3


@dataclass
class Split:
    """One split held as tensors: `x` uint8 (N, C, H, W) or float32 (N, D); `y` int64 (N,).

    Subclasses may store inputs in another form (e.g. frames with context windows)
    and build each sample's input in `gather`; loaders only call `gather`, `y`,
    `subset`, `to`, `groups` and `sample_shape`.
    """

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """The inputs of samples `idx` (subclasses build them, e.g. context windows)."""
        # index_select copies whole rows; x[idx] takes a generic path that is ~10x slower on CPU.
        return torch.index_select(self.x, 0, idx)

    def subset(self, idx: torch.Tensor) -> "Split":
        return Split(self.x[idx], self.y[idx])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x.dtype == torch.uint8 and self.x.dim() == 4

    @property
    def groups(self) -> torch.Tensor | None:
        """Per-sample group ids that must not be split apart (None: samples are independent).

        Validation carve-outs and `data.fraction` subsets select whole groups, so that
        near-identical neighbours (frames of one utterance) never sit on both sides.
        """
        return None

    @property
    def nbytes(self) -> int:
        """Memory the split takes (what a DeviceLoader would put on the device)."""
        return self.x.numel() * self.x.element_size() + self.y.numel() * self.y.element_size()


@dataclass
class SourceData:
    """What a dataset source returns: splits as published, before our val carve-out."""

    train: Split
    test: Split | None
    classes: list[str]
    val: Split | None = None  # only when the dataset ships an official validation split
    # Per-channel mean/std in [0, 1] units; None means "compute on train and cache".
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    # True when the source already standardised its inputs (frames): loaders then
    # apply no mean/std of their own.
    normalized: bool = False
    extra: dict = field(default_factory=dict)
