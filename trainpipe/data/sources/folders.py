"""Sources for the user's own data: an image folder tree, or arrays in .npz / .npy files."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from trainpipe.data.base import SourceData
from trainpipe.data.images import IMAGE_EXTENSIONS, decode_files, hwc_to_chw
from trainpipe.data.prepare import Decoded, cached_source, classes_from_labels
from trainpipe.errors import DataError
from trainpipe.registry import DATASETS

if TYPE_CHECKING:
    from trainpipe.config import DataConfig


def read_class_names(folder: Path) -> list[str] | None:
    """Class names from classes.txt (one per line, in label order), when the file exists."""
    f = folder / "classes.txt"
    if not f.is_file():
        return None
    return [line.strip() for line in f.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------- imagefolder
def _list_images(split_dir: Path, classes: list[str], *, allow_new: bool) -> tuple[list[Path], list[int]]:
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [c for c in found if c not in classes]
    if unknown and not allow_new:
        raise DataError(
            f"data.path: {split_dir} has class folders that train/ lacks: {', '.join(unknown[:5])}. "
            "Every class in val/ and test/ must also be a folder in train/; rename or remove them."
        )
    paths, labels = [], []
    for c in found:
        cdir = split_dir / c
        files = sorted(
            Path(dp) / f
            for dp, dns, fns in os.walk(cdir)
            for f in fns
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        )
        if not files:
            raise DataError(
                f"data.path: class folder {cdir} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}). "
                "Add its images, or move the empty folder out of data.path."
            )
        paths += files
        labels += [classes.index(c)] * len(files)
    return paths, labels


@DATASETS.register("imagefolder")
def imagefolder(cfg: "DataConfig", /, *, path: str | None = None) -> SourceData:
    """Your own images: PATH/train/<class>/*.jpg|png..., optional PATH/val/ and PATH/test/."""
    root = Path(path or cfg.root).expanduser()
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(
            f"data.path: expected an image folder at {root.resolve()} holding train/<class>/<image files> "
            f"(and optionally val/<class>/ and test/<class>/), but {train_dir.resolve()} does not exist. "
            "Set data.path (or data.root) to the folder that contains train/."
        )
    folder_classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folder_classes:
        raise DataError(f"data.path: {train_dir} has no class folders; put each class's images in train/<class>/.")
    classes = read_class_names(root) or folder_classes
    if sorted(classes) != folder_classes:
        raise DataError(
            f"data.path: {root / 'classes.txt'} lists {len(classes)} classes that do not match the "
            f"{len(folder_classes)} folders in {train_dir}; fix the file or move it away (folder names sorted "
            "alphabetically are then the classes)."
        )
    split_dirs = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}

    def decode() -> Decoded:
        splits, skipped = {}, 0
        for split, d in split_dirs.items():
            paths, labels = _list_images(d, classes, allow_new=split == "train")
            x, kept = decode_files(paths, size=cfg.image_size, skip_corrupt=cfg.skip_corrupt, what=str(d))
            skipped += len(paths) - len(kept)
            splits[split] = (x, torch.tensor(labels, dtype=torch.int64)[torch.from_numpy(kept)])
        return Decoded(splits, list(classes), None, meta={"skipped": skipped})

    inputs = list(split_dirs.values()) + [root / "classes.txt"]
    return cached_source(cfg, "imagefolder", {}, inputs, decode)


# --------------------------------------------------------------------------- arrays
ARRAY_SPLITS = ("train", "val", "test")


NUMPY_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")  # a zip (.npz, also empty) or an .npy


def check_numpy_file(path: Path, what: str) -> None:
    """Refuse a file that is neither an .npz nor an .npy before numpy reads it: numpy takes any
    other bytes for a pickle, and would then report "pickled data" for a file of random bytes."""
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(6)
        if not head.startswith(NUMPY_MAGIC):
            raise DataError(
                f"{what}: {path} is not a valid .npz or .npy file (it starts with neither a zip nor an .npy "
                f"header: it may be damaged or another format). Write it with numpy.savez(path, train_x=..., "
                f"train_y=...)."
            )


def open_arrays(path: Path, what: str) -> dict[str, np.ndarray]:
    """{name: array} from an .npz file or a folder of NAME.npy files (no pickled objects)."""
    for f in sorted(path.glob("*.npy")) if path.is_dir() else [path]:
        check_numpy_file(f, what)
    try:
        if path.is_dir():
            return {f.stem: np.load(f, allow_pickle=False) for f in sorted(path.glob("*.npy"))}
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DataError(
                f"{what}: {path} stores Python objects (an object array), which are only loaded from trusted "
                "files; save plain numeric arrays instead (np.savez(path, train_x=..., train_y=...))."
            ) from None
        raise DataError(f"{what}: {path} is not a valid .npy/.npz file ({e}).") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(
            f"{what}: {path} is truncated or not an .npz/.npy file ({type(e).__name__}: {e}). Write it again "
            "with numpy.savez / numpy.save."
        ) from None


def labels_of(a: np.ndarray, where: str) -> torch.Tensor:
    """Integer class labels (N,) from an array of ints (or of whole-valued floats)."""
    a = np.asarray(a)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise DataError(f"{where}: labels must be a 1-D array of class indices, got shape {a.shape}.")
    if not np.issubdtype(a.dtype, np.integer):
        if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise DataError(f"{where}: labels must be whole-number class indices, got dtype {a.dtype}.")
    return torch.from_numpy(a.astype(np.int64))


def inputs_of(a: np.ndarray, where: str, layout: str) -> torch.Tensor:
    """uint8 images -> (N, C, H, W); 2-D numeric arrays -> float32 features (N, D)."""
    if a.ndim == 2 and (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if a.ndim in (3, 4) and a.dtype == np.uint8:
        if a.ndim == 3:
            return hwc_to_chw(a)
        nchw = layout == "nchw" or (layout == "auto" and a.shape[-1] not in (1, 3, 4) and a.shape[1] in (1, 3, 4))
        return torch.from_numpy(np.ascontiguousarray(a)) if nchw else hwc_to_chw(a)
    kind = "images" if a.ndim in (3, 4) else "inputs"
    raise DataError(
        f"{where}: expected uint8 images (N, H, W) / (N, H, W, C) or 2-D features (N, D), got {kind} of shape "
        f"{a.shape} and dtype {a.dtype}. Convert images to uint8 0..255 (e.g. (x * 255).round().astype('uint8'))."
    )


@DATASETS.register("arrays")
def arrays(
    cfg: "DataConfig", /, *, path: str | None = None, layout: Literal["auto", "nhwc", "nchw"] = "auto"
) -> SourceData:
    """Arrays: an .npz with train_x, train_y (+ val_*, test_*), or a folder of such .npy files."""
    p = Path(path or cfg.root).expanduser()
    what = "data.path" if path else "data.root"
    if not p.exists():
        raise DataError(
            f"{what}: {p.resolve()} does not exist. The arrays source reads an .npz file holding train_x, "
            "train_y (and optionally val_x, val_y, test_x, test_y), or a folder of train_x.npy, train_y.npy, ... files."
        )
    folder = p if p.is_dir() else p.parent

    def decode() -> Decoded:
        found = open_arrays(p, what)
        for need in ("train_x", "train_y"):
            if need not in found:
                raise DataError(
                    f"{what}: {p} has no array {need!r} (found: {', '.join(sorted(found)) or 'none'}). "
                    "Expected train_x and train_y, optionally val_x/val_y and test_x/test_y."
                )
        splits = {}
        for s in ARRAY_SPLITS:
            if f"{s}_x" in found or f"{s}_y" in found:
                if f"{s}_x" not in found or f"{s}_y" not in found:
                    have = f"{s}_x" if f"{s}_x" in found else f"{s}_y"
                    raise DataError(f"{what}: {p} has {have} but not its partner; give both {s}_x and {s}_y.")
                splits[s] = (inputs_of(found[f"{s}_x"], f"{p} ({s}_x)", layout),
                             labels_of(found[f"{s}_y"], f"{p} ({s}_y)"))
        kinds = {(x.dtype, x.shape[1:]) for x, _ in splits.values()}
        if len(kinds) > 1:
            raise DataError(f"{what}: {p}: the splits' inputs differ in shape or type ({sorted(map(str, kinds))}).")
        given = [str(c) for c in found["classes"].tolist()] if "classes" in found else (read_class_names(folder) or None)
        return Decoded(splits, classes_from_labels(splits, given, f"{what}: {p}"), None)

    inputs = [p] + ([folder / "classes.txt"] if not p.is_dir() else [])
    return cached_source(cfg, "arrays", {"layout": layout}, inputs, decode)
