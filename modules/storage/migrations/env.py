"""Alembic environment: runs on the connection :mod:`modules.storage.migrate` hands over (never a URL
from an ini file), for SQLite (batch mode for ALTERs) and PostgreSQL alike."""
from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=context.config.get_main_option("version_table"),
    render_as_batch=connection.dialect.name == "sqlite",
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
