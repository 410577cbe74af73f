"""gallery: the baseline, the schema as it was when migrations moved to Alembic.

A new database gets the current tables from the store's metadata and is stamped at the head; a
database written before is recognised by the store's legacy check and stamped here.

Revision ID: gallery_0001
"""
revision = "gallery_0001"
down_revision = None
branch_labels = ("gallery",)
depends_on = None


def upgrade() -> None:
    pass
