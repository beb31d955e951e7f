"""The published datasets, read by torchvision's own dataset classes from `data.root`.

Each is decoded once to uint8 tensors and cached (see `prepare.cached_source`).
Missing files are downloaded when `data.download: true`; otherwise, or when the
download fails, a DataError names the folder and files expected and how to get them.

torchvision checks every file's MD5 before reading it. We check that the files exist
instead (the subclasses below) and report read errors per file: the MD5 pass reads the
whole dataset a second time and its failure says only "not found or corrupted", and
checksums would also reject files that are intact but written by another tool (such as
the small files the tests write in the same formats). Downloads are still verified
against torchvision's checksums.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from trainpipe.data.base import SourceData
from trainpipe.data.images import decode_files
from trainpipe.data.prepare import Decoded, cached_source
from trainpipe.errors import DataError
from trainpipe.registry import DATASETS

if TYPE_CHECKING:
    from trainpipe.config import DataConfig

# Published per-channel mean/std (in [0, 1] units) of each training set.
MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
# Pets is almost always fine-tuned from ImageNet weights, which expect ImageNet's statistics.
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PETS_DEFAULT_SIZE = 224  # what ImageNet-pretrained nets expect; data.image_size overrides it


def ensure_files(
    cfg: "DataConfig",
    name: str,
    folder: Path,
    files: Sequence[str],
    *,
    obtain: str,
    download: Callable[[], Any],
) -> None:
    """Raise a DataError naming what is missing, after trying `download` when allowed."""
    missing = [f for f in files if not (folder / f).exists()]
    if not missing:
        return
    failure = ""
    if cfg.download:
        try:
            download()
        except Exception as e:  # no network, a bad checksum, a full disk: all reported below
            failure = f" The download failed ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'})."
        missing = [f for f in files if not (folder / f).exists()]
        if not missing:
            return
    how = (
        "Check the network, or fetch the files on another machine and copy them there."
        if cfg.download
        else "Set data.download=true on a machine with internet to fetch them."
    )
    raise DataError(
        f"data.dataset={name}: dataset files not found. Expected {', '.join(files)} in {folder.resolve()} "
        f"(missing: {', '.join(missing)}).{failure} {how} {obtain} data.root sets the folder "
        f"(now {cfg.root!r})."
    )


def _read_error(name: str, path: Path, e: Exception) -> DataError:
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return DataError(
        f"data.dataset={name}: {path} is truncated or corrupt ({type(e).__name__}: {detail[:160]}). "
        "Move it away and download it again (data.download=true), or copy an intact copy there."
    )


def _first_bad(paths: Sequence[Path], read: Callable[[Path], Any]) -> tuple[Path, Exception] | None:
    """The first file that `read` fails on: used only after a failure, to name the culprit."""
    for p in paths:
        try:
            read(p)
        except Exception as e:
            return p, e
    return None


class _DataUnpickler(pickle.Unpickler):
    """Unpickles plain data only: the CIFAR files hold dicts, lists, strings, bytes, numbers and
    numpy arrays. Any other global (a function, a class) is refused before it is looked up, so a
    file planted in data.root cannot run code when a run opens it."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
        ("__builtin__", "object"), ("builtins", "object"),
        # Protocol-2 pickles written by Python 3 spell bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a dataset file never holds")


def _unpickle(path: Path) -> Any:
    """A dataset pickle read as data (see `_DataUnpickler`); DataError naming the file if it holds code."""
    with open(path, "rb") as f:
        try:
            return _DataUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            if "never holds" not in str(e):
                raise
            raise DataError(
                f"{path} is not a plain dataset file: {e}, and loading it could run code. Nothing was run. "
                f"Replace it with the original file (move it away and set data.download=true to fetch it again)."
            ) from None


def _tvd() -> Any:
    # torchvision's dataset classes download and read MNIST, SVHN and Pets; importing
    # torchvision costs about a second, so only a run that opens one of them pays for it.
    from torchvision import datasets

    return datasets


def _tv_key(cfg: "DataConfig") -> str:
    return str(Path(cfg.root).expanduser())


# --------------------------------------------------------------------- MNIST family
def _mnist_family(cfg: "DataConfig", name: str, tv_class: str, title: str, stats: Any) -> SourceData:
    root = Path(cfg.root).expanduser()
    raw = root / tv_class / "raw"
    files = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    ensure_files(
        cfg, name, raw, files,
        obtain=f"Alternatively, copy the four {title} .gz files ({', '.join(f + '.gz' for f in files)}) into {raw.resolve()} "
               "and set data.download=true to unpack them.",
        download=lambda: getattr(_tvd(), tv_class)(_tv_key(cfg), train=True, download=True),
    )

    def decode() -> Decoded:
        splits = {}
        for split, train in (("train", True), ("test", False)):
            try:
                ds = getattr(_tvd(), tv_class)(_tv_key(cfg), train=train, download=False)
            except Exception as e:
                from torchvision.datasets.mnist import read_image_file, read_label_file

                prefix = "train" if train else "t10k"
                bad = _first_bad([raw / f"{prefix}-images-idx3-ubyte"], read_image_file) or _first_bad(
                    [raw / f"{prefix}-labels-idx1-ubyte"], read_label_file)
                raise _read_error(name, bad[0] if bad else raw, bad[1] if bad else e) from None
            if len(ds.data) != len(ds.targets):
                raise DataError(f"data.dataset={name}: the {split} images ({len(ds.data)}) and labels "
                                f"({len(ds.targets)}) in {raw} differ in number; one file is truncated.")
            splits[split] = (ds.data.unsqueeze(1).contiguous(), ds.targets.long())
        return Decoded(splits, [str(c) for c in getattr(_tvd(), tv_class).classes], stats)

    return cached_source(cfg, name, {}, [raw / f for f in files], decode)


@DATASETS.register("mnist")
def mnist(cfg: "DataConfig", /) -> SourceData:
    """MNIST digits, 60,000 + 10,000 grey 28x28 images (data.root/MNIST/raw/*-ubyte)."""
    return _mnist_family(cfg, "mnist", "MNIST", "MNIST", MNIST_STATS)


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg: "DataConfig", /) -> SourceData:
    """Fashion-MNIST, 60,000 + 10,000 grey 28x28 images (data.root/FashionMNIST/raw/*-ubyte)."""
    return _mnist_family(cfg, "fashion_mnist", "FashionMNIST", "Fashion-MNIST", FASHION_MNIST_STATS)


# ---------------------------------------------------------------------------- CIFAR
@dataclass(frozen=True)
class _CifarFiles:
    """The python-format CIFAR files: pickled dicts of a uint8 array and label lists."""

    tv_class: str  # the torchvision class that downloads them (with its checksums)
    folder: str
    archive: str
    url: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    labels: str
    names: str

    @property
    def files(self) -> list[str]:
        return [*self.train, *self.test, self.meta]


_CIFAR10 = _CifarFiles("CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                       "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                       "labels", "label_names")
_CIFAR100 = _CifarFiles("CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz",
                        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                        ("train",), ("test",), "meta", "fine_labels", "fine_label_names")


def _download(tv_class: str, root: str, **kw: Any) -> None:
    """torchvision's download (checksummed archive, unpacked into `root`), without its reader."""
    ds = object.__new__(getattr(_tvd(), tv_class))
    ds.root = root
    for k, v in kw.items():
        setattr(ds, k, v)
    ds.download()


def _cifar(cfg: "DataConfig", name: str, spec: _CifarFiles, stats: Any, label_mode: str = "fine") -> SourceData:
    root = Path(cfg.root).expanduser()
    folder = root / spec.folder
    ensure_files(
        cfg, name, folder, spec.files,
        obtain=f"Alternatively, copy {spec.archive} (from {spec.url}) into {root.resolve()} and set data.download=true "
               f"to unpack it, or unpack it there yourself (tar -xzf {spec.archive}).",
        download=lambda: _download(spec.tv_class, _tv_key(cfg)),
    )

    def read(f: Path) -> dict[str, Any]:
        try:
            d = _unpickle(f)
        except DataError:
            raise
        except Exception as e:
            raise _read_error(name, f, e) from None
        if not isinstance(d, dict):
            raise _read_error(name, f, ValueError(f"holds a {type(d).__name__}, not a dict"))
        return d

    def decode() -> Decoded:
        splits = {}
        meta = read(folder / spec.meta)
        labels, names = (("coarse_labels", "coarse_label_names") if label_mode == "coarse"
                         else (spec.labels, spec.names))
        for split, parts in (("train", spec.train), ("test", spec.test)):
            xs, ys = [], []
            for f in parts:
                d = read(folder / f)
                try:
                    x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                    y = np.asarray(d[labels], dtype=np.int64)
                except (KeyError, ValueError, TypeError) as e:
                    raise _read_error(name, folder / f, e) from None
                if len(x) != len(y):
                    raise _read_error(name, folder / f, ValueError(f"{len(x)} images but {len(y)} labels"))
                xs.append(x)
                ys.append(y)
            splits[split] = (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))
        return Decoded(splits, [str(c) for c in meta[names]], stats)

    options = {"label_mode": label_mode} if spec is _CIFAR100 else {}
    return cached_source(cfg, name, options, [folder / f for f in spec.files], decode)


@DATASETS.register("cifar10")
def cifar10(cfg: "DataConfig", /) -> SourceData:
    """CIFAR-10, 50,000 + 10,000 colour 32x32 images (data.root/cifar-10-batches-py/)."""
    return _cifar(cfg, "cifar10", _CIFAR10, CIFAR10_STATS)


@DATASETS.register("cifar100")
def cifar100(cfg: "DataConfig", /, *, label_mode: Literal["fine", "coarse"] = "fine") -> SourceData:
    """CIFAR-100, 100 fine classes or 20 coarse superclasses (data.root/cifar-100-python/)."""
    return _cifar(cfg, "cifar100", _CIFAR100, CIFAR100_STATS, label_mode)


# ----------------------------------------------------------------------------- SVHN
@functools.cache
def _svhn_class() -> type:
    class _SVHN(_tvd().SVHN):
        def _check_integrity(self) -> bool:
            return os.path.isfile(os.path.join(self.root, self.filename))

    return _SVHN


_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"


def _svhn_file(split: str) -> str:
    return f"{split}_32x32.mat"


@DATASETS.register("svhn")
def svhn(cfg: "DataConfig", /, *, extra: bool = False) -> SourceData:
    """Street View House Numbers, 73,257 + 26,032 32x32 digits (data.root/{train,test}_32x32.mat)."""
    root = Path(cfg.root).expanduser()
    parts = ["train", "test"] + (["extra"] if extra else [])
    files = [_svhn_file(p) for p in parts]

    def download() -> None:
        for p in parts:
            _svhn_class()(_tv_key(cfg), split=p, download=True)

    ensure_files(
        cfg, "svhn", root, files,
        obtain=f"Alternatively, download {', '.join(_SVHN_URL + _svhn_file(p) for p in parts)} into {root.resolve()}.",
        download=download,
    )

    def decode() -> Decoded:
        loaded = {}
        for p in parts:
            try:
                ds = _svhn_class()(_tv_key(cfg), split=p, download=False)
            except Exception as e:
                raise _read_error("svhn", root / _svhn_file(p), e) from None
            loaded[p] = (torch.from_numpy(np.ascontiguousarray(ds.data)), torch.from_numpy(ds.labels).long())
        if extra:  # the 531,131 "extra" images are easier samples meant to be added to train
            loaded["train"] = tuple(torch.cat([a, b]) for a, b in zip(loaded["train"], loaded.pop("extra")))
        return Decoded(loaded, [str(i) for i in range(10)], SVHN_STATS)

    return cached_source(cfg, "svhn", {"extra": extra}, [root / f for f in files], decode)


# ---------------------------------------------------------------------- Oxford Pets
@DATASETS.register("oxford_pets")
def oxford_pets(cfg: "DataConfig", /) -> SourceData:
    """Oxford-IIIT Pet, 37 cat and dog breeds, trainval + test (data.root/oxford-iiit-pet/)."""
    root = Path(cfg.root).expanduser()
    base = root / "oxford-iiit-pet"
    needed = ["images", "annotations/trainval.txt", "annotations/test.txt"]
    ensure_files(
        cfg, "oxford_pets", base, needed,
        obtain="Alternatively, download images.tar.gz and annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/ "
               f"and unpack both into {base.resolve()}.",
        download=lambda: _tvd().OxfordIIITPet(_tv_key(cfg), split="trainval", download=True),
    )
    size = cfg.image_size or PETS_DEFAULT_SIZE

    def decode() -> Decoded:
        splits, classes, skipped = {}, [], 0
        for split in ("trainval", "test"):
            try:
                ds = _tvd().OxfordIIITPet(_tv_key(cfg), split=split, download=False)
            except Exception as e:
                raise _read_error("oxford_pets", base / "annotations" / f"{split}.txt", e) from None
            if split == "trainval":
                classes = list(ds.classes)
            # The dataset's own file list and labels; its __getitem__ would go through PIL
            # one image at a time, while decode_files reads them in parallel threads.
            paths, labels = list(ds._images), np.asarray(ds._labels, dtype=np.int64)
            x, kept = decode_files(paths, size=size, skip_corrupt=cfg.skip_corrupt,
                                   what=f"oxford_pets {split} ({base / 'images'})")
            skipped += len(paths) - len(kept)
            splits["train" if split == "trainval" else "test"] = (x, torch.from_numpy(labels[kept]))
        return Decoded(splits, classes, IMAGENET_STATS, meta={"skipped": skipped})

    inputs = [base / "images", base / "annotations" / "trainval.txt", base / "annotations" / "test.txt"]
    return cached_source(cfg, "oxford_pets", {"size": size}, inputs, decode)
