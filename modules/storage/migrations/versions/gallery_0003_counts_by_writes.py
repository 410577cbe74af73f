"""gallery: the counters are kept by the writes, no longer by triggers.

A trigger a face row (SQLite) cost every enrollment and deletion several statements and a statement journal
per face; the writes now keep ``people.num_faces``, ``galleries.people_with_faces`` and ``gallery_embedders``
in their own transaction (:mod:`modules.storage.writes`).  The counts themselves are unchanged.  SQLite keeps
one trigger, the change log of deleted faces; PostgreSQL drops its trigger functions too.

Revision ID: gallery_0003
"""
from alembic import op

from modules.storage.tables import LOG_DELETIONS

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
    op.execute(LOG_DELETIONS)
