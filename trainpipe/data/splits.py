"""Validation carve-outs and training subsets: stratified, seeded by the run seed.

The test split never passes through here: it is only ever scored, never used to
choose anything.
"""

from __future__ import annotations

import numpy as np
import torch

from trainpipe.data.base import Split
from trainpipe.errors import ConfigError


def stratified_split(y: np.ndarray, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, out) with `n_out` samples carved out, class proportions preserved.

    Each class gives its proportional share (largest remainders round it to exactly
    `n_out` in total), drawn with a generator seeded by `seed`. Written with numpy
    rather than scikit-learn's train_test_split because importing scikit-learn takes
    seconds, which every run and sweep trial would pay.
    """
    y = np.asarray(y)
    idx = np.arange(len(y))
    n_out = min(max(int(n_out), 0), len(y))
    if n_out == 0:
        return idx, idx[:0]
    rng = np.random.default_rng(seed)
    _, cls = np.unique(y, return_inverse=True)
    counts = np.bincount(cls)
    exact = counts * (n_out / len(y))
    quota = np.floor(exact).astype(np.int64)
    short = n_out - int(quota.sum())
    if short:
        # Random tie-breaking keeps small classes from always losing the rounding.
        frac = exact - quota + rng.random(len(counts)) * 1e-9
        quota[np.argsort(-frac, kind="stable")[:short]] += 1
    out = np.concatenate([rng.permutation(np.flatnonzero(cls == c))[:q] for c, q in enumerate(quota)])
    mask = np.zeros(len(y), dtype=bool)
    mask[out] = True
    return idx[~mask], idx[mask]


def group_split(groups: np.ndarray, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, out): whole groups, in a seeded random order, until `n_out` samples are out."""
    idx = np.arange(len(groups))
    if n_out <= 0:
        return idx, idx[:0]
    uniq, sizes = np.unique(groups, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    # Take groups until at least n_out samples are out, but leave at least one group in.
    taken = np.searchsorted(np.cumsum(sizes[order]), n_out) + 1
    chosen = uniq[order[: min(taken, len(uniq) - 1)]]
    mask = np.isin(groups, chosen)
    return idx[~mask], idx[mask]


def _split_off(split: Split, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    groups = split.groups
    if groups is not None:
        return group_split(groups.cpu().numpy(), n_out, seed)
    return stratified_split(split.y.cpu().numpy(), n_out, seed)


def carve_val(train: Split, val_split: float, seed: int) -> tuple[Split, Split | None]:
    """Split `data.val_split` (a fraction in [0, 1) or a count) off train."""
    n = len(train)
    n_val = int(val_split) if val_split >= 1 else int(round(n * val_split))
    if n_val <= 0:
        return train, None
    if n_val >= n:
        raise ConfigError(
            f"data.val_split: asks for {n_val} validation samples but the train split has only {n}; "
            "use a fraction such as 0.1 or a smaller count."
        )
    keep, out = _split_off(train, n_val, seed)
    return train.subset(torch.from_numpy(keep)), train.subset(torch.from_numpy(out))


def take_fraction(train: Split, fraction: float, seed: int) -> Split:
    """A seeded, stratified `data.fraction` of train (at least one sample)."""
    if fraction >= 1:
        return train
    n = len(train)
    n_keep = max(1, int(round(n * fraction)))
    keep, _ = _split_off(train, n - n_keep, seed)
    return train.subset(torch.from_numpy(keep))
