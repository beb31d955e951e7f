"""Validation carve-outs and training fractions: stratified, seeded; test untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainpipe.config import DataConfig
from trainpipe.data import build, load_source
from trainpipe.data.base import Split
from trainpipe.data.splits import carve_val, group_split, stratified_split, take_fraction
from trainpipe.errors import ConfigError

CPU = torch.device("cpu")


def labels(counts: list[int], seed: int = 0) -> np.ndarray:
    y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    return np.random.default_rng(seed).permutation(y)


def test_stratified_split_keeps_class_proportions() -> None:
    counts = [500, 300, 150, 50]
    y = labels(counts)
    keep, out = stratified_split(y, 100, seed=0)
    assert len(out) == 100 and len(keep) == 900 and not set(keep) & set(out)
    got = np.bincount(y[out], minlength=4)
    assert np.all(np.abs(got - np.array(counts) / 10) <= 1)


def test_stratified_split_is_seeded() -> None:
    y = labels([50, 50, 50])
    a = stratified_split(y, 30, seed=1)[1]
    assert np.array_equal(a, stratified_split(y, 30, seed=1)[1])
    assert not np.array_equal(a, stratified_split(y, 30, seed=2)[1])


def test_rare_classes_do_not_break_the_split() -> None:
    y = labels([40, 1, 1])
    keep, out = stratified_split(y, 5, seed=0)
    assert len(out) == 5 and len(keep) == 37


def test_group_split_takes_whole_groups() -> None:
    groups = np.repeat(np.arange(10), 7)
    keep, out = group_split(groups, 20, seed=0)
    assert len(out) == 21 and not set(groups[keep]) & set(groups[out])


def split_of(y: np.ndarray) -> Split:
    return Split(torch.arange(len(y)).view(-1, 1).float(), torch.from_numpy(y))


def test_val_split_fraction_and_count() -> None:
    s = split_of(labels([60, 40]))
    train, val = carve_val(s, 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert torch.bincount(val.y).tolist() == [6, 4]
    train, val = carve_val(s, 25, seed=0)
    assert len(val) == 25 and len(train) == 75
    assert set(train.x.view(-1).tolist()).isdisjoint(val.x.view(-1).tolist())
    train, val = carve_val(s, 0, seed=0)
    assert val is None and len(train) == 100
    with pytest.raises(ConfigError, match="data.val_split"):
        carve_val(s, 100, seed=0)


def test_fraction_is_a_seeded_stratified_subset() -> None:
    s = split_of(labels([80, 20]))
    sub = take_fraction(s, 0.25, seed=3)
    assert len(sub) == 25 and torch.bincount(sub.y).tolist() == [20, 5]
    assert torch.equal(sub.x, take_fraction(s, 0.25, seed=3).x)
    assert not torch.equal(sub.x, take_fraction(s, 0.25, seed=4).x)


def cfg(**kw) -> DataConfig:
    return DataConfig.model_validate({"dataset": "digits", **kw})


def test_build_carves_val_from_train_and_never_touches_test() -> None:
    src = load_source(cfg())
    a = build(cfg(val_split=0.2, fraction=0.5, batch_size=50), seed=0, device=CPU)
    n = len(src.train)
    assert a.info["val_size"] == round(n * 0.2)
    assert a.info["train_size"] == round((n - a.info["val_size"]) * 0.5)
    test_y = torch.cat([y for _, y in a.test])
    assert torch.equal(test_y, src.test.y)  # all of test, in order
    b = build(cfg(val_split=0.2, fraction=0.5, batch_size=50), seed=1, device=CPU)
    assert torch.equal(torch.cat([y for _, y in b.test]), test_y)  # the seed changes val, not test
    val_a = torch.cat([x for x, _ in a.val])
    val_b = torch.cat([x for x, _ in b.val])
    assert not torch.equal(val_a, val_b)


def test_runs_with_different_fractions_validate_on_the_same_images() -> None:
    half = build(cfg(val_split=0.2, fraction=0.5, batch_size=50), seed=0, device=CPU)
    tenth = build(cfg(val_split=0.2, fraction=0.1, batch_size=50), seed=0, device=CPU)
    assert tenth.info["train_size"] < half.info["train_size"]
    assert torch.equal(torch.cat([x for x, _ in tenth.val]), torch.cat([x for x, _ in half.val]))
