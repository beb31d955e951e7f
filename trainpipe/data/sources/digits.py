"""scikit-learn's digits: the dataset that ships with a package, for the quickstart and the tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from trainpipe.config.types import OpenFraction
from trainpipe.data.base import SourceData, Split
from trainpipe.data.splits import stratified_split
from trainpipe.registry import DATASETS

if TYPE_CHECKING:
    from trainpipe.config import DataConfig


@DATASETS.register("digits")
def digits(cfg: "DataConfig", /, *, test_split: OpenFraction = 0.2) -> SourceData:
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
