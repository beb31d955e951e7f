"""Decode once, keep uint8: the on-disk cache of decoded datasets.

A source decodes its files (pickles, .mat, IDX, JPEG folders) once into contiguous
tensors; they are saved with `torch.save` under the cache directory and later runs
(and every sweep trial) read them back with `torch.load(mmap=True)`, which for a
CIFAR-sized set takes a few tens of milliseconds.

An entry's file name is a hash of its key: the source name, its options, the image
size and channels asked for, and a fingerprint of the source files (their relative
paths, sizes and modification times: cheap to compute for 60,000 files, and any
re-download or edit changes it). Entries are written to a temporary file and renamed,
so a killed run never leaves a half-written entry under the final name; each tensor's
CRC32 is stored alongside and checked on load, so a truncated or damaged file is
detected, reported and rebuilt. Parallel runs that need the same entry take a file
lock, so it is decoded once and the others wait for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainpipe import files
from trainpipe.errors import StorageError

CACHE_ENV = "TRAINPIPE_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/trainpipe"
# Bump when the stored layout changes, so that old entries are ignored rather than misread.
FORMAT_VERSION = 1

Tensors = dict[str, torch.Tensor]
Meta = dict[str, Any]


def cache_root(configured: str | None) -> Path | None:
    """The cache directory: `data.cache_dir`, else $TRAINPIPE_CACHE_DIR, else ~/.cache/trainpipe.

    `data.cache_dir: none` turns the cache off (every run decodes again).
    """
    if configured is not None and configured.strip().lower() in ("none", "off", "false", ""):
        return None
    chosen = configured or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser()


def _file_stats(top: str, rel: str, out: list[str]) -> None:
    # os.scandir with plain strings: pathlib objects made this 10x slower on 60,000 files.
    with os.scandir(top) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        name = f"{rel}/{e.name}"
        if e.is_dir():
            _file_stats(e.path, name, out)
        else:
            info = e.stat()
            out.append(f"{name}:{info.st_size}:{info.st_mtime_ns}")


def fingerprint(paths: Iterable[str | Path]) -> str:
    """A short hash of the relative paths, sizes and mtimes of `paths` (folders walked)."""
    lines: list[str] = []
    for top in paths:
        top = Path(top)
        if top.is_dir():
            _file_stats(str(top), top.name, lines)
        elif top.exists():
            info = top.stat()
            lines.append(f"{top.name}:{info.st_size}:{info.st_mtime_ns}")
        else:
            lines.append(f"{top.name}:missing")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]


def _crc(t: torch.Tensor) -> int:
    arr = np.ascontiguousarray(t.detach().cpu().numpy())
    return zlib.crc32(arr.view(np.uint8).reshape(-1)) if arr.size else 0


def entry_path(root: Path, name: str, key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(dict(key), sort_keys=True, default=str).encode()).hexdigest()[:20]
    return root / f"{name}-{digest}.pt"


class CorruptEntry(Exception):
    """A cache file exists but cannot be trusted (truncated, damaged, other key)."""


def read_entry(path: Path, key: Mapping[str, Any]) -> tuple[Tensors, Meta]:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a truncated zip, a bad pickle: every reason means "rebuild"
        raise CorruptEntry(f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(stored, dict) or stored.get("format") != FORMAT_VERSION:
        raise CorruptEntry("was written by another version of trainpipe")
    if json.dumps(stored.get("key"), sort_keys=True, default=str) != json.dumps(dict(key), sort_keys=True, default=str):
        raise CorruptEntry("holds another dataset's data (its key differs)")
    tensors, crcs = stored.get("tensors"), stored.get("crc")
    if not isinstance(tensors, dict) or not isinstance(crcs, dict) or set(tensors) != set(crcs):
        raise CorruptEntry("is incomplete")
    for name, t in tensors.items():
        if _crc(t) != crcs[name]:
            raise CorruptEntry(f"is damaged (checksum of {name!r} does not match)")
    return tensors, stored.get("meta", {})


def write_entry(path: Path, key: Mapping[str, Any], tensors: Tensors, meta: Meta) -> None:
    """Write atomically (`files.atomic_write`), so a killed run never leaves half an entry."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    payload = {"format": FORMAT_VERSION, "key": dict(key), "meta": meta, "tensors": tensors,
               "crc": {k: _crc(v) for k, v in tensors.items()}}
    files.atomic_write(path, lambda f: torch.save(payload, f))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path.lock` (POSIX), so that one process decodes, others wait."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps entries whole
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a")
    except OSError:  # a read-only cache folder: build without the lock; the write will warn
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_or_build(
    root: Path | None,
    name: str,
    key: Mapping[str, Any],
    build: Callable[[], tuple[Tensors, Meta]],
) -> tuple[Tensors, Meta, str]:
    """The cached (tensors, meta) for `key`, building and saving them on a miss.

    Returns a status as third element: "hit", "built", or "off" (no cache directory).
    """
    if root is None:
        tensors, meta = build()
        return tensors, meta, "off"
    path = entry_path(root, name, key)

    def try_read() -> tuple[Tensors, Meta] | None:
        if not path.exists():
            return None
        try:
            return read_entry(path, key)
        except CorruptEntry as e:
            warnings.warn(f"dataset cache file {path} {e}; rebuilding it from the source files.", stacklevel=3)
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    found = try_read()
    if found is not None:
        return (*found, "hit")
    with _locked(path):
        found = try_read()  # another process may have built it while we waited
        if found is not None:
            return (*found, "hit")
        tensors, meta = build()
        try:
            write_entry(path, key, tensors, meta)
        except (OSError, StorageError) as e:
            warnings.warn(f"could not write the dataset cache {path} ({e}); continuing without it.", stacklevel=2)
        return tensors, meta, "built"
