"""gallery: the counters are kept by the writes, no longer by triggers.

SQLite's row triggers ran several statements, and a statement journal, for every face enrolled or deleted;
the writes now keep ``people.num_faces``, ``galleries.people_with_faces`` and ``gallery_embedders`` in their
own transaction, a statement per change (:mod:`modules.storage.writes`).  The counts themselves are unchanged.
SQLite keeps one trigger, the change log of deleted faces, whose table becomes one B-tree (``WITHOUT ROWID``,
keyed by generation and face); PostgreSQL drops its trigger functions too.

Revision ID: gallery_0003
"""
from alembic import op

from modules.storage.tables import LOG_DELETIONS, face_deletions

revision = "gallery_0003"
down_revision = "gallery_0002"
branch_labels = None
depends_on = None

_COUNTERS = {"faces_added": "faces", "faces_deleted": "faces", "faces_updated": "faces", "people_deleted": "people"}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger, table in _COUNTERS.items():
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
        for function in ("gallery_faces_added", "gallery_faces_deleted", "gallery_faces_updated",
                         "gallery_people_deleted"):
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
        return
    for trigger in (*_COUNTERS, "faces_log_delete"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    # the deletion log becomes one B-tree keyed (gen, face_id): a deletion writes one page of it, not two
    op.rename_table("face_deletions", "face_deletions_old")
    face_deletions.create(op.get_bind())
    op.execute("INSERT OR IGNORE INTO face_deletions (gen, face_id) SELECT gen, face_id FROM face_deletions_old")
    op.drop_table("face_deletions_old")
    op.execute(LOG_DELETIONS)
