"""The on-disk cache of decoded datasets: reuse, invalidation, atomic writes, corruption recovery."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from data_formats import write_cifar10, write_image_folder
from trainpipe.config import DataConfig
from trainpipe.data import cache, images, load_source



@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("TRAINPIPE_CACHE_DIR", str(d))
    return d


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every image file decoded."""
    seen: list[Path] = []
    real = images._decode_one

    def counting(path: Path, size: int | None):
        seen.append(path)
        return real(path, size)

    monkeypatch.setattr(images, "_decode_one", counting)
    return seen


def cfg(**kw) -> DataConfig:
    return DataConfig.model_validate(kw)


def entries(d: Path) -> list[Path]:
    return sorted(d.glob("*.pt"))


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINPIPE_CACHE_DIR", str(tmp_path / "env"))
    assert cache.cache_root(None) == tmp_path / "env"
    assert cache.cache_root(str(tmp_path / "cfg")) == tmp_path / "cfg"  # the config key wins
    assert cache.cache_root("none") is None
    monkeypatch.delenv("TRAINPIPE_CACHE_DIR")
    assert cache.cache_root(None) == Path("~/.cache/trainpipe").expanduser()


def test_second_build_reads_the_cache_without_decoding(tmp_path: Path, cache_dir: Path,
                                                       count_decodes: list[Path]) -> None:
    write_image_folder(tmp_path / "imgs", {"a": 3, "b": 2})
    c = cfg(dataset="imagefolder", path=str(tmp_path / "imgs"))
    first = load_source(c)
    assert first.extra["cache"] == "built" and len(count_decodes) == 10  # train + test
    [entry] = entries(cache_dir)
    mtime = entry.stat().st_mtime_ns
    second = load_source(c)
    assert second.extra["cache"] == "hit" and len(count_decodes) == 10  # nothing decoded again
    assert entry.stat().st_mtime_ns == mtime
    assert torch.equal(first.train.x, second.train.x) and second.mean == pytest.approx(first.mean)


def test_changed_files_or_options_make_a_new_entry(tmp_path: Path, cache_dir: Path,
                                                   count_decodes: list[Path]) -> None:
    root = tmp_path / "imgs"
    write_image_folder(root, {"a": 2, "b": 2})
    load_source(cfg(dataset="imagefolder", path=str(root)))
    load_source(cfg(dataset="imagefolder", path=str(root), image_size=8))
    assert len(entries(cache_dir)) == 2  # the size is part of the key
    f = root / "train" / "a" / "000.png"
    from PIL import Image

    Image.fromarray(np.full((12, 10, 3), 7, np.uint8)).save(f)
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    src = load_source(cfg(dataset="imagefolder", path=str(root)))
    assert src.extra["cache"] == "built" and len(entries(cache_dir)) == 3
    assert int(src.train.x[0].float().mean()) == 7


def test_truncated_entry_is_detected_and_rebuilt(tmp_path: Path, cache_dir: Path) -> None:
    write_cifar10(tmp_path)
    c = cfg(dataset="cifar10", root=str(tmp_path))
    good = load_source(c).train.x.clone()
    [entry] = entries(cache_dir)
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    with pytest.warns(UserWarning, match="cannot be read.*rebuilding"):
        again = load_source(c)
    assert again.extra["cache"] == "built" and torch.equal(again.train.x, good)
    assert load_source(c).extra["cache"] == "hit"


def test_damaged_bytes_fail_the_checksum(tmp_path: Path, cache_dir: Path) -> None:
    key = {"k": 1}
    x = torch.arange(100_000, dtype=torch.int64).to(torch.uint8)
    cache.write_entry(cache.entry_path(cache_dir, "t", key), key, {"x": x}, {"m": [1.0]})
    path = cache.entry_path(cache_dir, "t", key)
    data = bytearray(path.read_bytes())
    pos = bytes(data).find(bytes(x[:64].numpy()))  # inside the tensor's stored bytes
    assert pos > 0
    data[pos + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(cache.CorruptEntry, match="checksum"):
        cache.read_entry(path, key)
    built = []
    with pytest.warns(UserWarning, match="checksum of 'x' does not match"):
        tensors, meta, status = cache.load_or_build(cache_dir, "t", key,
                                                    lambda: built.append(1) or ({"x": x}, {"m": [1.0]}))
    assert status == "built" and built == [1] and torch.equal(tensors["x"], x)


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that dies half way leaves neither a partial entry nor a temporary file."""
    key = {"k": 2}
    path = cache.entry_path(tmp_path, "t", key)

    def dies(obj, f) -> None:
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        cache.write_entry(path, key, {"x": torch.zeros(3)}, {})
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_cache_off_still_works(tmp_path: Path, count_decodes: list[Path]) -> None:
    write_image_folder(tmp_path / "imgs", {"a": 1, "b": 1}, splits=("train",))
    c = cfg(dataset="imagefolder", path=str(tmp_path / "imgs"), cache_dir="none")
    assert load_source(c).extra["cache"] == "off"
    load_source(c)
    assert len(count_decodes) == 4


def test_cifar_sized_entry_loads_fast(tmp_path: Path) -> None:
    key = {"cifar": "sized"}
    x = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8)
    path = cache.entry_path(tmp_path, "big", key)
    cache.write_entry(path, key, {"train_x": x, "train_y": torch.zeros(50_000, dtype=torch.int64)}, {})
    cache.read_entry(path, key)  # first read warms the page cache, as a previous run would have
    start = time.perf_counter()
    tensors, _ = cache.read_entry(path, key)
    assert time.perf_counter() - start < 1.0
    assert torch.equal(tensors["train_x"][-5:], x[-5:])
