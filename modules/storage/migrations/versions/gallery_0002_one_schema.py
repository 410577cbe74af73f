"""gallery: one schema for both dialects.

PostgreSQL gains ``faces.gen``; SQLite gains what PostgreSQL had: ``faces.gallery_id`` with a foreign key
on ``(person_id, gallery_id)`` and the counters kept by triggers.  SQLite cannot add a foreign key, so
``faces`` is copied into a new table, keeping its ids and ``AUTOINCREMENT`` sequence (ids are never reused).

Revision ID: gallery_0002
"""
import sqlalchemy as sa
from alembic import op

from modules.storage.tables import face_deletions, faces, gallery_embedders

revision = "gallery_0002"
down_revision = "gallery_0001"
branch_labels = None
depends_on = None

# the counters of this revision, kept by triggers (gallery_0003 drops them: the writes keep them since)
_TRIGGERS = [
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

_COPIED = "id, person_id, embedder, dim, embedding, crop_png, source, source_sha256, box, landmarks, det_score, created_at"


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.add_column("faces", sa.Column("gen", sa.BigInteger, nullable=False, server_default="0"))
        op.execute("DROP TABLE IF EXISTS gallery_schema_migrations")
        return
    has_gen = any(c["name"] == "gen" for c in sa.inspect(conn).get_columns("faces"))
    seq = conn.execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'faces'")).scalar()
    op.execute("DROP TRIGGER IF EXISTS faces_log_delete")
    face_deletions.create(conn, checkfirst=True)  # schema 1 had no deletion log
    op.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('deletions_horizon', 0)")
    op.execute("DELETE FROM meta WHERE key = 'schema_version'")  # the version is Alembic's now
    op.add_column("people", sa.Column("num_faces", sa.Integer, nullable=False, server_default="0"))
    op.add_column("galleries", sa.Column("people_with_faces", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index("people_id_gallery", "people", ["id", "gallery_id"], unique=True)
    gallery_embedders.create(conn)
    op.rename_table("faces", "faces_old")
    for index in ("faces_person", "faces_source_sha256", "faces_gen"):
        op.execute(f"DROP INDEX IF EXISTS {index}")
    faces.create(conn)
    for trigger in _TRIGGERS:  # the counters are kept while the rows are copied
        op.execute(trigger)
    op.execute(
        f"INSERT INTO faces ({_COPIED}, gallery_id, gen)"
        f" SELECT {', '.join('f.' + c for c in _COPIED.split(', '))}, p.gallery_id, {'f.gen' if has_gen else 0}"
        " FROM faces_old f JOIN people p ON p.id = f.person_id ORDER BY f.id"
    )
    op.drop_table("faces_old")
    if seq is not None:
        conn.execute(sa.text("UPDATE sqlite_sequence SET seq = max(seq, :s) WHERE name = 'faces'"), {"s": seq})
        conn.execute(
            sa.text("INSERT INTO sqlite_sequence (name, seq) SELECT 'faces', :s WHERE NOT EXISTS"
                    " (SELECT 1 FROM sqlite_sequence WHERE name = 'faces')"),
            {"s": seq},
        )
