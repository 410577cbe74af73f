"""Schema migrations for every store, SQLite and PostgreSQL, in one Alembic environment.

Each store's tables are one Alembic *branch* (``gallery``, ``jobs``, ``keys``) in
``modules/storage/migrations/versions``; a database holds the branches of the
stores that live in it (a PostgreSQL database can hold the gallery and the jobs;
an SQLite file holds one store), and the version table ``facerec_schema``
records one head per branch.

:func:`prepare` brings a store's branch up to date when the store opens:

* branch already recorded: ``alembic upgrade <branch>@head``;
* a database written before Alembic (the store's *legacy* check recognises its
  tables and says which revision they correspond to): that revision is stamped,
  then upgraded (Alembic's documented way to adopt an existing database);
* a new database: the store's current tables are created from its SQLAlchemy
  metadata and the head is stamped (Alembic's "create from scratch" recipe), so
  the revisions only ever describe changes.

Several processes may open a store at once (gunicorn workers, RQ workers):
migrations run under a lock (a lock file beside an SQLite database, an advisory
lock in PostgreSQL), and the state is read again once the lock is held.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from filelock import FileLock, Timeout
from sqlalchemy import Connection, Engine, Table, inspect, text

from ..errors import ConfigError
from .engine import is_sqlite, safe_url

log = logging.getLogger(__name__)

VERSION_TABLE = "facerec_schema"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_ADVISORY_LOCK = 0x6661636572656302  # "facerec" + 2

#: ``legacy(conn) -> revision or None``: the revision a database written before Alembic is at
LegacyCheck = Callable[[Connection], "str | None"]


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_table", VERSION_TABLE)
    cfg.attributes["connection"] = connection
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head(branch: str) -> str:
    """The newest revision of ``branch``."""
    return _script().get_revision(f"{branch}@head").revision


def _branch_heads(conn: Connection, branch: str) -> list[str]:
    """The revisions of ``branch`` recorded in the database (none: the branch is not there yet).

    A revision this code does not know but named like the branch's (``gallery_0099``) was written
    by newer code: :class:`ConfigError`, never a downgrade or a second set of tables.
    """
    ours = {rev.revision for rev in _script().iterate_revisions(f"{branch}@head", "base")}
    current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_heads()
    newer = [r for r in current if r not in ours and r.startswith(f"{branch}_")]
    if newer:
        raise ConfigError(
            f"the {branch} database {safe_url(conn.engine.url)} has schema version {newer[0]}, newer than this"
            f" code supports ({head(branch)}); upgrade the code"
        )
    return [r for r in current if r in ours]


def prepare(engine: Engine, branch: str, tables: Sequence[Table], legacy: LegacyCheck | None = None) -> None:
    """Create or migrate ``branch``'s tables in ``engine``'s database (see the module docstring)."""
    if is_sqlite(engine):
        lock_path = Path(str(engine.url.database) + ".migrate.lock")
        try:
            with FileLock(str(lock_path), timeout=120, mode=0o600):
                _prepare_locked(engine, branch, tables, legacy)
        except Timeout:
            raise ConfigError(f"timed out waiting for another process to migrate {engine.url.database}") from None
    else:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_LOCK})
            conn.commit()
            try:
                _prepare_locked(engine, branch, tables, legacy)
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK})
                conn.commit()


def _prepare_locked(engine: Engine, branch: str, tables: Sequence[Table], legacy: LegacyCheck | None) -> None:
    with engine.connect() as conn:
        current = _branch_heads(conn, branch) if inspect(conn).has_table(VERSION_TABLE) else []
        stamp = None
        if not current:
            stamp = legacy(conn) if legacy is not None else None
        conn.rollback()
    if current:
        target = head(branch)
        if current == [target]:
            return
        _run(engine, lambda cfg: command.upgrade(cfg, f"{branch}@head"))
    elif stamp is not None:
        log.info("adopting a %s database written before migrations (%s) at %s", branch, safe_url(engine.url), stamp)
        _run(engine, lambda cfg: command.stamp(cfg, stamp))
        _run(engine, lambda cfg: command.upgrade(cfg, f"{branch}@head"))
    else:
        with engine.begin() as conn:
            tables[0].metadata.create_all(conn, tables=list(tables))
        _run(engine, lambda cfg: command.stamp(cfg, f"{branch}@head"))


def _run(engine: Engine, step: Callable[[Config], None]) -> None:
    with engine.begin() as conn:
        step(alembic_config(conn))
