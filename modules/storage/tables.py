"""The gallery's tables: one definition for SQLite and PostgreSQL.

``galleries`` -> ``people`` -> ``faces`` (each deleted with its parent); counters (``people.num_faces``,
``galleries.people_with_faces``, ``gallery_embedders``), kept by every write in its own transaction
(:mod:`~modules.storage.writes`), make ``num_people``, ``get_gallery`` and the embedder check O(1).  Ids are never reused.  ``faces.gen``: the
generation that wrote the face.  SQLite only: ``meta`` and the ``face_deletions`` change log; PostgreSQL
only: the ``gallery_generation`` sequence.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import numpy as np
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (DDL, BigInteger, CheckConstraint, Column, Float, ForeignKey, ForeignKeyConstraint, Identity,
                        Index, Integer, LargeBinary, MetaData, Table, Text, UniqueConstraint, event, text)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.types import TypeDecorator

from .records import utc_now_iso


class Timestamp(TypeDecorator):
    """``2024-05-01T12:00:00.123Z`` in Python; text on SQLite, ``timestamptz`` on PostgreSQL."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        return dialect.type_descriptor(TIMESTAMP(timezone=True) if dialect.name == "postgresql" else Text())

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return utc_now_iso(value) if isinstance(value, datetime) and dialect.name != "postgresql" else value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return utc_now_iso(value) if isinstance(value, datetime) else value


class JsonText(TypeDecorator):
    """A JSON object given as its (validated) text; text on SQLite, ``jsonb`` on PostgreSQL; read as a dict."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        return dialect.type_descriptor(JSONB() if dialect.name == "postgresql" else Text())

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return json.loads(value) if value is not None and dialect.name == "postgresql" else value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value


class Embedding(TypeDecorator):
    """A float32 vector: a little-endian BLOB on SQLite, a pgvector ``vector`` on PostgreSQL."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        return dialect.type_descriptor(VECTOR() if dialect.name == "postgresql" else LargeBinary())

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return value if value is None or dialect.name == "postgresql" else np.asarray(value, "<f4").tobytes()

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, (bytes, memoryview)):
            return np.frombuffer(value, dtype="<f4").astype(np.float32)
        return None if value is None else np.asarray(value, dtype=np.float32)


def _id() -> Column:
    return Column("id", BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True)


def _created_at() -> Column:
    return Column("created_at", Timestamp, nullable=False, default=lambda: datetime.now(timezone.utc))


metadata = MetaData()

galleries = Table(
    "galleries", metadata, _id(),
    Column("name", Text, nullable=False, unique=True), _created_at(),
    Column("generation", BigInteger, nullable=False, server_default="0"),
    Column("people_with_faces", BigInteger, nullable=False, server_default="0"), sqlite_autoincrement=True,
)

people = Table(
    "people", metadata, _id(),
    Column("gallery_id", BigInteger, ForeignKey("galleries.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False), _created_at(), Column("metadata", JsonText),
    Column("num_faces", Integer, nullable=False, server_default="0"),
    UniqueConstraint("gallery_id", "name"), UniqueConstraint("id", "gallery_id"), sqlite_autoincrement=True,
)

faces = Table(
    "faces", metadata, _id(),
    Column("person_id", BigInteger, nullable=False), Column("gallery_id", BigInteger, nullable=False),
    Column("embedder", Text, nullable=False), Column("dim", Integer, CheckConstraint("dim > 0"), nullable=False),
    Column("embedding", Embedding, nullable=False), Column("crop_png", LargeBinary),
    Column("source", Text), Column("source_sha256", Text), Column("box", Text), Column("landmarks", Text),
    Column("det_score", Float), _created_at(), Column("gen", BigInteger, nullable=False, server_default="0"),
    ForeignKeyConstraint(["person_id", "gallery_id"], ["people.id", "people.gallery_id"], ondelete="CASCADE"),
    CheckConstraint("length(embedding) = 4 * dim").ddl_if(dialect="sqlite"),
    CheckConstraint("vector_dims(embedding) = dim").ddl_if(dialect="postgresql"),
    sqlite_autoincrement=True,
)
Index("faces_person", faces.c.person_id, faces.c.gallery_id, faces.c.id)  # the cascade from people uses it
Index("faces_gallery", faces.c.gallery_id, faces.c.id)
Index("faces_gen", faces.c.gen).ddl_if(dialect="sqlite")
Index("faces_source_sha256", faces.c.gallery_id, faces.c.source_sha256,
      sqlite_where=faces.c.source_sha256.isnot(None), postgresql_where=faces.c.source_sha256.isnot(None))
Index("faces_without_crop", faces.c.gallery_id, sqlite_where=faces.c.crop_png.is_(None),
      postgresql_where=faces.c.crop_png.is_(None))

gallery_embedders = Table(
    "gallery_embedders", metadata,
    Column("gallery_id", BigInteger, ForeignKey("galleries.id", ondelete="CASCADE"), primary_key=True),
    Column("embedder", Text, primary_key=True), Column("dim", Integer, primary_key=True),
    Column("faces", BigInteger, nullable=False),
)

# SQLite only: the generation counter and the deletion log
meta = Table("meta", metadata, Column("key", Text, primary_key=True), Column("value", Integer, nullable=False))
face_deletions = Table("face_deletions", metadata, Column("gen", Integer, primary_key=True, autoincrement=False),
                       Column("face_id", Integer, primary_key=True, autoincrement=False),
                       sqlite_with_rowid=False)  # one B-tree, ordered by generation

COMMON = (galleries, people, faces, gallery_embedders)
TABLES = {"sqlite": (*COMMON, meta, face_deletions), "postgresql": COMMON}

# SQLite only: each deleted face (a person's or a gallery's cascade included) goes to the change log
LOG_DELETIONS = """CREATE TRIGGER faces_log_delete AFTER DELETE ON faces BEGIN
    INSERT INTO face_deletions (gen, face_id) VALUES ((SELECT value FROM meta WHERE key = 'generation'), OLD.id);
END"""


def _meta_rows(target: Any, conn: Any, **_: Any) -> None:
    conn.execute(text("INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0), ('deletions_horizon', 0)"))
    conn.execute(text("INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', :now)"), {"now": utc_now_iso()})


def _log_deletions(target: Any, conn: Any, tables: Any = (), **_: Any) -> None:
    if face_deletions in (tables or ()):
        conn.execute(text(LOG_DELETIONS))


event.listen(meta, "after_create", _meta_rows)
event.listen(
    galleries, "before_create", DDL("CREATE SEQUENCE IF NOT EXISTS gallery_generation").execute_if(dialect="postgresql")
)
event.listen(metadata, "after_create", _log_deletions)
