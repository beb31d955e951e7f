"""The frames source: context windows built per batch, zero padding at utterance edges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_formats import write_frames_flat
from trainpipe.config import DataConfig
from trainpipe.data import build, load_source
from trainpipe.data.sources.frames import FrameSplit
from trainpipe.data.loaders import DeviceLoader, StreamLoader
from trainpipe.errors import DataError

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINPIPE_CACHE_DIR", str(tmp_path / "cache"))


def cfg(**kw) -> DataConfig:
    return DataConfig.model_validate({"dataset": "frames", **kw})


def coded_frames(lengths: list[int], dim: int = 2) -> torch.Tensor:
    """Frame t of utterance u holds 100 * (u + 1) + t + 1 (never 0) in every feature."""
    rows = [torch.full((dim,), 100.0 * (u + 1) + t + 1) for u, n in enumerate(lengths) for t in range(n)]
    return torch.stack(rows)


def test_windows_at_utterance_edges_are_zero_padded() -> None:
    lengths = [3, 2, 4]
    frames = coded_frames(lengths)
    split = FrameSplit.from_frames(frames, torch.arange(9), torch.tensor(lengths), context=2)
    assert split.sample_shape == (5 * 2,) and len(split) == 9
    w = split.gather(torch.arange(9)).view(9, 5, 2)[..., 0]  # (sample, offset -2..2)
    starts = np.cumsum([0] + lengths[:-1])
    for u, n in enumerate(lengths):
        for t in range(n):
            row = w[starts[u] + t]
            for j, off in enumerate(range(-2, 3)):
                inside = 0 <= t + off < n
                expected = 100.0 * (u + 1) + t + off + 1 if inside else 0.0
                assert row[j] == expected, (u, t, off)  # never a value of another utterance


def test_subset_and_device_keep_windows() -> None:
    lengths = [4, 4]
    split = FrameSplit.from_frames(coded_frames(lengths), torch.arange(8), torch.tensor(lengths), context=1)
    sub = split.subset(torch.tensor([4, 7]))
    assert torch.equal(sub.gather(torch.arange(2)), split.gather(torch.tensor([4, 7])))
    assert sub.groups.tolist() == [1, 1]
    assert sub.gather(torch.tensor([1]))[0].view(3, 2)[2].tolist() == [0.0, 0.0]  # last frame of utterance 1


def test_flat_npz_layout_with_global_normalisation(tmp_path: Path) -> None:
    arrays = write_frames_flat(tmp_path / "f.npz", {"train": [5, 7, 3, 6], "test": [4, 2]}, dim=3)
    src = load_source(cfg(path=str(tmp_path / "f.npz"), context=1))
    assert isinstance(src.train, FrameSplit) and src.normalized
    assert len(src.train) == 21 and len(src.test) == 6 and src.train.sample_shape == (9,)
    centre = src.train.gather(torch.arange(21)).view(21, 3, 3)[:, 1]
    assert torch.allclose(centre.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(centre.std(0, unbiased=False), torch.ones(3), atol=1e-4)
    x = arrays["train_x"]
    expected = (arrays["test_x"] - x.mean(0)) / x.std(0)  # test uses train's statistics
    got = src.test.gather(torch.arange(6)).view(6, 3, 3)[:, 1]
    assert np.allclose(got.numpy(), expected, atol=1e-5)
    assert src.train.y.tolist() == arrays["train_y"].tolist()


def test_utterance_normalisation(tmp_path: Path) -> None:
    write_frames_flat(tmp_path / "f.npz", {"train": [5, 7]}, dim=2)
    src = load_source(cfg(path=str(tmp_path / "f.npz"), context=0, normalize="utterance"))
    x = src.train.gather(torch.arange(12))
    assert torch.allclose(x[:5].mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(x[5:].mean(0), torch.zeros(2), atol=1e-5)


def test_homework_layout_needs_allow_pickle(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    utts = [rng.normal(size=(n, 4)).astype(np.float32) for n in (6, 3, 5)]
    labels = [rng.integers(0, 3, n) for n in (6, 3, 5)]

    def objects(items: list) -> np.ndarray:
        a = np.empty(len(items), dtype=object)
        a[:] = items
        return a

    np.save(tmp_path / "train.npy", objects(utts), allow_pickle=True)
    np.save(tmp_path / "train_labels.npy", objects(labels), allow_pickle=True)
    np.save(tmp_path / "dev.npy", objects(utts[:1]), allow_pickle=True)
    np.save(tmp_path / "dev_labels.npy", objects(labels[:1]), allow_pickle=True)
    np.save(tmp_path / "test.npy", objects(utts[1:]), allow_pickle=True)  # no labels: ignored
    with pytest.raises(DataError, match="data.allow_pickle=true"):
        load_source(cfg(path=str(tmp_path), normalize="none"))
    src = load_source(cfg(path=str(tmp_path), normalize="none", allow_pickle=True, context=2))
    assert len(src.train) == 14 and len(src.val) == 6 and src.test is None
    assert torch.equal(src.train.gather(torch.tensor([6])).view(5, 4)[2], torch.from_numpy(utts[1][0]))
    assert src.classes == ["0", "1", "2"]


def test_carved_validation_keeps_utterances_whole(tmp_path: Path) -> None:
    write_frames_flat(tmp_path / "f.npz", {"train": [8] * 20}, dim=2)
    b = build(cfg(path=str(tmp_path / "f.npz"), val_split=0.2, context=3, batch_size=16), seed=1, device=CPU)
    train_utts = set(b.train.split.utterance.tolist())
    val_utts = set(b.val.split.utterance.tolist())
    assert not train_utts & val_utts and len(val_utts) == 4 and b.info["val_size"] == 32
    assert b.spec.in_shape == (14,) and b.mean is None  # standardised at the source


def test_frames_through_both_loaders(tmp_path: Path) -> None:
    write_frames_flat(tmp_path / "f.npz", {"train": [5, 9, 4]}, dim=3)
    common = dict(path=str(tmp_path / "f.npz"), context=2, batch_size=4, val_split=0)
    dev = build(cfg(**common, loader="device"), seed=0, device=CPU)
    stream = build(cfg(**common, loader="stream", num_workers=0), seed=0, device=CPU)
    assert isinstance(dev.train, DeviceLoader) and isinstance(stream.train, StreamLoader)
    a, b = list(dev.train), list(stream.train)
    assert len(a) == len(b) == 4
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.shape == (4, 15) and torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("arrays,match", [
    ({"train_x": np.zeros((5, 2)), "train_y": np.zeros(5)}, "train_lengths"),
    ({"train_x": np.zeros((5, 2)), "train_y": np.zeros(5), "train_lengths": np.array([2, 2])}, "do not agree"),
    ({"feats": np.zeros((5, 2))}, "no train_x/train_y"),
])
def test_bad_frame_files(tmp_path: Path, arrays: dict, match: str) -> None:
    np.savez(tmp_path / "f.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_source(cfg(path=str(tmp_path / "f.npz")))
