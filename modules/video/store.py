"""Where video jobs live: state, progress, chunks and per-frame results, reachable by every server and worker.

``open_job_store(location)`` opens

* :class:`SQLiteJobStore`: a file (``<data_dir>/jobs.db`` by default; WAL, one
  connection per thread), for one machine (the API and any workers on it);
* :class:`PostgresJobStore`: a ``postgresql://`` URL (the same database as the
  gallery), for several machines.

Three tables, the same in both:

* ``video_jobs``: one row per job; the fields the executors coordinate on are
  columns (``status``, ``phase``, ``cancel``, ``executor``, ``owner``,
  ``heartbeat``), everything else is a JSON document (``state``), and
  ``tracks`` holds the per-track summary once the job has ended;
* ``video_chunks``: one row per frame range of a job (one range for short
  videos): who analyses / renders it, which attempt, how far it got, and the
  analysis result waiting to be joined;
* ``video_frames``: the per-frame results (``frames.jsonl`` lines), one row per frame.

Everything goes through :meth:`JobStore.tx`: one transaction (``BEGIN
IMMEDIATE`` in SQLite, row locks with ``FOR UPDATE`` in PostgreSQL), so a
state change and the results it publishes are committed together or not at
all.  The rules (who may move a job on, fencing of stale attempts) are in
:mod:`modules.video.queue`; this module only stores.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FaceRecError, NotFoundError, ServiceUnavailableError

log = logging.getLogger("facerec.video.store")

ACTIVE = ("queued", "running")
JOB_COLUMNS = ("job_id", "status", "phase", "executor", "owner", "heartbeat", "cancel", "created_at", "updated_at")
CHUNK_COLUMNS = (
    "job_id",
    "idx",
    "start_frame",
    "end_frame",
    "status",
    "attempt",
    "worker",
    "frames_done",
    "render_status",
    "render_attempt",
    "rendered",
    "segment",
    "updated_at",
)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS video_jobs (
        job_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        phase TEXT NOT NULL DEFAULT 'analyze',
        executor TEXT NOT NULL DEFAULT 'inprocess',
        owner TEXT,
        heartbeat DOUBLE PRECISION,
        cancel INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        state TEXT NOT NULL,
        tracks TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS video_jobs_status ON video_jobs (status, created_at)",
    """CREATE TABLE IF NOT EXISTS video_chunks (
        job_id TEXT NOT NULL REFERENCES video_jobs (job_id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        start_frame INTEGER NOT NULL,
        end_frame INTEGER,
        status TEXT NOT NULL DEFAULT 'pending',
        attempt INTEGER NOT NULL DEFAULT 0,
        worker TEXT,
        frames_done INTEGER NOT NULL DEFAULT 0,
        render_status TEXT NOT NULL DEFAULT 'pending',
        render_attempt INTEGER NOT NULL DEFAULT 0,
        rendered INTEGER NOT NULL DEFAULT 0,
        segment TEXT,
        updated_at TEXT,
        result TEXT,
        PRIMARY KEY (job_id, idx)
    )""",
    """CREATE TABLE IF NOT EXISTS video_frames (
        job_id TEXT NOT NULL REFERENCES video_jobs (job_id) ON DELETE CASCADE,
        frame INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (job_id, frame)
    )""",
]


def open_pool(
    url: str,
    *,
    name: str,
    min_size: int,
    max_size: int,
    configure: Callable[[Any], None],
    timeout_s: float,
    unavailable: Callable[[Exception], FaceRecError],
) -> Any:
    """An open psycopg connection pool (transactions, not autocommit) for this process.

    ``unavailable`` turns a connection time-out into the caller's typed error.
    """
    from psycopg_pool import ConnectionPool, PoolTimeout

    pool = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max(min_size, max_size),
        kwargs={"autocommit": False},
        configure=configure,
        open=False,
        name=f"{name}-{os.getpid()}",
    )
    try:
        pool.open(wait=True, timeout=timeout_s)
    except PoolTimeout as exc:
        pool.close()
        raise unavailable(exc) from exc
    return pool


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def now_iso() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Tx:
    """One open transaction; SQL is written with ``?`` placeholders (translated for PostgreSQL)."""

    def __init__(self, store: JobStore, conn: Any):
        self.store = store
        self.conn = conn

    # --- low level ---------------------------------------------------------------------------------------
    def execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        return self.store._execute(self.conn, sql, tuple(params))

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            self.store._executemany(self.conn, sql, rows)

    # --- jobs ----------------------------------------------------------------------------------------------
    def job(self, job_id: str, *, lock: bool = False) -> dict[str, Any] | None:
        """The job's full state (columns merged into the JSON document), or None."""
        sql = f"SELECT {', '.join(JOB_COLUMNS)}, state FROM video_jobs WHERE job_id = ?"
        if lock:
            sql += self.store.FOR_UPDATE
        row = self.execute(sql, (job_id,)).fetchone()
        return None if row is None else _job_from_row(row)

    def put_job(self, state: dict[str, Any]) -> dict[str, Any]:
        """Insert or replace the job ``state`` (``updated_at`` is set now)."""
        state = dict(state)
        state["updated_at"] = now_iso()
        doc = {k: v for k, v in state.items() if k not in JOB_COLUMNS}
        cols = {k: state.get(k) for k in JOB_COLUMNS}
        cols["cancel"] = 1 if cols.get("cancel") else 0
        cols["phase"] = cols.get("phase") or "analyze"
        cols["executor"] = cols.get("executor") or "inprocess"
        names = [*JOB_COLUMNS, "state"]
        values = [cols[k] for k in JOB_COLUMNS] + [_dumps(doc)]
        updates = ", ".join(f"{n} = excluded.{n}" for n in names[1:])
        self.execute(
            f"INSERT INTO video_jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            f" ON CONFLICT (job_id) DO UPDATE SET {updates}",
            values,
        )
        return state

    def update_job(self, job_id: str, **changes: Any) -> dict[str, Any] | None:
        state = self.job(job_id, lock=True)
        if state is None:
            return None
        state.update(changes)
        return self.put_job(state)

    def set_tracks(self, job_id: str, tracks: list[dict[str, Any]] | None) -> None:
        self.execute(
            "UPDATE video_jobs SET tracks = ? WHERE job_id = ?", (None if tracks is None else _dumps(tracks), job_id)
        )

    def delete_job(self, job_id: str) -> None:
        # explicit deletes: SQLite only cascades with PRAGMA foreign_keys, which old files may lack
        self.execute("DELETE FROM video_frames WHERE job_id = ?", (job_id,))
        self.execute("DELETE FROM video_chunks WHERE job_id = ?", (job_id,))
        self.execute("DELETE FROM video_jobs WHERE job_id = ?", (job_id,))

    # --- chunks --------------------------------------------------------------------------------------------
    def chunks(self, job_id: str, *, lock: bool = False) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(CHUNK_COLUMNS)} FROM video_chunks WHERE job_id = ? ORDER BY idx"
        if lock:
            sql += self.store.FOR_UPDATE
        return [dict(zip(CHUNK_COLUMNS, r)) for r in self.execute(sql, (job_id,)).fetchall()]

    def chunk(self, job_id: str, idx: int, *, lock: bool = False) -> dict[str, Any] | None:
        sql = f"SELECT {', '.join(CHUNK_COLUMNS)} FROM video_chunks WHERE job_id = ? AND idx = ?"
        if lock:
            sql += self.store.FOR_UPDATE
        row = self.execute(sql, (job_id, idx)).fetchone()
        return None if row is None else dict(zip(CHUNK_COLUMNS, row))

    def put_chunk(self, chunk: dict[str, Any], result: Any = ...) -> None:
        """Insert or update a chunk row (``result``: JSON-able analysis result; ``...`` keeps the stored one)."""
        c = dict(chunk)
        c["updated_at"] = now_iso()
        names = list(CHUNK_COLUMNS)
        values = [c.get(k) for k in names]
        for k, default in (("status", "pending"), ("render_status", "pending")):
            values[names.index(k)] = c.get(k) or default
        for k in ("attempt", "frames_done", "render_attempt", "rendered"):
            values[names.index(k)] = int(c.get(k) or 0)
        if result is not ...:
            names.append("result")
            values.append(None if result is None else _dumps(result))
        updates = ", ".join(f"{n} = excluded.{n}" for n in names[2:])
        self.execute(
            f"INSERT INTO video_chunks ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            f" ON CONFLICT (job_id, idx) DO UPDATE SET {updates}",
            values,
        )

    def chunk_results(self, job_id: str) -> list[Any]:
        rows = self.execute("SELECT result FROM video_chunks WHERE job_id = ? ORDER BY idx", (job_id,)).fetchall()
        return [None if r[0] is None else json.loads(r[0]) for r in rows]

    # --- frames --------------------------------------------------------------------------------------------
    def add_frames(self, job_id: str, frames: list[dict[str, Any]]) -> None:
        self.executemany(
            "INSERT INTO video_frames (job_id, frame, data) VALUES (?, ?, ?)"
            " ON CONFLICT (job_id, frame) DO UPDATE SET data = excluded.data",
            [(job_id, int(f["frame"]), _dumps(f)) for f in frames],
        )

    def delete_frames(self, job_id: str) -> None:
        self.execute("DELETE FROM video_frames WHERE job_id = ?", (job_id,))

    def frames(self, job_id: str, start: int = 0, end: int | None = None) -> list[dict[str, Any]]:
        """Frames with ``start <= frame < end`` in order."""
        if end is None:
            rows = self.execute(
                "SELECT data FROM video_frames WHERE job_id = ? AND frame >= ? ORDER BY frame", (job_id, start)
            ).fetchall()
        else:
            rows = self.execute(
                "SELECT data FROM video_frames WHERE job_id = ? AND frame >= ? AND frame < ? ORDER BY frame",
                (job_id, start, end),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]


def _job_from_row(row: tuple) -> dict[str, Any]:
    state = json.loads(row[-1])
    for k, v in zip(JOB_COLUMNS, row[:-1]):
        state[k] = v
    state["cancel"] = bool(state.get("cancel"))
    return state


class JobStore:
    """Base of the two backends: queries shared by both; subclasses provide connections."""

    FOR_UPDATE = ""
    url: str = ""

    @contextmanager
    def tx(self, write: bool = True) -> Iterator[Tx]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def _execute(self, conn: Any, sql: str, params: tuple) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _executemany(self, conn: Any, sql: str, rows: list[tuple]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        pass

    @property
    def store_id(self) -> str:
        """A stable name of this store (task-queue callbacks find the store of a job by it)."""
        import hashlib

        return hashlib.sha1(self.url.encode()).hexdigest()[:16]

    # --- convenience reads ---------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any]:
        with self.tx(write=False) as tx:
            state = tx.job(job_id)
        if state is None:
            raise JobNotFoundError("no such video job")
        return state

    def list(self) -> list[dict[str, Any]]:
        with self.tx(write=False) as tx:
            rows = tx.execute(f"SELECT {', '.join(JOB_COLUMNS)}, state FROM video_jobs ORDER BY created_at").fetchall()
        return [_job_from_row(r) for r in rows]

    def active(self) -> list[dict[str, Any]]:
        with self.tx(write=False) as tx:
            rows = tx.execute(
                f"SELECT {', '.join(JOB_COLUMNS)}, state FROM video_jobs WHERE status IN ('queued', 'running')"
                " ORDER BY created_at"
            ).fetchall()
        return [_job_from_row(r) for r in rows]

    def count_active(self, owner: str | None = None) -> int:
        sql = "SELECT count(*) FROM video_jobs WHERE status IN ('queued', 'running')"
        params: tuple = ()
        if owner is not None:
            sql += " AND owner = ?"
            params = (owner,)
        with self.tx(write=False) as tx:
            return int(tx.execute(sql, params).fetchone()[0])

    def frames(self, job_id: str, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Per-frame results in frame order, ``offset`` rows skipped, at most ``limit``."""
        sql = "SELECT data FROM video_frames WHERE job_id = ? ORDER BY frame"
        params: list[Any] = [job_id]
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            params += [int(limit), int(offset)]
        elif offset:
            sql += " LIMIT -1 OFFSET ?" if isinstance(self, SQLiteJobStore) else " OFFSET ?"
            params.append(int(offset))
        with self.tx(write=False) as tx:
            rows = tx.execute(sql, params).fetchall()
        return [json.loads(r[0]) for r in rows]

    def count_frames(self, job_id: str) -> int:
        with self.tx(write=False) as tx:
            return int(tx.execute("SELECT count(*) FROM video_frames WHERE job_id = ?", (job_id,)).fetchone()[0])

    def tracks(self, job_id: str) -> list[dict[str, Any]] | None:
        with self.tx(write=False) as tx:
            row = tx.execute("SELECT tracks FROM video_jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError("no such video job")
        return None if row[0] is None else json.loads(row[0])

    def chunks(self, job_id: str) -> list[dict[str, Any]]:
        with self.tx(write=False) as tx:
            return tx.chunks(job_id)

    def heartbeat_owner(self, owner: str) -> int:
        """Sign of life for every active job ``owner`` (an in-process executor) holds."""
        if self.count_active(owner) == 0:
            return 0
        with self.tx() as tx:
            cur = tx.execute(
                "UPDATE video_jobs SET heartbeat = ? WHERE owner = ? AND status IN ('queued', 'running')",
                (time.time(), owner),
            )
            return int(cur.rowcount or 0)

    def delete(self, job_id: str) -> None:
        with self.tx() as tx:
            tx.delete_job(job_id)


# --- SQLite -------------------------------------------------------------------------------------------------
class SQLiteJobStore(JobStore):
    """Jobs in an SQLite file: WAL (readers never wait for the writer), one connection per thread.

    The file is created by the first write (a server that never gets a video job leaves nothing behind).
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.url = f"sqlite:///{self.path.resolve()}"
        self.busy_timeout_s = float(busy_timeout_s)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._ready = False
        if self.path.exists():
            self._prepare()

    def __repr__(self) -> str:
        return f"SQLiteJobStore({str(self.path)!r})"

    def _prepare(self) -> None:
        with self._lock:
            if self._ready:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the folder of the job database {self.path}: {exc}") from exc
            conn = self._open(str(self.path))
            try:
                conn.execute("BEGIN IMMEDIATE")
                for stmt in SCHEMA:
                    conn.execute(stmt)
                conn.execute("COMMIT")
            finally:
                conn.close()
            self._ready = True

    def _open(self, target: str) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(target, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
            if target != ":memory:":
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the job database {self.path}: {exc}") from exc
        return conn

    def _connect(self, write: bool) -> sqlite3.Connection:
        if os.getpid() != self._pid:  # forked: never reuse the parent's connections
            self._local = threading.local()
            self._all = []
            self._pid = os.getpid()
        if not self._ready:
            if write or self.path.exists():
                self._prepare()
            else:  # nothing stored yet: read from an empty database in memory
                empty = getattr(self._local, "empty", None)
                if empty is None:
                    empty = self._local.empty = self._open(":memory:")
                    for stmt in SCHEMA:
                        empty.execute(stmt)
                return empty
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open(str(self.path))
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def tx(self, write: bool = True) -> Iterator[Tx]:
        conn = self._connect(write)
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise ServiceUnavailableError(f"the job database is busy: {exc}") from exc
        try:
            yield Tx(self, conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise ServiceUnavailableError(f"the job database could not commit: {exc}") from exc

    def _execute(self, conn: Any, sql: str, params: tuple) -> Any:
        try:
            return conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise ServiceUnavailableError(f"the job database is busy: {exc}") from exc
            raise FaceRecError(f"job database error: {exc}") from exc

    def _executemany(self, conn: Any, sql: str, rows: list[tuple]) -> None:
        conn.executemany(sql, rows)

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:  # pragma: no cover
                pass
        self._local = threading.local()


# --- PostgreSQL ---------------------------------------------------------------------------------------------
class _PgCursor:
    """A fetched result with the sqlite3-like calls the queries use."""

    def __init__(self, cur: Any):
        self.rowcount = cur.rowcount
        self._rows = cur.fetchall() if cur.description else []

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows


class PostgresJobStore(JobStore):
    """Jobs in PostgreSQL (the gallery's database): every API server and worker sees every job."""

    FOR_UPDATE = " FOR UPDATE"

    def __init__(self, url: str, *, pool_min: int = 1, pool_max: int = 8, busy_timeout_s: float = 30.0,
                 connect_timeout_s: float = 10.0):
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError as exc:  # pragma: no cover - in requirements.txt with the PostgreSQL gallery
            raise ConfigError("a PostgreSQL job store needs psycopg[binary] and psycopg-pool") from exc
        self.url = url
        self.pool_min, self.pool_max = int(pool_min), int(pool_max)
        self.busy_timeout_s = float(busy_timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self._pid = os.getpid()
        self._pool: Any = None
        self._pool_lock = threading.Lock()
        self._migrate()

    def __repr__(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        try:
            p = conninfo_to_dict(self.url)
        except Exception:  # noqa: BLE001
            return "PostgresJobStore('postgresql://?')"
        return f"PostgresJobStore('postgresql://{p.get('user', '')}@{p.get('host', '')}/{p.get('dbname', '')}')"

    def _migrate(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=False, connect_timeout=max(1, int(self.connect_timeout_s))) as c:
                c.execute("SELECT pg_advisory_xact_lock(1886413163)")  # several servers starting together
                for stmt in SCHEMA:
                    c.execute(stmt)
        except psycopg.Error as exc:
            raise ConfigError(f"cannot prepare the job tables in {self!r}: {exc}") from exc

    def _get_pool(self) -> Any:
        if os.getpid() != self._pid:  # forked (gunicorn): open our own pool, leave the parent's alone
            self._pool, self._pid, self._pool_lock = None, os.getpid(), threading.Lock()
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = open_pool(
                        self.url,
                        name="video-jobs",
                        min_size=self.pool_min,
                        max_size=self.pool_max,
                        configure=self._configure,
                        timeout_s=self.connect_timeout_s,
                        unavailable=lambda exc: ServiceUnavailableError(f"the job database is not available: {exc}"),
                    )
        return self._pool

    def _configure(self, conn: Any) -> None:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(self.busy_timeout_s * 1000)}ms",))
        conn.commit()

    @contextmanager
    def tx(self, write: bool = True) -> Iterator[Tx]:
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._get_pool().connection(timeout=self.busy_timeout_s) as conn, conn.transaction():
                yield Tx(self, conn)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise ServiceUnavailableError(f"the job database is not available: {exc}") from exc
        except psycopg.Error as exc:
            raise FaceRecError(f"job database error: {exc}") from exc

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s").replace("LIMIT -1 ", "")

    def _execute(self, conn: Any, sql: str, params: tuple) -> Any:
        return _PgCursor(conn.execute(self._sql(sql), params))

    def _executemany(self, conn: Any, sql: str, rows: list[tuple]) -> None:
        with conn.cursor() as cur:
            cur.executemany(self._sql(sql), rows)

    def close(self) -> None:
        if self._pool is not None and os.getpid() == self._pid:
            self._pool.close()
            self._pool = None


def open_job_store(location: str | Path) -> JobStore:
    """A path or ``sqlite:///path`` -> :class:`SQLiteJobStore`; ``postgresql://...`` -> :class:`PostgresJobStore`."""
    if isinstance(location, Path):
        return SQLiteJobStore(location)
    text = str(location).strip()
    if not text:
        raise ConfigError("the job database location is empty")
    scheme, sep, rest = text.partition("://")
    if not sep:
        return SQLiteJobStore(text)
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(f"SQLite job database URL must look like sqlite:///path/jobs.db, got {text!r}")
        return SQLiteJobStore(rest[1:])
    if scheme in ("postgres", "postgresql"):
        return PostgresJobStore(text)
    raise ConfigError(f"unsupported job database URL scheme {scheme!r}; use a path, sqlite:///path or postgresql://")


def job_store_location(data_dir: str | Path, database_url: str | None) -> str | Path:
    """Where the jobs live: the gallery's PostgreSQL database when it has one, else ``<data_dir>/jobs.db``."""
    if database_url and database_url.split("://", 1)[0].lower() in ("postgres", "postgresql"):
        return database_url
    return Path(data_dir) / "jobs.db"
