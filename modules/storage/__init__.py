"""Storage: the SQL layer (SQLAlchemy Core + Alembic) and the gallery of known people (see ``open_gallery``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .engine import database_url, is_sqlite
from .gallery import GalleryStore
from .legacy_pickles import export_legacy_pickle, import_legacy_pickle, restricted_loads
from .maintenance import SCHEMA_VERSION
from .records import (MAX_NAME_LEN, REEMBED_COMMAND, FaceInfo, GalleryInfo, NewFace, PersonInfo, mismatch_error,
                      validate_name, validate_new_name)

__all__ = [
    "MAX_NAME_LEN", "REEMBED_COMMAND", "SCHEMA_VERSION", "FaceInfo", "GalleryInfo", "GalleryStore", "NewFace",
    "PersonInfo", "export_legacy_pickle", "import_legacy_pickle", "mismatch_error", "open_gallery",
    "restricted_loads", "validate_name", "validate_new_name",
]


def open_gallery(location: str | Path, **options: Any) -> GalleryStore:
    """Open the gallery at a file path, ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a
    ``postgresql://`` (``postgres://``) libpq URL; ``options`` go to the backend."""
    if is_sqlite(database_url(location)):
        from .sqlite_search import SQLiteGallery

        return SQLiteGallery(location, **options)
    from .pg_search import PostgresGallery

    # a PostgreSQL database is created by its administrator
    return PostgresGallery(str(location), **{k: v for k, v in options.items() if k != "create"})
