"""One SQLAlchemy engine per database, shared by every store of the process; dialect set-up on connect.

SQLite: WAL, ``synchronous=FULL``, foreign keys, a busy timeout; a write begins with ``BEGIN IMMEDIATE`` (the
lock first, so a read-then-write never fails on a lock upgrade); a new file is ``0600`` (biometric data).
:class:`Prepared` runs a write's hot statements on the driver's cursor, in the same transaction.
PostgreSQL (psycopg 3, pooled): a ``lock_timeout``, so a writer stuck behind another gets a 503, not a hang.
A forked child drops its parent's pooled connections without closing them (SQLAlchemy's recipe).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, exc as sa_exc
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.sql import Executable

from ..errors import ConfigError, FaceRecError, ServiceUnavailableError
from ..files import open_private, private_dir

DEFAULT_BUSY_TIMEOUT_S = 30.0

_engines: dict[tuple, Engine] = {}
_engines_lock = threading.Lock()


def database_url(location: str | Path) -> URL:
    """The SQLAlchemy URL of a store's location (a path, ``sqlite:///rel.db``, ``sqlite:////abs.db``,
    ``postgres[ql]://...``, the latter through psycopg 3); :class:`ConfigError` if unusable."""
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


def get_engine(location: str | Path | URL, *, create: bool = True, busy_timeout_s: float | None = None,
               pool_size: int | None = None, connect_timeout_s: float | None = None) -> Engine:
    """The process's engine for ``location`` (one per URL and options).  ``create=False`` refuses a missing
    SQLite file; ``busy_timeout_s``: SQLite busy timeout, PostgreSQL ``lock_timeout`` and pool wait."""
    url = location if isinstance(location, URL) else database_url(location)
    timeout = DEFAULT_BUSY_TIMEOUT_S if busy_timeout_s is None else float(busy_timeout_s)
    key = (url.render_as_string(hide_password=False), timeout, pool_size, connect_timeout_s)
    if is_sqlite(url):  # also when cached: the file may have been deleted since
        path = Path(url.database or "")
        if not path.exists() and not create:
            raise ConfigError(f"database not found: {path}")
        if not path.exists():  # created private: the folders 0700, the file 0600
            try:
                private_dir(path.parent)
                open_private(path, "ab").close()
            except OSError as exc:
                raise ConfigError(f"cannot create database file {path}: {exc}") from exc
    with _engines_lock:
        if key not in _engines:
            _engines[key] = (_sqlite_engine(url, timeout) if is_sqlite(url)
                             else _postgres_engine(url, timeout, pool_size or 10, connect_timeout_s or 10))
        return _engines[key]


def _sqlite_engine(url: URL, timeout: float) -> Engine:
    engine = create_engine(url, connect_args={"timeout": timeout, "check_same_thread": False}, pool_size=8,
                           max_overflow=32, pool_timeout=timeout)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # BEGIN is issued by _do_begin below
        for pragma in (f"busy_timeout = {int(timeout * 1000)}", "foreign_keys = ON", "journal_mode = WAL",
                       "synchronous = FULL"):
            dbapi_conn.execute(f"PRAGMA {pragma}").fetchall()

    def _do_begin(dbapi_conn: Any) -> None:  # unless transaction() took the write lock first (BEGIN IMMEDIATE)
        if not dbapi_conn.in_transaction:
            dbapi_conn.execute("BEGIN")

    # the dialect's own hook rather than a "begin" event: any engine event makes every statement and transaction
    # of every connection dispatch events, a large part of a small write's cost
    engine.dialect.do_begin = _do_begin  # type: ignore[method-assign]
    return engine


def _postgres_engine(url: URL, timeout: float, pool_size: int, connect_timeout: float) -> Engine:
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:  # pragma: no cover - in requirements.txt
        raise ConfigError("PostgreSQL databases need psycopg[binary]") from exc
    engine = create_engine(url, pool_pre_ping=True, pool_size=int(pool_size), max_overflow=10, pool_timeout=timeout,
                           connect_args={"connect_timeout": max(1, int(connect_timeout))})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(timeout * 1000)}ms",))
        dbapi_conn.commit()

    return engine


def db_error(exc: BaseException, what: str = "database") -> FaceRecError:
    """The typed error for a driver error: busy/locked/unreachable -> 503, anything else -> 500."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    name = type(orig).__name__
    if ("locked" in text or "busy" in text or name in ("LockNotAvailable", "QueryCanceled", "PoolTimeout")
            or isinstance(exc, (sa_exc.TimeoutError, sa_exc.DisconnectionError))
            or (isinstance(exc, sa_exc.OperationalError) and not text.startswith("no such"))):
        return ServiceUnavailableError(f"the {what} is busy or not reachable; try again ({text[:200]})")
    return FaceRecError(f"{what} error: {text[:500]}")


class WriteTx:
    """A write transaction on a pooled driver connection (:func:`write_transaction`): :class:`Prepared` statements
    run on it directly; Core statements through :meth:`execute` or :attr:`conn`, a SQLAlchemy connection in the
    same transaction, made on first use."""

    def __init__(self, engine: Engine, driver: Any):
        self.engine, self.dialect, self.driver = engine, engine.dialect, driver
        self._conn: Connection | None = None

    @property
    def conn(self) -> Connection:
        if self._conn is None:  # SQLAlchemy begins on the driver's open transaction (SQLite: see _do_begin)
            self._conn = Connection(self.engine, connection=self.driver)
        return self._conn

    @property
    def connection(self) -> Any:
        """The pooled driver connection (as :attr:`Connection.connection`)."""
        return self.driver

    def execute(self, statement: Any, *args: Any, **kw: Any) -> Any:
        return self.conn.execute(statement, *args, **kw)


#: where a statement runs: a connection in its transaction, or a write transaction
Conn = Connection | WriteTx


def driver_cursor(conn: Conn) -> Any:
    """A cursor of the driver's connection under ``conn``, in its transaction."""
    return conn.connection.dbapi_connection.cursor()


class Prepared:
    """A Core statement compiled once per dialect and run on the driver's own cursor, inside the transaction of
    ``conn`` (a connection or a :class:`WriteTx`): for the hot statements of a write, where SQLAlchemy's work per
    execution costs several times what SQLite needs to run them.  Parameters and results pass untouched, so
    only for columns whose type processes nothing (ids, names, counts); a driver error is turned into a typed
    error by :func:`transaction` and :func:`write_transaction`."""

    def __init__(self, statement: Executable):
        self.statement = statement
        self._compiled: dict[str, tuple[str, Any]] = {}

    def _for(self, dialect: Dialect) -> tuple[str, Any]:
        """The SQL and a function from the parameters to the driver's arguments."""
        got = self._compiled.get(dialect.name)
        if got is None:
            compiled = self.statement.compile(dialect=dialect)
            fixed = {name: b.effective_value for b, name in compiled.bind_names.items() if not b.required}
            order = tuple(compiled.positiontup or ()) if dialect.positional else None

            def args(params: Mapping[str, Any]) -> Any:
                values = {**fixed, **params} if fixed else params
                return values if order is None else tuple([values[name] for name in order])

            got = self._compiled[dialect.name] = (compiled.string, args)
        return got

    def __call__(self, conn: Conn, **params: Any) -> Any:
        """Run it; the driver's cursor, to fetch from."""
        sql, args = self._for(conn.dialect)
        cursor = driver_cursor(conn)
        cursor.execute(sql, args(params))
        return cursor

    def many(self, conn: Conn, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run it once per row of parameters (the driver's ``executemany``)."""
        if rows:
            sql, args = self._for(conn.dialect)
            driver_cursor(conn).executemany(sql, [args(r) for r in rows])


def _typed(exc: BaseException, engine: Engine, what: str) -> FaceRecError | None:
    """The typed error of a SQLAlchemy or driver error (None: neither)."""
    driver_error = engine.dialect.loaded_dbapi.Error
    if isinstance(exc, driver_error):  # from a Prepared statement: wrapped as SQLAlchemy would have
        exc = sa_exc.DBAPIError.instance(None, None, exc, driver_error)
    return db_error(exc, what) if isinstance(exc, sa_exc.SQLAlchemyError) else None


@contextmanager
def transaction(engine: Engine, what: str = "database", *, write: bool = True) -> Iterator[Connection]:
    """One transaction (a write on SQLite: ``BEGIN IMMEDIATE``), committed on success, rolled back on any
    exception; driver errors become typed errors (:func:`db_error`)."""
    try:
        with engine.connect() as conn:
            if write and is_sqlite(engine):  # the write lock first: a read-then-write never fails to upgrade it
                conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE")
            with conn.begin():
                yield conn
    except Exception as exc:
        typed = _typed(exc, engine, what)
        if typed is None:
            raise
        raise typed from exc


@contextmanager
def write_transaction(engine: Engine, what: str = "database",
                      factory: Callable[[Engine, Any], WriteTx] = WriteTx) -> Iterator[Any]:
    """:func:`transaction` for a write, on a pooled driver connection: ``factory(engine, driver connection)``
    (a :class:`WriteTx`), committed on success, rolled back on any exception.  Skips SQLAlchemy's connection and
    transaction objects unless a Core statement needs them: a small write's own cost on SQLite is less than
    theirs."""
    try:
        driver = engine.raw_connection()
        tx = factory(engine, driver)
        try:
            if engine.dialect.name == "sqlite":  # the write lock first
                driver.dbapi_connection.execute("BEGIN IMMEDIATE")
            yield tx
            if tx._conn is not None:
                tx._conn.commit()
            driver.commit()
        except BaseException:
            with suppress(engine.dialect.loaded_dbapi.Error):  # a broken connection: its error is the one to report
                driver.rollback()
            raise
        finally:
            if tx._conn is not None:
                tx._conn.close()  # returns the driver connection to the pool
            else:
                driver.close()
    except Exception as exc:
        typed = _typed(exc, engine, what)
        if typed is None:
            raise
        raise typed from exc


def read(engine: Engine, what: str = "database") -> Any:
    """A read transaction: a consistent snapshot (SQLite: deferred ``BEGIN``)."""
    return transaction(engine, what, write=False)


def _after_fork_in_child() -> None:
    global _engines_lock
    _engines_lock = threading.Lock()
    for engine in list(_engines.values()):
        engine.dispose(close=False)  # the parent's connections are not ours to use or close


os.register_at_fork(after_in_child=_after_fork_in_child)
