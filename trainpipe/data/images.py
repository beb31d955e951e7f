"""Image decoding and the conversions every image source shares.

All of it runs once, when a dataset is first cached: files are decoded to uint8
(N, C, H, W), resized to `data.image_size` (shorter side, antialiased, then a centre
square crop, so aspect ratios are kept) and given `data.channels` channels.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from trainpipe.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_CHUNK = 1024  # images per resize call: bounds the float scratch memory of big sets


def hwc_to_chw(arr: np.ndarray) -> torch.Tensor:
    """(N, H, W) or (N, H, W, C) uint8 -> contiguous (N, C, H, W) tensor."""
    arr = np.ascontiguousarray(arr)
    t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if t.dim() == 3:
        return t.unsqueeze(1).contiguous()
    return t.permute(0, 3, 1, 2).contiguous()


def set_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Grey -> RGB by repetition, RGB -> grey by luminance (ITU-R 601, as PIL and torchvision)."""
    c = x.shape[1]
    if channels is None or channels == c:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        from torchvision.transforms.v2 import functional as TF

        return torch.cat([TF.rgb_to_grayscale(x[i : i + _CHUNK]) for i in range(0, len(x), _CHUNK)])
    raise DataError(
        f"data.channels: cannot turn {c}-channel images into {channels} channels; "
        "supported are 1 -> 3 (grey repeated) and 3 -> 1 (luminance). Set data.channels to 1, 3 or leave it unset."
    )


def resize_square(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize the shorter side to `size` (antialiased) and centre-crop to size x size."""
    if size is None or (x.shape[-2] == size and x.shape[-1] == size):
        return x
    from torchvision.transforms.v2 import functional as TF

    out = []
    for i in range(0, len(x), _CHUNK):
        chunk = TF.resize(x[i : i + _CHUNK], [size], antialias=True)
        out.append(TF.center_crop(chunk, [size, size]))
    return torch.cat(out) if out else x.new_empty((0, x.shape[1], size, size))


def conform(x: torch.Tensor, *, channels: int | None, size: int | None) -> torch.Tensor:
    """`data.channels` and `data.image_size` applied to a uint8 (N, C, H, W) tensor."""
    if channels is not None and channels < x.shape[1]:
        x = set_channels(x, channels)  # reduce first: less to resize
    x = resize_square(x, size)
    return set_channels(x, channels)


def _decode_one(path: Path, size: int | None) -> torch.Tensor | Exception:
    """One file -> uint8 (C, H, W) with C = 1 (grey) or 3, or the exception that stopped it.

    PIL rather than torchvision.io: torchvision 0.29 deprecates its decoders, and PIL
    reads every common format, converts palettes, alpha and CMYK itself, and can decode
    a JPEG straight at a reduced scale (`draft`) when it is going to be shrunk anyway.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            if size is not None:
                im.draft(im.mode, (size, size))  # JPEG only: DCT scaling, never below size
            im.load()
            if im.mode.startswith("I;16"):  # 16-bit grey PNG: keep the top byte, not a clip
                arr = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
            else:
                if im.mode not in ("L", "RGB"):
                    im = im.convert("L" if im.mode in ("1", "LA", "I", "F") else "RGB")
                arr = np.asarray(im)
        img = hwc_to_chw(arr[None])[0]
        if size is not None:
            img = resize_square(img.unsqueeze(0), size)[0]
        return img.contiguous()
    except Exception as e:  # any failure means "this file is not a readable image"
        return e


def decode_files(
    paths: Sequence[Path], *, size: int | None, skip_corrupt: bool, what: str
) -> tuple[torch.Tensor, np.ndarray]:
    """Decode image files to one uint8 (N, C, H, W) tensor; returns it and the kept indices.

    A file that fails to decode is a DataError naming it, or, with `skip_corrupt`,
    is left out with one warning that gives the count and the first few names.
    Grey images are repeated to 3 channels when the set mixes grey and colour.
    """
    if paths:
        log.info("decoding %d images of %s (once; the result is cached)", len(paths), what)
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda p: _decode_one(p, size), paths, chunksize=64))
    bad = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    if bad and not skip_corrupt:
        i = bad[0]
        raise DataError(
            f"{what}: image file {paths[i]} cannot be decoded ({type(results[i]).__name__}: "
            f"{str(results[i]).splitlines()[0] if str(results[i]) else 'unreadable'}); "
            f"{len(bad)} of {len(paths)} files fail. Replace it or move it out of the folder, or set "
            "data.skip_corrupt=true to leave unreadable images out with a warning."
        )
    if bad:
        names = ", ".join(str(paths[i]) for i in bad[:3]) + (", ..." if len(bad) > 3 else "")
        warnings.warn(f"{what}: skipped {len(bad)} of {len(paths)} images that cannot be decoded ({names}).",
                      stacklevel=2)
    kept = np.array([i for i, r in enumerate(results) if not isinstance(r, Exception)], dtype=np.int64)
    images: list[torch.Tensor] = [results[i] for i in kept]  # type: ignore[misc]
    if not images:
        return torch.empty((0, 3, size or 1, size or 1), dtype=torch.uint8), kept
    shapes = {tuple(im.shape[-2:]) for im in images}
    if len(shapes) > 1:
        first = images[0].shape[-2:]
        odd = next(j for j, im in enumerate(images) if im.shape[-2:] != first)
        raise DataError(
            f"{what}: images have different sizes ({paths[kept[0]]} is {tuple(first)}, "
            f"{paths[kept[odd]]} is {tuple(images[odd].shape[-2:])}); set data.image_size "
            "(e.g. data.image_size=224) to resize every image to one square size."
        )
    channels = max(im.shape[0] for im in images)
    out = torch.empty((len(images), channels, *images[0].shape[-2:]), dtype=torch.uint8)
    for i, im in enumerate(images):
        out[i] = im  # grey images broadcast to 3 channels in a colour set
    return out, kept


def check_labels(y: torch.Tensor, num_classes: int, where: str) -> None:
    """Labels must be whole numbers in [0, num_classes)."""
    if y.numel() == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise DataError(
            f"{where}: label {bad} is outside [0, {num_classes}) (labels range from {lo} to {hi}, "
            f"{num_classes} classes). Labels must be class indices 0..{num_classes - 1}; fix the file, "
            "or list every class so that the count is right."
        )
