"""Where video jobs live: state, progress, chunks and per-frame results, reachable by every server and worker.

An SQLite file (``<data_dir>/jobs.db``, created by the first write) or a PostgreSQL URL (several machines).
``video_jobs``: the fields the executors coordinate on as columns, the rest a JSON document.  Everything goes
through :meth:`JobStore.tx`, so a state change and the results it publishes are committed together.
"""
from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (Column, Connection, Double, Engine, ForeignKey, Index, Integer, MetaData, Table, Text,
                        TypeDecorator, create_engine, delete, exc as sa_exc, func, inspect, select, text, update)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import StaticPool

from ..errors import ConfigError, NotFoundError
from .engine import database_url, get_engine, is_sqlite, safe_url, transaction
from .migrate import prepare
from .records import utc_now_iso as now_iso

__all__ = ["ACTIVE", "JobNotFoundError", "JobStore", "Tx", "now_iso", "open_job_store"]

ACTIVE = ("queued", "running")


class JsonText(TypeDecorator):
    """A JSON value kept as compact text (the columns are TEXT in both dialects)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def process_result_value(self, value: str | None, dialect: Any) -> Any:
        return None if value is None else json.loads(value)


metadata = MetaData()
video_jobs = Table(
    "video_jobs", metadata,
    Column("job_id", Text, primary_key=True), Column("status", Text, nullable=False),
    Column("phase", Text, nullable=False, server_default="analyze"),
    Column("executor", Text, nullable=False, server_default="inprocess"),
    Column("owner", Text), Column("heartbeat", Double), Column("cancel", Integer, nullable=False, server_default="0"),
    Column("created_at", Text, nullable=False), Column("updated_at", Text, nullable=False),
    Column("state", JsonText, nullable=False), Column("tracks", JsonText),
    Column("client", Text),  # who submitted it (``key:<id>`` or ``addr:<address>``): the per-client quota
    Index("video_jobs_status", "status", "created_at"), Index("video_jobs_client", "client", "status"),
)
video_chunks = Table(
    "video_chunks", metadata,
    Column("job_id", Text, ForeignKey("video_jobs.job_id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("start_frame", Integer, nullable=False), Column("end_frame", Integer),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("attempt", Integer, nullable=False, server_default="0"), Column("worker", Text),
    Column("frames_done", Integer, nullable=False, server_default="0"),
    Column("render_status", Text, nullable=False, server_default="pending"),
    Column("render_attempt", Integer, nullable=False, server_default="0"),
    Column("rendered", Integer, nullable=False, server_default="0"),
    Column("segment", Text), Column("updated_at", Text), Column("result", JsonText),
)
video_frames = Table(
    "video_frames", metadata,
    Column("job_id", Text, ForeignKey("video_jobs.job_id", ondelete="CASCADE"), primary_key=True),
    Column("frame", Integer, primary_key=True), Column("data", JsonText, nullable=False),
)
TABLES = (video_jobs, video_chunks, video_frames)
JOB_COLUMNS = tuple(c.name for c in video_jobs.c if c.name not in ("state", "tracks"))
CHUNK_COLUMNS = tuple(c.name for c in video_chunks.c if c.name != "result")


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


def _legacy(conn: Connection) -> str | None:  # tables of before migrations (CREATE TABLE IF NOT EXISTS)
    return "jobs_0001" if inspect(conn).has_table("video_jobs") else None


def _upsert(conn: Connection, table: Table, rows: dict[str, Any] | list[dict[str, Any]]) -> None:
    """Insert ``rows`` (all with the same keys), replacing the non-key columns of existing rows."""
    keys = [c.name for c in table.primary_key]
    names = rows[0] if isinstance(rows, list) else rows
    stmt = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)
    set_ = {n: stmt.excluded[n] for n in names if n not in keys}
    conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=set_), rows)


def _job(row: Any) -> dict[str, Any]:
    return {**row.state, **{k: getattr(row, k) for k in JOB_COLUMNS}, "cancel": bool(row.cancel)}


_JOB_SELECT = select(*(video_jobs.c[k] for k in JOB_COLUMNS), video_jobs.c.state)
_CHUNK_SELECT = select(*(video_chunks.c[k] for k in CHUNK_COLUMNS))


class Tx:
    """One open transaction (``conn``: its SQLAlchemy connection) with the store's named operations."""

    def __init__(self, store: JobStore, conn: Connection):
        self.store = store
        self.conn = conn

    # --- jobs ----------------------------------------------------------------------------------------------
    def job(self, job_id: str, *, lock: bool = False) -> dict[str, Any] | None:
        """The job's full state (columns merged into the JSON document), or None."""
        stmt = _JOB_SELECT.where(video_jobs.c.job_id == job_id)
        row = self.conn.execute(stmt.with_for_update() if lock else stmt).first()
        return None if row is None else _job(row)

    def jobs(self, active: bool = False) -> list[dict[str, Any]]:
        """Every job (or every queued/running one), oldest first."""
        stmt = _JOB_SELECT.where(video_jobs.c.status.in_(ACTIVE)) if active else _JOB_SELECT
        return [_job(r) for r in self.conn.execute(stmt.order_by(video_jobs.c.created_at))]

    def put_job(self, state: dict[str, Any]) -> dict[str, Any]:
        """Insert or replace the job ``state`` (``updated_at`` is set now)."""
        state = {**state, "updated_at": now_iso()}
        doc = {k: v for k, v in state.items() if k not in JOB_COLUMNS}
        row = {k: state.get(k) for k in JOB_COLUMNS} | {"state": doc, "cancel": int(bool(state.get("cancel")))}
        row.update(phase=row["phase"] or "analyze", executor=row["executor"] or "inprocess")
        _upsert(self.conn, video_jobs, row)
        return state

    def update_job(self, job_id: str, **changes: Any) -> dict[str, Any] | None:
        state = self.job(job_id, lock=True)
        return None if state is None else self.put_job({**state, **changes})

    def set_tracks(self, job_id: str, tracks: list[dict[str, Any]] | None) -> None:
        self.conn.execute(update(video_jobs).where(video_jobs.c.job_id == job_id).values(tracks=tracks))

    def tracks(self, job_id: str) -> list[dict[str, Any]] | None:
        row = self.conn.execute(select(video_jobs.c.tracks).where(video_jobs.c.job_id == job_id)).first()
        if row is None:
            raise JobNotFoundError("no such video job")
        return row.tracks

    # --- chunks --------------------------------------------------------------------------------------------
    def chunks(self, job_id: str, *, lock: bool = False) -> list[dict[str, Any]]:
        stmt = _CHUNK_SELECT.where(video_chunks.c.job_id == job_id).order_by(video_chunks.c.idx)
        return [r._asdict() for r in self.conn.execute(stmt.with_for_update() if lock else stmt)]

    def chunk(self, job_id: str, idx: int, *, lock: bool = False) -> dict[str, Any] | None:
        stmt = _CHUNK_SELECT.where(video_chunks.c.job_id == job_id, video_chunks.c.idx == idx)
        row = self.conn.execute(stmt.with_for_update() if lock else stmt).first()
        return None if row is None else row._asdict()

    def put_chunk(self, chunk: dict[str, Any], result: Any = ...) -> None:
        """Insert or update a chunk row (``result``: JSON-able analysis result; ``...`` keeps the stored one)."""
        row = {k: chunk.get(k) for k in CHUNK_COLUMNS}
        row.update({k: row[k] or "pending" for k in ("status", "render_status")})
        row.update({k: int(row[k] or 0) for k in ("attempt", "frames_done", "render_attempt", "rendered")})
        row["updated_at"] = now_iso()
        if result is not ...:
            row["result"] = result
        _upsert(self.conn, video_chunks, row)

    def chunk_results(self, job_id: str) -> list[Any]:
        stmt = select(video_chunks.c.result).where(video_chunks.c.job_id == job_id).order_by(video_chunks.c.idx)
        return list(self.conn.scalars(stmt))

    # --- frames --------------------------------------------------------------------------------------------
    def add_frames(self, job_id: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            _upsert(self.conn, video_frames, [{"job_id": job_id, "frame": int(f["frame"]), "data": f} for f in rows])

    def delete_frames(self, job_id: str) -> None:
        self.conn.execute(delete(video_frames).where(video_frames.c.job_id == job_id))

    def frames(self, job_id: str, start: int = 0, end: int | None = None) -> list[dict[str, Any]]:
        """Frames with ``start <= frame < end`` in order."""
        stmt = select(video_frames.c.data).where(video_frames.c.job_id == job_id, video_frames.c.frame >= start)
        if end is not None:
            stmt = stmt.where(video_frames.c.frame < end)
        return list(self.conn.scalars(stmt.order_by(video_frames.c.frame)))

    def frame_page(self, job_id: str, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        stmt = select(video_frames.c.data).where(video_frames.c.job_id == job_id).order_by(video_frames.c.frame)
        return list(self.conn.scalars(stmt.offset(int(offset) or None).limit(None if limit is None else int(limit))))

    def count(self, table: Table, *where: Any) -> int:
        return int(self.conn.scalar(select(func.count()).select_from(table).where(*where)))

    def count_client(self, client: str) -> int:
        """Queued and running jobs of ``client``, counted under a lock per client (two submissions of one
        client in two processes are counted one after the other: SQLite's writes are serial anyway)."""
        if self.conn.dialect.name == "postgresql":
            digest = hashlib.sha1(f"facerec-client:{client}".encode()).digest()
            self.conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                              {"k": int.from_bytes(digest[:8], "big", signed=True)})
        return self.count(video_jobs, video_jobs.c.client == client, video_jobs.c.status.in_(ACTIVE))

    def count_by_status(self) -> dict[str, int]:
        rows = self.conn.execute(select(video_jobs.c.status, func.count()).group_by(video_jobs.c.status))
        return {str(status): int(n) for status, n in rows}


@functools.cache
def _empty() -> Engine:
    """An empty job database in memory: what a store reads before its SQLite file exists."""
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    metadata.create_all(engine)
    return engine


class JobStore:
    """The video jobs of one database (an SQLite file or a PostgreSQL URL), shared by threads and processes."""

    def __init__(self, location: str | Path, *, busy_timeout_s: float | None = None):
        self.url = database_url(location)
        self.busy_timeout_s = busy_timeout_s
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        if not self._missing():
            self._open()

    def __repr__(self) -> str:
        return f"JobStore({safe_url(self.url)!r})"

    def _missing(self) -> bool:
        return is_sqlite(self.url) and not Path(self.url.database or "").exists()

    def _open(self) -> Engine:
        with self._lock:
            if self._engine is None:
                engine = get_engine(self.url, busy_timeout_s=self.busy_timeout_s)
                try:
                    prepare(engine, "jobs", TABLES, _legacy)
                except sa_exc.SQLAlchemyError as exc:
                    raise ConfigError(f"cannot prepare the job tables in {self!r}: {exc}") from exc
                self._engine = engine
        return self._engine

    @contextmanager
    def tx(self, write: bool = True) -> Iterator[Tx]:
        """One transaction; committed when the block ends, rolled back if it raises."""
        if self._engine is None and not write and self._missing():
            engine = _empty()
        else:
            engine = self._engine or self._open()
        with transaction(engine, "job database", write=write) as conn:
            yield Tx(self, conn)

    def close(self) -> None:
        """Close the pooled connections of an SQLite store (a PostgreSQL engine is the gallery's too)."""
        if self._engine is not None and is_sqlite(self._engine):
            self._engine.dispose()

    @property
    def store_id(self) -> str:
        """A stable name of this store (task-queue callbacks find the store of a job by it)."""
        return hashlib.sha1(self.url.render_as_string(hide_password=False).encode()).hexdigest()[:16]

    # --- convenience reads, each its own transaction ------------------------------------------------------
    def _read(self, method: Any, *args: Any) -> Any:
        with self.tx(write=False) as tx:
            return method(tx, *args)

    def get(self, job_id: str) -> dict[str, Any]:
        if (state := self._read(Tx.job, job_id)) is None:
            raise JobNotFoundError("no such video job")
        return state

    def list(self) -> list[dict[str, Any]]:
        return self._read(Tx.jobs, False)

    def active(self) -> list[dict[str, Any]]:
        return self._read(Tx.jobs, True)

    def count_active(self, owner: str | None = None, client: str | None = None) -> int:
        """Queued and running jobs (of one executor ``owner``, of one ``client``)."""
        where = [video_jobs.c.status.in_(ACTIVE)]
        where += [] if owner is None else [video_jobs.c.owner == owner]
        where += [] if client is None else [video_jobs.c.client == client]
        return self._read(Tx.count, video_jobs, *where)

    def count_by_status(self) -> dict[str, int]:
        """``{status: jobs}`` over every job in the store (the metrics' queue depth)."""
        return self._read(Tx.count_by_status)

    def frames(self, job_id: str, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Per-frame results in frame order, ``offset`` rows skipped, at most ``limit``."""
        return self._read(Tx.frame_page, job_id, offset, limit)

    def count_frames(self, job_id: str) -> int:
        return self._read(Tx.count, video_frames, video_frames.c.job_id == job_id)

    def tracks(self, job_id: str) -> list[dict[str, Any]] | None:
        return self._read(Tx.tracks, job_id)

    def chunks(self, job_id: str) -> list[dict[str, Any]]:
        return self._read(Tx.chunks, job_id)

    def heartbeat_owner(self, owner: str) -> int:
        """Sign of life for every active job ``owner`` (an in-process executor) holds."""
        if self.count_active(owner) == 0:
            return 0
        with self.tx() as tx:
            stmt = update(video_jobs).where(video_jobs.c.owner == owner, video_jobs.c.status.in_(ACTIVE))
            return int(tx.conn.execute(stmt.values(heartbeat=time.time())).rowcount or 0)

    def delete(self, job_id: str) -> None:
        with self.tx() as tx:  # explicit deletes: SQLite only cascades with PRAGMA foreign_keys, old files lack it
            for table in (video_frames, video_chunks, video_jobs):
                tx.conn.execute(delete(table).where(table.c.job_id == job_id))


open_job_store = JobStore  # a path, ``sqlite:///path`` or ``postgresql://...`` URL -> its store
