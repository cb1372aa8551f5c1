"""The suite's user-facing error and the one-line form of any exception.

:class:`ConfigError` is bad input (a config key, a spec, a data file, a resource the run
needs): the CLI prints its message as ``repro: error: <message>`` and exits 2, before
anything is written or submitted.  :class:`StorageError` is a file the suite could not
write (no space, read-only, no permission): the CLI prints it as one line too and exits 1.
Every message is one line; :func:`first_line` and
:func:`describe` make one out of a library's exception when it is wrapped.
"""
from __future__ import annotations

import os


class ConfigError(ValueError):
    """A user-facing configuration problem; the message is one line."""


class StorageError(OSError):
    """A file could not be written: ``could not write PATH: REASON`` (one line; ``errno`` kept).

    Raised by the one writer (:mod:`imagenet_repro.files`) for any OSError of a write
    (ENOSPC, EROFS, EACCES, EDQUOT, EIO ...); the trainer adds what it kept
    (:func:`imagenet_repro.train.loop.run_training`)."""

    def __init__(self, path, cause: BaseException, message: str | None = None) -> None:
        errno = getattr(cause, "errno", None)
        reason = os.strerror(errno) if errno else first_line(cause)
        super().__init__(errno, reason)
        self.path = str(path)
        self.reason = reason
        self.message = message or f"could not write {path}: {reason}"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # a sweep job's error is pickled back to the launcher
        return _storage_error, (self.path, self.errno, self.reason, self.message)


def _storage_error(path: str, errno, reason: str, message: str) -> StorageError:
    return StorageError(path, OSError(errno, reason), message)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name when the message is empty)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def describe(exc: BaseException) -> str:
    """``Type: first line`` (just ``Type`` when the message is empty): an error of code we did not write."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
