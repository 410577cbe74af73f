"""Search of the PostgreSQL gallery with pgvector: several API servers against one database.

Nothing is cached in the process: every search is one SQL query.  From ``ann_threshold`` faces a gallery is
searched through its own partial HNSW index (``faces_hnsw_g<id>_d<dim>``, built ``CONCURRENTLY`` by one
server), because pgvector 0.6 filters *after* the index scan.  pgvector 0.5 or newer is required.
"""
from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import Connection, exc as sa_exc, text

from ..errors import ConfigError, FaceRecError
from ..face import Candidate
from .engine import Conn, Prepared, db_error, safe_url
from .gallery import GalleryStore, Tx
from .records import as_queries, gallery_not_found, mismatch_error, validate_name

log = logging.getLogger(__name__)

MIN_PGVECTOR = (0, 5, 0)
MAX_EF_SEARCH = 1000  # pgvector's limit for hnsw.ef_search
_EXTENSION_LOCK = 0x6661636572656301  # advisory lock key: "facerec" + 1


_PEOPLE_AMONG = Prepared(text("SELECT name, id, num_faces FROM people"
                              " WHERE gallery_id = :gid AND name = ANY(CAST(:names AS text[]))"))
_INSERT_PEOPLE = Prepared(text("INSERT INTO people (gallery_id, name, num_faces, created_at)"
                               " SELECT :gid, name, n, :now FROM unnest(CAST(:names AS text[]), CAST(:counts AS int[]))"
                               " AS t(name, n) RETURNING name, id"))
_FACE_IDS = Prepared(text("SELECT nextval(pg_get_serial_sequence('faces', 'id')) FROM generate_series(1, :n)"))


def vector_text(v: np.ndarray) -> str:
    """pgvector's text form; ``%.9g`` round-trips float32 exactly."""
    return "[" + ",".join(f"{x:.9g}" for x in np.asarray(v, np.float32).tolist()) + "]"


def index_name(gallery_id: int, dim: int) -> str:
    return f"faces_hnsw_g{int(gallery_id)}_d{int(dim)}"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in version.split("."))


class PostgresGallery(GalleryStore):
    """The gallery in the PostgreSQL database at ``url``.  ``ann_autobuild``: who builds a gallery's HNSW index
    when a write crosses ``ann_threshold``: ``"background"`` (a thread of the writer), ``"sync"`` (the write
    waits) or ``"off"`` (only :meth:`ensure_ann_index`, e.g. from a maintenance job)."""

    backend = "postgresql"

    def __init__(self, url: str, *, ann_autobuild: str = "background", hnsw_m: int = 16,
                 hnsw_ef_construction: int = 64, ef_search: int = 100, overfetch: int = 4, refine_margin: float = 0.1,
                 refine_ef: int = MAX_EF_SEARCH, maintenance_work_mem: str = "1GB", build_workers: int | None = None,
                 **options: Any):
        if ann_autobuild not in ("background", "sync", "off"):
            raise ConfigError(f"ann_autobuild must be 'background', 'sync' or 'off', got {ann_autobuild!r}")
        self.url = str(url).strip()
        self.ann_autobuild = ann_autobuild
        self.hnsw_m, self.hnsw_ef_construction = int(hnsw_m), int(hnsw_ef_construction)
        self.ef_search, self.overfetch = int(ef_search), int(overfetch)
        self.refine_margin, self.refine_ef = float(refine_margin), min(int(refine_ef), MAX_EF_SEARCH)
        self.maintenance_work_mem = str(maintenance_work_mem)
        self.build_workers = build_workers
        self.pgvector_version = ""
        self._builds: dict[int, threading.Thread] = {}
        self._builds_lock = threading.Lock()
        super().__init__(self.url, **options)

    def __repr__(self) -> str:
        return f"PostgresGallery({self._location()!r})"

    def _location(self) -> str:
        return safe_url(self.engine.url.set(drivername="postgresql"))

    # --- the store's hooks ---------------------------------------------------------------------------
    def _prepare(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _EXTENSION_LOCK})
            installed = text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            version = conn.execute(installed).scalar()
            if version is None:
                try:
                    with conn.begin_nested():
                        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
                except sa_exc.DBAPIError as exc:
                    raise ConfigError(
                        f"the gallery database {self} lacks the pgvector extension and this user cannot create it"
                        f" ({type(exc.orig).__name__}: {str(exc.orig).strip()}); install pgvector >= 0.5 on the"
                        " server and run CREATE EXTENSION vector as its owner"
                    ) from exc
                version = conn.execute(installed).scalar()
        self.pgvector_version = str(version)
        if _version_tuple(self.pgvector_version) < MIN_PGVECTOR:
            raise ConfigError(f"pgvector {version} is too old: the gallery needs 0.5 or newer (HNSW);"
                              " ALTER EXTENSION vector UPDATE")
        super()._prepare()

    NEXT_GENERATION_SQL = "SELECT nextval('gallery_generation')"
    GENERATION_SQL = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM gallery_generation"
    LEGACY_TABLE, LEGACY_SCHEMA = "gallery_schema_migrations", 1
    LEGACY_VERSION_SQL = "SELECT max(version) FROM gallery_schema_migrations"

    def _after_commit(self, tx: Tx) -> None:
        for gid in tx.grew:
            self._after_growth(gid)

    def _gallery_deleted(self, gid: int) -> None:
        self._drop_ann_indexes(gid)

    def _reembedded(self, gids: list[int], dim: int) -> None:
        for gid in gids:  # indexes of the old dimension index nothing now
            self._drop_ann_indexes(gid, keep=index_name(gid, dim))

    def _stats_extra(self) -> dict[str, Any]:
        return {"pgvector": self.pgvector_version, "ann_threshold": self.ann_threshold}

    def close(self) -> None:
        """Close this process's pool (at shutdown)."""
        for t in list(self._builds.values()):
            t.join(timeout=0.1)
        super().close()

    def _people_ids(self, conn: Conn, gid: int, names: list[str]) -> dict[str, tuple[int, int]]:
        """One ``= ANY(text[])`` lookup (a long ``IN`` list of varchar parameters makes PostgreSQL scan the table)."""
        rows = _PEOPLE_AMONG(conn, gid=gid, names=names).fetchall()
        return {name: (int(pid), int(n)) for name, pid, n in rows}

    def _insert_people(self, conn: Conn, gid: int, counts: Mapping[str, int]) -> dict[str, int]:
        """One ``INSERT ... SELECT unnest(...)``; the ids come back by name (unique in a gallery)."""
        rows = _INSERT_PEOPLE(conn, gid=gid, names=list(counts), counts=list(counts.values()),
                              now=datetime.now(UTC)).fetchall()
        return {name: int(pid) for name, pid in rows}

    def _insert_faces(self, conn: Conn, gid: int, gen: int, rows: list[tuple[int, Any]]) -> list[int]:
        """Bulk loading through ``COPY`` (ids drawn from the sequence first), in the same transaction."""
        ids = [int(i) for (i,) in _FACE_IDS(conn, n=len(rows)).fetchall()]
        now = datetime.now(timezone.utc)
        with conn.connection.driver_connection.cursor() as cur, cur.copy(
            "COPY faces (id, person_id, gallery_id, embedder, dim, embedding, crop_png, source, source_sha256, box,"
            " landmarks, det_score, created_at, gen) FROM STDIN"
        ) as copy:
            for fid, (pid, f) in zip(ids, rows):
                copy.write_row((fid, pid, gid, f.embedder, f.dim, vector_text(f.embedding), f.crop_png, f.source,
                                f.source_sha256, f.box_json, f.landmarks_json, f.det_score, now, gen))
        return ids

    # --- search -------------------------------------------------------------------------------------------
    @staticmethod
    def _search_state(conn: Connection, gallery: str,
                      dim: int) -> tuple[int, dict[tuple[str, int], int], bool, int]:
        """The gallery's id, faces per (embedder, dim), whether its HNSW index for ``dim`` is usable, and its
        people with faces."""
        row = conn.execute(text(
            "SELECT g.id, g.people_with_faces,"
            " (SELECT coalesce(json_agg(json_build_array(e.embedder, e.dim, e.faces)), '[]'::json)"
            "    FROM gallery_embedders e WHERE e.gallery_id = g.id AND e.faces > 0),"
            " (SELECT i.indisvalid AND i.indisready FROM pg_index i"
            "    WHERE i.indexrelid = to_regclass(format('faces_hnsw_g%s_d%s', g.id, CAST(:dim AS int))))"
            " FROM galleries g WHERE g.name = :name"), {"dim": dim, "name": gallery}).first()
        if row is None:
            raise gallery_not_found(gallery)
        return int(row[0]), {(e, int(d)): int(n) for e, d, n in row[2]}, bool(row[3]), int(row[1])

    def _search(self, gallery: str, q: np.ndarray, embedder_id: str, top_k: int) -> tuple[list[list[Candidate]], int]:
        dim = int(q.shape[1])
        out = []
        with self._read() as conn:
            gid, groups, indexed, n_people = self._search_state(conn, gallery, dim)
            if groups and set(groups) != {(embedder_id, dim)}:
                raise mismatch_error(gallery, groups, embedder_id, dim)
            if not groups or q.shape[0] == 0:
                return [[] for _ in range(q.shape[0])], n_people
            n_faces = groups[(embedder_id, dim)]
            use_index = indexed and self._ann_worth_it(n_faces)
            refine = self.refine_margin > 0 and self.refine_ef > self.ef_search
            k2 = max(top_k, 2) if refine else top_k
            for v in q:
                qtext = vector_text(v)
                if use_index:
                    rows = self._ann_query(conn, gid, dim, qtext, k2, n_faces, self.ef_search)
                    if refine and len(rows) >= 2 and rows[1][3] - rows[0][3] < self.refine_margin:
                        # a near-tie: where the narrow beam errs; search again with the wide one
                        rows = self._ann_query(conn, gid, dim, qtext, k2, n_faces, self.refine_ef)
                    rows = rows[:top_k]
                else:
                    rows = self._exact_query(conn, gid, dim, qtext, top_k)
                out.append([Candidate(person=name, similarity=float(np.clip(1.0 - d, -1.0, 1.0)), person_id=int(pid),
                                      face_id=int(fid)) for pid, name, fid, d in rows])
        return out, n_people

    def _ann_worth_it(self, n_faces: int) -> bool:
        """Search through the HNSW index (when it exists) only while the gallery is large; a gallery
        that shrank well below the threshold is searched exactly again (same hysteresis as SQLite)."""
        return self.ann_threshold is not None and n_faces >= self.ann_threshold // 2

    @staticmethod
    def _exact_query(conn: Connection, gid: int, dim: int, qtext: str, top_k: int) -> list[Any]:
        """Every face of the gallery: each person's nearest face, then the best ``top_k`` people."""
        return conn.execute(text(
            "SELECT b.person_id, p.name, b.id, b.d FROM ("
            "  SELECT DISTINCT ON (f.person_id) f.person_id, f.id, f.embedding <=> CAST(:q AS vector) AS d"
            f"  FROM faces f WHERE f.gallery_id = {int(gid)} AND f.dim = {int(dim)}"
            "  ORDER BY f.person_id, d, f.id) b"
            " JOIN people p ON p.id = b.person_id ORDER BY b.d, b.person_id LIMIT :k"), {"q": qtext, "k": top_k}).all()

    def _ann_query(self, conn: Connection, gid: int, dim: int, qtext: str, top_k: int, n_faces: int,
                   ef: int) -> list[Any]:
        """The nearest faces from the gallery's HNSW index (id and dim literal, so the planner matches the partial
        index), best face per person, top ``top_k``; fetches more while too few people (exact past 1000)."""
        fetch = max(top_k * self.overfetch, 16)
        vec = f"vector({int(dim)})"
        while True:
            if fetch > MAX_EF_SEARCH:
                return self._exact_query(conn, gid, dim, qtext, top_k)
            conn.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(max(ef, fetch))})
            rows = conn.execute(text(
                "WITH nn AS ("
                f"  SELECT f.id, f.person_id, (f.embedding::{vec} <=> CAST(:q AS {vec})) AS d FROM faces f"
                f"  WHERE f.gallery_id = {int(gid)} AND f.dim = {int(dim)}"
                f"  ORDER BY f.embedding::{vec} <=> CAST(:q AS {vec}) LIMIT {int(fetch)}"
                "), best AS (SELECT DISTINCT ON (person_id) person_id, id, d FROM nn ORDER BY person_id, d, id)"
                " SELECT b.person_id, p.name, b.id, b.d FROM best b JOIN people p ON p.id = b.person_id"
                " ORDER BY b.d, b.person_id LIMIT :k"), {"q": qtext, "k": top_k}).all()
            if len(rows) >= top_k or fetch >= n_faces:
                return rows
            fetch *= 4

    def explain_search(self, gallery: str, query: Any, top_k: int = 1) -> str:
        """The query plan of one search (to check that the HNSW index is used)."""
        q = as_queries(query)[0]
        dim = int(q.shape[0])
        vec = f"vector({dim})"
        with self._read() as conn:
            gid = self._search_state(conn, validate_name(gallery, "gallery name"), dim)[0]
            conn.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(self.ef_search)})
            rows = conn.execute(text(
                f"EXPLAIN SELECT f.id FROM faces f WHERE f.gallery_id = {gid} AND f.dim = {dim}"
                f" ORDER BY f.embedding::{vec} <=> CAST(:q AS {vec}) LIMIT {max(top_k * self.overfetch, 16)}"),
                {"q": vector_text(q)}).all()
        return "\n".join(r[0] for r in rows)

    # --- the per-gallery HNSW index -----------------------------------------------------------------------
    def _after_growth(self, gid: int) -> None:
        """After faces were added to gallery ``gid``: build its HNSW index if it just got large."""
        if self.ann_threshold is None or self.ann_autobuild == "off":
            return
        try:
            with self._read() as conn:
                rows = conn.execute(text(
                    "SELECT g.name, e.faces, (SELECT true FROM pg_index i WHERE i.indexrelid ="
                    "    to_regclass(format('faces_hnsw_g%s_d%s', g.id, e.dim)) AND i.indisvalid)"
                    " FROM galleries g JOIN gallery_embedders e ON e.gallery_id = g.id WHERE g.id = :gid"),
                    {"gid": gid}).all()
        except FaceRecError:
            return
        if len(rows) != 1 or rows[0][2] or int(rows[0][1]) < self.ann_threshold:
            return
        name = rows[0][0]
        if self.ann_autobuild == "sync":
            self.ensure_ann_index(name)
            return
        with self._builds_lock:
            if gid in self._builds and self._builds[gid].is_alive():
                return

            def build() -> None:
                try:
                    self.ensure_ann_index(name)
                except Exception as exc:  # noqa: BLE001 - a failed background build is retried by the next write
                    log.warning("building the HNSW index of gallery %r failed: %s", name, exc)

            t = self._builds[gid] = threading.Thread(target=build, name=f"hnsw-build-g{gid}", daemon=True)
            t.start()

    def wait_for_index_builds(self, timeout: float | None = None) -> None:
        """Wait for this process's background index builds (tests, benchmarks, shutdown)."""
        for t in list(self._builds.values()):
            t.join(timeout)

    def _autocommit(self) -> Connection:
        return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def ensure_ann_index(self, gallery: str, *, concurrently: bool = True) -> dict[str, Any]:
        """Build the gallery's HNSW index if it has none (one builder at a time across servers; an index left
        invalid by an interrupted build is rebuilt); returns what was done."""
        gallery = validate_name(gallery, "gallery name")
        with self._read() as conn:
            gid = self._gallery_id(conn, gallery)
            groups = self._embedders(conn, gid)
        if len(groups) != 1:
            return {"gallery": gallery, "built": False, "reason": "no faces" if not groups else "mixed embedders"}
        ((_, dim),) = groups
        name = index_name(gid, dim)
        lock = {"k": zlib.crc32(f"facerec-hnsw-{gid}".encode()) | (1 << 32)}
        try:
            with self._autocommit() as conn:
                if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), lock).scalar():
                    return {"gallery": gallery, "built": False, "reason": "being built by another process"}
                try:
                    valid = conn.execute(text("SELECT i.indisvalid FROM pg_index i"
                                              " WHERE i.indexrelid = to_regclass(:n)"), {"n": name}).first()
                    if valid is not None and valid[0]:
                        return {"gallery": gallery, "built": False, "reason": "exists", "index": name}
                    if valid is not None:  # left invalid by an interrupted concurrent build
                        conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                    conn.execute(text("SELECT set_config('maintenance_work_mem', :m, false)"),
                                 {"m": self.maintenance_work_mem})
                    if self.build_workers is not None:
                        conn.execute(text("SELECT set_config('max_parallel_maintenance_workers', :w, false)"),
                                     {"w": str(self.build_workers)})
                    t0 = time.perf_counter()
                    conn.execute(text(
                        f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS {name} ON faces"
                        f" USING hnsw ((embedding::vector({dim})) vector_cosine_ops)"
                        f" WITH (m = {self.hnsw_m}, ef_construction = {self.hnsw_ef_construction})"
                        f" WHERE gallery_id = {gid} AND dim = {dim}"))
                    seconds = time.perf_counter() - t0
                    conn.execute(text("ANALYZE faces"))  # so the planner knows the gallery is large and uses the index
                    log.info("built HNSW index %s for gallery %r in %.1fs", name, gallery, seconds)
                    return {"gallery": gallery, "built": True, "index": name, "seconds": seconds}
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), lock)
        except sa_exc.SQLAlchemyError as exc:
            raise db_error(exc, "gallery database") from exc

    def _drop_ann_indexes(self, gid: int, keep: str | None = None) -> None:
        """Drop gallery ``gid``'s HNSW indexes (but ``keep``), concurrently; best effort."""
        try:
            with self._autocommit() as conn:
                names = conn.execute(text(
                    "SELECT c.relname FROM pg_class c WHERE c.relkind = 'i' AND c.relname LIKE :pattern"
                    " AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'faces'::regclass)"),
                    {"pattern": f"faces\\_hnsw\\_g{int(gid)}\\_d%"}).scalars().all()
                for name in names:
                    if name != keep:
                        conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {name}"))
        except sa_exc.SQLAlchemyError as exc:  # pragma: no cover
            log.warning("could not drop the HNSW indexes of gallery %d: %s", gid, exc)

    def search_index_info(self, gallery: str) -> dict[str, Any]:
        gallery = validate_name(gallery, "gallery name")
        with self._read() as conn:
            gid = self._gallery_id(conn, gallery)
            groups = self._embedders(conn, gid)
            info: dict[str, Any] = {"kind": "exact", "faces": sum(groups.values())}
            if len(groups) == 1:
                ((_, dim),) = groups
                row = conn.execute(text("SELECT i.indisvalid, pg_relation_size(i.indexrelid) FROM pg_index i"
                                        " WHERE i.indexrelid = to_regclass(:n)"), {"n": index_name(gid, dim)}).first()
                if row is not None and row[0] and self._ann_worth_it(info["faces"]):
                    info.update(kind="hnsw", index=index_name(gid, dim), index_bytes=int(row[1]),
                                m=self.hnsw_m, ef_search=self.ef_search)
        return info
