"""gallery_0001: the baseline, the schema when migrations moved to Alembic (what a legacy check stamps)."""
revision = "gallery_0001"
down_revision = None
branch_labels = ("gallery",)
depends_on = None


def upgrade() -> None:
    pass
