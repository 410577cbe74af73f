"""keys: the baseline, the schema when migrations moved to Alembic (what a legacy check stamps).

Revision ID: keys_0001
"""
revision = "keys_0001"
down_revision = None
branch_labels = ("keys",)
depends_on = None


def upgrade() -> None:
    pass
