"""Schema migrations of every store, SQLite and PostgreSQL, in one Alembic environment.

Each store's tables are one Alembic *branch* (``gallery``, ``jobs``, ``keys``); the version table
``facerec_schema`` records one head per branch.  :func:`prepare` upgrades a recorded branch, stamps a
database written before Alembic at the revision its *legacy* check names and upgrades it, or creates a new
database's tables from the metadata and stamps the head.  It runs under a lock (a file beside an SQLite
database, an advisory lock in PostgreSQL) and reads the state again once the lock is held.
"""
from __future__ import annotations

import functools
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


def _config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_table", VERSION_TABLE)
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache  # the revision files do not change while the program runs: read them once
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head(branch: str) -> str:
    """The newest revision of ``branch``."""
    return _script().get_revision(f"{branch}@head").revision


def _branch_heads(conn: Connection, branch: str) -> list[str]:
    """The revisions of ``branch`` recorded in the database; one named like the branch's but unknown here
    (``gallery_0099``) was written by newer code: :class:`ConfigError`."""
    ours = {rev.revision for rev in _script().iterate_revisions(f"{branch}@head", "base")}
    current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_heads()
    newer = [r for r in current if r not in ours and r.startswith(f"{branch}_")]
    if newer:
        raise ConfigError(f"the {branch} database {safe_url(conn.engine.url)} has schema version {newer[0]},"
                          f" newer than this code supports ({head(branch)}); upgrade the code")
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
        stamp = legacy(conn) if not current and legacy is not None else None
        conn.rollback()
    if current:
        if current == [head(branch)]:
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
        step(_config(conn))
