"""jobs_0002: ``video_jobs.client``, who submitted a job, indexed with the status (the per-client quota).

Revision ID: jobs_0002
"""
import sqlalchemy as sa
from alembic import op

revision = "jobs_0002"
down_revision = "jobs_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("video_jobs", sa.Column("client", sa.Text))
    op.create_index("video_jobs_client", "video_jobs", ["client", "status"])
