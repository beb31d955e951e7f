"""Every dataset source, on small files written in each dataset's real on-disk format,
plus the real MNIST / Fashion-MNIST / CIFAR-10 copies in ../shared/data when present."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_formats import (
    write_cifar10,
    write_cifar100,
    write_image_folder,
    write_mnist,
    write_pets,
    write_svhn,
)
from trainpipe.config import DataConfig, validate
from trainpipe.data import build, load_source
from trainpipe.errors import ConfigError, DataError
from trainpipe.registry import DATASETS

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRAINPIPE_CACHE_DIR", str(cache))
    return cache


def cfg(**kw) -> DataConfig:
    return DataConfig.model_validate(kw)


def nhwc_to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2)


def test_every_registered_source_is_covered_here() -> None:
    tested = {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "oxford_pets",
              "imagefolder", "arrays", "frames"}
    assert set(DATASETS.names()) == tested


def test_digits() -> None:
    src = load_source(cfg(dataset="digits"))
    assert src.train.x.dtype == torch.uint8 and src.train.x.shape[1:] == (1, 8, 8)
    assert len(src.train) + len(src.test) == 1797
    assert src.train.x.max() == 255 and len(src.classes) == 10


def test_uncached_source_gets_channels_and_size_too() -> None:
    src = load_source(cfg(dataset="digits", channels=3, image_size=16))
    assert src.train.x.shape[1:] == (3, 16, 16) and src.test.x.shape[1:] == (3, 16, 16)
    assert torch.equal(src.train.x[:, 0], src.train.x[:, 1])


# ------------------------------------------------------------------ torchvision formats
def test_cifar10_reads_the_python_pickles(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    src = load_source(cfg(dataset="cifar10", root=str(tmp_path)))
    assert src.train.x.shape == (30, 3, 32, 32) and src.test.x.shape == (10, 3, 32, 32)
    assert torch.equal(src.train.x, nhwc_to_nchw(written["train_x"]))
    assert torch.equal(src.train.y, torch.from_numpy(written["train_y"]))
    assert torch.equal(src.test.x, nhwc_to_nchw(written["test_x"]))
    assert src.classes[0] == "airplane" and len(src.classes) == 10
    assert src.mean == pytest.approx((0.4914, 0.4822, 0.4465))  # published values, not these random pixels


@pytest.mark.parametrize("mode", ["fine", "coarse"])
def test_cifar100_fine_and_coarse_labels(tmp_path: Path, mode: str) -> None:
    written = write_cifar100(tmp_path)
    src = load_source(cfg(dataset="cifar100", root=str(tmp_path), label_mode=mode))
    assert torch.equal(src.train.x, nhwc_to_nchw(written["train_x"]))
    assert src.train.y.tolist() == written[f"train_{mode}"].tolist()
    assert src.test.y.tolist() == written[f"test_{mode}"].tolist()
    assert len(src.classes) == (100 if mode == "fine" else 20)
    assert src.classes[3] == f"{mode}3"


def test_cifar100_label_mode_is_validated_by_the_config() -> None:
    with pytest.raises(ConfigError, match="label_mode"):
        validate({"data": {"dataset": "cifar100", "label_mode": "superclass"}})


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path: Path) -> None:
    written = write_svhn(tmp_path, splits={"train": 20, "test": 10, "extra": 5})
    src = load_source(cfg(dataset="svhn", root=str(tmp_path)))
    assert torch.equal(src.train.x, nhwc_to_nchw(written["train_x"]))
    assert src.train.y.tolist() == written["train_y"].tolist()
    assert src.train.y.min() == 0 and src.train.y.max() == 9
    with_extra = load_source(cfg(dataset="svhn", root=str(tmp_path), extra=True))
    assert len(with_extra.train) == 25 and len(with_extra.test) == 10
    assert torch.equal(with_extra.train.x[20:], nhwc_to_nchw(written["extra_x"]))


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_reads_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    written = write_mnist(tmp_path, folder)
    src = load_source(cfg(dataset=name, root=str(tmp_path)))
    assert torch.equal(src.train.x, torch.from_numpy(written["train_x"]).unsqueeze(1))
    assert src.train.y.tolist() == written["train_y"].tolist()
    assert src.test.x.shape == (10, 1, 28, 28)
    assert len(src.mean) == 1


def test_mnist_channels_and_size_for_rgb_models(tmp_path: Path) -> None:
    written = write_mnist(tmp_path)
    src = load_source(cfg(dataset="mnist", root=str(tmp_path), channels=3, image_size=32))
    assert src.train.x.shape == (30, 3, 32, 32) and src.train.x.dtype == torch.uint8
    assert torch.equal(src.train.x[:, 0], src.train.x[:, 2])  # grey repeated
    assert src.mean == pytest.approx((0.1307,) * 3)
    # An antialiased resize keeps the image's overall brightness.
    assert src.train.x[0].float().mean() == pytest.approx(float(written["train_x"][0].mean()), abs=3)


def test_oxford_pets_layout_resizes_and_keeps_breed_labels(tmp_path: Path) -> None:
    labels = write_pets(tmp_path)
    src = load_source(cfg(dataset="oxford_pets", root=str(tmp_path), image_size=48))
    assert src.train.x.shape == (6, 3, 48, 48) and src.test.x.shape == (6, 3, 48, 48)
    assert src.train.y.tolist() == labels["trainval"] and src.test.y.tolist() == labels["test"]
    assert src.classes == ["Abyssinian", "American Bulldog", "Bengal"]
    assert src.mean == pytest.approx((0.485, 0.456, 0.406))  # ImageNet's, for pretrained nets


def test_imagefolder_reads_pngs_exactly(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path, {"cat": 3, "dog": 2}, splits=("train", "val", "test"))
    src = load_source(cfg(dataset="imagefolder", path=str(tmp_path)))
    assert src.classes == ["cat", "dog"]
    for split in ("train", "val", "test"):
        s = getattr(src, split)
        assert torch.equal(s.x, nhwc_to_nchw(written[f"{split}_x"]))
        assert s.y.tolist() == written[f"{split}_y"].tolist()
    assert src.mean is not None and len(src.mean) == 3  # computed on train and cached


def test_imagefolder_official_val_is_used_instead_of_a_carve_out(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"a": 4, "b": 4}, splits=("train", "val"))
    bundle = build(cfg(dataset="imagefolder", root=str(tmp_path), val_split=0.5, batch_size=4), seed=0, device=CPU)
    assert bundle.info["train_size"] == 8 and bundle.info["val_size"] == 8
    assert bundle.info["val_source"] == "official"


def test_imagefolder_classes_txt_sets_label_order(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"a": 1, "b": 2}, splits=("train",))
    (tmp_path / "classes.txt").write_text("b\na\n")
    src = load_source(cfg(dataset="imagefolder", path=str(tmp_path)))
    assert src.classes == ["b", "a"]
    assert sorted(src.train.y.tolist()) == [0, 0, 1]  # two images of b, now label 0


def test_imagefolder_rgb_to_grey_by_luminance(tmp_path: Path) -> None:
    written = write_image_folder(tmp_path, {"a": 2, "b": 1}, splits=("train",))
    src = load_source(cfg(dataset="imagefolder", path=str(tmp_path), channels=1))
    rgb = written["train_x"][0].astype(np.float64)
    expected = rgb[..., 0] * 0.2989 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    assert src.train.x.shape == (3, 1, 12, 10)
    assert np.abs(src.train.x[0, 0].numpy().astype(np.float64) - expected).max() <= 1.0


def test_imagefolder_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "d", {"a": 2, "b": 1}, splits=("train",))
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "d" / "train" / "a" / "big.png")
    with pytest.raises(DataError, match="different sizes.*data.image_size"):
        load_source(cfg(dataset="imagefolder", path=str(tmp_path / "d")))
    src = load_source(cfg(dataset="imagefolder", path=str(tmp_path / "d"), image_size=16))
    assert src.train.x.shape == (4, 3, 16, 16)


def test_arrays_npz_images_and_folder_of_npy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 9, 9, 3), dtype=np.uint8)
    y = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", train_x=x, train_y=y, test_x=x[:5], test_y=y[:5])
    src = load_source(cfg(dataset="arrays", path=str(tmp_path / "d.npz")))
    assert torch.equal(src.train.x, nhwc_to_nchw(x)) and src.test.x.shape == (5, 3, 9, 9)
    assert src.classes == ["0", "1", "2", "3"]
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "train_x.npy", x[..., 0])  # grey (N, H, W)
    np.save(folder / "train_y.npy", y)
    (folder / "classes.txt").write_text("w\nx\ny\nz\n")
    src = load_source(cfg(dataset="arrays", path=str(folder)))
    assert src.train.x.shape == (20, 1, 9, 9) and src.test is None and src.classes == ["w", "x", "y", "z"]


def test_arrays_float_features(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, (50, 6)).astype(np.float64)
    np.savez(tmp_path / "f.npz", train_x=x, train_y=np.arange(50) % 2)
    src = load_source(cfg(dataset="arrays", path=str(tmp_path / "f.npz")))
    assert src.train.x.dtype == torch.float32 and src.train.x.shape == (50, 6)
    assert np.allclose(src.mean, x.mean(0), atol=1e-5) and np.allclose(src.std, x.std(0), atol=1e-5)
    bundle = build(cfg(dataset="arrays", path=str(tmp_path / "f.npz"), val_split=0, batch_size=50,
                       drop_last=False), seed=0, device=CPU)
    xb, _ = next(iter(bundle.train))
    assert bundle.spec.in_shape == (6,) and xb.mean().abs() < 1e-5  # standardised per feature


# ----------------------------------------------------------------------- bad input
def test_missing_cifar_files_name_the_path_and_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_source(cfg(dataset="cifar10", root=str(tmp_path / "nowhere")))
    msg = str(e.value)
    assert str((tmp_path / "nowhere" / "cifar-10-batches-py").resolve()) in msg
    assert "data_batch_1" in msg and "cifar-10-python.tar.gz" in msg and "data.download=true" in msg


def test_failed_download_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import CIFAR100

    def offline(self) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(CIFAR100, "download", offline)
    with pytest.raises(DataError, match="download failed.*network is unreachable"):
        load_source(cfg(dataset="cifar100", root=str(tmp_path), download=True))


@pytest.mark.parametrize("name,writer,files", [
    ("mnist", write_mnist, ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    ("svhn", write_svhn, ["train_32x32.mat", "test_32x32.mat"]),
    ("oxford_pets", write_pets, ["annotations/trainval.txt"]),
])
def test_missing_files_of_other_sets(tmp_path: Path, name: str, writer, files: list[str]) -> None:
    with pytest.raises(DataError) as e:
        load_source(cfg(dataset=name, root=str(tmp_path)))
    assert all(f in str(e.value) for f in files) and "data.download=true" in str(e.value)


def test_truncated_cifar_pickle_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(DataError, match=r"data_batch_3 is truncated or corrupt"):
        load_source(cfg(dataset="cifar10", root=str(tmp_path)))


class _RunsCode:
    """A pickle payload that runs a shell command when unpickled with pickle.load."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, (self.command,))


def test_a_planted_cifar_pickle_runs_nothing_and_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    from trainpipe.cli import main

    write_cifar10(tmp_path)
    marker = tmp_path / "code-ran"
    planted = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    planted.write_bytes(pickle.dumps({"data": _RunsCode(f"touch {marker}"), "labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_2 is not a plain dataset file.*system.*Nothing was run"):
        load_source(cfg(dataset="cifar10", root=str(tmp_path)))
    assert not marker.exists()
    run = tmp_path / "run"
    assert main(["train", "data.dataset=cifar10", f"data.root={tmp_path}", "train.epochs=1",
                 "--output", str(run), "--quiet"]) == 2
    assert "data_batch_2" in capsys.readouterr().err and not marker.exists()


def test_truncated_idx_file_is_named(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte is truncated or corrupt"):
        load_source(cfg(dataset="mnist", root=str(tmp_path)))


def test_truncated_mat_file_is_named(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    bad = tmp_path / "test_32x32.mat"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(DataError, match=r"test_32x32.mat is truncated or corrupt"):
        load_source(cfg(dataset="svhn", root=str(tmp_path)))


def test_undecodable_image_fails_or_is_skipped_with_a_count(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"a": 3, "b": 3}, splits=("train",))
    broken = tmp_path / "train" / "b" / "001.png"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(DataError, match=r"001.png cannot be decoded.*skip_corrupt"):
        load_source(cfg(dataset="imagefolder", path=str(tmp_path)))
    with pytest.warns(UserWarning, match="skipped 1 of 6 images"):
        bundle = build(cfg(dataset="imagefolder", path=str(tmp_path), skip_corrupt=True, val_split=0,
                           batch_size=2), seed=0, device=CPU)
    assert bundle.info["train_size"] == 5 and bundle.info["skipped_corrupt"] == 1


def test_corrupt_pet_image_is_skipped_when_asked(tmp_path: Path) -> None:
    write_pets(tmp_path)
    (tmp_path / "oxford-iiit-pet" / "images" / "Bengal_3.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="Bengal_3.jpg cannot be decoded"):
        load_source(cfg(dataset="oxford_pets", root=str(tmp_path), image_size=32))
    with pytest.warns(UserWarning, match="skipped 1"):
        src = load_source(cfg(dataset="oxford_pets", root=str(tmp_path), image_size=32, skip_corrupt=True))
    assert len(src.train) == 5 and src.extra["skipped"] == 1


def test_empty_class_folder(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"a": 2}, splits=("train",))
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty holds no images"):
        load_source(cfg(dataset="imagefolder", path=str(tmp_path)))


def test_test_class_unknown_to_train(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"a": 1, "b": 1}, splits=("train",))
    write_image_folder(tmp_path / "x", {"zebra": 1}, splits=("test",))
    (tmp_path / "x" / "test").rename(tmp_path / "test")
    with pytest.raises(DataError, match="zebra"):
        load_source(cfg(dataset="imagefolder", path=str(tmp_path)))


def test_missing_image_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train/<class>"):
        load_source(cfg(dataset="imagefolder", path=str(tmp_path)))


def test_labels_outside_range(tmp_path: Path) -> None:
    x = np.zeros((4, 5), np.float32)
    np.savez(tmp_path / "neg.npz", train_x=x, train_y=np.array([0, 1, -1, 0]))
    with pytest.raises(DataError, match=r"label -1 is outside \[0, 2\)"):
        load_source(cfg(dataset="arrays", path=str(tmp_path / "neg.npz")))
    np.savez(tmp_path / "big.npz", train_x=x, train_y=np.array([0, 1, 5, 0]), classes=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match=r"label 5 is outside \[0, 3\)"):
        load_source(cfg(dataset="arrays", path=str(tmp_path / "big.npz")))


def test_npz_without_expected_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2))
    with pytest.raises(DataError, match=r"no array 'train_x' \(found: images, labels\)"):
        load_source(cfg(dataset="arrays", path=str(tmp_path / "d.npz")))
    np.savez(tmp_path / "half.npz", train_x=np.zeros((2, 3)), train_y=np.zeros(2), test_x=np.zeros((2, 3)))
    with pytest.raises(DataError, match="test_x but not its partner"):
        load_source(cfg(dataset="arrays", path=str(tmp_path / "half.npz")))


def test_truncated_npz_and_object_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", train_x=np.zeros((100, 30), np.float32), train_y=np.zeros(100))
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated"):
        load_source(cfg(dataset="arrays", path=str(tmp_path / "d.npz")))
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.zeros(3), np.zeros(4)]
    np.savez(tmp_path / "o.npz", train_x=ragged, train_y=np.zeros(2))
    with pytest.raises(DataError, match="object array"):
        load_source(cfg(dataset="arrays", path=str(tmp_path / "o.npz")))


def test_float_images_are_refused_with_advice(tmp_path: Path) -> None:
    np.savez(tmp_path / "f.npz", train_x=np.zeros((3, 8, 8), np.float32), train_y=np.zeros(3))
    with pytest.raises(DataError, match="uint8"):
        load_source(cfg(dataset="arrays", path=str(tmp_path / "f.npz")))


def test_data_errors_are_config_errors() -> None:
    assert issubclass(DataError, ConfigError)  # so the CLI exits with code 2


# ----------------------------------------------------------------------- real data
def _shared(name: str) -> Path:
    p = SHARED / name
    if not p.is_dir():
        pytest.skip(f"real data not available ({p} is absent)")
    return p


@pytest.mark.parametrize("name,mean", [("mnist", 0.1307), ("fashion_mnist", 0.2860)])
def test_real_mnist_family_via_arrays(name: str, mean: float) -> None:
    folder = _shared(name)
    src = load_source(cfg(dataset="arrays", path=str(folder / "data.npz")))
    assert src.train.x.shape == (60000, 1, 28, 28) and src.test.x.shape == (10000, 1, 28, 28)
    assert len(src.classes) == 10 and src.mean[0] == pytest.approx(mean, abs=1e-3)
    assert torch.bincount(src.test.y).min() >= 800  # every class present


@pytest.fixture(scope="module")
def cifar10_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Part of the real JPEG folder (unpacked once per module; creating 60,000 files takes minutes):
    the first 100 train and 200 test images of each class."""
    archive = _shared("cifar10") / "images.tar.gz"
    dest = tmp_path_factory.mktemp("cifar10")
    with tarfile.open(archive, "r|gz") as tar:  # one streaming pass over the archive
        for m in tar:
            if m.isfile() and int(Path(m.name).stem) < (200 if m.name.startswith("test/") else 100):
                tar.extract(m, dest, filter="data")
    return dest


@pytest.mark.slow
def test_real_cifar10_image_folder(cifar10_folder: Path) -> None:
    src = load_source(cfg(dataset="imagefolder", path=str(cifar10_folder)))
    assert src.train.x.shape == (1000, 3, 32, 32) and src.test.x.shape == (2000, 3, 32, 32)
    assert torch.bincount(src.test.y).tolist() == [200] * 10
    assert src.classes[0] == "airplane" and src.classes[-1] == "truck"
    assert src.test.x.float().mean().item() / 255 == pytest.approx(0.475, abs=0.02)
    again = load_source(cfg(dataset="imagefolder", path=str(cifar10_folder)))
    assert again.extra["cache"] == "hit" and torch.equal(again.test.x, src.test.x)


# -------------------------------------------------------- refused before any training
def test_non_finite_features_are_refused_at_load_naming_file_array_and_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from trainpipe.cli import main

    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    x[3, 1] = np.nan
    x[7, 2] = np.inf
    np.savez(tmp_path / "f.npz", train_x=x, train_y=np.arange(40) % 2)
    with pytest.raises(DataError, match=r"f\.npz: array train_x holds 2 non-finite values"):
        load_source(cfg(dataset="arrays", path=str(tmp_path / "f.npz")))
    assert main(["train", "data.dataset=arrays", f"data.path={tmp_path / 'f.npz'}", "model.name=mlp",
                 "--output", str(tmp_path / "run"), "--quiet"]) == 2
    assert "non-finite" in capsys.readouterr().err and not (tmp_path / "run").exists()
    # a clean file is checked when it is decoded, then read from the cache without a second pass
    np.savez(tmp_path / "ok.npz", train_x=np.nan_to_num(x, posinf=0.0), train_y=np.arange(40) % 2)
    load_source(cfg(dataset="arrays", path=str(tmp_path / "ok.npz")))
    from trainpipe.data import prepare

    def must_not_run(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("checked again on a cache hit")

    monkeypatch.setattr(prepare, "check_finite", must_not_run)
    assert load_source(cfg(dataset="arrays", path=str(tmp_path / "ok.npz"))).extra["cache"] == "hit"


def test_a_train_split_with_one_class_is_refused(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "imgs", {"cat": 6})
    with pytest.raises(DataError, match=r"train split holds only class 'cat'.*at least 2 classes"):
        load_source(cfg(dataset="imagefolder", path=str(tmp_path / "imgs")))
    np.savez(tmp_path / "one.npz", train_x=np.zeros((8, 3), np.float32), train_y=np.zeros(8, np.int64))
    with pytest.raises(DataError, match="at least 2 classes"):
        load_source(cfg(dataset="arrays", path=str(tmp_path / "one.npz")))


def test_random_bytes_are_not_a_valid_npz(tmp_path: Path) -> None:
    bad = tmp_path / "noise.npz"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError, match=r"noise\.npz is not a valid \.npz or \.npy file") as e:
        load_source(cfg(dataset="arrays", path=str(bad)))
    assert "Python objects" not in str(e.value)


def _features(n: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 5)).astype(np.float32)


@pytest.mark.parametrize("train_y,named", [
    ([0, 1, 2, 3, 4, 5, 6, 7, 200], "200"),
    ([0, 1, 10**12, 1], "1000000000000"),  # once built a head of 10**12 + 1 classes
])
def test_a_stray_train_label_is_refused_before_anything_is_sized(tmp_path: Path, train_y: list[int],
                                                                  named: str) -> None:
    np.savez(tmp_path / "d.npz", train_x=_features(len(train_y)), train_y=np.array(train_y, np.int64))
    with pytest.raises(DataError, match=rf"labels {named} are far outside") as e:
        load_source(cfg(dataset="arrays", path=str(tmp_path / "d.npz")))
    assert "np.unique(y, return_inverse=True)" in str(e.value) and "classes.txt" in str(e.value)


def test_a_test_label_never_seen_in_training_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", train_x=_features(6), train_y=np.array([0, 1, 2, 0, 1, 2]),
             test_x=_features(3), test_y=np.array([0, 1, 3]))
    with pytest.raises(DataError, match=r"\(test labels\): labels 3 never occur in the train split"):
        load_source(cfg(dataset="arrays", path=str(tmp_path / "d.npz")))
    write_frames = {"train_x": _features(6), "train_y": np.array([0, 1, 0, 1, 0, 1]),
                    "train_lengths": np.array([3, 3]), "test_x": _features(2), "test_y": np.array([1, 7]),
                    "test_lengths": np.array([2])}
    np.savez(tmp_path / "f.npz", **write_frames)
    with pytest.raises(DataError, match=r"labels 7 never occur in the train split"):
        load_source(cfg(dataset="frames", path=str(tmp_path / "f.npz")))


def test_labels_that_fit_their_classes_are_accepted(tmp_path: Path) -> None:
    # 1-based labels: class 0 has no sample but the head stays the size the labels say
    np.savez(tmp_path / "one.npz", train_x=_features(6), train_y=np.array([1, 2, 3, 1, 2, 3]))
    assert load_source(cfg(dataset="arrays", path=str(tmp_path / "one.npz"))).classes == ["0", "1", "2", "3"]
    # a classes list says how many there are: a test label of a class absent from train is fine
    np.savez(tmp_path / "named.npz", train_x=_features(4), train_y=np.array([0, 1, 0, 1]),
             test_x=_features(2), test_y=np.array([2, 0]), classes=np.array(["cat", "dog", "owl"]))
    assert load_source(cfg(dataset="arrays", path=str(tmp_path / "named.npz"))).classes == ["cat", "dog", "owl"]
