"""jobs: the baseline, the schema as it was when migrations moved to Alembic.

A new database gets the current tables from the store's metadata and is stamped at the head; a
database written before is recognised by the store's legacy check and stamped here.

Revision ID: jobs_0001
"""
revision = "jobs_0001"
down_revision = None
branch_labels = ("jobs",)
depends_on = None


def upgrade() -> None:
    pass
