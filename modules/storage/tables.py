"""The gallery's tables: one definition for SQLite and PostgreSQL.

``galleries`` -> ``people`` -> ``faces`` (each deleted with its parent); counters kept by triggers make
``num_people``, ``get_gallery`` and the embedder check O(1).  Ids are never reused.  ``faces.gen``: the
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
face_deletions = Table("face_deletions", metadata, Column("gen", Integer, nullable=False, index=True),
                       Column("face_id", Integer, nullable=False))

COMMON = (galleries, people, faces, gallery_embedders)
TABLES = {"sqlite": (*COMMON, meta, face_deletions), "postgresql": COMMON}

SQLITE_TRIGGERS = [
    """CREATE TRIGGER faces_added AFTER INSERT ON faces BEGIN
        UPDATE people SET num_faces = num_faces + 1 WHERE id = NEW.person_id;
        UPDATE galleries SET people_with_faces = people_with_faces + 1
            WHERE id = NEW.gallery_id AND (SELECT num_faces FROM people WHERE id = NEW.person_id) = 1;
        INSERT INTO gallery_embedders (gallery_id, embedder, dim, faces) VALUES (NEW.gallery_id, NEW.embedder, NEW.dim, 1)
            ON CONFLICT (gallery_id, embedder, dim) DO UPDATE SET faces = faces + 1;
    END""",
    # a cascade from a deleted person runs after its row is gone: people_deleted counts it then
    """CREATE TRIGGER faces_deleted AFTER DELETE ON faces BEGIN
        INSERT INTO face_deletions (gen, face_id) VALUES ((SELECT value FROM meta WHERE key = 'generation'), OLD.id);
        UPDATE people SET num_faces = num_faces - 1 WHERE id = OLD.person_id;
        UPDATE galleries SET people_with_faces = people_with_faces - 1
            WHERE id = OLD.gallery_id AND (SELECT num_faces FROM people WHERE id = OLD.person_id) = 0;
        UPDATE gallery_embedders SET faces = faces - 1
            WHERE gallery_id = OLD.gallery_id AND embedder = OLD.embedder AND dim = OLD.dim;
        DELETE FROM gallery_embedders
            WHERE gallery_id = OLD.gallery_id AND embedder = OLD.embedder AND dim = OLD.dim AND faces <= 0;
    END""",
    """CREATE TRIGGER faces_updated AFTER UPDATE OF embedder, dim ON faces BEGIN
        UPDATE gallery_embedders SET faces = faces - 1
            WHERE gallery_id = OLD.gallery_id AND embedder = OLD.embedder AND dim = OLD.dim;
        DELETE FROM gallery_embedders
            WHERE gallery_id = OLD.gallery_id AND embedder = OLD.embedder AND dim = OLD.dim AND faces <= 0;
        INSERT INTO gallery_embedders (gallery_id, embedder, dim, faces) VALUES (NEW.gallery_id, NEW.embedder, NEW.dim, 1)
            ON CONFLICT (gallery_id, embedder, dim) DO UPDATE SET faces = faces + 1;
    END""",
    """CREATE TRIGGER people_deleted AFTER DELETE ON people WHEN OLD.num_faces > 0 BEGIN
        UPDATE galleries SET people_with_faces = people_with_faces - 1 WHERE id = OLD.gallery_id;
    END""",
]

PG_TRIGGERS = r"""
CREATE FUNCTION gallery_faces_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO gallery_embedders AS ge (gallery_id, embedder, dim, faces)
        SELECT gallery_id, embedder, dim, count(*) FROM new_faces GROUP BY 1, 2, 3
        ON CONFLICT (gallery_id, embedder, dim) DO UPDATE SET faces = ge.faces + excluded.faces;
    WITH c AS (SELECT person_id, count(*) AS n FROM new_faces GROUP BY person_id),
         u AS (UPDATE people p SET num_faces = p.num_faces + c.n FROM c WHERE p.id = c.person_id
               RETURNING p.gallery_id, p.num_faces - c.n AS before)
    UPDATE galleries g SET people_with_faces = g.people_with_faces + x.k
        FROM (SELECT gallery_id, count(*) AS k FROM u WHERE before = 0 GROUP BY gallery_id) x
        WHERE g.id = x.gallery_id;
    RETURN NULL;
END $$;

CREATE FUNCTION gallery_faces_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE gallery_embedders ge SET faces = ge.faces - c.n
        FROM (SELECT gallery_id, embedder, dim, count(*) AS n FROM old_faces GROUP BY 1, 2, 3) c
        WHERE ge.gallery_id = c.gallery_id AND ge.embedder = c.embedder AND ge.dim = c.dim;
    DELETE FROM gallery_embedders
        WHERE faces <= 0 AND gallery_id IN (SELECT DISTINCT gallery_id FROM old_faces);
    WITH c AS (SELECT person_id, count(*) AS n FROM old_faces GROUP BY person_id),
         u AS (UPDATE people p SET num_faces = p.num_faces - c.n FROM c WHERE p.id = c.person_id
               RETURNING p.gallery_id, p.num_faces AS after)
    UPDATE galleries g SET people_with_faces = g.people_with_faces - x.k
        FROM (SELECT gallery_id, count(*) AS k FROM u WHERE after = 0 GROUP BY gallery_id) x
        WHERE g.id = x.gallery_id;
    RETURN NULL;
END $$;

CREATE FUNCTION gallery_faces_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- re-embedding changes (embedder, dim); faces never move between people
    UPDATE gallery_embedders ge SET faces = ge.faces - c.n
        FROM (SELECT gallery_id, embedder, dim, count(*) AS n FROM old_faces GROUP BY 1, 2, 3) c
        WHERE ge.gallery_id = c.gallery_id AND ge.embedder = c.embedder AND ge.dim = c.dim;
    INSERT INTO gallery_embedders AS ge (gallery_id, embedder, dim, faces)
        SELECT gallery_id, embedder, dim, count(*) FROM new_faces GROUP BY 1, 2, 3
        ON CONFLICT (gallery_id, embedder, dim) DO UPDATE SET faces = ge.faces + excluded.faces;
    DELETE FROM gallery_embedders
        WHERE faces <= 0 AND gallery_id IN (SELECT DISTINCT gallery_id FROM old_faces);
    RETURN NULL;
END $$;

CREATE FUNCTION gallery_people_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- the faces went first (the cascade), while their person was already gone: count the person here
    UPDATE galleries g SET people_with_faces = g.people_with_faces - x.k
        FROM (SELECT gallery_id, count(*) AS k FROM old_people WHERE num_faces > 0 GROUP BY gallery_id) x
        WHERE g.id = x.gallery_id;
    RETURN NULL;
END $$;

CREATE TRIGGER faces_added AFTER INSERT ON faces REFERENCING NEW TABLE AS new_faces
    FOR EACH STATEMENT EXECUTE FUNCTION gallery_faces_added();
CREATE TRIGGER faces_deleted AFTER DELETE ON faces REFERENCING OLD TABLE AS old_faces
    FOR EACH STATEMENT EXECUTE FUNCTION gallery_faces_deleted();
CREATE TRIGGER faces_updated AFTER UPDATE ON faces REFERENCING OLD TABLE AS old_faces NEW TABLE AS new_faces
    FOR EACH STATEMENT EXECUTE FUNCTION gallery_faces_updated();
CREATE TRIGGER people_deleted AFTER DELETE ON people REFERENCING OLD TABLE AS old_people
    FOR EACH STATEMENT EXECUTE FUNCTION gallery_people_deleted();
"""


def create_sqlite_triggers(conn: Any) -> None:
    for statement in SQLITE_TRIGGERS:
        conn.execute(text(statement))


def _meta_rows(target: Any, conn: Any, **_: Any) -> None:
    conn.execute(text("INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0), ('deletions_horizon', 0)"))
    conn.execute(text("INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', :now)"), {"now": utc_now_iso()})


def _dialect_ddl(target: Any, conn: Any, tables: Any = (), **_: Any) -> None:
    if faces in (tables or ()) and conn.dialect.name == "sqlite":
        create_sqlite_triggers(conn)
    elif faces in (tables or ()):
        conn.exec_driver_sql(PG_TRIGGERS)


event.listen(meta, "after_create", _meta_rows)
event.listen(
    galleries, "before_create", DDL("CREATE SEQUENCE IF NOT EXISTS gallery_generation").execute_if(dialect="postgresql")
)
event.listen(metadata, "after_create", _dialect_ddl)
