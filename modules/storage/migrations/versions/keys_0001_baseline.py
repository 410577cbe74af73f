"""keys_0001: the baseline, the schema when migrations moved to Alembic (what a legacy check stamps)."""
revision = "keys_0001"
down_revision = None
branch_labels = ("keys",)
depends_on = None


def upgrade() -> None:
    pass
