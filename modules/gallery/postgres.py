"""The gallery in PostgreSQL with pgvector: several API servers against one database.

``PostgresGallery("postgresql://user:pass@host:5432/db")`` behaves like
:class:`~modules.gallery.sqlite.SQLiteGallery` (same records, same errors, same
all-or-nothing writes); what differs is where the state lives:

* Nothing is cached in the process.  Every search is one SQL query, so an
  enrollment committed by any server is seen by the next search of every other
  server at once.
* Connections come from a pool (psycopg 3, ``psycopg_pool``); a forked worker
  (gunicorn) opens its own pool and never touches the parent's connections.
* A write locks its gallery's row (``SELECT ... FOR UPDATE``), so writes to one
  gallery are serialised (the one-embedder-per-gallery check and "create the
  person if missing" cannot race) while different galleries are written in
  parallel.  Every write is one transaction.
* Embeddings are ``vector`` values (pgvector, any dimension).  Search is exact
  (every face of the gallery, grouped per person in SQL) until the gallery has
  ``ann_threshold`` faces; then a partial HNSW index of that gallery alone,
  ``faces_hnsw_g<gallery id>_d<dim>`` on ``(embedding::vector(<dim>))
  vector_cosine_ops WHERE gallery_id = <id> AND dim = <dim>``, is built
  (``CREATE INDEX CONCURRENTLY``: enrollment and search go on meanwhile; one
  server builds it, under an advisory lock) and search asks it for the
  ``top_k * overfetch`` nearest faces with ``hnsw.ef_search`` set, keeping each
  person's best face; a near-tie between the top two people (where a narrow
  beam errs) is searched again with ``ef_search`` 1000.  One index per gallery means a search never wades
  through other galleries' faces (pgvector 0.6 filters *after* the index scan).
* Counters kept by triggers (faces per person, people with faces and faces per
  embedder per gallery) make ``num_people``, ``get_gallery`` and the embedder
  check O(1) at any gallery size.

Schema migrations are forward-only SQL steps recorded in
``gallery_schema_migrations``; they run at start-up under an advisory lock, so
several servers starting together migrate once.  The ``vector`` extension is
created if missing (that needs the right to do so; otherwise a DBA runs
``CREATE EXTENSION vector``).  pgvector 0.5 or newer is required (HNSW).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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

SCHEMA_VERSION = 1
MIN_PGVECTOR = (0, 5, 0)
MAX_EF_SEARCH = 1000  # pgvector's limit for hnsw.ef_search
_MIGRATION_LOCK = 0x6661636572656301  # advisory lock key: "facerec" + 1

_TRIGGERS = r"""
CREATE FUNCTION gallery_faces_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO gallery_embedders AS ge (gallery_id, embedder, dim, faces)
        SELECT gallery_id, embedder, dim, count(*) FROM new_faces GROUP BY 1, 2, 3
        ON CONFLICT (gallery_id, embedder, dim) DO UPDATE SET faces = ge.faces + excluded.faces;
    WITH c AS (SELECT person_id, count(*) AS n FROM new_faces GROUP BY person_id),
         u AS (UPDATE people p SET num_faces = p.num_faces + c.n FROM c WHERE p.id = c.person_id
               RETURNING p.gallery_id, p.num_faces - c.n AS before)
    UPDATE galleries g SET people_with_faces = g.people_with_faces + x.k
        FROM (SELECT gallery_id, count(*) AS k FROM u WHERE before = 0 GROUP BY gallery_id) x
        WHERE g.id = x.gallery_id;
    RETURN NULL;
END $$;

CREATE FUNCTION gallery_faces_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE gallery_embedders ge SET faces = ge.faces - c.n
        FROM (SELECT gallery_id, embedder, dim, count(*) AS n FROM old_faces GROUP BY 1, 2, 3) c
        WHERE ge.gallery_id = c.gallery_id AND ge.embedder = c.embedder AND ge.dim = c.dim;
    DELETE FROM gallery_embedders
        WHERE faces <= 0 AND gallery_id IN (SELECT DISTINCT gallery_id FROM old_faces);
    WITH c AS (SELECT person_id, count(*) AS n FROM old_faces GROUP BY person_id),
         u AS (UPDATE people p SET num_faces = p.num_faces - c.n FROM c WHERE p.id = c.person_id
               RETURNING p.gallery_id, p.num_faces AS after)
    UPDATE galleries g SET people_with_faces = g.people_with_faces - x.k
        FROM (SELECT gallery_id, count(*) AS k FROM u WHERE after = 0 GROUP BY gallery_id) x
        WHERE g.id = x.gallery_id;
    RETURN NULL;
END $$;

CREATE FUNCTION gallery_faces_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- re-embedding changes (embedder, dim); faces never move between people
    UPDATE gallery_embedders ge SET faces = ge.faces - c.n
        FROM (SELECT gallery_id, embedder, dim, count(*) AS n FROM old_faces GROUP BY 1, 2, 3) c
        WHERE ge.gallery_id = c.gallery_id AND ge.embedder = c.embedder AND ge.dim = c.dim;
    INSERT INTO gallery_embedders AS ge (gallery_id, embedder, dim, faces)
        SELECT gallery_id, embedder, dim, count(*) FROM new_faces GROUP BY 1, 2, 3
        ON CONFLICT (gallery_id, embedder, dim) DO UPDATE SET faces = ge.faces + excluded.faces;
    DELETE FROM gallery_embedders
        WHERE faces <= 0 AND gallery_id IN (SELECT DISTINCT gallery_id FROM old_faces);
    RETURN NULL;
END $$;

CREATE FUNCTION gallery_people_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- the faces went first (the cascade), while their person was already gone: count the person here
    UPDATE galleries g SET people_with_faces = g.people_with_faces - x.k
        FROM (SELECT gallery_id, count(*) AS k FROM old_people WHERE num_faces > 0 GROUP BY gallery_id) x
        WHERE g.id = x.gallery_id;
    RETURN NULL;
END $$;

CREATE TRIGGER faces_added AFTER INSERT ON faces REFERENCING NEW TABLE AS new_faces
    FOR EACH STATEMENT EXECUTE FUNCTION gallery_faces_added();
CREATE TRIGGER faces_deleted AFTER DELETE ON faces REFERENCING OLD TABLE AS old_faces
    FOR EACH STATEMENT EXECUTE FUNCTION gallery_faces_deleted();
CREATE TRIGGER faces_updated AFTER UPDATE ON faces REFERENCING OLD TABLE AS old_faces NEW TABLE AS new_faces
    FOR EACH STATEMENT EXECUTE FUNCTION gallery_faces_updated();
CREATE TRIGGER people_deleted AFTER DELETE ON people REFERENCING OLD TABLE AS old_people
    FOR EACH STATEMENT EXECUTE FUNCTION gallery_people_deleted();
"""

# Forward-only: (version reached, description, statements).  Never edit a shipped entry; append.
MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "galleries, people, faces (pgvector), counters",
        [
            "CREATE SEQUENCE gallery_generation",
            """CREATE TABLE galleries (
                id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                name text NOT NULL UNIQUE,
                created_at timestamptz NOT NULL DEFAULT now(),
                generation bigint NOT NULL DEFAULT 0,
                people_with_faces bigint NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE people (
                id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                gallery_id bigint NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
                name text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                metadata jsonb,
                num_faces integer NOT NULL DEFAULT 0,
                UNIQUE (gallery_id, name),
                UNIQUE (id, gallery_id)
            )""",
            """CREATE TABLE faces (
                id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                person_id bigint NOT NULL,
                gallery_id bigint NOT NULL,
                embedder text NOT NULL,
                dim integer NOT NULL CHECK (dim > 0),
                embedding vector NOT NULL CHECK (vector_dims(embedding) = dim),
                crop_png bytea,
                source text,
                source_sha256 text,
                box text,
                landmarks text,
                det_score double precision,
                created_at timestamptz NOT NULL DEFAULT now(),
                FOREIGN KEY (person_id, gallery_id) REFERENCES people (id, gallery_id) ON DELETE CASCADE
            )""",
            "CREATE INDEX faces_person ON faces (person_id, id)",
            "CREATE INDEX faces_gallery ON faces (gallery_id, id)",
            "CREATE INDEX faces_source_sha256 ON faces (gallery_id, source_sha256) WHERE source_sha256 IS NOT NULL",
            "CREATE INDEX faces_without_crop ON faces (gallery_id) WHERE crop_png IS NULL",
            """CREATE TABLE gallery_embedders (
                gallery_id bigint NOT NULL REFERENCES galleries(id) ON DELETE CASCADE,
                embedder text NOT NULL,
                dim integer NOT NULL,
                faces bigint NOT NULL,
                PRIMARY KEY (gallery_id, embedder, dim)
            )""",
            _TRIGGERS,
        ],
    ),
]
assert MIGRATIONS[-1][0] == SCHEMA_VERSION


def vector_text(v: np.ndarray) -> str:
    """pgvector's text form; ``%.9g`` round-trips float32 exactly."""
    return "[" + ",".join(f"{x:.9g}" for x in np.asarray(v, np.float32).tolist()) + "]"


def parse_vector(text: str) -> np.ndarray:
    return np.array(text[1:-1].split(","), dtype=np.float32)


def index_name(gallery_id: int, dim: int) -> str:
    return f"faces_hnsw_g{int(gallery_id)}_d{int(dim)}"


def _ts(value: Any) -> str:
    return utc_now_iso(value) if hasattr(value, "astimezone") else str(value)


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


class _Tx:
    """A write transaction: the connection and the galleries whose generation it bumps."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.touched: set[int] = set()
        self.grew: set[int] = set()  # galleries that got faces (may need their ANN index now)

    def execute(self, sql: Any, params: Any = None) -> Any:
        return self.conn.execute(sql, params)

    def touch(self, gallery_id: int) -> None:
        self.touched.add(int(gallery_id))


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


class PostgresGallery(GalleryStore):
    """The gallery in the PostgreSQL database at ``url`` (``postgresql://user:pass@host:port/db``).

    ``busy_timeout_s`` bounds the wait for a pooled connection and for a lock held by another
    writer (then :class:`ServiceUnavailableError`, a 503).  ``ann_threshold`` faces in a gallery switch its search from exact to its own HNSW index
    (``None``: always exact); ``ann_autobuild`` says who builds that index when a write crosses
    the threshold: ``"background"`` (a thread of the writing process, default), ``"sync"`` (the
    write waits for it) or ``"off"`` (only :meth:`ensure_ann_index`, e.g. from a maintenance job).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_min: int = 1,
        pool_max: int = 10,
        connect_timeout_s: float = 10.0,
        busy_timeout_s: float = 30.0,
        ann_threshold: int | None = DEFAULT_ANN_THRESHOLD,
        ann_autobuild: str = "background",
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 64,
        ef_search: int = 100,
        overfetch: int = 4,
        refine_margin: float = 0.1,
        refine_ef: int = MAX_EF_SEARCH,
        maintenance_work_mem: str = "1GB",
        build_workers: int | None = None,
    ):
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError as exc:  # pragma: no cover - both are in requirements.txt
            raise ConfigError("PostgreSQL galleries need psycopg[binary] and psycopg-pool") from exc
        if ann_autobuild not in ("background", "sync", "off"):
            raise ConfigError(f"ann_autobuild must be 'background', 'sync' or 'off', got {ann_autobuild!r}")
        if ann_threshold is not None and (
            isinstance(ann_threshold, bool) or not isinstance(ann_threshold, int) or ann_threshold < 1
        ):
            raise ConfigError(f"ann_threshold must be a positive number of faces or None, got {ann_threshold!r}")
        self.url = url
        self.pool_min, self.pool_max = int(pool_min), int(pool_max)
        self.connect_timeout_s = float(connect_timeout_s)
        self.busy_timeout_s = float(busy_timeout_s)
        self.ann_threshold = ann_threshold
        self.ann_autobuild = ann_autobuild
        self.hnsw_m, self.hnsw_ef_construction = int(hnsw_m), int(hnsw_ef_construction)
        self.ef_search = int(ef_search)
        self.overfetch = int(overfetch)
        self.refine_margin = float(refine_margin)
        self.refine_ef = min(int(refine_ef), MAX_EF_SEARCH)
        self.maintenance_work_mem = str(maintenance_work_mem)
        self.build_workers = build_workers
        self._pid = os.getpid()
        self._pool: Any = None
        self._abandoned: list[Any] = []  # pools inherited through fork: never used nor closed
        self._pool_lock = threading.Lock()
        self._builds: dict[int, threading.Thread] = {}
        self._builds_lock = threading.Lock()
        self.pgvector_version = ""
        self._migrate()
        self._open_pool()

    def __repr__(self) -> str:
        return f"PostgresGallery({self._safe_url()!r})"

    def _safe_url(self) -> str:
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(self.url)
        except Exception:  # noqa: BLE001
            return "postgresql://?"
        host = params.get("host", "")
        return f"postgresql://{params.get('user', '')}@{host}:{params.get('port', '')}/{params.get('dbname', '')}"

    # --- connections and transactions ------------------------------------------------
    def _open_pool(self) -> None:
        self._pool = open_pool(
            self.url,
            name="gallery",
            min_size=self.pool_min,
            max_size=self.pool_max,
            configure=self._configure_connection,
            timeout_s=self.connect_timeout_s,
            unavailable=lambda exc: ConfigError(f"cannot connect to the gallery database {self._safe_url()}: {exc}"),
        )

    def _configure_connection(self, conn: Any) -> None:
        # a write waiting longer than this for a lock (another writer, a migration) becomes a 503
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(self.busy_timeout_s * 1000)}ms",))
        conn.commit()

    def _get_pool(self) -> Any:
        if os.getpid() != self._pid:  # forked: the parent's connections are not ours to use or close
            with self._pool_lock:
                if os.getpid() != self._pid:
                    self._abandoned.append(self._pool)
                    self._pool = None
                    self._pool_lock = threading.Lock()
                    self._builds = {}
                    self._pid = os.getpid()
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._open_pool()
        return self._pool

    def close(self) -> None:
        """Close this process's pool (at shutdown)."""
        if self._pool is not None and os.getpid() == self._pid:
            for t in list(self._builds.values()):
                t.join(timeout=0.1)
            self._pool.close()
            self._pool = None

    def _db_error(self, exc: Exception) -> FaceRecError:
        import psycopg
        from psycopg_pool import PoolTimeout

        if isinstance(exc, (PoolTimeout, psycopg.OperationalError)):
            return ServiceUnavailableError(f"the gallery database is not available: {exc}".strip())
        if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
            return ServiceUnavailableError("the gallery database is busy; try again")
        return FaceRecError(f"gallery database error: {exc}")

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        """A pooled connection in a transaction: committed on success, rolled back on any exception."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._get_pool().connection(timeout=self.busy_timeout_s) as conn:
                yield conn
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._db_error(exc) from exc

    @contextmanager
    def _write(self) -> Iterator[_Tx]:
        """One transaction; the galleries it touched get a new generation at commit."""
        grew: set[int] = set()
        with self._conn() as conn:
            tx = _Tx(conn)
            yield tx
            if tx.touched:
                conn.execute(
                    "UPDATE galleries SET generation = nextval('gallery_generation') WHERE id = ANY(%s::bigint[])",
                    (sorted(tx.touched),),
                )
            grew = tx.grew
        for gid in grew:
            self._after_growth(gid)

    def _migrate(self) -> None:
        import psycopg

        try:
            conn = psycopg.connect(self.url, connect_timeout=max(1, int(self.connect_timeout_s)))
        except psycopg.Error as exc:
            raise ConfigError(f"cannot connect to the gallery database {self._safe_url()}: {exc}") from exc
        try:
            with conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
                if row is None:
                    try:
                        conn.execute("SAVEPOINT ext")
                        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                        conn.execute("RELEASE SAVEPOINT ext")
                    except psycopg.Error as exc:
                        raise ConfigError(
                            f"the gallery database {self._safe_url()} lacks the pgvector extension and this user"
                            f" cannot create it ({exc.__class__.__name__}: {str(exc).strip()}); install pgvector"
                            f" >= 0.5 on the server and run CREATE EXTENSION vector as its owner"
                        ) from exc
                    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
                self.pgvector_version = str(row[0])
                if _version_tuple(self.pgvector_version) < MIN_PGVECTOR:
                    raise ConfigError(
                        f"pgvector {self.pgvector_version} is too old: the gallery needs 0.5 or newer (HNSW);"
                        f" ALTER EXTENSION vector UPDATE"
                    )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS gallery_schema_migrations (version integer PRIMARY KEY,"
                    " description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                version = conn.execute("SELECT coalesce(max(version), 0) FROM gallery_schema_migrations").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise ConfigError(
                        f"gallery database {self._safe_url()} has schema version {version}, newer than this code"
                        f" supports ({SCHEMA_VERSION}); upgrade the code"
                    )
                for target, description, statements in MIGRATIONS:
                    if target <= version:
                        continue
                    for sql in statements:
                        conn.execute(sql)
                    conn.execute(
                        "INSERT INTO gallery_schema_migrations (version, description) VALUES (%s, %s)",
                        (target, description),
                    )
        except psycopg.Error as exc:
            raise ConfigError(f"cannot migrate the gallery database {self._safe_url()}: {exc}") from exc
        finally:
            conn.close()

    @property
    def schema_version(self) -> int:
        with self._conn() as conn:
            return int(conn.execute("SELECT max(version) FROM gallery_schema_migrations").fetchone()[0])

    # --- lookups (inside a transaction) ---------------------------------------------------
    @staticmethod
    def _gallery_row(conn: Any, name: str, *, lock: bool = False) -> tuple[int, Any]:
        row = conn.execute(
            "SELECT id, created_at FROM galleries WHERE name = %s" + (" FOR UPDATE" if lock else ""), (name,)
        ).fetchone()
        if row is None:
            raise gallery_not_found(name)
        return int(row[0]), row[1]

    def _gallery_id(self, tx: _Tx, name: str, *, create: bool) -> int:
        """The gallery's id with its row locked for this transaction (created if missing and allowed)."""
        row = tx.execute("SELECT id FROM galleries WHERE name = %s FOR UPDATE", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        if not create:
            raise gallery_not_found(name)
        row = tx.execute(
            "INSERT INTO galleries (name, generation) VALUES (%s, nextval('gallery_generation'))"
            " ON CONFLICT (name) DO NOTHING RETURNING id",
            (name,),
        ).fetchone()
        if row is None:  # created by another transaction meanwhile
            row = tx.execute("SELECT id FROM galleries WHERE name = %s FOR UPDATE", (name,)).fetchone()
        return int(row[0])

    @staticmethod
    def _person_row(conn: Any, gallery_id: int, gallery: str, name: str) -> tuple:
        row = conn.execute(
            "SELECT id, name, created_at, metadata, num_faces FROM people WHERE gallery_id = %s AND name = %s",
            (gallery_id, name),
        ).fetchone()
        if row is None:
            raise person_not_found(gallery, name)
        return row

    @staticmethod
    def _gallery_embedders(conn: Any, gallery_id: int) -> dict[tuple[str, int], int]:
        rows = conn.execute(
            "SELECT embedder, dim, faces FROM gallery_embedders WHERE gallery_id = %s AND faces > 0", (gallery_id,)
        ).fetchall()
        return {(e, int(d)): int(n) for e, d, n in rows}

    @staticmethod
    def _person_info(gallery: str, row: Sequence[Any]) -> PersonInfo:
        pid, name, created_at, metadata, num_faces = row[:5]
        return PersonInfo(
            id=int(pid),
            gallery=gallery,
            name=name,
            created_at=_ts(created_at),
            num_faces=int(num_faces),
            metadata=metadata if metadata else None,
        )

    # --- galleries ------------------------------------------------------------------
    def create_gallery(self, name: str) -> GalleryInfo:
        name = validate_name(name, "gallery name")
        with self._write() as tx:
            row = tx.execute(
                "INSERT INTO galleries (name, generation) VALUES (%s, nextval('gallery_generation'))"
                " ON CONFLICT (name) DO NOTHING RETURNING id",
                (name,),
            ).fetchone()
            if row is None:
                raise ConflictError(f"gallery {name!r} already exists", details={"gallery": name})
        return self.get_gallery(name)

    def ensure_gallery(self, name: str) -> GalleryInfo:
        name = validate_name(name, "gallery name")
        with self._write() as tx:
            tx.execute(
                "INSERT INTO galleries (name, generation) VALUES (%s, nextval('gallery_generation'))"
                " ON CONFLICT (name) DO NOTHING",
                (name,),
            )
        return self.get_gallery(name)

    def _gallery_infos(self, conn: Any, name: str | None = None) -> list[GalleryInfo]:
        where, params = ("WHERE g.name = %s", (name,)) if name is not None else ("", ())
        rows = conn.execute(
            "SELECT g.id, g.name, g.created_at, (SELECT count(*) FROM people p WHERE p.gallery_id = g.id)"
            f' FROM galleries g {where} ORDER BY g.name COLLATE "C"',
            params,
        ).fetchall()
        if not rows:
            return []
        counts: dict[int, dict[str, int]] = {}
        for gid, e, n in conn.execute(
            "SELECT gallery_id, embedder, sum(faces) FROM gallery_embedders"
            " WHERE gallery_id = ANY(%s::bigint[]) AND faces > 0 GROUP BY 1, 2",
            ([r[0] for r in rows],),
        ):
            counts.setdefault(int(gid), {})[e] = int(n)
        return [
            GalleryInfo(
                id=int(gid),
                name=gname,
                created_at=_ts(created_at),
                num_people=int(n_people),
                num_faces=sum(counts.get(int(gid), {}).values()),
                embedders=counts.get(int(gid), {}),
            )
            for gid, gname, created_at, n_people in rows
        ]

    def get_gallery(self, name: str) -> GalleryInfo:
        name = validate_name(name, "gallery name")
        with self._conn() as conn:
            infos = self._gallery_infos(conn, name)
        if not infos:
            raise gallery_not_found(name)
        return infos[0]

    def list_galleries(self) -> list[GalleryInfo]:
        with self._conn() as conn:
            return self._gallery_infos(conn)

    def delete_gallery(self, name: str) -> dict[str, int]:
        name = validate_name(name, "gallery name")
        with self._write() as tx:
            gid, _ = self._gallery_row(tx.conn, name, lock=True)
            n_people = tx.execute("SELECT count(*) FROM people WHERE gallery_id = %s", (gid,)).fetchone()[0]
            n_faces = sum(self._gallery_embedders(tx.conn, gid).values())
            tx.execute("DELETE FROM galleries WHERE id = %s", (gid,))
        self._drop_ann_indexes(gid)
        return {"people": int(n_people), "faces": int(n_faces)}

    # --- people ---------------------------------------------------------------------
    def add_person(
        self, gallery: str, name: str, metadata: Mapping[str, Any] | None = None, *, create_missing: bool = True
    ) -> PersonInfo:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        meta_json = validate_metadata(metadata)
        with self._write() as tx:
            gid = self._gallery_id(tx, gallery, create=create_missing)
            row = tx.execute(
                "INSERT INTO people (gallery_id, name, metadata) VALUES (%s, %s, %s::jsonb)"
                " ON CONFLICT (gallery_id, name) DO NOTHING RETURNING id",
                (gid, name, meta_json),
            ).fetchone()
            if row is None:
                raise person_exists(gallery, name)
            tx.touch(gid)
        return self.get_person(gallery, name)

    def get_person(self, gallery: str, name: str) -> PersonInfo:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        with self._conn() as conn:
            gid, _ = self._gallery_row(conn, gallery)
            row = self._person_row(conn, gid, gallery, name)
        return self._person_info(gallery, row)

    def list_people(self, gallery: str, offset: int = 0, limit: int | None = 100) -> tuple[list[PersonInfo], int]:
        gallery = validate_name(gallery, "gallery name")
        offset, limit = validate_page(offset, limit)
        with self._conn() as conn:
            gid, _ = self._gallery_row(conn, gallery)
            total = conn.execute("SELECT count(*) FROM people WHERE gallery_id = %s", (gid,)).fetchone()[0]
            rows = conn.execute(
                "SELECT id, name, created_at, metadata, num_faces FROM people WHERE gallery_id = %s"
                ' ORDER BY name COLLATE "C" LIMIT %s OFFSET %s',
                (gid, limit, offset),
            ).fetchall()
        return [self._person_info(gallery, r) for r in rows], int(total)

    def rename_person(self, gallery: str, name: str, new_name: str) -> PersonInfo:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        new_name = validate_name(new_name, "new person name")
        with self._write() as tx:
            gid = self._gallery_id(tx, gallery, create=False)
            row = self._person_row(tx.conn, gid, gallery, name)
            if new_name != name:
                taken = tx.execute(
                    "SELECT 1 FROM people WHERE gallery_id = %s AND name = %s", (gid, new_name)
                ).fetchone()
                if taken:
                    raise person_exists(gallery, new_name)
                tx.execute("UPDATE people SET name = %s WHERE id = %s", (new_name, row[0]))
                tx.touch(gid)
        return self.get_person(gallery, new_name)

    def set_person_metadata(self, gallery: str, name: str, metadata: Mapping[str, Any] | None) -> PersonInfo:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        meta_json = validate_metadata(metadata)
        with self._write() as tx:
            gid = self._gallery_id(tx, gallery, create=False)
            row = self._person_row(tx.conn, gid, gallery, name)
            tx.execute("UPDATE people SET metadata = %s::jsonb WHERE id = %s", (meta_json, row[0]))
        return self.get_person(gallery, name)

    def delete_person(self, gallery: str, name: str) -> int:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        with self._write() as tx:
            gid = self._gallery_id(tx, gallery, create=False)
            row = self._person_row(tx.conn, gid, gallery, name)
            tx.execute("DELETE FROM people WHERE id = %s", (row[0],))
            tx.touch(gid)
        return int(row[4])

    # --- faces --------------------------------------------------------------------------
    def add_faces_many(
        self, gallery: str, faces_by_person: Mapping[str, Sequence[NewFace]], *, create_missing: bool = True
    ) -> dict[str, list[int]]:
        gallery = validate_name(gallery, "gallery name")
        items, embedder, dim = validate_enrollment(faces_by_person)
        names = list(items)
        out: dict[str, list[int]] = {}
        with self._write() as tx:
            gid = self._gallery_id(tx, gallery, create=create_missing)
            stored = self._gallery_embedders(tx.conn, gid)
            if stored and set(stored) != {(embedder, dim)}:
                raise mismatch_error(gallery, stored, embedder, dim)
            pids = dict(
                tx.execute(
                    "SELECT name, id FROM people WHERE gallery_id = %s AND name = ANY(%s::text[])", (gid, names)
                ).fetchall()
            )
            missing = [n for n in names if n not in pids]
            if missing:
                if not create_missing:
                    raise person_not_found(gallery, missing[0])
                pids.update(
                    tx.execute(
                        "INSERT INTO people (gallery_id, name) SELECT %s, unnest(%s::text[]) RETURNING name, id",
                        (gid, missing),
                    ).fetchall()
                )
            n = sum(len(f) for f in items.values())
            ids = [
                int(r[0])
                for r in tx.execute(
                    "SELECT nextval(pg_get_serial_sequence('faces', 'id')) FROM generate_series(1, %s)", (n,)
                )
            ]
            it = iter(ids)
            with tx.conn.cursor() as cur, cur.copy(
                "COPY faces (id, person_id, gallery_id, embedder, dim, embedding, crop_png, source,"
                " source_sha256, box, landmarks, det_score) FROM STDIN"
            ) as copy:
                for pname, faces in items.items():
                    pid = pids[pname]
                    got = out[pname] = []
                    for f in faces:
                        fid = next(it)
                        got.append(fid)
                        copy.write_row(
                            (fid, pid, gid, f.embedder, f.dim, vector_text(f.embedding), f.crop_png, f.source,
                             f.source_sha256, f.box_json, f.landmarks_json, f.det_score)
                        )
            tx.touch(gid)
            tx.grew.add(gid)
        return out

    _FACE_COLUMNS = (
        "f.id, f.person_id, p.name, g.name, f.embedder, f.dim, f.created_at, f.crop_png IS NOT NULL,"
        " f.source, f.source_sha256, f.box, f.landmarks, f.det_score"
    )
    _FACE_FROM = "FROM faces f JOIN people p ON p.id = f.person_id JOIN galleries g ON g.id = f.gallery_id"

    @staticmethod
    def _face_info(row: Sequence[Any], embedding: str | None) -> FaceInfo:
        import json

        return FaceInfo(
            id=int(row[0]),
            person_id=int(row[1]),
            person=row[2],
            gallery=row[3],
            embedder=row[4],
            dim=int(row[5]),
            created_at=_ts(row[6]),
            has_crop=bool(row[7]),
            source=row[8],
            source_sha256=row[9],
            box=json.loads(row[10]) if row[10] else None,
            landmarks=json.loads(row[11]) if row[11] else None,
            det_score=row[12],
            embedding=parse_vector(embedding) if embedding is not None else None,
        )

    def list_faces(self, gallery: str, person: str, *, with_embeddings: bool = False) -> list[FaceInfo]:
        gallery = validate_name(gallery, "gallery name")
        person = validate_name(person, "person name")
        emb = ", f.embedding::text" if with_embeddings else ", NULL"
        with self._conn() as conn:
            gid, _ = self._gallery_row(conn, gallery)
            prow = self._person_row(conn, gid, gallery, person)
            rows = conn.execute(
                f"SELECT {self._FACE_COLUMNS}{emb} {self._FACE_FROM} WHERE f.person_id = %s ORDER BY f.id",
                (prow[0],),
            ).fetchall()
        return [self._face_info(r, r[13]) for r in rows]

    def _face_row(self, conn: Any, face_id: Any, gallery: str | None, columns: str, lock: bool = False) -> tuple:
        fid = parse_face_id(face_id)
        if gallery is not None:
            gallery = validate_name(gallery, "gallery name")
            self._gallery_row(conn, gallery)
        if fid > 2**63 - 1:
            raise face_not_found(fid, gallery)
        row = conn.execute(
            f"SELECT {columns} {self._FACE_FROM} WHERE f.id = %s AND (%s::text IS NULL OR g.name = %s)"
            + (" FOR UPDATE OF g" if lock else ""),
            (fid, gallery, gallery),
        ).fetchone()
        if row is None:
            raise face_not_found(fid, gallery)
        return row

    def get_face(self, face_id: int, *, gallery: str | None = None, with_embedding: bool = False) -> FaceInfo:
        emb = ", f.embedding::text" if with_embedding else ", NULL"
        with self._conn() as conn:
            row = self._face_row(conn, face_id, gallery, self._FACE_COLUMNS + emb)
        return self._face_info(row, row[13])

    def get_face_crop(self, face_id: int, *, gallery: str | None = None) -> bytes:
        with self._conn() as conn:
            row = self._face_row(conn, face_id, gallery, "f.id, f.crop_png")
        if row[1] is None:
            raise no_crop_error(int(row[0]))
        return bytes(row[1])

    def delete_face(self, face_id: int, *, gallery: str | None = None) -> None:
        with self._write() as tx:
            row = self._face_row(tx.conn, face_id, gallery, "f.id, f.gallery_id", lock=True)
            tx.execute("DELETE FROM faces WHERE id = %s", (row[0],))
            tx.touch(row[1])

    def find_faces_by_source_sha256(self, gallery: str, sha256: str) -> list[int]:
        gallery = validate_name(gallery, "gallery name")
        if not isinstance(sha256, str):
            raise InvalidRequestError("sha256 must be a hex string")
        with self._conn() as conn:
            gid, _ = self._gallery_row(conn, gallery)
            rows = conn.execute(
                "SELECT id FROM faces WHERE gallery_id = %s AND source_sha256 = %s ORDER BY id", (gid, sha256.lower())
            ).fetchall()
        return [int(r[0]) for r in rows]

    # --- search ---------------------------------------------------------------------------
    def _search_state(self, conn: Any, gallery: str, dim: int) -> tuple[int, dict[tuple[str, int], int], bool]:
        """The gallery's id, its faces per (embedder, dim), and whether its HNSW index for ``dim`` is usable."""
        row = conn.execute(
            "SELECT g.id,"
            " (SELECT coalesce(json_agg(json_build_array(e.embedder, e.dim, e.faces)), '[]'::json)"
            "    FROM gallery_embedders e WHERE e.gallery_id = g.id AND e.faces > 0),"
            " (SELECT i.indisvalid AND i.indisready FROM pg_index i"
            "    WHERE i.indexrelid = to_regclass(format('faces_hnsw_g%%s_d%%s', g.id, %s::int)))"
            " FROM galleries g WHERE g.name = %s",
            (dim, gallery),
        ).fetchone()
        if row is None:
            raise gallery_not_found(gallery)
        groups = {(e, int(d)): int(n) for e, d, n in row[1]}
        return int(row[0]), groups, bool(row[2])

    def search(self, gallery: str, queries: Any, embedder_id: str, top_k: int = 5) -> list[list[Candidate]]:
        gallery = validate_name(gallery, "gallery name")
        embedder_id = validate_embedder_id(embedder_id)
        top_k = validate_top_k(top_k)
        q = as_queries(queries)
        dim = int(q.shape[1])
        with self._conn() as conn:
            gid, groups, indexed = self._search_state(conn, gallery, dim)
            if groups and set(groups) != {(embedder_id, dim)}:
                raise mismatch_error(gallery, groups, embedder_id, dim)
            if not groups or q.shape[0] == 0:
                return [[] for _ in range(q.shape[0])]
            n_faces = groups[(embedder_id, dim)]
            use_index = indexed and self._ann_worth_it(n_faces)
            refine = self.refine_margin > 0 and self.refine_ef > self.ef_search
            k2 = max(top_k, 2) if refine else top_k
            out = []
            for v in q:
                text = vector_text(v)
                if use_index:
                    rows = self._ann_query(conn, gid, dim, text, k2, n_faces, self.ef_search)
                    if refine and len(rows) >= 2 and rows[1][3] - rows[0][3] < self.refine_margin:
                        # a near-tie: where the narrow beam errs; search again with the wide one
                        rows = self._ann_query(conn, gid, dim, text, k2, n_faces, self.refine_ef)
                    rows = rows[:top_k]
                else:
                    rows = self._exact_query(conn, gid, dim, text, top_k)
                out.append(
                    [
                        Candidate(
                            person=name,
                            similarity=float(np.clip(1.0 - d, -1.0, 1.0)),
                            person_id=int(pid),
                            face_id=int(fid),
                        )
                        for pid, name, fid, d in rows
                    ]
                )
        return out

    def _ann_worth_it(self, n_faces: int) -> bool:
        """Search through the HNSW index (when it exists) only while the gallery is large; a gallery
        that shrank well below the threshold is searched exactly again (same hysteresis as SQLite)."""
        return self.ann_threshold is not None and n_faces >= self.ann_threshold // 2

    @staticmethod
    def _exact_query(conn: Any, gid: int, dim: int, qtext: str, top_k: int) -> list[tuple]:
        """Every face of the gallery: each person's nearest face, then the best ``top_k`` people."""
        return conn.execute(
            "SELECT b.person_id, p.name, b.id, b.d FROM ("
            "  SELECT DISTINCT ON (f.person_id) f.person_id, f.id, f.embedding <=> %s::vector AS d"
            f"  FROM faces f WHERE f.gallery_id = {int(gid)} AND f.dim = {int(dim)}"
            "  ORDER BY f.person_id, d, f.id) b"
            " JOIN people p ON p.id = b.person_id ORDER BY b.d, b.person_id LIMIT %s",
            (qtext, top_k),
        ).fetchall()

    def _ann_query(
        self, conn: Any, gid: int, dim: int, qtext: str, top_k: int, n_faces: int, ef: int
    ) -> list[tuple]:
        """The ``fetch`` nearest faces from the gallery's HNSW index, best face per person, top ``top_k``.

        The gallery id and dim are literals so the planner can match the partial index; if the nearest
        faces belong to fewer than ``top_k`` people, fetch more (exact past pgvector's ef_search limit).
        """
        fetch = max(top_k * self.overfetch, 16)
        vec = f"vector({int(dim)})"
        while True:
            if fetch > MAX_EF_SEARCH:
                return self._exact_query(conn, gid, dim, qtext, top_k)
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(ef, fetch)),))
            rows = conn.execute(
                "WITH nn AS ("
                f"  SELECT f.id, f.person_id, (f.embedding::{vec} <=> %s::{vec}) AS d FROM faces f"
                f"  WHERE f.gallery_id = {int(gid)} AND f.dim = {int(dim)}"
                f"  ORDER BY f.embedding::{vec} <=> %s::{vec} LIMIT {int(fetch)}"
                "), best AS (SELECT DISTINCT ON (person_id) person_id, id, d FROM nn ORDER BY person_id, d, id)"
                " SELECT b.person_id, p.name, b.id, b.d FROM best b JOIN people p ON p.id = b.person_id"
                " ORDER BY b.d, b.person_id LIMIT %s",
                (qtext, qtext, top_k),
            ).fetchall()
            if len(rows) >= top_k or fetch >= n_faces:
                return rows
            fetch *= 4

    def explain_search(self, gallery: str, query: Any, top_k: int = 1) -> str:
        """The query plan of one search (to check that the HNSW index is used)."""
        q = as_queries(query)[0]
        dim = int(q.shape[0])
        vec = f"vector({dim})"
        with self._conn() as conn:
            gid, _, _ = self._search_state(conn, validate_name(gallery, "gallery name"), dim)
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(self.ef_search),))
            text = vector_text(q)
            rows = conn.execute(
                f"EXPLAIN SELECT f.id FROM faces f WHERE f.gallery_id = {gid} AND f.dim = {dim}"
                f" ORDER BY f.embedding::{vec} <=> %s::{vec} LIMIT {max(top_k * self.overfetch, 16)}",
                (text,),
            ).fetchall()
        return "\n".join(r[0] for r in rows)

    def num_people(self, gallery: str) -> int:
        gallery = validate_name(gallery, "gallery name")
        with self._conn() as conn:
            row = conn.execute("SELECT people_with_faces FROM galleries WHERE name = %s", (gallery,)).fetchone()
        if row is None:
            raise gallery_not_found(gallery)
        return int(row[0])

    def embeddings_by_person(self, gallery: str, embedder_id: str) -> dict[str, np.ndarray]:
        gallery = validate_name(gallery, "gallery name")
        embedder_id = validate_embedder_id(embedder_id)
        with self._conn() as conn:
            gid, _ = self._gallery_row(conn, gallery)
            groups = self._gallery_embedders(conn, gid)
            if groups and (len(groups) != 1 or next(iter(groups))[0] != embedder_id):
                raise mismatch_error(gallery, groups, embedder_id, None)
            rows = conn.execute(
                "SELECT p.name, f.embedding::text FROM faces f JOIN people p ON p.id = f.person_id"
                " WHERE f.gallery_id = %s ORDER BY f.person_id, f.id",
                (gid,),
            ).fetchall()
        by: dict[str, list[np.ndarray]] = {}
        for name, text in rows:
            by.setdefault(name, []).append(parse_vector(text))
        return {name: np.stack(v) for name, v in by.items()}

    # --- the per-gallery HNSW index ---------------------------------------------------------
    def _after_growth(self, gid: int) -> None:
        """After faces were added to gallery ``gid``: build its HNSW index if it just got large."""
        if self.ann_threshold is None or self.ann_autobuild == "off":
            return
        try:
            with self._conn() as conn:
                row = conn.execute(
                    "SELECT g.name, e.dim, e.faces,"
                    " (SELECT true FROM pg_index i WHERE i.indexrelid ="
                    "    to_regclass(format('faces_hnsw_g%%s_d%%s', g.id, e.dim)) AND i.indisvalid)"
                    " FROM galleries g JOIN gallery_embedders e ON e.gallery_id = g.id WHERE g.id = %s",
                    (gid,),
                ).fetchall()
        except FaceRecError:
            return
        if len(row) != 1:
            return
        name, _dim, n, has_index = row[0]
        if has_index or int(n) < self.ann_threshold:
            return
        if self.ann_autobuild == "sync":
            self.ensure_ann_index(name)
            return
        with self._builds_lock:
            running = self._builds.get(gid)
            if running is not None and running.is_alive():
                return

            def build() -> None:
                try:
                    self.ensure_ann_index(name)
                except Exception as exc:  # noqa: BLE001 - a failed background build is retried by the next write
                    log.warning("building the HNSW index of gallery %r failed: %s", name, exc)

            t = threading.Thread(target=build, name=f"hnsw-build-g{gid}", daemon=True)
            self._builds[gid] = t
            t.start()

    def wait_for_index_builds(self, timeout: float | None = None) -> None:
        """Wait for this process's background index builds (tests, benchmarks, shutdown)."""
        for t in list(self._builds.values()):
            t.join(timeout)

    def ensure_ann_index(self, gallery: str, *, concurrently: bool = True) -> dict[str, Any]:
        """Build the gallery's HNSW index if it has none (one builder at a time across servers).

        ``CREATE INDEX CONCURRENTLY`` lets enrollment and (exact) search go on meanwhile; an index
        left invalid by an interrupted build is dropped and rebuilt.  Returns what was done.
        """
        import psycopg

        gallery = validate_name(gallery, "gallery name")
        with self._conn() as conn:
            gid, _ = self._gallery_row(conn, gallery)
            groups = self._gallery_embedders(conn, gid)
        if len(groups) != 1:
            return {"gallery": gallery, "built": False, "reason": "no faces" if not groups else "mixed embedders"}
        (_, dim), = groups
        name = index_name(gid, dim)
        lock_key = zlib.crc32(f"facerec-hnsw-{gid}".encode()) | (1 << 32)
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s)))
        except psycopg.Error as exc:
            raise self._db_error(exc) from exc
        try:
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_key,)).fetchone()[0]:
                return {"gallery": gallery, "built": False, "reason": "being built by another process"}
            try:
                row = conn.execute(
                    "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (name,)
                ).fetchone()
                if row is not None and row[0]:
                    return {"gallery": gallery, "built": False, "reason": "exists", "index": name}
                if row is not None:  # left invalid by an interrupted concurrent build
                    conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
                conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (self.maintenance_work_mem,))
                if self.build_workers is not None:
                    conn.execute(
                        "SELECT set_config('max_parallel_maintenance_workers', %s, false)", (str(self.build_workers),)
                    )
                t0 = time.perf_counter()
                conn.execute(
                    f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS {name} ON faces"
                    f" USING hnsw ((embedding::vector({dim})) vector_cosine_ops)"
                    f" WITH (m = {self.hnsw_m}, ef_construction = {self.hnsw_ef_construction})"
                    f" WHERE gallery_id = {gid} AND dim = {dim}"
                )
                seconds = time.perf_counter() - t0
                conn.execute("ANALYZE faces")  # so the planner knows the gallery is large and uses the index
                log.info("built HNSW index %s for gallery %r in %.1fs", name, gallery, seconds)
                return {"gallery": gallery, "built": True, "index": name, "seconds": seconds}
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key,))
        except psycopg.Error as exc:
            raise self._db_error(exc) from exc
        finally:
            conn.close()

    def _drop_ann_indexes(self, gid: int, keep: str | None = None) -> None:
        """Drop gallery ``gid``'s HNSW indexes (but ``keep``), concurrently; best effort."""
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                names = [
                    r[0]
                    for r in conn.execute(
                        "SELECT c.relname FROM pg_class c WHERE c.relkind = 'i' AND c.relname LIKE %s"
                        " AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'faces'::regclass)",
                        (f"faces\\_hnsw\\_g{int(gid)}\\_d%",),
                    )
                ]
                for name in names:
                    if name != keep:
                        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        except psycopg.Error as exc:  # pragma: no cover
            log.warning("could not drop the HNSW indexes of gallery %d: %s", gid, exc)

    def search_index_info(self, gallery: str) -> dict[str, Any]:
        gallery = validate_name(gallery, "gallery name")
        with self._conn() as conn:
            gid, _ = self._gallery_row(conn, gallery)
            groups = self._gallery_embedders(conn, gid)
            info: dict[str, Any] = {"kind": "exact", "faces": sum(groups.values())}
            if len(groups) == 1:
                (_, dim), = groups
                row = conn.execute(
                    "SELECT i.indisvalid, pg_relation_size(i.indexrelid) FROM pg_index i"
                    " WHERE i.indexrelid = to_regclass(%s)",
                    (index_name(gid, dim),),
                ).fetchone()
                if row is not None and row[0] and self._ann_worth_it(info["faces"]):
                    info.update(kind="hnsw", index=index_name(gid, dim), index_bytes=int(row[1]),
                                m=self.hnsw_m, ef_search=self.ef_search)
        return info

    # --- maintenance ----------------------------------------------------------------------
    def _scope(self, conn: Any, gallery: str | None, lock: bool = False) -> tuple[list[int], dict[int, str]]:
        """The gallery ids in scope (one or all) and their names; rows locked in id order if asked."""
        suffix = " ORDER BY id" + (" FOR UPDATE" if lock else "")
        if gallery is None:
            rows = conn.execute("SELECT id, name FROM galleries" + suffix).fetchall()
        else:
            rows = conn.execute("SELECT id, name FROM galleries WHERE name = %s" + suffix, (gallery,)).fetchall()
            if not rows:
                raise gallery_not_found(gallery)
        return [int(r[0]) for r in rows], {int(r[0]): r[1] for r in rows}

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

        Same contract as :meth:`SQLiteGallery.reembed`: crops are embedded before the galleries are
        locked; faces enrolled meanwhile are embedded inside the final transaction.
        """
        gallery, model_id, dim = validate_reembed_args(gallery, embedder, batch_size)

        def uncroppable(conn: Any, gids: list[int], names: dict[int, str]) -> tuple[dict[str, int], list[int]]:
            rows = conn.execute(
                "SELECT id, gallery_id FROM faces WHERE gallery_id = ANY(%s::bigint[]) AND crop_png IS NULL"
                " AND NOT (embedder = %s AND dim = %s)",
                (gids, model_id, dim),
            ).fetchall()
            counts: dict[str, int] = {}
            for _, g in rows:
                counts[names[int(g)]] = counts.get(names[int(g)], 0) + 1
            return counts, [int(r[0]) for r in rows]

        def croppable_ids(conn: Any, gids: list[int]) -> list[int]:
            return [
                int(r[0])
                for r in conn.execute(
                    "SELECT id FROM faces WHERE gallery_id = ANY(%s::bigint[]) AND crop_png IS NOT NULL ORDER BY id",
                    (gids,),
                )
            ]

        def crops(conn: Any, chunk: list[int]) -> list[tuple[int, bytes]]:
            return [
                (int(r[0]), bytes(r[1]))
                for r in conn.execute(
                    "SELECT id, crop_png FROM faces WHERE id = ANY(%s::bigint[]) AND crop_png IS NOT NULL ORDER BY id",
                    (chunk,),
                )
            ]

        # 1. snapshot: what is in scope, refuse early if crop-less faces block it
        with self._conn() as conn:
            gids, names = self._scope(conn, gallery)
            counts, _ = uncroppable(conn, gids, names)
            ids = croppable_ids(conn, gids)
        if counts and not drop_uncroppable:
            raise uncroppable_error(counts, model_id)

        # 2. embed outside the locks, reading crops in small batches
        computed: dict[int, np.ndarray] = {}
        for i in range(0, len(ids), batch_size):
            chunk = ids[i : i + batch_size]
            with self._conn() as conn:
                rows = crops(conn, chunk)
            if rows:
                computed.update(embed_crops(rows, embedder))
            if progress is not None:
                progress(min(i + batch_size, len(ids)), len(ids))

        # 3. one write transaction with the galleries locked: catch up, drop, update
        with self._write() as tx:
            gids, names = self._scope(tx.conn, gallery, lock=True)
            counts, drop_ids = uncroppable(tx.conn, gids, names)
            if counts and not drop_uncroppable:
                raise uncroppable_error(counts, model_id)
            current = croppable_ids(tx.conn, gids)
            late = [fid for fid in current if fid not in computed]
            for i in range(0, len(late), batch_size):
                rows = crops(tx.conn, late[i : i + batch_size])
                computed.update(embed_crops(rows, embedder))
            if drop_ids:
                tx.execute("DELETE FROM faces WHERE id = ANY(%s::bigint[])", (drop_ids,))
            for i in range(0, len(current), 5000):
                chunk = current[i : i + 5000]
                tx.execute(
                    "UPDATE faces f SET embedder = %s, dim = %s, embedding = u.e::vector"
                    " FROM unnest(%s::bigint[], %s::text[]) AS u(id, e) WHERE f.id = u.id",
                    (model_id, dim, chunk, [vector_text(computed[fid]) for fid in chunk]),
                )
            kept = tx.execute(
                "SELECT count(*) FROM faces WHERE gallery_id = ANY(%s::bigint[]) AND crop_png IS NULL", (gids,)
            ).fetchone()[0]
            for gid in gids:
                tx.touch(gid)
                tx.grew.add(gid)
        for gid in gids:  # indexes of the old dimension index nothing now
            self._drop_ann_indexes(gid, keep=index_name(gid, dim))
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
        with self._conn() as conn:
            gids, _ = self._scope(conn, gallery)
            n_people = conn.execute(
                "SELECT count(*) FROM people WHERE gallery_id = ANY(%s::bigint[])", (gids,)
            ).fetchone()[0]
            rows = conn.execute(
                "SELECT embedder, dim, sum(faces) FROM gallery_embedders WHERE gallery_id = ANY(%s::bigint[])"
                " AND faces > 0 GROUP BY 1, 2",
                (gids,),
            ).fetchall()
            no_crop = conn.execute(
                "SELECT count(*) FROM faces WHERE gallery_id = ANY(%s::bigint[]) AND crop_png IS NULL", (gids,)
            ).fetchone()[0]
            generation = conn.execute(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM gallery_generation"
            ).fetchone()[0]
        return {
            "path": self._safe_url(),
            "schema_version": SCHEMA_VERSION,
            "generation": int(generation),
            "galleries": len(gids),
            "people": int(n_people),
            "faces": int(sum(r[2] for r in rows)),
            "faces_without_crop": int(no_crop),
            "embedders": {f"{e} ({d}-d)": int(n) for e, d, n in rows},
            "backend": "postgresql",
            "pgvector": self.pgvector_version,
            "ann_threshold": self.ann_threshold,
        }

    def export_people(self, gallery: str) -> list[dict[str, Any]]:
        gallery = validate_name(gallery, "gallery name")
        with self._conn() as conn:
            gid, _ = self._gallery_row(conn, gallery)
            rows = conn.execute(
                "SELECT p.id, p.name, f.id, f.source, f.source_sha256, f.created_at, f.embedder, f.dim,"
                " f.crop_png IS NOT NULL, f.det_score FROM people p LEFT JOIN faces f ON f.person_id = p.id"
                ' WHERE p.gallery_id = %s ORDER BY p.name COLLATE "C", f.id',
                (gid,),
            ).fetchall()
        return [export_row(gallery, (*r[:5], None if r[5] is None else _ts(r[5]), *r[6:])) for r in rows]
