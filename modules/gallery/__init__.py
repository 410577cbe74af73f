"""The persistent gallery of known people.

``open_gallery(url_or_path)`` is the entry point: a file path or
``sqlite:///relative/path.db`` / ``sqlite:////absolute/path.db`` opens the
embedded SQLite backend.  See :mod:`modules.gallery.base` for the interface and
:mod:`modules.gallery.sqlite` for the schema and the concurrency model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import (
    REEMBED_COMMAND,
    FaceInfo,
    GalleryInfo,
    GalleryStore,
    NewFace,
    PersonInfo,
    rank_people,
    validate_name,
)
from .sqlite import SCHEMA_VERSION, SQLiteGallery

__all__ = [
    "REEMBED_COMMAND",
    "SCHEMA_VERSION",
    "FaceInfo",
    "GalleryInfo",
    "GalleryStore",
    "NewFace",
    "PersonInfo",
    "SQLiteGallery",
    "open_gallery",
    "rank_people",
    "validate_name",
]


def open_gallery(url_or_path: str | Path, **options: Any) -> GalleryStore:
    """Open the gallery at a file path or URL; ``options`` go to the backend (e.g. ``busy_timeout_s``).

    ``sqlite:///gallery.db`` is relative to the working directory,
    ``sqlite:////srv/gallery.db`` absolute (the SQLAlchemy convention).
    """
    if isinstance(url_or_path, Path):
        return SQLiteGallery(url_or_path, **options)
    if not isinstance(url_or_path, str) or not url_or_path.strip():
        raise ConfigError(f"gallery location must be a file path or URL, got {url_or_path!r}")
    text = url_or_path.strip()
    if "://" in text:
        scheme, _, rest = text.partition("://")
        scheme = scheme.lower()
        if scheme == "sqlite":
            if not rest.startswith("/") or rest == "/":
                raise ConfigError(f"SQLite gallery URL must look like sqlite:///path/to/gallery.db, got {text!r}")
            return SQLiteGallery(rest[1:], **options)
        if scheme in ("postgres", "postgresql"):
            raise ConfigError("PostgreSQL galleries are not implemented yet; use a SQLite file path")
        raise ConfigError(f"unsupported gallery URL scheme {scheme!r} in {text!r}; use a path or sqlite:///path")
    return SQLiteGallery(text, **options)
