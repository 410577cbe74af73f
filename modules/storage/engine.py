"""One SQLAlchemy engine per database, shared by every store of the process.

``database_url(location)`` turns what users give (a file path, ``sqlite:///...``,
``postgresql://...`` or ``postgres://...``) into a SQLAlchemy URL;
``get_engine(location)`` returns the process's engine for it (created once,
cached per URL).  What differs per dialect is set up here through engine events,
so the stores above only speak SQLAlchemy Core:

* **SQLite** (the embedded default): WAL journal, ``synchronous=FULL``, foreign
  keys on and a busy timeout on every new connection; pysqlite's own transaction
  handling is switched off and a transaction begins with ``BEGIN`` (reads: a
  consistent snapshot) or ``BEGIN IMMEDIATE`` (writes: the write lock is taken
  first, so a read-then-write never fails half way on a lock upgrade).  A new
  database file is created ``0600`` in a folder created ``0700``: it holds
  biometric data.
* **PostgreSQL** through psycopg 3 with a pool (``pool_pre_ping``); every
  connection gets a ``lock_timeout`` so a writer stuck behind another becomes a
  503, not a hung request.  pgvector's ``vector`` type comes from the
  ``pgvector`` package (:mod:`pgvector.sqlalchemy`).

Fork safety: a child process (gunicorn worker, RQ work horse) never uses its
parent's pooled connections; :func:`os.register_at_fork` drops them in the child
without closing them (``Engine.dispose(close=False)``, SQLAlchemy's documented
recipe).

``write(engine)`` / ``read(engine)`` are the two ways to run a transaction; errors
of the driver become the service's typed errors through :func:`db_error`.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc as sa_exc
from sqlalchemy.engine import URL, make_url

from ..errors import ConfigError, FaceRecError, ServiceUnavailableError

DEFAULT_BUSY_TIMEOUT_S = 30.0
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700

_engines: dict[tuple, Engine] = {}
_engines_lock = threading.Lock()


def database_url(location: str | Path) -> URL:
    """The SQLAlchemy URL of a gallery/jobs/keys location; :class:`ConfigError` if unusable.

    A plain path (or :class:`~pathlib.Path`) is an SQLite file; ``sqlite:///rel.db`` is relative
    to the working directory and ``sqlite:////abs.db`` absolute (SQLAlchemy's convention);
    ``postgres://`` and ``postgresql://`` URLs use psycopg 3 (any libpq parameters kept).
    """
    if isinstance(location, Path):
        return _sqlite_url(location)
    if not isinstance(location, str) or not location.strip():
        raise ConfigError(f"a database location must be a file path or URL, got {location!r}")
    text = location.strip()
    if "://" not in text:
        return _sqlite_url(Path(text))
    scheme = text.partition("://")[0].lower()
    if scheme in ("sqlite", "sqlite+pysqlite"):
        rest = text.partition("://")[2]
        if not rest.startswith("/") or rest == "/" or rest.startswith("/:memory:"):
            raise ConfigError(f"an SQLite URL must look like sqlite:///path/to/file.db, got {text!r}")
        return _sqlite_url(Path(rest[1:]))
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        try:
            url = make_url("postgresql" + text[len(scheme):])
        except sa_exc.ArgumentError as exc:
            raise ConfigError(f"not a valid PostgreSQL URL: {safe_url(text)}: {exc}") from None
        return url.set(drivername="postgresql+psycopg")
    raise ConfigError(f"unsupported database URL scheme {scheme!r}; use a path, sqlite:///path or postgresql://...")


def _sqlite_url(path: Path) -> URL:
    path = path.expanduser()
    if str(path) in ("", ":memory:") or str(path).startswith("file:"):
        raise ConfigError("an SQLite database needs a file path (one database shared by threads and processes)")
    if path.is_dir():
        raise ConfigError(f"database path {path} is a directory")
    return URL.create("sqlite+pysqlite", database=str(path.absolute()))


def is_sqlite(engine_or_url: Engine | URL) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else engine_or_url
    return url.get_backend_name() == "sqlite"


def safe_url(url: Any) -> str:
    """A URL for messages and logs: never the password."""
    try:
        return make_url(str(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a message must never fail
        return "<database url>"


def create_private_file(path: Path) -> None:
    """Create ``path`` (and missing parent folders) readable by the owner only; no-op if it exists."""
    if path.exists():
        return
    missing = [p for p in reversed(path.parents) if not p.exists()]
    try:
        for folder in missing:
            folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE_MODE)
        os.close(fd)
    except OSError as exc:
        raise ConfigError(f"cannot create database file {path}: {exc}") from exc


def get_engine(
    location: str | Path | URL,
    *,
    create: bool = True,
    busy_timeout_s: float | None = None,
    pool_size: int | None = None,
    connect_timeout_s: float | None = None,
) -> Engine:
    """The process's engine for ``location`` (one per URL and set of options).

    ``create=False`` refuses a missing SQLite file instead of creating it.  ``busy_timeout_s``:
    SQLite busy timeout, PostgreSQL ``lock_timeout`` and pool wait; ``pool_size`` and
    ``connect_timeout_s``: PostgreSQL's pool and connection time-out.
    """
    url = location if isinstance(location, URL) else database_url(location)
    timeout = DEFAULT_BUSY_TIMEOUT_S if busy_timeout_s is None else float(busy_timeout_s)
    key = (url.render_as_string(hide_password=False), timeout, pool_size, connect_timeout_s)
    if is_sqlite(url):  # also when cached: the file may have been deleted since
        path = Path(url.database or "")
        if not path.exists():
            if not create:
                raise ConfigError(f"database not found: {path}")
            create_private_file(path)
    engine = _engines.get(key)
    if engine is not None:
        return engine
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            if is_sqlite(url):
                engine = _sqlite_engine(url, timeout)
            else:
                engine = _postgres_engine(url, timeout, pool_size or 10, connect_timeout_s or 10)
            _engines[key] = engine
    return engine


def _sqlite_engine(url: URL, timeout: float) -> Engine:
    engine = create_engine(
        url,
        connect_args={"timeout": timeout, "check_same_thread": False},
        pool_size=8,
        max_overflow=32,
        pool_timeout=timeout,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # BEGIN is issued by the "begin" event below
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute("PRAGMA journal_mode = WAL").fetchone()
            cur.execute("PRAGMA synchronous = FULL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgres_engine(url: URL, timeout: float, pool_size: int, connect_timeout: float) -> Engine:
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:  # pragma: no cover - in requirements.txt
        raise ConfigError("PostgreSQL databases need psycopg[binary]") from exc
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=int(pool_size),
        max_overflow=10,
        pool_timeout=timeout,
        connect_args={"connect_timeout": max(1, int(connect_timeout))},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(timeout * 1000)}ms",))
        dbapi_conn.commit()

    return engine


def db_error(exc: BaseException, what: str = "database") -> FaceRecError:
    """The typed error for a driver error: busy/locked/unreachable -> 503, anything else -> 500."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    name = type(orig).__name__
    busy = (
        "locked" in text
        or "busy" in text
        or name in ("LockNotAvailable", "QueryCanceled", "PoolTimeout")
        or isinstance(exc, (sa_exc.TimeoutError, sa_exc.DisconnectionError))
        or (isinstance(exc, sa_exc.OperationalError) and not text.startswith("no such"))
    )
    if busy:
        return ServiceUnavailableError(f"the {what} is busy or not reachable; try again ({text[:200]})")
    return FaceRecError(f"{what} error: {text[:500]}")


@contextmanager
def write(engine: Engine, what: str = "database") -> Iterator[Connection]:
    """One write transaction (SQLite: ``BEGIN IMMEDIATE``), committed on success, rolled back on any
    exception; driver errors become typed errors (:func:`db_error`)."""
    try:
        with engine.connect() as conn:
            if is_sqlite(engine):
                conn.execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn
    except sa_exc.SQLAlchemyError as exc:
        raise db_error(exc, what) from exc


@contextmanager
def read(engine: Engine, what: str = "database") -> Iterator[Connection]:
    """One read transaction: a consistent snapshot (SQLite deferred ``BEGIN``)."""
    try:
        with engine.connect() as conn:
            with conn.begin():
                yield conn
    except sa_exc.SQLAlchemyError as exc:
        raise db_error(exc, what) from exc


def dispose_all() -> None:
    """Close every engine of this process (tests, shutdown)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()


def _after_fork_in_child() -> None:
    global _engines_lock
    _engines_lock = threading.Lock()
    for engine in list(_engines.values()):
        engine.dispose(close=False)  # the parent's connections are not ours to use or close


os.register_at_fork(after_in_child=_after_fork_in_child)
