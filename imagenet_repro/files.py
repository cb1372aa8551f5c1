"""Atomic file writes (the suite's one writer) and tolerant JSON reads.

Every file the suite writes (run tables, status, checkpoints, ``.beton`` files, results,
figures) appears atomically: written to a hidden temporary name in the same folder,
flushed to disk, then renamed onto its name, so a reader (a resuming run, ``repro
status``, a colleague's plot) never sees half a file, and an interrupted write leaves
the previous file, or none.  A write that fails (no space, read-only, no permission)
raises :class:`~imagenet_repro.errors.StorageError` naming the file, with nothing of
it left behind.  Files get the permissions ``open()`` would give (the
umask's), not ``mkstemp``'s private 0600.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from imagenet_repro.errors import StorageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
# what a failed write says of the disk (full, over quota, read-only, no permission, I/O error, too big)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG})


def make_dir(path: str | Path) -> Path:
    """``mkdir -p path``; an OSError is a StorageError naming the folder."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(path, exc) from exc
    return path


def atomic_write(path: str | Path, write: Callable[[str], Any],
                 before_replace: Optional[Callable[[str], Any]] = None) -> None:
    """``write(tmp)``, fsync, ``before_replace(tmp)`` (e.g. rotate the file being replaced),
    then rename ``tmp`` onto ``path``; on any error the temporary file is removed, and an
    OSError (the disk) is raised as a StorageError naming ``path``."""
    path = Path(path)
    make_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
    except OSError as exc:
        raise StorageError(path, exc) from exc
    try:
        try:
            write(tmp)
        except OSError as exc:  # the disk's errors only: a source that ``write`` reads may fail otherwise
            if exc.errno in WRITE_ERRNOS and not isinstance(exc, StorageError):
                raise StorageError(path, exc) from exc
            raise
        try:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            if before_replace is not None:
                before_replace(tmp)
            os.replace(tmp, path)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(path, exc) from exc
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_parquet(path: str | Path, frame) -> None:
    """A pandas DataFrame as parquet, without its index."""
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def atomic_write_csv(path: str | Path, frame) -> None:
    """A pandas DataFrame as CSV, without its index."""
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def read_json(path: str | Path) -> dict | None:
    """The JSON object at ``path``, or None if missing or unreadable."""
    try:
        with open(path) as fh:
            obj = json.load(fh)
        return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None
