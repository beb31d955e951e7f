"""DeviceLoader and StreamLoader: one contract, the same batches, reproducible from (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from trainpipe.config import DataConfig, validate
from trainpipe.data import build
from trainpipe.data.base import Split
from trainpipe.data.loaders import DeviceLoader, StreamLoader
from trainpipe.errors import ConfigError

CPU = torch.device("cpu")
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def image_split(n: int = 37, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 6, 5), dtype=torch.uint8, generator=g)
    return Split(x, torch.arange(n) % 4)


def device_loader(split: Split, **kw) -> DeviceLoader:
    args = dict(batch_size=8, device=CPU, mean=MEAN, std=STD, shuffle=True, seed=3)
    return DeviceLoader(split, **{**args, **kw})


def stream_loader(split: Split, **kw) -> StreamLoader:
    args = dict(batch_size=8, device=CPU, mean=MEAN, std=STD, shuffle=True, seed=3, num_workers=0)
    return StreamLoader(split, **{**args, **kw})


def epoch(loader, e: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(e)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


class FlipOp:
    """A minimal op with both forms: mirrors each image with probability 1/2."""

    name = "flip"
    has_batched = True

    def batch(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        coin = torch.rand(x.shape[0], generator=g, device=x.device) < 0.5
        return torch.where(coin.view(-1, 1, 1, 1), x.flip(-1), x)

    def transform(self) -> v2.Transform:
        return v2.RandomHorizontalFlip(0.5)


class NoBatchedForm(FlipOp):
    name = "no_batch"
    has_batched = False


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_identity_pipeline_gives_identical_tensors(workers: int, channels_last: bool) -> None:
    split = image_split()
    dev = epoch(device_loader(split, channels_last=channels_last), 1)
    stream = epoch(stream_loader(split, num_workers=workers, channels_last=channels_last), 1)
    assert same(dev, stream)
    x, y = dev[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    # normalised: ((x / 255) - mean) / std, per channel
    idx = torch.cat([yb for _, yb in dev])
    assert sorted(idx.tolist()) == sorted(split.y.tolist())


def test_identity_values_are_normalised_pixels() -> None:
    split = image_split(8)
    [(x, _)] = epoch(device_loader(split, shuffle=False))
    expected = (split.x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6)


def test_features_are_normalised_per_feature() -> None:
    x = torch.randn(20, 4) * 3 + 1
    split = Split(x, torch.arange(20) % 2)
    mean, std = tuple(x.mean(0).tolist()), tuple(x.std(0).tolist())
    [(xb, _)] = epoch(device_loader(split, batch_size=20, shuffle=False, mean=mean, std=std))
    assert torch.allclose(xb.mean(0), torch.zeros(4), atol=1e-5)
    [(xs, _)] = epoch(stream_loader(split, batch_size=20, shuffle=False, mean=mean, std=std))
    assert torch.equal(xb, xs)


@pytest.mark.parametrize("kind", ["device", "stream"])
def test_same_seed_same_batches_other_epoch_other_order(kind: str) -> None:
    split = image_split()

    def make(**kw):
        if kind == "device":
            return device_loader(split, ops=[FlipOp()], **kw)
        return stream_loader(split, transform=FlipOp().transform(), **kw)

    a, b = make(), make()
    e0 = epoch(a, 0)
    assert same(e0, epoch(b, 0))
    assert same(e0, epoch(a, 0))  # iterating again replays the epoch
    e1 = epoch(a, 1)
    first_images = lambda batches: torch.cat([x for x, _ in batches]).flatten(1)  # noqa: E731
    assert not torch.equal(first_images(e0), first_images(e1))
    assert not same(epoch(make(seed=4), 0), e0)


def test_device_augmentation_is_reproducible_and_per_sample() -> None:
    split = Split(torch.arange(3 * 1 * 4, dtype=torch.uint8).view(1, 3, 1, 4).repeat(64, 1, 1, 1) * 10,
                  torch.zeros(64, dtype=torch.int64))
    a = epoch(device_loader(split, batch_size=64, ops=[FlipOp()], mean=None, std=None), 2)
    b = epoch(device_loader(split, batch_size=64, ops=[FlipOp()], mean=None, std=None), 2)
    assert same(a, b)
    x = a[0][0]
    flipped = (x[:, 0, 0, 0] > x[:, 0, 0, -1])
    assert 10 < int(flipped.sum()) < 54  # an independent draw per sample, not one per batch
    c = epoch(device_loader(split, batch_size=64, ops=[FlipOp()], mean=None, std=None), 3)
    assert not torch.equal(c[0][0], x)


def test_stream_draws_depend_only_on_seed_and_epoch() -> None:
    """Worker count and persistent workers' history do not change an epoch's batches (resume relies on it)."""
    split = image_split(40)
    flip = v2.RandomHorizontalFlip(0.5)
    persistent = stream_loader(split, transform=flip, num_workers=2, batch_size=16)
    first = [epoch(persistent, e) for e in range(3)]
    fresh = stream_loader(split, transform=flip, num_workers=0, batch_size=16)
    assert same(epoch(fresh, 2), first[2])  # a resumed run starting at epoch 2
    plain = epoch(stream_loader(split, num_workers=0, batch_size=16), 2)
    assert not same(plain, first[2])  # the transform did flip something
    global_state = torch.get_rng_state()
    epoch(fresh, 0)
    assert torch.equal(torch.get_rng_state(), global_state)  # training randomness untouched


@pytest.mark.parametrize("make", [device_loader, stream_loader])
def test_drop_last(make) -> None:
    split = image_split(10)
    keep = make(split, batch_size=4, drop_last=False)
    assert len(keep) == 3 and keep.num_samples == 10
    assert [len(y) for _, y in epoch(keep)] == [4, 4, 2]
    drop = make(split, batch_size=4, drop_last=True)
    assert len(drop) == 2 and drop.num_samples == 8
    assert [len(y) for _, y in epoch(drop)] == [4, 4]
    tiny = make(image_split(3), batch_size=4, drop_last=True)
    assert len(tiny) == 1 and [len(y) for _, y in epoch(tiny)] == [3]


@pytest.mark.parametrize("make,kw", [(device_loader, {}), (stream_loader, {"num_workers": 2})])
def test_batch_size_can_change_between_epochs(make, kw) -> None:
    split = image_split(24)
    loader = make(split, batch_size=4, drop_last=True, **kw)
    assert [len(y) for _, y in epoch(loader, 0)] == [4] * 6
    loader.batch_size = 10
    assert len(loader) == 2 and loader.num_samples == 20
    batches = epoch(loader, 1)
    assert [len(y) for _, y in batches] == [10, 10]


def test_mixing_happens_on_the_device_in_both_loaders() -> None:
    def mix(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        lam = torch.rand((), generator=g, device=x.device)
        soft = torch.nn.functional.one_hot(y, 4).float()
        return lam * x + (1 - lam) * x.flip(0), lam * soft + (1 - lam) * soft.flip(0)

    split = image_split()
    dev = epoch(device_loader(split, mix=mix), 1)
    stream = epoch(stream_loader(split, mix=mix), 1)
    assert same(dev, stream)
    y = dev[0][1]
    assert y.shape == (8, 4) and torch.allclose(y.sum(1), torch.ones(8))


def test_len_matches_iteration() -> None:
    split = image_split(50)
    for loader in (device_loader(split, batch_size=7), stream_loader(split, batch_size=7)):
        assert len(epoch(loader)) == len(loader) == 8


# --------------------------------------------------------------- normalise once
def layout(x: torch.Tensor) -> tuple[bool, bool]:
    return x.is_contiguous(), x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def identical(a: list, b: list) -> bool:
    """Same batches bit for bit: values, order, dtype, strides (hence memory format)."""
    return same(a, b) and all(xa.dtype == xb.dtype and xa.stride() == xb.stride() and layout(xa) == layout(xb)
                              for (xa, _), (xb, _) in zip(a, b))


SPLITS = {
    "rgb": lambda: image_split(301),
    "gray": lambda: Split(torch.randint(0, 256, (130, 1, 7, 9), dtype=torch.uint8,
                                        generator=torch.Generator().manual_seed(1)), torch.arange(130) % 3),
    "features": lambda: Split(torch.randn(205, 33, generator=torch.Generator().manual_seed(2)) * 3 + 1,
                              torch.arange(205) % 5),
}


def stats(split: Split) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if split.is_image:
        c = split.x.shape[1]
        return MEAN[:c], STD[:c]
    return tuple(split.x.mean(0).tolist()), tuple(split.x.std(0).tolist())


@pytest.mark.parametrize("kind", sorted(SPLITS))
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("normalise", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
def test_normalising_once_gives_the_same_batches(kind: str, channels_last: bool, normalise: bool,
                                                 threads: int) -> None:
    """Converting and normalising the split ahead changes no batch: values bit for bit,
    order, dtype and memory format, shuffled or not, with a short last batch, whatever
    the thread count splits the arithmetic into."""
    split = SPLITS[kind]()
    mean, std = stats(split) if normalise else (None, None)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shuffle, bs in ((True, 16), (False, 37), (True, 256)):
            kw = {"mean": mean, "std": std, "channels_last": channels_last, "shuffle": shuffle, "batch_size": bs}
            per_batch, once = device_loader(split, **kw), device_loader(split, normalize_once=True, **kw)
            assert once.normalized_once == (split.is_image or normalise) and not per_batch.normalized_once
            for e in (0, 1):
                assert identical(epoch(once, e), epoch(per_batch, e))
    finally:
        torch.set_num_threads(saved)


def test_normalising_once_keeps_batches_fresh_and_works_with_shards_and_mixing() -> None:
    split = image_split(64)

    def mix(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mul_(0.5), y  # an in-place op on the batch

    once = device_loader(split, normalize_once=True, mix=mix, channels_last=True)
    per_batch = device_loader(split, mix=mix, channels_last=True)
    first = epoch(once, 0)
    assert identical(first, epoch(per_batch, 0))
    assert identical(epoch(once, 0), first)  # writing into a batch leaves the stored split alone
    for rank in (0, 1):
        a, b = device_loader(split, normalize_once=True), device_loader(split)
        a.shard(rank, 2), b.shard(rank, 2)
        assert identical(epoch(a, 3), epoch(b, 3))


def test_normalising_once_is_not_done_ahead_of_augmentation() -> None:
    split = image_split()
    loader = device_loader(split, ops=[FlipOp()], normalize_once=True)
    assert not loader.normalized_once
    assert identical(epoch(loader, 1), epoch(device_loader(split, ops=[FlipOp()]), 1))


def test_build_normalises_once_when_the_float_copies_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainpipe import data

    b = build(cfg(loader="device"), seed=0, device=CPU)
    assert b.train.normalized_once and b.val.normalized_once and b.test.normalized_once
    augmented = build(cfg(loader="device", augment=["hflip"]), seed=0, device=CPU)
    assert not augmented.train.normalized_once and augmented.val.normalized_once
    # uint8 digits take 1797 * 64 bytes; their float32 copies 4x as much on top.
    nbytes = sum(s.split.nbytes for s in (b.train, b.val, b.test))
    monkeypatch.setattr(data, "memory_budget", lambda device: 2 * nbytes)
    tight = build(cfg(loader="device"), seed=0, device=CPU)
    assert not (tight.train.normalized_once or tight.val.normalized_once or tight.test.normalized_once)
    assert identical(epoch(tight.train, 2), epoch(b.train, 2)) and identical(epoch(tight.test), epoch(b.test))


# ------------------------------------------------------------------ choice in build()
def cfg(**kw) -> DataConfig:
    # Through the config's validation, which checks and completes data.augment for the builders.
    return validate({"data": {"dataset": "digits", "batch_size": 32, **kw}}).data


def test_auto_picks_device_for_batched_ops() -> None:
    b = build(cfg(augment=[{"name": "random_crop", "padding": 2}, "hflip"]), seed=0, device=CPU)
    assert isinstance(b.train, DeviceLoader) and b.info["loader"] == "device"
    x, y = next(iter(b.train))
    assert x.shape == (32, 1, 8, 8) and y.dtype == torch.int64


def test_auto_picks_stream_for_an_op_without_batched_form() -> None:
    b = build(cfg(augment=[{"RandomInvert": {"p": 0.5}}], num_workers=0), seed=0, device=CPU)
    assert isinstance(b.train, StreamLoader) and b.info["loader"] == "stream"
    assert "RandomInvert" in b.info["loader_reason"] and isinstance(b.val, DeviceLoader)
    x, _ = next(iter(b.train))
    assert x.shape == (32, 1, 8, 8)


def test_auto_picks_stream_when_data_do_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    import trainpipe.data as data

    monkeypatch.setattr(data, "memory_budget", lambda device: 1000)
    b = build(cfg(num_workers=0), seed=0, device=CPU)
    assert b.info["loader"] == "stream" and "exceed" in b.info["loader_reason"]
    assert isinstance(b.test, StreamLoader)


def test_device_loader_refuses_ops_without_batched_form() -> None:
    with pytest.raises(ConfigError, match="data.loader: device.*RandomInvert"):
        build(cfg(augment=["RandomInvert"], loader="device"), seed=0, device=CPU)


def test_explicit_stream_with_real_ops_matches_shapes() -> None:
    b = build(cfg(augment=[{"name": "random_crop", "padding": 2}, "hflip"], loader="stream", num_workers=0),
              seed=0, device=CPU)
    assert isinstance(b.train, StreamLoader)
    x, _ = next(iter(b.train))
    assert x.shape == (32, 1, 8, 8) and torch.isfinite(x).all()


def test_image_ops_on_feature_data_are_refused(tmp_path) -> None:
    np.savez(tmp_path / "f.npz", train_x=np.zeros((10, 3), np.float32), train_y=np.arange(10) % 2)
    with pytest.raises(ConfigError, match="data.augment: image augmentations need image data"):
        build(cfg(dataset="arrays", path=str(tmp_path / "f.npz"), augment=["hflip"]), seed=0, device=CPU)


def test_build_identity_loaders_agree_end_to_end() -> None:
    dev = build(cfg(loader="device"), seed=5, device=CPU)
    stream = build(cfg(loader="stream", num_workers=0), seed=5, device=CPU)
    assert same(epoch(dev.train, 1), epoch(stream.train, 1))
    assert same(epoch(dev.test), epoch(stream.test))


def test_stream_draws_of_numpy_and_random_transforms_are_reproducible_too() -> None:
    """A transform registered from Python may draw from numpy or `random`: its draws also
    depend only on (seed, epoch), not on the workers, so resume gives the same batches."""
    import random

    import numpy as np

    def jitter(x: torch.Tensor) -> torch.Tensor:
        return x + float(np.random.uniform(-0.1, 0.1)) + random.uniform(-0.1, 0.1)

    split = image_split(40)
    two_workers = stream_loader(split, transform=jitter, num_workers=2, batch_size=16)
    first = [epoch(two_workers, e) for e in range(3)]
    resumed = stream_loader(split, transform=jitter, num_workers=0, batch_size=16)
    np_state, py_state = np.random.get_state(), random.getstate()
    assert same(epoch(resumed, 2), first[2])
    assert not same(first[1], first[2])
    # The caller's own numpy and random streams are untouched.
    assert random.getstate() == py_state and np.array_equal(np.random.get_state()[1], np_state[1])


def _gpu_memory(monkeypatch: pytest.MonkeyPatch, *, free: int, total: int, reserved: int, allocated: int) -> None:
    """A GPU as torch's queries describe it: mem_get_info is the driver's (free, total), where
    blocks cached by this process's allocator count as used; memory_reserved - memory_allocated
    is that cache."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, total))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)


def test_the_gpu_memory_budget_counts_this_process_cached_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainpipe.data import DEVICE_MEMORY_SHARE, memory_budget

    gib = 2**30
    monkeypatch.delenv("TRAINPIPE_PROCESSES_PER_GPU", raising=False)
    # An earlier trial left 10 GiB cached: free to this process, though the driver counts it used.
    _gpu_memory(monkeypatch, free=2 * gib, total=16 * gib, reserved=11 * gib, allocated=1 * gib)
    assert memory_budget(torch.device("cuda")) == int(12 * gib * DEVICE_MEMORY_SHARE)


def test_workers_sharing_a_gpu_split_its_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainpipe.data import DEVICE_MEMORY_SHARE, memory_budget

    gib = 2**30
    # Four workers start at once on an empty 16 GiB GPU: each sees it all free.
    _gpu_memory(monkeypatch, free=16 * gib, total=16 * gib, reserved=0, allocated=0)
    monkeypatch.setenv("TRAINPIPE_PROCESSES_PER_GPU", "4")
    assert memory_budget(torch.device("cuda")) == int(4 * gib * DEVICE_MEMORY_SHARE)


def test_sweep_workers_learn_how_many_share_their_gpu() -> None:
    from trainpipe.sweep.run import device_shares

    assert device_shares(["0", "1"], 4) == [2, 2, 2, 2]
    assert device_shares(["0"], 3) == [3, 3, 3]
    assert device_shares(["0", "cpu"], 3) == [2, 1, 2]
    assert device_shares(None, 2) == [1, 1]
