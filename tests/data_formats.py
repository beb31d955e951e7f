"""Writers for small datasets in each source's real on-disk format (used by the data tests).

The files are what the real downloads contain, only with few images, so that the
parsing code that reads the real datasets runs in the tests.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def rng_images(n: int, h: int, w: int, c: int | None, seed: int) -> np.ndarray:
    shape = (n, h, w) if c is None else (n, h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def balanced_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    y = np.arange(n) % num_classes
    return np.random.default_rng(seed).permutation(y).astype(np.int64)


def write_cifar10(root: Path, *, per_batch: int = 6, n_test: int = 10) -> dict[str, np.ndarray]:
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}: pickled dicts, rows of 3072 bytes."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for b in range(1, 6):
        x = rng_images(per_batch, 32, 32, 3, seed=b)
        y = balanced_labels(per_batch, 10, seed=b)
        # Rows are the red plane, then green, then blue (CHW flattened), as in the real files.
        entry = {"batch_label": f"training batch {b} of 5", "data": x.transpose(0, 3, 1, 2).reshape(per_batch, -1),
                 "labels": y.tolist(), "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)]}
        (folder / f"data_batch_{b}").write_bytes(pickle.dumps(entry, protocol=2))
        xs.append(x)
        ys.append(y)
    tx = rng_images(n_test, 32, 32, 3, seed=99)
    ty = balanced_labels(n_test, 10, seed=99)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": tx.transpose(0, 3, 1, 2).reshape(n_test, -1),
                                                      "labels": ty.tolist()}, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}, protocol=2))
    return {"train_x": np.concatenate(xs), "train_y": np.concatenate(ys), "test_x": tx, "test_y": ty}


def write_cifar100(root: Path, *, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    """root/cifar-100-python/{train, test, meta} with fine and coarse labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        x = rng_images(n, 32, 32, 3, seed=seed)
        fine = np.random.default_rng(seed).integers(0, 100, n)
        coarse = fine // 5
        entry = {"data": x.transpose(0, 3, 1, 2).reshape(n, -1), "fine_labels": fine.tolist(),
                 "coarse_labels": coarse.tolist()}
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
        out.update({f"{split}_x": x, f"{split}_fine": fine, f"{split}_coarse": coarse})
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


def write_svhn(root: Path, *, splits: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """root/{split}_32x32.mat: X (32, 32, 3, N) uint8 and y (N, 1) with 10 meaning the digit 0."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (split, n) in enumerate((splits or {"train": 20, "test": 10}).items()):
        x = rng_images(n, 32, 32, 3, seed=10 + i)
        digit = balanced_labels(n, 10, seed=10 + i)
        y = np.where(digit == 0, 10, digit).reshape(-1, 1).astype(np.uint8)
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": y})
        out[f"{split}_x"], out[f"{split}_y"] = x, digit
    return out


def _idx(path: Path, arr: np.ndarray) -> None:
    # IDX: 2 zero bytes, a type code (0x08 = ubyte), the number of dims, big-endian int32 dims, data.
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", *, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    """root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, as torchvision unpacks them."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, split, n, seed in (("train", "train", n_train, 3), ("t10k", "test", n_test, 4)):
        x = rng_images(n, 28, 28, None, seed)
        y = balanced_labels(n, 10, seed)
        _idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


def write_pets(root: Path, breeds: tuple[str, ...] = ("Abyssinian", "american_bulldog", "Bengal"),
               per_breed: int = 4) -> dict[str, list]:
    """root/oxford-iiit-pet/images/<Breed>_<n>.jpg and annotations/{trainval,test}.txt."""
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    lines = {"trainval": [], "test": []}
    labels = {"trainval": [], "test": []}
    rng = np.random.default_rng(5)
    for b, breed in enumerate(breeds):
        species = 1 if breed[0].isupper() else 2  # the real files: cats capitalised, dogs lower case
        for i in range(1, per_breed + 1):
            h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            mode = "L" if i == 2 else "RGB"  # the real set has a few greyscale JPEGs
            Image.fromarray(img).convert(mode).save(base / "images" / f"{breed}_{i}.jpg", quality=90)
            split = "test" if i % 2 == 0 else "trainval"
            lines[split].append(f"{breed}_{i} {b + 1} {species} {i}")
            labels[split].append(b)
    for split, ls in lines.items():
        (base / "annotations" / f"{split}.txt").write_text("\n".join(ls) + "\n")
    return labels


def write_image_folder(root: Path, classes: dict[str, int], *, size: tuple[int, int] = (12, 10),
                       splits: tuple[str, ...] = ("train", "test"), mode: str = "RGB") -> dict[str, np.ndarray]:
    """root/<split>/<class>/<i>.png with random lossless images; returns {split_x, split_y} in file order."""
    out: dict[str, list] = {}
    rng = np.random.default_rng(7)
    for split in splits:
        xs, ys = [], []
        for label, (name, count) in enumerate(sorted(classes.items())):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                c = 3 if mode == "RGB" else 1
                img = rng.integers(0, 256, (size[0], size[1], c), dtype=np.uint8)
                Image.fromarray(img if c == 3 else img[..., 0], mode=None).save(d / f"{i:03d}.png")
                xs.append(img)
                ys.append(label)
        out[f"{split}_x"] = np.stack(xs)
        out[f"{split}_y"] = np.array(ys)
    return out


def write_frames_flat(path: Path, lengths: dict[str, list[int]], dim: int = 3, num_classes: int = 4) -> dict:
    """An .npz in the flat layout: {s}_x (F, D), {s}_y (F,), {s}_lengths (U,)."""
    rng = np.random.default_rng(11)
    arrays = {}
    for s, ls in lengths.items():
        f = sum(ls)
        arrays[f"{s}_x"] = rng.normal(size=(f, dim)).astype(np.float32)
        arrays[f"{s}_y"] = rng.integers(0, num_classes, f)
        arrays[f"{s}_lengths"] = np.array(ls)
    np.savez(path, **arrays)
    return arrays
