"""gallery: the baseline, the schema when migrations moved to Alembic (what a legacy check stamps).

Revision ID: gallery_0001
"""
revision = "gallery_0001"
down_revision = None
branch_labels = ("gallery",)
depends_on = None


def upgrade() -> None:
    pass
