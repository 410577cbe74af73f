"""jobs_0001: the baseline, the schema when migrations moved to Alembic (what a legacy check stamps)."""
revision = "jobs_0001"
down_revision = None
branch_labels = ("jobs",)
depends_on = None


def upgrade() -> None:
    pass
