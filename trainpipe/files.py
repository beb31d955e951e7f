"""Writing files so that a crash or a full disk never leaves half of one.

Every file trainpipe writes goes through here. `atomic_write` writes to a temporary
file in the same directory, flushes and fsyncs it, renames it over the target and
fsyncs the directory, so that a process killed at any moment (or a machine losing
power) leaves either the old file or the new one. A write that fails because the
disk is full, the quota is used up or the file system is read-only raises
`StorageError` naming the path, and the old file stays as it was.

This module sits below everything else (it imports only `errors`), so that data
caches, checkpoints, run files and sweep files share one way of writing.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from trainpipe.errors import StorageError

# Errors that mean "this storage cannot take the write", as opposed to a bug.
STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.ENOENT: "a part of the path does not exist",
}
# The three that a user fixes by freeing space; the others are a wrong path.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def storage_cause(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` when it is a storage error, also when a library wrapped it
    (torch.save reports a full disk as a RuntimeError whose context is the OSError)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def storage_error(path: str | Path, exc: BaseException) -> StorageError | None:
    """A `StorageError` naming `path` for a storage failure, else None (a different error)."""
    cause = storage_cause(exc)
    if cause is None:
        return None
    why = STORAGE_ERRNOS[cause.errno]
    return StorageError(f"cannot write {str(path)!r}: {why} ({os.strerror(cause.errno)}).", path=Path(path),
                        errno=cause.errno)


def fsync_dir(directory: str | Path) -> None:
    """Make a rename in `directory` durable (its entry is on disk only once the directory is synced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory handles: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(p: str | Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], *, previous: str | Path | None = None) -> None:
    """Write `path` atomically: `write(f)` fills a temporary file beside it, which replaces `path`.

    With `previous`, the file being replaced is kept under that name (both renames happen
    after the new content is on disk, so a crash leaves the old or the new file, or, between
    the two renames, only `previous`). Storage failures raise `StorageError`; the old file
    is untouched and the temporary file removed.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.is_file():
            os.replace(path, previous)
        os.replace(tmp, path)
        tmp = None
    except BaseException as e:
        if tmp is not None:
            _unlink_quietly(tmp)
        err = storage_error(path, e)
        if err is not None:
            raise err from e
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any) -> None:
    """`data` as indented JSON (values JSON does not know written as strings)."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def append_text(path: str | Path, text: str) -> None:
    """Append to a log file (one whole line per call; readers skip a line cut short by a crash)."""
    try:
        with open(path, "a") as f:
            f.write(text)
            f.flush()
    except OSError as e:
        err = storage_error(path, e)
        if err is not None:
            raise err from e
        raise


def make_dir(path: str | Path, *, what: str = "directory") -> Path:
    """`mkdir -p`, with a `StorageError` naming the path and the reason when it cannot be made."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if isinstance(e, FileExistsError) or e.errno == errno.EEXIST:
            raise StorageError(f"cannot create the {what} {str(p)!r}: a file of that name exists. "
                               f"Choose another path.", path=p, errno=errno.EEXIST) from None
        err = storage_error(p, e)
        if err is None:
            raise
        raise StorageError(f"cannot create the {what} {str(p)!r}: {STORAGE_ERRNOS[err.errno]} "
                           f"({os.strerror(err.errno)}). Choose a path you can write to.",
                           path=p, errno=err.errno) from None
    return p
