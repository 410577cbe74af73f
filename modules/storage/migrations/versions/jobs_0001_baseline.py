"""jobs: the baseline, the schema when migrations moved to Alembic (what a legacy check stamps).

Revision ID: jobs_0001
"""
revision = "jobs_0001"
down_revision = None
branch_labels = ("jobs",)
depends_on = None


def upgrade() -> None:
    pass
