"""Private files and folders: the service's data (faces, embeddings, videos, crops) readable by its own user only.

Every folder the service creates is ``0700`` (:func:`private_dir`), every file it writes ``0600``
(:func:`open_private` / :func:`write_private` for its own writes, :func:`private_file` after a library
such as OpenCV or hnswlib wrote one).  The entry points (``app.py``, the worker, the scripts, the command
lines) also call :func:`private_umask`, so whatever a library creates on its own (SQLite's ``-wal`` file,
a temporary file of a video encoder) is private too.  A folder that already exists (an output folder
chosen by the user) keeps its mode; :func:`loose_permissions` says when it lets others in.
"""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import IO, Any

DIR_MODE = 0o700
FILE_MODE = 0o600
UMASK = 0o077

_WRITE_FLAGS = {"w": os.O_TRUNC, "a": os.O_APPEND, "x": os.O_EXCL}


def private_umask() -> int:
    """Make every file and folder this process creates from now on private (``umask 077``); the old umask."""
    return os.umask(UMASK)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` and its missing parents created ``0700``; existing folders are left as they are."""
    path = Path(path)
    for folder in [*reversed(path.parents), path]:
        if not folder.exists():
            with contextlib.suppress(FileExistsError):  # made meanwhile by another thread or process
                folder.mkdir(mode=DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")
    return path


def private_file(path: str | os.PathLike[str]) -> Path:
    """Make a file another library wrote ``0600``."""
    os.chmod(path, FILE_MODE)
    return Path(path)


def open_private(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> IO[Any]:
    """``open(path, mode)`` for writing (``w``, ``a`` or ``x``, text or ``b``), the file ``0600`` even if it existed."""
    kind = mode.replace("b", "").replace("+", "")
    if kind not in _WRITE_FLAGS:
        raise ValueError(f"open_private writes files; mode {mode!r} is not w, a or x")
    flags = os.O_CREAT | _WRITE_FLAGS[kind] | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        with contextlib.suppress(PermissionError):  # somebody else's file we may write: not ours to chmod
            os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def write_private(path: str | os.PathLike[str], data: bytes | str, encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, or text in ``encoding``) to a ``0600`` file."""
    if isinstance(data, str):
        with open_private(path, "w", encoding=encoding) as fh:
            fh.write(data)
    else:
        with open_private(path, "wb") as fh:
            fh.write(data)
    return Path(path)


def loose_permissions(path: str | os.PathLike[str]) -> str | None:
    """``"0755"`` when ``path`` lets its group or others in, else ``None`` (also when it does not exist)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return f"{mode:04o}" if mode & 0o077 else None
