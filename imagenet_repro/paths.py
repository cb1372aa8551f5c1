"""Checks of the paths a user gives, before any work: one line (ConfigError) for a bad one.

Every verb checks its paths here before it writes, trains or submits anything, and without
creating anything itself:

* :func:`check_out_dir`: a folder the suite will write into (``repro train --out``, a
  spec's ``runs_root``, ``--results``, the rehearsal root, figure folders).  It is a folder
  we may write into, or it does not exist yet and can be created: its nearest existing
  ancestor is a folder we may write into.
* :func:`check_out_file`: a file the suite will write (a ``.beton``, ``report.html``): not
  a folder, in a folder as above.
* :func:`check_in_path`: a path the suite will read: exists, is a file or a folder as it
  must be, is readable.

Names are checked too: no NUL byte, no component longer than the file system takes
(``NAME_MAX``), not longer than ``PATH_MAX``.  Permissions are read with ``os.access``, and
a folder to write into is probed: an empty folder is made in it and removed at once (the
one trace the check leaves is the folder's modification time).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal, Optional

from imagenet_repro.errors import ConfigError

NAME_MAX = 255  # bytes of one path component (Linux file systems)
PATH_MAX = 4096

Kind = Literal["file", "folder", "any"]


def _name_problem(path: str) -> Optional[str]:
    if not path.strip():
        return "is empty"
    if "\0" in path:
        return "holds a NUL byte"
    raw = os.fsencode(path)
    if len(raw) >= PATH_MAX:
        return f"is {len(raw)} bytes long (the limit is {PATH_MAX - 1})"
    long = next((p for p in raw.split(b"/") if len(p) > NAME_MAX), None)
    if long is not None:
        return f"has a {len(long)}-byte name (the limit is {NAME_MAX})"
    return None


def _writable_dir(path: Path) -> bool:
    """This user can make an entry in the folder ``path``: ``os.access``, then a probe folder
    made and removed at once (what access cannot tell: root on NFS, /proc, ACLs)."""
    if not os.access(path, os.W_OK | os.X_OK):
        return False
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".repro-probe-", dir=path))
    except OSError:
        return False
    return True


def out_dir_problem(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` cannot be (made) a folder to write into, or None."""
    text = os.fspath(path)
    problem = _name_problem(text)
    if problem is not None:
        return problem
    p = Path(text)
    try:
        if p.exists():
            if not p.is_dir():
                return "is a file, not a folder"
            return None if _writable_dir(p) else "is a folder this user cannot write into"
        ancestor = p.absolute().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            return f"cannot be created: {ancestor} is a file, not a folder"
        if not _writable_dir(ancestor):
            return f"cannot be created: this user cannot write into {ancestor}"
    except OSError as exc:  # a component that is a file (ENOTDIR), a loop of links, ...
        return f"cannot be used ({exc.strerror or type(exc).__name__})"
    return None


def check_out_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is (or can be created as) a folder to write into; else ConfigError."""
    problem = out_dir_problem(path)
    if problem is not None:
        raise ConfigError(f"{what} {os.fspath(path)!r} {problem}")
    return Path(path)


def check_out_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if a file can be written there (replacing a file is fine); else ConfigError."""
    text = os.fspath(path)
    problem = _name_problem(text)
    p = Path(text)
    if problem is None and p.is_dir():
        problem = "is a folder, not a file"
    if problem is None and p.exists() and not os.access(p, os.W_OK):
        problem = "is a file this user may not replace"
    if problem is None:
        folder = p.absolute().parent
        parent = out_dir_problem(folder)
        if parent is not None:
            problem = f"cannot be written: its folder {folder} {parent}"
    if problem is not None:
        raise ConfigError(f"{what} {text!r} {problem}")
    return p


def in_path_problem(path: str | os.PathLike, kind: Kind = "any") -> Optional[str]:
    """Why ``path`` cannot be read as a ``kind`` (file, folder or any), or None."""
    text = os.fspath(path)
    problem = _name_problem(text)
    if problem is not None:
        return problem
    p = Path(text)
    try:
        if not p.exists():
            return "does not exist"
        if kind == "file" and not p.is_file():
            return "is a folder, not a file"
        if kind == "folder" and not p.is_dir():
            return "is a file, not a folder"
        if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
            return "is not readable by this user"
    except OSError as exc:
        return f"cannot be used ({exc.strerror or type(exc).__name__})"
    return None


def check_in_path(path: str | os.PathLike, what: str, kind: Kind = "any") -> Path:
    """``path`` as a Path if it can be read as a ``kind``; else ConfigError."""
    problem = in_path_problem(path, kind)
    if problem is not None:
        raise ConfigError(f"{what} {os.fspath(path)!r} {problem}")
    return Path(path)
