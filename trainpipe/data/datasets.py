"""Dataset sources: each returns whole splits as tensors (`SourceData`).

A source is registered in `DATASETS` and receives the data config as context;
its keyword-only parameters are the dataset-specific keys of the `data` section.
The built-in sources live in `standard` (the published datasets, via torchvision),
`folders` (image folders and arrays) and `frames` (frames with context windows);
importing this module registers them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from trainpipe.data.base import SourceData, Split
from trainpipe.data.splits import stratified_split
from trainpipe.registry import DATASETS

if TYPE_CHECKING:
    from trainpipe.config import DataConfig

__all__ = ["DATASETS", "stratified_split"]


@DATASETS.register("digits")
def digits(cfg: "DataConfig", /, *, test_split: float = 0.2) -> SourceData:
    """scikit-learn's 8x8 handwritten digits (1,797 images, embedded: no download)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    # Pixel values are 0..16; scale to the 0..255 range every image source uses.
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = d.target.astype(np.int64)
    # digits has no official test split: carve a fixed one (seed 0, not the run seed)
    # so that every run, whatever its seed, is scored on the same images.
    train_idx, test_idx = stratified_split(y, int(round(len(y) * test_split)), seed=0)
    to_split = lambda i: Split(torch.from_numpy(x[i]), torch.from_numpy(y[i]))  # noqa: E731
    return SourceData(
        train=to_split(train_idx),
        test=to_split(test_idx),
        classes=[str(c) for c in d.target_names],
    )


# Registers the other built-in sources (imported last: they import from the modules above).
from trainpipe.data import folders, frames, standard  # noqa: E402,F401
