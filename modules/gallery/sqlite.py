"""The gallery in one SQLite file: the embedded default backend.

Concurrency model
-----------------
* One connection per thread (thread-local) and per process (a connection
  inherited through ``fork`` is never used by the child), WAL journal,
  ``synchronous=FULL``, foreign keys on, a busy timeout.  Threads of a Flask
  server and several gunicorn workers can share the file.
* Every write is one ``BEGIN IMMEDIATE`` transaction: a failed or killed
  enrollment leaves the gallery exactly as it was.
* Search keeps an in-memory float32 matrix per gallery.  Every write
  transaction bumps ``meta.generation`` and stamps the new value on each
  gallery it changed (``galleries.generation``); before a search one indexed
  query reads the gallery's stamp, and the matrix is reloaded only when it
  moved.  That is how an enrollment made by another process is seen by the
  next search.

Schema (version 1)
------------------
``meta(key, value)``: ``schema_version``, ``generation``, ``created_at``.
``galleries(id, name UNIQUE, created_at, generation)``.
``people(id, gallery_id -> galleries ON DELETE CASCADE, name, created_at,
metadata JSON, UNIQUE(gallery_id, name))``.
``faces(id, person_id -> people ON DELETE CASCADE, embedder, dim, embedding
float32 little-endian BLOB, crop_png BLOB NULL, source, source_sha256, box JSON,
landmarks JSON, det_score, created_at)``.
Ids are AUTOINCREMENT: a deleted face's id is never reused.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    ConfigError,
    ConflictError,
    FaceRecError,
    InvalidRequestError,
    ServiceUnavailableError,
)
from ..face import Candidate
from .ann import AnnIndex, HnswParams, NeedsRebuild, RWLock, hnswlib_available
from .base import (
    DEFAULT_ANN_THRESHOLD,
    FaceInfo,
    GalleryInfo,
    GalleryStore,
    NewFace,
    PersonInfo,
    as_queries,
    embed_crops,
    export_row,
    face_not_found,
    gallery_not_found,
    mismatch_error,
    no_crop_error,
    parse_face_id,
    person_exists,
    person_not_found,
    pick_people,
    rank_people,
    uncroppable_error,
    utc_now_iso,
    validate_embedder_id,
    validate_enrollment,
    validate_metadata,
    validate_name,
    validate_page,
    validate_reembed_args,
    validate_top_k,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

# Forward-only migrations: (version reached, statements).  Never edit a shipped
# entry; append a new one (ALTER TABLE ..., data fixes) and it runs once per file.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE galleries (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL UNIQUE,
                created_at TEXT NOT NULL,
                generation INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE people (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
                name TEXT NOT NULL,
                created_at TEXT NOT NULL,
                metadata TEXT,
                UNIQUE (gallery_id, name)
            )""",
            """CREATE TABLE faces (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
                embedder TEXT NOT NULL,
                dim INTEGER NOT NULL CHECK (dim > 0),
                embedding BLOB NOT NULL CHECK (length(embedding) = 4 * dim),
                crop_png BLOB,
                source TEXT,
                source_sha256 TEXT,
                box TEXT,
                landmarks TEXT,
                det_score REAL,
                created_at TEXT NOT NULL
            )""",
            "CREATE INDEX faces_person ON faces(person_id)",
            "CREATE INDEX faces_source_sha256 ON faces(source_sha256) WHERE source_sha256 IS NOT NULL",
        ],
    ),
    (
        # the change log that keeps an ANN index in step: the generation that wrote each face's
        # embedding, and the ids of deleted faces (cascades included) with the generation that deleted them
        2,
        [
            "ALTER TABLE faces ADD COLUMN gen INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX faces_gen ON faces(gen)",
            "CREATE TABLE face_deletions (gen INTEGER NOT NULL, face_id INTEGER NOT NULL)",
            "CREATE INDEX face_deletions_gen ON face_deletions(gen)",
            """CREATE TRIGGER faces_log_delete AFTER DELETE ON faces BEGIN
                INSERT INTO face_deletions (gen, face_id)
                VALUES ((SELECT value FROM meta WHERE key = 'generation'), OLD.id);
            END""",
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('deletions_horizon', 0)",
        ],
    ),
]
DELETIONS_KEEP = 200_000  # tombstones kept; an index older than the pruned ones is rebuilt
assert MIGRATIONS[-1][0] == SCHEMA_VERSION


_now = utc_now_iso


def _blob(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


class _Connection(sqlite3.Connection):
    """A connection that can be weak-referenced and remembers its process."""

    pid: int


@dataclass(frozen=True)
class _Matrix:
    """The searchable snapshot of one gallery at one generation."""

    gallery_id: int
    generation: int
    groups: dict[tuple[str, int], int]  # (embedder, dim) -> faces
    matrix: np.ndarray | None  # (N, d) unit rows grouped by person; None if mixed dims
    starts: np.ndarray  # first row of each person
    person_ids: np.ndarray
    person_names: tuple[str, ...]
    face_ids: np.ndarray

    @property
    def n_faces(self) -> int:
        return int(sum(self.groups.values()))

    @property
    def num_people(self) -> int:
        return len(self.starts)


def _ann_groups(ann: AnnIndex) -> dict[tuple[str, int], int]:
    return {(ann.embedder, ann.dim): ann.n_live} if ann.n_live else {}


class _Tx:
    def __init__(self, conn: sqlite3.Connection, generation: int):
        self.conn = conn
        self.generation = generation
        self.touched: set[int] = set()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def touch(self, gallery_id: int) -> None:
        self.touched.add(int(gallery_id))


_face_id = parse_face_id


class SQLiteGallery(GalleryStore):
    """The gallery in the SQLite file ``path`` (created, with its folder, if missing).

    Search is exact below ``ann_threshold`` faces in a gallery and goes through an HNSW index
    (hnswlib; ``ann_params``) from there on; ``ann_threshold=None`` keeps it exact always.
    With ``ann_persist`` the index is saved in ``<path>.ann/`` with a generation stamp, so a
    restart loads it and applies only what changed since, instead of rebuilding it.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_s: float = 30.0,
        create: bool = True,
        ann_threshold: int | None = DEFAULT_ANN_THRESHOLD,
        ann_params: HnswParams | None = None,
        ann_persist: bool = True,
        ann_dir: str | Path | None = None,
    ):
        self.path = Path(path).expanduser()
        if str(path) == ":memory:" or str(path).startswith("file:"):
            raise ConfigError("the SQLite gallery needs a file path (one database shared by threads and processes)")
        if not self.path.exists():
            if not create:
                raise ConfigError(f"gallery database not found: {self.path}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the folder of gallery database {self.path}: {exc}") from exc
        elif self.path.is_dir():
            raise ConfigError(f"gallery database path {self.path} is a directory")
        self.busy_timeout_s = float(busy_timeout_s)
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._abandoned: list[sqlite3.Connection] = []  # inherited through fork: never used nor closed
        self._pid = os.getpid()
        self._cache: dict[int, _Matrix | AnnIndex] = {}
        self._cache_ids: dict[str, int] = {}  # gallery name -> the id its cache entry is for
        self._cache_lock = threading.Lock()
        self._gallery_locks: dict[int, threading.Lock] = {}
        self.cache_loads = 0  # how many times a gallery was read whole for search; for tests and stats
        self.ann_builds = self.ann_loads = self.ann_catchups = 0  # index built / loaded from disk / updated
        self.ann_refined = 0  # queries searched again with the wider beam (near-ties)
        if ann_threshold is not None and (
            isinstance(ann_threshold, bool) or not isinstance(ann_threshold, int) or ann_threshold < 1
        ):
            raise ConfigError(f"ann_threshold must be a positive number of faces or None, got {ann_threshold!r}")
        self.ann_threshold = ann_threshold if ann_threshold is not None else 1 << 62
        self.ann_params = ann_params or HnswParams()
        self.ann_persist = bool(ann_persist)
        self.ann_dir = Path(ann_dir) if ann_dir is not None else self.path.with_name(self.path.name + ".ann")
        self.ann_save_every = 10_000  # changes applied before a caught-up index is saved again
        self._ann_on = ann_threshold is not None and hnswlib_available()
        if ann_threshold is not None and not self._ann_on:
            log.warning("hnswlib is not installed: gallery search stays exact (pip install hnswlib)")
        self._migrate()

    def __repr__(self) -> str:
        return f"SQLiteGallery({str(self.path)!r})"

    # --- connections and transactions ----------------------------------------------
    def _connect(self) -> _Connection:
        try:
            conn = sqlite3.connect(
                str(self.path),
                timeout=self.busy_timeout_s,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # still one thread per connection; lets close() close all
                factory=_Connection,
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open gallery database {self.path}: {exc}") from exc
        conn.pid = os.getpid()
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ConfigError(f"{self.path} is not a usable SQLite gallery database: {exc}") from exc
        self._connections.add(conn)
        return conn

    def _conn(self) -> _Connection:
        """This thread's connection in this process (a new one after ``fork``)."""
        if os.getpid() != self._pid:
            self._after_fork()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _after_fork(self) -> None:
        # SQLite connections must not be used across fork; locks may have been copied while held
        old = getattr(self._local, "conn", None)
        if old is not None:
            self._abandoned.append(old)
        self._local = threading.local()
        self._cache_lock = threading.Lock()
        self._gallery_locks = {}
        for entry in self._cache.values():  # shared copy-on-write with the parent; its locks may be held
            if isinstance(entry, AnnIndex):
                entry.lock = RWLock()
        self._pid = os.getpid()

    def close(self) -> None:
        """Close this process's connections (call at shutdown, not while other threads use the store)."""
        pid = os.getpid()
        for conn in list(self._connections):
            if conn.pid == pid:
                try:
                    conn.close()
                except sqlite3.Error:  # pragma: no cover
                    pass
        self._local = threading.local()

    def _db_error(self, exc: sqlite3.Error) -> FaceRecError:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return ServiceUnavailableError(
                f"the gallery database is busy (another writer held it for over {self.busy_timeout_s:g}s); try again"
            )
        return FaceRecError(f"gallery database error ({self.path}): {text}")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent read snapshot (a deferred transaction)."""
        conn = self._conn()
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        try:
            yield conn
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        finally:
            if conn.in_transaction:
                try:
                    conn.execute("COMMIT")
                except sqlite3.Error:  # pragma: no cover - a read-only transaction cannot fail to end
                    conn.execute("ROLLBACK")

    @contextmanager
    def _write(self) -> Iterator[_Tx]:
        """One ``BEGIN IMMEDIATE`` transaction that bumps the generation; rolled back on any exception."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        try:
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
            gen = int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
            tx = _Tx(conn, gen)
            yield tx
            for gid in tx.touched:
                conn.execute("UPDATE galleries SET generation = ? WHERE id = ?", (gen, gid))
            if gen % 1024 == 0:
                self._prune_deletions(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # pragma: no cover
                    pass
            if isinstance(exc, sqlite3.Error):
                raise self._db_error(exc) from exc
            raise

    @staticmethod
    def _prune_deletions(conn: sqlite3.Connection, keep: int = DELETIONS_KEEP) -> None:
        """Keep the newest ``keep`` deletion records; an index older than the horizon is rebuilt."""
        n = conn.execute("SELECT COUNT(*) FROM face_deletions").fetchone()[0]
        if n <= keep:
            return
        cutoff = conn.execute(
            "SELECT gen FROM face_deletions ORDER BY gen DESC LIMIT 1 OFFSET ?", (keep,)
        ).fetchone()[0]
        conn.execute("DELETE FROM face_deletions WHERE gen <= ?", (cutoff,))
        conn.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'deletions_horizon'", (cutoff,))

    def _migrate(self) -> None:
        conn = self._conn()
        try:
            version = self._schema_version(conn)
            if version == SCHEMA_VERSION:
                return
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"gallery database {self.path} has schema version {version}, newer than this code"
                    f" supports ({SCHEMA_VERSION}); upgrade the code"
                )
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NOT NULL)")
                version = self._schema_version(conn)  # another process may have migrated meanwhile
                for target, statements in MIGRATIONS:
                    if target <= version:
                        continue
                    for sql in statements:
                        conn.execute(sql)
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (target,),
                    )
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0)")
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('created_at', ?)", (_now(),))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{self.path} is not a usable SQLite gallery database: {exc}") from exc

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int:
        has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if not has_meta:
            return 0
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def integrity_check(self) -> list[str]:
        """Problems reported by ``PRAGMA integrity_check`` and ``foreign_key_check`` (empty: healthy)."""
        with self._read() as conn:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            fk = conn.execute("PRAGMA foreign_key_check").fetchall()
        problems = [r for r in rows if r != "ok"]
        problems += [f"foreign key violation: {tuple(r)}" for r in fk]
        return problems

    # --- lookups (inside a transaction) -----------------------------------------------
    @staticmethod
    def _gallery_row(conn: sqlite3.Connection, name: str) -> tuple[int, str, int]:
        row = conn.execute("SELECT id, created_at, generation FROM galleries WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise gallery_not_found(name)
        return int(row[0]), row[1], int(row[2])

    def _gallery_id(self, tx: _Tx, name: str, *, create: bool) -> int:
        row = tx.execute("SELECT id FROM galleries WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        if not create:
            raise gallery_not_found(name)
        cur = tx.execute(
            "INSERT INTO galleries (name, created_at, generation) VALUES (?, ?, ?)", (name, _now(), tx.generation)
        )
        return int(cur.lastrowid)

    @staticmethod
    def _person_row(conn: sqlite3.Connection, gallery_id: int, gallery: str, name: str) -> tuple:
        row = conn.execute(
            "SELECT id, name, created_at, metadata FROM people WHERE gallery_id = ? AND name = ?", (gallery_id, name)
        ).fetchone()
        if row is None:
            raise person_not_found(gallery, name)
        return row

    @staticmethod
    def _gallery_embedders(conn: sqlite3.Connection, gallery_id: int) -> dict[tuple[str, int], int]:
        rows = conn.execute(
            "SELECT f.embedder, f.dim, COUNT(*) FROM faces f JOIN people p ON p.id = f.person_id"
            " WHERE p.gallery_id = ? GROUP BY f.embedder, f.dim",
            (gallery_id,),
        ).fetchall()
        return {(e, int(d)): int(n) for e, d, n in rows}

    @staticmethod
    def _person_info(gallery: str, row: Sequence[Any], num_faces: int) -> PersonInfo:
        pid, name, created_at, metadata = row[:4]
        return PersonInfo(
            id=int(pid),
            gallery=gallery,
            name=name,
            created_at=created_at,
            num_faces=int(num_faces),
            metadata=json.loads(metadata) if metadata else None,
        )

    # --- galleries ----------------------------------------------------------------
    def create_gallery(self, name: str) -> GalleryInfo:
        name = validate_name(name, "gallery name")
        with self._write() as tx:
            if tx.execute("SELECT 1 FROM galleries WHERE name = ?", (name,)).fetchone():
                raise ConflictError(f"gallery {name!r} already exists", details={"gallery": name})
            self._gallery_id(tx, name, create=True)
        return self.get_gallery(name)

    def ensure_gallery(self, name: str) -> GalleryInfo:
        name = validate_name(name, "gallery name")
        with self._read() as conn:
            exists = conn.execute("SELECT 1 FROM galleries WHERE name = ?", (name,)).fetchone()
        if not exists:
            with self._write() as tx:
                self._gallery_id(tx, name, create=True)
        return self.get_gallery(name)

    def _gallery_infos(self, conn: sqlite3.Connection, where: str = "", params: Sequence[Any] = ()) -> list[GalleryInfo]:
        rows = conn.execute(
            "SELECT g.id, g.name, g.created_at,"
            " (SELECT COUNT(*) FROM people p WHERE p.gallery_id = g.id)"
            f" FROM galleries g {where} ORDER BY g.name",
            params,
        ).fetchall()
        infos = []
        for gid, name, created_at, n_people in rows:
            embedders = self._gallery_embedders(conn, gid)
            by_model: dict[str, int] = {}
            for (e, _d), n in embedders.items():
                by_model[e] = by_model.get(e, 0) + n
            infos.append(
                GalleryInfo(
                    id=int(gid),
                    name=name,
                    created_at=created_at,
                    num_people=int(n_people),
                    num_faces=sum(by_model.values()),
                    embedders=by_model,
                )
            )
        return infos

    def get_gallery(self, name: str) -> GalleryInfo:
        name = validate_name(name, "gallery name")
        with self._read() as conn:
            infos = self._gallery_infos(conn, "WHERE g.name = ?", (name,))
        if not infos:
            raise gallery_not_found(name)
        return infos[0]

    def list_galleries(self) -> list[GalleryInfo]:
        with self._read() as conn:
            return self._gallery_infos(conn)

    def delete_gallery(self, name: str) -> dict[str, int]:
        name = validate_name(name, "gallery name")
        with self._write() as tx:
            gid, _, _ = self._gallery_row(tx.conn, name)
            n_people = tx.execute("SELECT COUNT(*) FROM people WHERE gallery_id = ?", (gid,)).fetchone()[0]
            n_faces = sum(self._gallery_embedders(tx.conn, gid).values())
            tx.execute("DELETE FROM galleries WHERE id = ?", (gid,))
        with self._cache_lock:
            self._cache.pop(gid, None)
        for suffix in (".json", ".hnsw", ".npz"):  # its saved index (gallery ids are never reused)
            try:
                (self.ann_dir / f"g{gid}{suffix}").unlink(missing_ok=True)
            except OSError:  # pragma: no cover
                pass
        return {"people": int(n_people), "faces": int(n_faces)}

    # --- people -------------------------------------------------------------------
    def add_person(
        self, gallery: str, name: str, metadata: Mapping[str, Any] | None = None, *, create_missing: bool = True
    ) -> PersonInfo:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        meta_json = validate_metadata(metadata)
        with self._write() as tx:
            gid = self._gallery_id(tx, gallery, create=create_missing)
            try:
                tx.execute(
                    "INSERT INTO people (gallery_id, name, created_at, metadata) VALUES (?, ?, ?, ?)",
                    (gid, name, _now(), meta_json),
                )
            except sqlite3.IntegrityError:
                raise person_exists(gallery, name) from None
            tx.touch(gid)
        return self.get_person(gallery, name)

    def get_person(self, gallery: str, name: str) -> PersonInfo:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        with self._read() as conn:
            gid, _, _ = self._gallery_row(conn, gallery)
            row = self._person_row(conn, gid, gallery, name)
            n = conn.execute("SELECT COUNT(*) FROM faces WHERE person_id = ?", (row[0],)).fetchone()[0]
        return self._person_info(gallery, row, n)

    def list_people(self, gallery: str, offset: int = 0, limit: int | None = 100) -> tuple[list[PersonInfo], int]:
        gallery = validate_name(gallery, "gallery name")
        offset, limit = validate_page(offset, limit)
        with self._read() as conn:
            gid, _, _ = self._gallery_row(conn, gallery)
            total = conn.execute("SELECT COUNT(*) FROM people WHERE gallery_id = ?", (gid,)).fetchone()[0]
            rows = conn.execute(
                "SELECT p.id, p.name, p.created_at, p.metadata,"
                " (SELECT COUNT(*) FROM faces f WHERE f.person_id = p.id)"
                " FROM people p WHERE p.gallery_id = ? ORDER BY p.name LIMIT ? OFFSET ?",
                (gid, -1 if limit is None else int(limit), int(offset)),
            ).fetchall()
        return [self._person_info(gallery, r, r[4]) for r in rows], int(total)

    def rename_person(self, gallery: str, name: str, new_name: str) -> PersonInfo:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        new_name = validate_name(new_name, "new person name")
        with self._write() as tx:
            gid, _, _ = self._gallery_row(tx.conn, gallery)
            row = self._person_row(tx.conn, gid, gallery, name)
            if new_name != name:
                try:
                    tx.execute("UPDATE people SET name = ? WHERE id = ?", (new_name, row[0]))
                except sqlite3.IntegrityError:
                    raise person_exists(gallery, new_name) from None
                tx.touch(gid)
        return self.get_person(gallery, new_name)

    def set_person_metadata(self, gallery: str, name: str, metadata: Mapping[str, Any] | None) -> PersonInfo:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        meta_json = validate_metadata(metadata)
        with self._write() as tx:
            gid, _, _ = self._gallery_row(tx.conn, gallery)
            row = self._person_row(tx.conn, gid, gallery, name)
            tx.execute("UPDATE people SET metadata = ? WHERE id = ?", (meta_json, row[0]))
        return self.get_person(gallery, name)

    def delete_person(self, gallery: str, name: str) -> int:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        with self._write() as tx:
            gid, _, _ = self._gallery_row(tx.conn, gallery)
            row = self._person_row(tx.conn, gid, gallery, name)
            n = tx.execute("SELECT COUNT(*) FROM faces WHERE person_id = ?", (row[0],)).fetchone()[0]
            tx.execute("DELETE FROM people WHERE id = ?", (row[0],))
            tx.touch(gid)
        return int(n)

    # --- faces --------------------------------------------------------------------
    def add_faces_many(
        self, gallery: str, faces_by_person: Mapping[str, Sequence[NewFace]], *, create_missing: bool = True
    ) -> dict[str, list[int]]:
        gallery = validate_name(gallery, "gallery name")
        items, embedder, dim = validate_enrollment(faces_by_person)
        out: dict[str, list[int]] = {}
        with self._write() as tx:
            gid = self._gallery_id(tx, gallery, create=create_missing)
            stored = tx.execute(
                "SELECT f.embedder, f.dim FROM faces f JOIN people p ON p.id = f.person_id"
                " WHERE p.gallery_id = ? LIMIT 1",
                (gid,),
            ).fetchone()
            if stored is not None and (stored[0], int(stored[1])) != (embedder, dim):
                raise mismatch_error(gallery, self._gallery_embedders(tx.conn, gid), embedder, dim)
            now = _now()
            for pname, faces in items.items():
                row = tx.execute(
                    "SELECT id FROM people WHERE gallery_id = ? AND name = ?", (gid, pname)
                ).fetchone()
                if row is not None:
                    pid = int(row[0])
                elif create_missing:
                    cur = tx.execute(
                        "INSERT INTO people (gallery_id, name, created_at) VALUES (?, ?, ?)", (gid, pname, now)
                    )
                    pid = int(cur.lastrowid)
                else:
                    raise person_not_found(gallery, pname)
                ids = []
                for f in faces:
                    cur = tx.execute(
                        "INSERT INTO faces (person_id, embedder, dim, embedding, crop_png, source, source_sha256,"
                        " box, landmarks, det_score, created_at, gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            pid,
                            f.embedder,
                            f.dim,
                            _blob(f.embedding),
                            f.crop_png,
                            f.source,
                            f.source_sha256,
                            f.box_json,
                            f.landmarks_json,
                            f.det_score,
                            now,
                            tx.generation,
                        ),
                    )
                    ids.append(int(cur.lastrowid))
                out[pname] = ids
            tx.touch(gid)
        return out

    _FACE_COLUMNS = (
        "f.id, f.person_id, p.name, g.name, f.embedder, f.dim, f.created_at, f.crop_png IS NOT NULL,"
        " f.source, f.source_sha256, f.box, f.landmarks, f.det_score, f.embedding"
    )
    _FACE_FROM = "FROM faces f JOIN people p ON p.id = f.person_id JOIN galleries g ON g.id = p.gallery_id"

    @staticmethod
    def _face_info(row: Sequence[Any], with_embedding: bool) -> FaceInfo:
        return FaceInfo(
            id=int(row[0]),
            person_id=int(row[1]),
            person=row[2],
            gallery=row[3],
            embedder=row[4],
            dim=int(row[5]),
            created_at=row[6],
            has_crop=bool(row[7]),
            source=row[8],
            source_sha256=row[9],
            box=json.loads(row[10]) if row[10] else None,
            landmarks=json.loads(row[11]) if row[11] else None,
            det_score=row[12],
            embedding=np.frombuffer(row[13], dtype="<f4").astype(np.float32) if with_embedding else None,
        )

    def list_faces(self, gallery: str, person: str, *, with_embeddings: bool = False) -> list[FaceInfo]:
        gallery = validate_name(gallery, "gallery name")
        person = validate_name(person, "person name")
        with self._read() as conn:
            gid, _, _ = self._gallery_row(conn, gallery)
            prow = self._person_row(conn, gid, gallery, person)
            rows = conn.execute(
                f"SELECT {self._FACE_COLUMNS} {self._FACE_FROM} WHERE f.person_id = ? ORDER BY f.id", (prow[0],)
            ).fetchall()
        return [self._face_info(r, with_embeddings) for r in rows]

    def _face_row(self, conn: sqlite3.Connection, face_id: Any, gallery: str | None, columns: str) -> tuple:
        fid = _face_id(face_id)
        if gallery is not None:
            gallery = validate_name(gallery, "gallery name")
            self._gallery_row(conn, gallery)
        row = conn.execute(
            f"SELECT {columns} {self._FACE_FROM} WHERE f.id = ? AND (? IS NULL OR g.name = ?)",
            (fid, gallery, gallery),
        ).fetchone()
        if row is None:
            raise face_not_found(fid, gallery)
        return row

    def get_face(self, face_id: int, *, gallery: str | None = None, with_embedding: bool = False) -> FaceInfo:
        with self._read() as conn:
            row = self._face_row(conn, face_id, gallery, self._FACE_COLUMNS)
        return self._face_info(row, with_embedding)

    def get_face_crop(self, face_id: int, *, gallery: str | None = None) -> bytes:
        with self._read() as conn:
            row = self._face_row(conn, face_id, gallery, "f.id, f.crop_png")
        if row[1] is None:
            raise no_crop_error(int(row[0]))
        return bytes(row[1])

    def delete_face(self, face_id: int, *, gallery: str | None = None) -> None:
        with self._write() as tx:
            row = self._face_row(tx.conn, face_id, gallery, "f.id, p.gallery_id")
            tx.execute("DELETE FROM faces WHERE id = ?", (row[0],))
            tx.touch(row[1])

    def find_faces_by_source_sha256(self, gallery: str, sha256: str) -> list[int]:
        gallery = validate_name(gallery, "gallery name")
        if not isinstance(sha256, str):
            raise InvalidRequestError("sha256 must be a hex string")
        with self._read() as conn:
            gid, _, _ = self._gallery_row(conn, gallery)
            rows = conn.execute(
                "SELECT f.id FROM faces f JOIN people p ON p.id = f.person_id"
                " WHERE f.source_sha256 = ? AND p.gallery_id = ? ORDER BY f.id",
                (sha256.lower(), gid),
            ).fetchall()
        return [int(r[0]) for r in rows]

    # --- search -------------------------------------------------------------------
    def _gallery_lock(self, gid: int) -> threading.Lock:
        with self._cache_lock:
            lock = self._gallery_locks.get(gid)
            if lock is None:
                lock = self._gallery_locks[gid] = threading.Lock()
            return lock

    def _entry(self, gallery: str) -> _Matrix | AnnIndex:
        """The gallery's search structure, brought up to date only if its generation moved.

        Small galleries get an exact matrix (reloaded whole); from ``ann_threshold`` faces on, an
        HNSW index kept in step from the change log (faces written and deleted since its generation).
        """
        conn = self._conn()
        try:
            row = conn.execute("SELECT id, generation FROM galleries WHERE name = ?", (gallery,)).fetchone()
        except sqlite3.Error as exc:
            raise self._db_error(exc) from exc
        if row is None:
            old = self._cache_ids.pop(gallery, None)
            if old is not None:  # deleted by another process: let its index go
                with self._cache_lock:
                    self._cache.pop(old, None)
            raise gallery_not_found(gallery)
        gid, gen = int(row[0]), int(row[1])
        cached = self._cache.get(gid)
        if cached is not None and cached.generation == gen:
            return cached
        old = self._cache_ids.get(gallery)
        if old is not None and old != gid:  # deleted (by any process) and created again: forget the old one
            with self._cache_lock:
                self._cache.pop(old, None)
                self._gallery_locks.pop(old, None)
        self._cache_ids[gallery] = gid
        with self._gallery_lock(gid):
            cached = self._cache.get(gid)
            if cached is not None and cached.generation == gen:
                return cached
            entry = self._refresh(gallery, gid, cached)
            self._cache[gid] = entry
            return entry

    def _refresh(self, gallery: str, gid: int, cached: _Matrix | AnnIndex | None) -> _Matrix | AnnIndex:
        if isinstance(cached, AnnIndex):
            try:
                self._catch_up(cached, gallery)
                if cached.n_live >= self.ann_threshold // 2:  # hysteresis: back to exact well below
                    self._maybe_save_async(gid, cached)
                    return cached
            except NeedsRebuild as exc:
                log.info("rebuilding the search index of gallery %r: %s", gallery, exc)
        elif cached is None and self._ann_on and self.ann_persist:
            loaded = self._load_saved(gallery, gid)
            if loaded is not None:
                return loaded
        with self._read() as conn:
            gid, _, gen = self._gallery_row(conn, gallery)
            m = self._load_matrix(conn, gid, gen)
        self.cache_loads += 1
        if self._ann_on and m.matrix is not None and m.n_faces >= self.ann_threshold:
            return self._build_ann(gallery, gid, m)
        return m

    def _load_matrix(self, conn: sqlite3.Connection, gid: int, gen: int) -> _Matrix:
        names = dict(conn.execute("SELECT id, name FROM people WHERE gallery_id = ?", (gid,)).fetchall())
        # walks the faces_person index in order: no sort of the BLOBs
        rows = conn.execute(
            "SELECT f.id, f.person_id, f.embedder, f.dim, f.embedding FROM faces f"
            " WHERE f.person_id IN (SELECT id FROM people WHERE gallery_id = ?)"
            " ORDER BY f.person_id, f.id",
            (gid,),
        ).fetchall()
        return self._build_matrix(gid, gen, rows, names)

    def _db_stamp(self) -> str:
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'created_at'").fetchone()
        return str(row[0]) if row else ""

    def _build_ann(self, gallery: str, gid: int, m: _Matrix) -> AnnIndex:
        """An HNSW index from the loaded matrix (one process builds and saves; others wait and load)."""
        assert m.matrix is not None
        ((embedder, _dim),) = m.groups
        person_of = np.repeat(m.person_ids, np.diff(np.append(m.starts, m.matrix.shape[0])))
        if not self.ann_persist:
            return AnnIndex.build(embedder, m.matrix, m.face_ids, person_of, self.ann_params, m.generation)
        from filelock import FileLock

        self.ann_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.ann_dir / f"g{gid}.lock")):
            loaded = self._load_saved(gallery, gid, locked=True)  # another process may have just built it
            if loaded is not None:
                return loaded
            t0 = time.perf_counter()
            ann = AnnIndex.build(embedder, m.matrix, m.face_ids, person_of, self.ann_params, m.generation)
            log.info("built the HNSW index of gallery %r (%d faces) in %.1fs", gallery, m.n_faces,
                     time.perf_counter() - t0)
            self.ann_builds += 1
            try:
                ann.save(self.ann_dir, f"g{gid}", {"db": self._db_stamp(), "gallery_id": gid})
            except OSError as exc:
                log.warning("cannot save the search index of gallery %r in %s: %s", gallery, self.ann_dir, exc)
        return ann

    def _load_saved(self, gallery: str, gid: int, locked: bool = False) -> AnnIndex | None:
        """The saved index of the gallery, caught up with the database; None if unusable."""
        stem = f"g{gid}"
        meta = AnnIndex.read_stamp(self.ann_dir, stem)
        if meta is None or meta.get("db") != self._db_stamp() or meta.get("gallery_id") != gid:
            return None
        try:
            if locked:
                ann = AnnIndex.load(self.ann_dir, stem, meta, self.ann_params)
            else:
                from filelock import FileLock

                with FileLock(str(self.ann_dir / f"{stem}.lock")):
                    ann = AnnIndex.load(self.ann_dir, stem, meta, self.ann_params)
        except Exception as exc:  # noqa: BLE001 - a damaged file is rebuilt, never fatal
            log.warning("ignoring the saved search index of gallery %r: %s", gallery, exc)
            return None
        try:
            self._catch_up(ann, gallery)
        except NeedsRebuild as exc:
            log.info("saved search index of gallery %r is unusable: %s", gallery, exc)
            return None
        if ann.n_live < self.ann_threshold // 2:
            return None
        self.ann_loads += 1
        self._maybe_save_async(gid, ann)
        return ann

    def _catch_up(self, ann: AnnIndex, gallery: str) -> None:
        """Apply to ``ann`` what was written since its generation (a few indexed queries)."""
        with self._read() as conn:
            gid, _, gen = self._gallery_row(conn, gallery)
            if gen < ann.generation:
                raise NeedsRebuild("the database is older than the index")
            if gen == ann.generation:
                return
            horizon = int(conn.execute("SELECT value FROM meta WHERE key = 'deletions_horizon'").fetchone()[0])
            if ann.generation < horizon:
                raise NeedsRebuild("the deletion log was pruned past the index's generation")
            deleted = np.fromiter(
                (r[0] for r in conn.execute("SELECT face_id FROM face_deletions WHERE gen > ?", (ann.generation,))),
                dtype=np.int64,
            )
            # CROSS JOIN keeps faces outermost, so the faces_gen index finds the few new rows
            # (no ORDER BY: SQLite would rather walk every face in id order than sort a few)
            rows = conn.execute(
                "SELECT f.id, f.person_id, f.embedder, f.dim, f.embedding FROM faces f CROSS JOIN people p"
                " ON p.id = f.person_id WHERE f.gen > ? AND p.gallery_id = ?",
                (ann.generation, gid),
            ).fetchall()
        rows.sort(key=lambda r: r[0])
        if any(r[2] != ann.embedder or int(r[3]) != ann.dim for r in rows):
            raise NeedsRebuild("faces of another embedder")
        n = len(rows)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        persons = np.fromiter((r[1] for r in rows), dtype=np.int64, count=n)
        vectors = (
            np.frombuffer(b"".join(r[4] for r in rows), dtype="<f4").astype(np.float32).reshape(n, ann.dim)
            if n
            else np.zeros((0, ann.dim), np.float32)
        )
        ann.apply(deleted, ids, persons, vectors, gen)
        self.ann_catchups += 1

    def _maybe_save_async(self, gid: int, ann: AnnIndex) -> None:
        if not self.ann_persist or ann.changes_since_save < max(self.ann_save_every, ann.n_live // 10):
            return
        stamp = {"db": self._db_stamp(), "gallery_id": gid}

        def save() -> None:
            from filelock import FileLock

            try:
                with FileLock(str(self.ann_dir / f"g{gid}.lock")):
                    ann.save(self.ann_dir, f"g{gid}", stamp)
            except OSError as exc:  # pragma: no cover
                log.warning("cannot save the search index of gallery %d: %s", gid, exc)

        ann.changes_since_save = 0  # one save in flight at a time
        threading.Thread(target=save, name=f"ann-save-g{gid}", daemon=True).start()

    @staticmethod
    def _build_matrix(gid: int, gen: int, rows: list[tuple], names: Mapping[int, str]) -> _Matrix:
        """From ``(face id, person id, embedder, dim, blob)`` rows ordered by person."""
        groups: dict[tuple[str, int], int] = {}
        for r in rows:
            key = (r[2], int(r[3]))
            groups[key] = groups.get(key, 0) + 1
        n = len(rows)
        face_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        person_of = np.fromiter((r[1] for r in rows), dtype=np.int64, count=n)
        if n:
            starts = np.flatnonzero(np.r_[True, person_of[1:] != person_of[:-1]])
        else:
            starts = np.zeros(0, dtype=np.int64)
        matrix = None
        if len({d for _, d in groups}) == 1:
            d = next(iter(groups))[1]
            matrix = np.frombuffer(b"".join(r[4] for r in rows), dtype="<f4").astype(np.float32).reshape(n, d)
        return _Matrix(
            gallery_id=gid,
            generation=gen,
            groups=groups,
            matrix=matrix,
            starts=starts,
            person_ids=person_of[starts],
            person_names=tuple(names[int(rows[int(s)][1])] for s in starts),
            face_ids=face_ids,
        )

    def _checked_entry(self, gallery: str, embedder_id: str, dim: int | None) -> _Matrix | AnnIndex:
        m = self._entry(gallery)
        groups = _ann_groups(m) if isinstance(m, AnnIndex) else m.groups
        if groups and (
            len(groups) != 1
            or next(iter(groups))[0] != embedder_id
            or (dim is not None and next(iter(groups))[1] != dim)
        ):
            raise mismatch_error(gallery, groups, embedder_id, dim)
        return m

    def search(self, gallery: str, queries: Any, embedder_id: str, top_k: int = 5) -> list[list[Candidate]]:
        gallery = validate_name(gallery, "gallery name")
        embedder_id = validate_embedder_id(embedder_id)
        top_k = validate_top_k(top_k)
        q = as_queries(queries)
        m = self._checked_entry(gallery, embedder_id, q.shape[1])
        if isinstance(m, AnnIndex):
            if m.n_live == 0 or q.shape[0] == 0:
                return [[] for _ in range(q.shape[0])]
            return self._ann_search(m, q, top_k)
        if m.n_faces == 0 or q.shape[0] == 0:
            return [[] for _ in range(q.shape[0])]
        assert m.matrix is not None
        return rank_people(q, m.matrix, m.starts, m.person_ids, m.person_names, m.face_ids, top_k)

    def _ann_search(self, ann: AnnIndex, q: np.ndarray, top_k: int) -> list[list[Candidate]]:
        """Nearest faces from the index (over-fetched), the best face per person, names from the database.

        A query whose top two people are within ``refine_margin`` is searched again with the wider
        beam ``refine_ef`` (see :class:`~modules.gallery.ann.HnswParams`).
        """
        params = ann.params
        k2 = max(top_k, 2) if params.refine_margin > 0 else top_k
        want = min(k2, ann.num_people)
        picks: list[list[tuple[int, int, float]]] = [[] for _ in range(q.shape[0])]

        def run(todo: np.ndarray, ef: int | None) -> None:
            fetch = max(k2 * params.overfetch, 16)
            while todo.size:
                labels, sims, persons = ann.knn(q[todo], fetch, ef)
                again = []
                for row, i in enumerate(todo.tolist()):
                    picks[i] = pick_people(labels[row], sims[row], persons[row], k2)
                    if len(picks[i]) < want and labels.shape[1] < ann.n_live:
                        again.append(i)  # the nearest faces were of too few people: fetch more
                todo = np.asarray(again, dtype=np.int64)
                fetch *= 4

        run(np.arange(q.shape[0]), None)
        refine_ef = params.refine_ef_for(ann.n_live)
        if params.refine_margin > 0 and refine_ef > params.ef_search:
            close = [i for i, p in enumerate(picks) if len(p) >= 2 and p[0][2] - p[1][2] < params.refine_margin]
            if close:
                self.ann_refined += len(close)
                run(np.asarray(close, dtype=np.int64), refine_ef)
        picks = [p[:top_k] for p in picks]
        person_ids = sorted({pid for row in picks for pid, _, _ in row})
        names: dict[int, str] = {}
        with self._read() as conn:
            for s in range(0, len(person_ids), 500):
                chunk = person_ids[s : s + 500]
                names.update(
                    conn.execute(
                        f"SELECT id, name FROM people WHERE id IN ({','.join('?' * len(chunk))})", chunk
                    ).fetchall()
                )
        return [
            [
                Candidate(person=names[pid], similarity=float(np.clip(sim, -1.0, 1.0)), person_id=pid, face_id=fid)
                for pid, fid, sim in row
                if pid in names  # deleted since the generation check
            ]
            for row in picks
        ]

    def num_people(self, gallery: str) -> int:
        gallery = validate_name(gallery, "gallery name")
        return self._entry(gallery).num_people

    def embeddings_by_person(self, gallery: str, embedder_id: str) -> dict[str, np.ndarray]:
        gallery = validate_name(gallery, "gallery name")
        embedder_id = validate_embedder_id(embedder_id)
        m = self._checked_entry(gallery, embedder_id, None)
        if isinstance(m, AnnIndex):  # the index keeps no per-person matrix: read it once, uncached
            with self._read() as conn:
                gid, _, gen = self._gallery_row(conn, gallery)
                m = self._load_matrix(conn, gid, gen)
            if len(m.groups) > 1 or (m.groups and next(iter(m.groups))[0] != embedder_id):
                raise mismatch_error(gallery, m.groups, embedder_id, None)
        if m.n_faces == 0:
            return {}
        assert m.matrix is not None
        ends = np.append(m.starts[1:], m.matrix.shape[0])
        return {name: m.matrix[s:e].copy() for name, s, e in zip(m.person_names, m.starts, ends)}

    def set_search_params(self, **changes: Any) -> None:
        """Change HNSW search knobs (``ef_search``, ``overfetch``, ``refine_margin``, ``refine_ef``) for
        this process's searches, indexes already loaded included."""
        from dataclasses import replace

        allowed = {"ef_search", "overfetch", "refine_margin", "refine_ef"}
        if set(changes) - allowed:
            raise TypeError(f"unknown search parameters: {sorted(set(changes) - allowed)}")
        self.ann_params = replace(self.ann_params, **changes)
        for entry in list(self._cache.values()):
            if isinstance(entry, AnnIndex):
                entry.params = replace(entry.params, **changes)

    def search_index_info(self, gallery: str) -> dict[str, Any]:
        """What answers searches of ``gallery`` in this process: ``exact`` or ``hnsw`` (loads it if needed)."""
        gallery = validate_name(gallery, "gallery name")
        m = self._entry(gallery)
        if isinstance(m, AnnIndex):
            return {"kind": "hnsw", "faces": m.n_live, "generation": m.generation, "m": m.params.m,
                    "ef_search": m.params.ef_search, "refine_margin": m.params.refine_margin,
                    "refine_ef": m.params.refine_ef_for(m.n_live), "memory_bytes": m.memory_bytes()}
        return {"kind": "exact", "faces": m.n_faces, "generation": m.generation,
                "memory_bytes": 0 if m.matrix is None else int(m.matrix.nbytes)}

    # --- maintenance ----------------------------------------------------------------
    def _scope(self, conn: sqlite3.Connection, gallery: str | None) -> tuple[str, tuple, list[int]]:
        """SQL condition on ``p.gallery_id`` for one gallery or all, its params, and the gallery ids."""
        if gallery is None:
            gids = [int(r[0]) for r in conn.execute("SELECT id FROM galleries ORDER BY id")]
            return "1", (), gids
        gid, _, _ = self._gallery_row(conn, gallery)
        return "p.gallery_id = ?", (gid,), [gid]

    def reembed(
        self,
        gallery: str | None,
        embedder: Any,
        *,
        batch_size: int = 64,
        drop_uncroppable: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Recompute every embedding in scope from its stored crop, committed in one transaction.

        The crops are embedded before the write lock is taken (other processes
        can keep enrolling and searching meanwhile); faces enrolled in between
        are embedded inside the final transaction.  Faces without a crop whose
        stamp already is ``embedder``'s are kept; other crop-less faces make it
        fail with :class:`ConflictError` unless ``drop_uncroppable`` deletes them.
        """
        gallery, model_id, dim = validate_reembed_args(gallery, embedder, batch_size)

        def uncroppable(conn: sqlite3.Connection, cond: str, params: tuple) -> tuple[dict[str, int], list[int]]:
            rows = conn.execute(
                "SELECT f.id, g.name FROM faces f JOIN people p ON p.id = f.person_id"
                f" JOIN galleries g ON g.id = p.gallery_id WHERE {cond} AND f.crop_png IS NULL"
                " AND NOT (f.embedder = ? AND f.dim = ?)",
                (*params, model_id, dim),
            ).fetchall()
            counts: dict[str, int] = {}
            for _, g in rows:
                counts[g] = counts.get(g, 0) + 1
            return counts, [int(r[0]) for r in rows]

        # 1. snapshot: what is in scope, refuse early if crop-less faces block it
        with self._read() as conn:
            cond, params, _ = self._scope(conn, gallery)
            counts, _ = uncroppable(conn, cond, params)
            ids = [
                int(r[0])
                for r in conn.execute(
                    f"SELECT f.id FROM faces f JOIN people p ON p.id = f.person_id WHERE {cond}"
                    " AND f.crop_png IS NOT NULL ORDER BY f.id",
                    params,
                )
            ]
        if counts and not drop_uncroppable:
            raise uncroppable_error(counts, model_id)

        # 2. embed outside the write lock, reading crops in small batches
        computed: dict[int, np.ndarray] = {}
        for i in range(0, len(ids), batch_size):
            chunk = ids[i : i + batch_size]
            with self._read() as conn:
                rows = conn.execute(
                    f"SELECT id, crop_png FROM faces WHERE id IN ({','.join('?' * len(chunk))})"
                    " AND crop_png IS NOT NULL",
                    chunk,
                ).fetchall()
            if rows:
                computed.update(embed_crops(rows, embedder))
            if progress is not None:
                progress(min(i + batch_size, len(ids)), len(ids))

        # 3. one write transaction: catch up on faces enrolled meanwhile, drop, update
        with self._write() as tx:
            cond, params, gids = self._scope(tx.conn, gallery)
            counts, drop_ids = uncroppable(tx.conn, cond, params)
            if counts and not drop_uncroppable:
                raise uncroppable_error(counts, model_id)
            current = [
                int(r[0])
                for r in tx.execute(
                    f"SELECT f.id FROM faces f JOIN people p ON p.id = f.person_id WHERE {cond}"
                    " AND f.crop_png IS NOT NULL ORDER BY f.id",
                    params,
                )
            ]
            late = [fid for fid in current if fid not in computed]
            for i in range(0, len(late), batch_size):
                chunk = late[i : i + batch_size]
                rows = tx.execute(
                    f"SELECT id, crop_png FROM faces WHERE id IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                computed.update(embed_crops(rows, embedder))
            if drop_ids:
                tx.conn.executemany("DELETE FROM faces WHERE id = ?", [(fid,) for fid in drop_ids])
            tx.conn.executemany(
                "UPDATE faces SET embedder = ?, dim = ?, embedding = ?, gen = ? WHERE id = ?",
                [(model_id, dim, _blob(computed[fid]), tx.generation, fid) for fid in current],
            )
            kept = tx.execute(
                f"SELECT COUNT(*) FROM faces f JOIN people p ON p.id = f.person_id WHERE {cond}"
                " AND f.crop_png IS NULL",
                params,
            ).fetchone()[0]
            for gid in gids:
                tx.touch(gid)
        return {
            "galleries": len(gids),
            "reembedded": len(current),
            "dropped": len(drop_ids),
            "kept_without_crop": int(kept),
            "embedder": model_id,
            "dim": dim,
        }

    def stats(self, gallery: str | None = None) -> dict[str, Any]:
        gallery = None if gallery is None else validate_name(gallery, "gallery name")
        with self._read() as conn:
            cond, params, gids = self._scope(conn, gallery)
            n_people = conn.execute(f"SELECT COUNT(*) FROM people p WHERE {cond}", params).fetchone()[0]
            rows = conn.execute(
                "SELECT f.embedder, f.dim, COUNT(*), SUM(f.crop_png IS NULL) FROM faces f"
                f" JOIN people p ON p.id = f.person_id WHERE {cond} GROUP BY f.embedder, f.dim",
                params,
            ).fetchall()
            generation = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]
        return {
            "path": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "generation": int(generation),
            "galleries": len(gids),
            "people": int(n_people),
            "faces": int(sum(r[2] for r in rows)),
            "faces_without_crop": int(sum(r[3] or 0 for r in rows)),
            "embedders": {f"{e} ({d}-d)": int(n) for e, d, n, _ in rows},
            "backend": "sqlite",
            "ann_threshold": None if not self._ann_on else self.ann_threshold,
        }

    def export_people(self, gallery: str) -> list[dict[str, Any]]:
        gallery = validate_name(gallery, "gallery name")
        with self._read() as conn:
            gid, _, _ = self._gallery_row(conn, gallery)
            rows = conn.execute(
                "SELECT p.id, p.name, f.id, f.source, f.source_sha256, f.created_at, f.embedder, f.dim,"
                " f.crop_png IS NOT NULL, f.det_score FROM people p LEFT JOIN faces f ON f.person_id = p.id"
                " WHERE p.gallery_id = ? ORDER BY p.name, f.id",
                (gid,),
            ).fetchall()
        return [export_row(gallery, r) for r in rows]
