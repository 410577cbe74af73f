"""The persistent gallery of known people.

``open_gallery(url_or_path)`` is the entry point: a file path or
``sqlite:///relative/path.db`` / ``sqlite:////absolute/path.db`` opens the
embedded SQLite backend; ``postgresql://user:pass@host:5432/dbname`` (or
``postgres://``) opens the PostgreSQL/pgvector backend.  ``resolve_database_url``
picks the URL from a ``--database-url`` flag or the ``DATABASE_URL`` environment
variable.  See :mod:`modules.gallery.base` for the interface,
:mod:`modules.gallery.sqlite` and :mod:`modules.gallery.postgres` for the
schemas and concurrency models, and ``docs/scale.md`` for choosing between them.
"""
from __future__ import annotations

import os
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

DATABASE_URL_ENV = "DATABASE_URL"

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
    "resolve_database_url",
    "validate_name",
]


def resolve_database_url(cli_value: str | None = None, environ: Any = None) -> str | None:
    """The gallery database URL: the ``--database-url`` value if given, else ``$DATABASE_URL``.

    ``None`` (neither set, or set to an empty string) means the SQLite file in the data dir.
    """
    if cli_value is not None and str(cli_value).strip():
        return str(cli_value).strip()
    env = (os.environ if environ is None else environ).get(DATABASE_URL_ENV, "")
    return env.strip() or None


def open_gallery(url_or_path: str | Path, **options: Any) -> GalleryStore:
    """Open the gallery at a file path or URL; ``options`` go to the backend.

    ``sqlite:///gallery.db`` is relative to the working directory,
    ``sqlite:////srv/gallery.db`` absolute (the SQLAlchemy convention).
    ``postgresql://...`` is handed to psycopg as is (any libpq URL, e.g.
    ``?sslmode=require`` or ``?host=/run/postgresql`` for a socket).  Options
    both backends take: ``ann_threshold`` (faces in a gallery from which search
    uses an HNSW index; ``None``: always exact) and ``busy_timeout_s`` (how long
    to wait for the database before a 503).
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
            from .postgres import PostgresGallery

            options = dict(options)
            options.pop("create", None)  # a PostgreSQL database is created by its administrator
            return PostgresGallery(text, **options)
        raise ConfigError(
            f"unsupported gallery URL scheme {scheme!r} in {text!r}; use a path, sqlite:///path or postgresql://..."
        )
    return SQLiteGallery(text, **options)
