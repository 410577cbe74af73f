"""Storage: the SQL layer (SQLAlchemy Core + Alembic) and the persistent gallery of known people.

``open_gallery(location)`` is the entry point: a file path or
``sqlite:///relative/path.db`` / ``sqlite:////absolute/path.db`` opens the
embedded SQLite gallery; ``postgresql://user:pass@host:5432/dbname`` (or
``postgres://``) the PostgreSQL/pgvector one.  ``resolve_database_url`` picks the
URL from a ``--database-url`` flag or the ``DATABASE_URL`` environment variable.
See :mod:`modules.storage.gallery` for the store, :mod:`modules.storage.tables`
for the schema, and ``docs/scale.md`` for choosing between the backends.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .engine import database_url, is_sqlite
from .gallery import GalleryStore
from .maintenance import SCHEMA_VERSION
from .legacy_pickles import export_legacy_pickle, import_legacy_pickle, restricted_loads
from .records import (
    MAX_NAME_LEN,
    REEMBED_COMMAND,
    FaceInfo,
    GalleryInfo,
    NewFace,
    PersonInfo,
    mismatch_error,
    validate_name,
)


__all__ = [
    "MAX_NAME_LEN",
    "REEMBED_COMMAND",
    "SCHEMA_VERSION",
    "FaceInfo",
    "GalleryInfo",
    "GalleryStore",
    "NewFace",
    "PersonInfo",
    "export_legacy_pickle",
    "import_legacy_pickle",
    "mismatch_error",
    "open_gallery",
    "restricted_loads",
    "validate_name",
]


def open_gallery(location: str | Path, **options: Any) -> GalleryStore:
    """Open the gallery at a file path or URL; ``options`` go to the backend.

    ``sqlite:///gallery.db`` is relative to the working directory, ``sqlite:////srv/gallery.db``
    absolute (the SQLAlchemy convention).  ``postgresql://...`` takes any libpq URL (e.g.
    ``?sslmode=require`` or ``?host=/run/postgresql`` for a socket).  Options both backends take:
    ``ann_threshold`` (faces in a gallery from which search uses an HNSW index; ``None``: always
    exact) and ``busy_timeout_s`` (how long to wait for the database before a 503).
    """
    if is_sqlite(database_url(location)):
        from .sqlite_search import SQLiteGallery

        return SQLiteGallery(location, **options)
    from .pg_search import PostgresGallery

    options = dict(options)
    options.pop("create", None)  # a PostgreSQL database is created by its administrator
    return PostgresGallery(str(location), **options)
