"""Search of the SQLite gallery: an in-process matrix or HNSW index per gallery, kept in step.

From ``ann_threshold`` faces an hnswlib index answers, caught up from the change log (``faces.gen``,
``face_deletions``) and saved in ``<path>.ann/`` (``ann_persist``).  Before a search one indexed query reads
the gallery's generation stamp; the cache is refreshed only when it moved (so other processes' writes show).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from sqlalchemy import LargeBinary, bindparam, select, text, type_coerce

from ..face import Candidate
from ..files import FILE_MODE, private_dir
from .ann import AnnIndex, HnswParams, NeedsRebuild, RWLock
from .engine import Conn, Prepared, database_url, driver_cursor
from .gallery import GalleryStore
from .records import gallery_not_found, mismatch_error, validate_name
from .tables import faces, galleries, people

log = logging.getLogger(__name__)

DELETIONS_KEEP = 200_000  # tombstones kept; an index older than the pruned ones is rebuilt


def rank_people(queries: np.ndarray, matrix: np.ndarray, starts: np.ndarray, person_ids: np.ndarray,
                person_names: Sequence[str], face_ids: np.ndarray, top_k: int,
                block: int | None = None) -> list[list[Candidate]]:
    """Per query, the ``top_k`` people by their best cosine similarity, best first (ties: person order).
    ``matrix`` is ``(N, d)`` unit rows grouped by person: person ``j`` owns rows ``starts[j]:starts[j+1]``."""
    n_people = len(starts)
    ends = np.append(starts[1:], matrix.shape[0])
    k = min(top_k, n_people)
    if block is None:  # bound the (block, N) similarity matrix to ~256 MB
        block = max(1, min(256, (1 << 26) // max(matrix.shape[0], 1)))
    out: list[list[Candidate]] = []
    for b in range(0, queries.shape[0], block):
        sims = queries[b : b + block] @ matrix.T  # (m, N)
        scores = np.maximum.reduceat(sims, starts, axis=1)  # (m, P)
        if k < n_people:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(n_people), scores.shape)
        for i in range(scores.shape[0]):
            cand = part[i]
            row = []
            for j in cand[np.lexsort((cand, -scores[i, cand]))]:
                s, e = int(starts[j]), int(ends[j])
                best = s + int(np.argmax(sims[i, s:e]))
                row.append(Candidate(person=person_names[j], similarity=float(np.clip(scores[i, j], -1.0, 1.0)),
                                     person_id=int(person_ids[j]), face_id=int(face_ids[best])))
            out.append(row)
    return out


def pick_people(face_ids: np.ndarray, sims: np.ndarray, person_of: np.ndarray,
                top_k: int) -> list[tuple[int, int, float]]:
    """From faces sorted by similarity (best first), the best ``top_k`` people as
    ``(person id, face id, similarity)``: each person's best face; ties by person id."""
    seen: dict[int, tuple[int, float]] = {}
    for fid, s, pid in zip(face_ids.tolist(), sims.tolist(), person_of.tolist()):
        if pid < 0:
            continue
        best = seen.get(pid)
        if best is None or s > best[1] or (s == best[1] and fid < best[0]):
            seen[pid] = (fid, s)
    ranked = sorted(seen.items(), key=lambda kv: (-kv[1][1], kv[0]))[:top_k]
    return [(pid, fid, s) for pid, (fid, s) in ranked]


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

    @classmethod
    def of(cls, gid: int, gen: int, rows: list[Sequence[Any]], names: Mapping[int, str]) -> "_Matrix":
        """From ``(face id, person id, embedder, dim, blob)`` rows ordered by person."""
        groups = dict(Counter((r[2], int(r[3])) for r in rows))
        n = len(rows)
        face_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        person_of = np.fromiter((r[1] for r in rows), dtype=np.int64, count=n)
        starts = np.flatnonzero(np.r_[True, person_of[1:] != person_of[:-1]]) if n else np.zeros(0, np.int64)
        matrix = _vectors(rows, next(iter(groups))[1]) if len({d for _, d in groups}) == 1 else None
        return cls(gid, gen, groups, matrix, starts, person_of[starts],
                   tuple(names[int(rows[int(s)][1])] for s in starts), face_ids)


def _vectors(rows: Sequence[Sequence[Any]], dim: int) -> np.ndarray:
    return np.frombuffer(b"".join(r[4] for r in rows), dtype="<f4").astype(np.float32).reshape(len(rows), dim)


_FACE_ROWS = (faces.c.id, faces.c.person_id, faces.c.embedder, faces.c.dim, type_coerce(faces.c.embedding, LargeBinary))


@functools.cache
def _inserter(dialect: Any, table: Any, columns: tuple[str, ...]) -> tuple[str, list[tuple[int, Any]], Any]:
    """For :meth:`SQLiteGallery._insert_ids`: the ``INSERT`` of ``columns`` and ``created_at``, and the columns' own
    bind processing (embedding -> float32 BLOB, timestamp -> ISO text) of those that have one (with their
    position) and of ``created_at``."""
    names = [*columns, "created_at"]
    insert = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    processed = [(i, p) for i, c in enumerate(columns) if (p := table.c[c].type.bind_processor(dialect))]
    return insert, processed, table.c.created_at.type.bind_processor(dialect)


# a gallery whole, on the driver's cursor (plain rows, no SQLAlchemy row per face); walks the faces_person index
# (person_id, gallery_id, id) in order: no sort of the BLOBs
_NAMES = Prepared(select(people.c.id, people.c.name).where(people.c.gallery_id == bindparam("gid")))
_MATRIX_ROWS = Prepared(select(*_FACE_ROWS).where(
    faces.c.gallery_id == bindparam("gid"),
    faces.c.person_id.in_(select(people.c.id).where(people.c.gallery_id == bindparam("gid")))
).order_by(faces.c.person_id, faces.c.id))


class SQLiteGallery(GalleryStore):
    """The gallery in one SQLite file (created, with its folder, if missing); HNSW knobs in ``ann_params``,
    a saved index (``ann_persist``) in ``ann_dir`` (default ``<path>.ann/``)."""

    backend = "sqlite"

    def __init__(self, location: Any, *, ann_params: HnswParams | None = None, ann_persist: bool = True,
                 ann_dir: str | Path | None = None, **options: Any):
        self.path = Path(database_url(location).database or "")
        super().__init__(location, **options)
        self._pid = os.getpid()
        self._cache: dict[int, _Matrix | AnnIndex] = {}
        self._cache_ids: dict[str, int] = {}  # gallery name -> the id its cache entry is for
        self._cache_lock = threading.Lock()
        self._gallery_locks: dict[int, threading.Lock] = {}
        self.cache_loads = 0  # how many times a gallery was read whole for search; for tests and stats
        self.ann_builds = self.ann_loads = self.ann_catchups = 0  # index built / loaded from disk / updated
        self.ann_refined = 0  # queries searched again with the wider beam (near-ties)
        self._ann_limit = self.ann_threshold if self.ann_threshold is not None else 1 << 62
        self.ann_params = ann_params or HnswParams()
        self.ann_persist = bool(ann_persist)
        self.ann_dir = Path(ann_dir) if ann_dir is not None else self.path.with_name(self.path.name + ".ann")
        self.ann_save_every = 10_000  # changes applied before a caught-up index is saved again
        self._ann_on = self.ann_threshold is not None and importlib.util.find_spec("hnswlib") is not None
        if self.ann_threshold is not None and not self._ann_on:
            log.warning("hnswlib is not installed: gallery search stays exact (pip install hnswlib)")

    def __repr__(self) -> str:
        return f"SQLiteGallery({str(self.path)!r})"

    # --- the store's hooks -----------------------------------------------------------------------------
    def _insert_ids(self, conn: Conn, table: Any, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[int]:
        """One driver ``executemany`` (SQLite cannot batch ``RETURNING``: SQLAlchemy would send a statement a
        row).  The write transaction is ``BEGIN IMMEDIATE``, so no one else inserts meanwhile: the new rows are
        those above the previous largest id, in insertion order."""
        if not rows:
            return []
        insert, processed, stamp = _inserter(conn.dialect, table, columns)
        now = stamp(datetime.now(timezone.utc))  # the creation time, the same for all, processed once
        values = [[*r, now] for r in rows]
        for i, process in processed:
            for row in values:
                row[i] = process(row[i])
        cursor = driver_cursor(conn)  # plain SQL on the driver: no statement to build
        before = cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table.name}").fetchone()[0]
        cursor.executemany(insert, values)
        ids = [int(r[0]) for r in cursor.execute(f"SELECT id FROM {table.name} WHERE id > ? ORDER BY id", (before,))]
        if len(ids) != len(rows):  # pragma: no cover - would mean another writer inside our write lock
            raise RuntimeError(f"inserted {len(rows)} rows into {table.name} but found {len(ids)} new ids")
        return ids

    def _people_ids(self, conn: Conn, gid: int, names: list[str]) -> dict[str, tuple[int, int]]:
        """``{name: (id, number of faces)}`` of the gallery's people among ``names`` (plain SQL, a chunk a time)."""
        cursor = driver_cursor(conn)
        found: dict[str, tuple[int, int]] = {}
        for s in range(0, len(names), 500):
            chunk = names[s : s + 500]
            found.update((name, (pid, n)) for name, pid, n in cursor.execute(
                f"SELECT name, id, num_faces FROM people WHERE gallery_id = ? AND name IN ({', '.join('?' * len(chunk))})",
                (gid, *chunk)))
        return found

    NEXT_GENERATION_SQL = "UPDATE meta SET value = value + 1 WHERE key = 'generation' RETURNING value"
    GENERATION_SQL = "SELECT value FROM meta WHERE key = 'generation'"
    LEGACY_TABLE, LEGACY_SCHEMA = "meta", 2
    LEGACY_VERSION_SQL = "SELECT value FROM meta WHERE key = 'schema_version'"

    def _next_generation(self, conn: Conn) -> int:
        generation = super()._next_generation(conn)
        if generation % 1024 == 0:
            self._prune_deletions(conn)
        return generation

    @staticmethod
    def _prune_deletions(conn: Conn, keep: int = DELETIONS_KEEP) -> None:
        """Keep the newest ``keep`` deletion records; an index older than the horizon is rebuilt."""
        if conn.execute(text("SELECT COUNT(*) FROM face_deletions")).scalar() <= keep:
            return
        cutoff = conn.execute(text("SELECT gen FROM face_deletions ORDER BY gen DESC LIMIT 1 OFFSET :k"), {"k": keep})
        cutoff = cutoff.scalar()
        conn.execute(text("DELETE FROM face_deletions WHERE gen <= :c"), {"c": cutoff})
        conn.execute(text("UPDATE meta SET value = max(value, :c) WHERE key = 'deletions_horizon'"), {"c": cutoff})

    def _gallery_deleted(self, gid: int) -> None:
        with self._cache_lock:
            self._cache.pop(gid, None)
        for suffix in (".json", ".hnsw", ".npz"):  # its saved index (gallery ids are never reused)
            with contextlib.suppress(OSError):
                (self.ann_dir / f"g{gid}{suffix}").unlink(missing_ok=True)

    def _stats_extra(self) -> dict[str, Any]:
        return {"ann_threshold": self.ann_threshold if self._ann_on else None}

    def _location(self) -> str:
        return str(self.path)

    def integrity_check(self) -> list[str]:
        """Problems reported by ``PRAGMA integrity_check`` and ``foreign_key_check`` (empty: healthy)."""
        with self._read() as conn:
            rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
            fk = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        return [r for r in rows if r != "ok"] + [f"foreign key violation: {tuple(r)}" for r in fk]

    # --- the cached search structure ---------------------------------------------------------------------
    def _after_fork(self) -> None:
        # locks may have been copied while held; the cache is shared copy-on-write with the parent
        self._cache_lock = threading.Lock()
        self._gallery_locks = {}
        for entry in self._cache.values():
            if isinstance(entry, AnnIndex):
                entry.lock = RWLock()
        self._pid = os.getpid()

    def _gallery_lock(self, gid: int) -> threading.Lock:
        with self._cache_lock:
            return self._gallery_locks.setdefault(gid, threading.Lock())

    def _entry(self, gallery: str) -> _Matrix | AnnIndex:
        """The gallery's search structure, brought up to date only if its generation moved."""
        if os.getpid() != self._pid:
            self._after_fork()
        with self._read() as conn:  # the hot path of every search: plain SQL on the driver, no statement to build
            row = driver_cursor(conn).execute("SELECT id, generation FROM galleries WHERE name = ?", (gallery,)).fetchone()
        gid, gen = (int(row[0]), int(row[1])) if row is not None else (None, -1)
        old = self._cache_ids.get(gallery)
        if old is not None and old != gid:  # deleted (and maybe created again) by any process: let its index go
            with self._cache_lock:
                self._cache.pop(old, None)
                self._gallery_locks.pop(old, None)
                self._cache_ids.pop(gallery, None)
        if gid is None:
            raise gallery_not_found(gallery)
        cached = self._cache.get(gid)
        if cached is not None and cached.generation == gen:
            return cached
        self._cache_ids[gallery] = gid
        with self._gallery_lock(gid):
            cached = self._cache.get(gid)
            if cached is not None and cached.generation == gen:
                return cached
            entry = self._cache[gid] = self._refresh(gallery, gid, cached)
            return entry

    def _refresh(self, gallery: str, gid: int, cached: _Matrix | AnnIndex | None) -> _Matrix | AnnIndex:
        if isinstance(cached, AnnIndex):
            try:
                self._catch_up(cached, gid)
                if cached.n_live >= self._ann_limit // 2:  # hysteresis: back to exact well below
                    self._maybe_save_async(gid, cached)
                    return cached
            except NeedsRebuild as exc:
                log.info("rebuilding the search index of gallery %r: %s", gallery, exc)
        elif cached is None and self._ann_on and self.ann_persist:
            loaded = self._load_saved(gallery, gid)
            if loaded is not None:
                return loaded
        m = self._load_matrix(gallery)
        self.cache_loads += 1
        if self._ann_on and m.matrix is not None and m.n_faces >= self._ann_limit:
            return self._build_ann(gallery, m)
        return m

    def _load_matrix(self, gallery: str) -> _Matrix:
        with self._read() as conn:
            row = conn.execute(select(galleries.c.id, galleries.c.generation)
                               .where(galleries.c.name == gallery)).first()
            if row is None:
                raise gallery_not_found(gallery)
            gid = int(row[0])
            names = dict(_NAMES(conn, gid=gid).fetchall())
            rows = _MATRIX_ROWS(conn, gid=gid).fetchall()
        return _Matrix.of(gid, int(row[1]), rows, names)

    def _stamp(self, gid: int) -> dict[str, Any]:
        """What a saved index must match: this database (its creation stamp) and the gallery's id."""
        with self._read() as conn:
            created = conn.execute(text("SELECT value FROM meta WHERE key = 'created_at'")).scalar()
        return {"db": str(created or ""), "gallery_id": gid}

    def _file_lock(self, gid: int) -> FileLock:
        return FileLock(str(self.ann_dir / f"g{gid}.lock"), mode=FILE_MODE)

    def _build_ann(self, gallery: str, m: _Matrix) -> AnnIndex:
        """An HNSW index from the loaded matrix (one process builds and saves; others wait and load)."""
        assert m.matrix is not None
        ((embedder, _dim),) = m.groups
        person_of = np.repeat(m.person_ids, np.diff(np.append(m.starts, m.matrix.shape[0])))
        if not self.ann_persist:
            return AnnIndex.build(embedder, m.matrix, m.face_ids, person_of, self.ann_params, m.generation)
        gid = m.gallery_id
        private_dir(self.ann_dir)
        with self._file_lock(gid):
            loaded = self._load_saved(gallery, gid, locked=True)  # another process may have just built it
            if loaded is not None:
                return loaded
            t0 = time.perf_counter()
            ann = AnnIndex.build(embedder, m.matrix, m.face_ids, person_of, self.ann_params, m.generation)
            log.info("built the HNSW index of gallery %r (%d faces) in %.1fs", gallery, m.n_faces,
                     time.perf_counter() - t0)
            self.ann_builds += 1
            try:
                ann.save(self.ann_dir, f"g{gid}", self._stamp(gid))
            except OSError as exc:
                log.warning("cannot save the search index of gallery %r in %s: %s", gallery, self.ann_dir, exc)
        return ann

    def _load_saved(self, gallery: str, gid: int, locked: bool = False) -> AnnIndex | None:
        """The saved index of the gallery, caught up with the database; None if unusable."""
        meta = AnnIndex.read_stamp(self.ann_dir, f"g{gid}")
        if meta is None or {k: meta.get(k) for k in ("db", "gallery_id")} != self._stamp(gid):
            return None
        try:
            with contextlib.nullcontext() if locked else self._file_lock(gid):
                ann = AnnIndex.load(self.ann_dir, f"g{gid}", meta, self.ann_params)
        except Exception as exc:  # noqa: BLE001 - a damaged file is rebuilt, never fatal
            log.warning("ignoring the saved search index of gallery %r: %s", gallery, exc)
            return None
        try:
            self._catch_up(ann, gid)
        except NeedsRebuild as exc:
            log.info("saved search index of gallery %r is unusable: %s", gallery, exc)
            return None
        if ann.n_live < self._ann_limit // 2:
            return None
        self.ann_loads += 1
        self._maybe_save_async(gid, ann)
        return ann

    def _catch_up(self, ann: AnnIndex, gid: int) -> None:
        """Apply to ``ann`` what was written since its generation (a few indexed queries)."""
        with self._read() as conn:
            gen = conn.execute(select(galleries.c.generation).where(galleries.c.id == gid)).scalar()
            if gen is None or gen < ann.generation:
                raise NeedsRebuild("the database is older than the index")
            if gen == ann.generation:
                return
            horizon = conn.execute(text("SELECT value FROM meta WHERE key = 'deletions_horizon'")).scalar()
            if ann.generation < int(horizon):
                raise NeedsRebuild("the deletion log was pruned past the index's generation")
            since = {"g": ann.generation, "gid": gid}
            deleted = [r[0] for r in conn.execute(text("SELECT face_id FROM face_deletions WHERE gen > :g"), since)]
            rows = conn.execute(  # the faces_gen index finds the few new rows (not the gallery's million)
                text("SELECT id, person_id, embedder, dim, embedding FROM faces INDEXED BY faces_gen"
                     " WHERE gen > :g AND gallery_id = :gid"), since
            ).all()
        rows.sort(key=lambda r: r[0])
        if any(r[2] != ann.embedder or int(r[3]) != ann.dim for r in rows):
            raise NeedsRebuild("faces of another embedder")
        ids = np.array([r[0] for r in rows], np.int64)
        persons = np.array([r[1] for r in rows], np.int64)
        vectors = _vectors(rows, ann.dim) if rows else np.zeros((0, ann.dim), np.float32)
        ann.apply(np.array(deleted, np.int64), ids, persons, vectors, gen)
        self.ann_catchups += 1

    def _maybe_save_async(self, gid: int, ann: AnnIndex) -> None:
        if not self.ann_persist or ann.changes_since_save < max(self.ann_save_every, ann.n_live // 10):
            return
        stamp = self._stamp(gid)

        def save() -> None:
            try:
                with self._file_lock(gid):
                    ann.save(self.ann_dir, f"g{gid}", stamp)
            except OSError as exc:  # pragma: no cover
                log.warning("cannot save the search index of gallery %d: %s", gid, exc)

        ann.changes_since_save = 0  # one save in flight at a time
        threading.Thread(target=save, name=f"ann-save-g{gid}", daemon=True).start()

    # --- search ---------------------------------------------------------------------------------------------
    def _search(self, gallery: str, q: np.ndarray, embedder_id: str, top_k: int) -> tuple[list[list[Candidate]], int]:
        m = self._entry(gallery)
        groups = m.groups
        if groups and (len(groups) != 1 or next(iter(groups)) != (embedder_id, q.shape[1])):
            raise mismatch_error(gallery, groups, embedder_id, q.shape[1])
        if not groups or q.shape[0] == 0:
            return [[] for _ in range(q.shape[0])], m.num_people
        if isinstance(m, AnnIndex):
            return self._ann_search(m, q, top_k), m.num_people
        assert m.matrix is not None
        return rank_people(q, m.matrix, m.starts, m.person_ids, m.person_names, m.face_ids, top_k), m.num_people

    def _ann_search(self, ann: AnnIndex, q: np.ndarray, top_k: int) -> list[list[Candidate]]:
        """Nearest faces from the index (over-fetched), the best face per person, names from the database;
        near-ties searched again with the wider beam (:class:`~modules.storage.ann.HnswParams`)."""
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
        with self._read() as conn:  # plain SQL on the driver, a chunk of ids a time
            cursor = driver_cursor(conn)
            for s in range(0, len(person_ids), 500):
                chunk = person_ids[s : s + 500]
                names.update(cursor.execute(f"SELECT id, name FROM people WHERE id IN ({', '.join('?' * len(chunk))})",
                                            chunk))
        return [
            [Candidate(person=names[pid], similarity=float(np.clip(sim, -1.0, 1.0)), person_id=pid, face_id=fid)
             for pid, fid, sim in row if pid in names]  # (a person deleted since the generation check is left out)
            for row in picks
        ]

    def set_search_params(self, **changes: Any) -> None:
        """Change HNSW search knobs (``ef_search``, ``overfetch``, ``refine_margin``, ``refine_ef``) for
        this process's searches, indexes already loaded included."""
        allowed = {"ef_search", "overfetch", "refine_margin", "refine_ef"}
        if set(changes) - allowed:
            raise TypeError(f"unknown search parameters: {sorted(set(changes) - allowed)}")
        self.ann_params = replace(self.ann_params, **changes)
        for entry in list(self._cache.values()):
            if isinstance(entry, AnnIndex):
                entry.params = replace(entry.params, **changes)

    def search_index_info(self, gallery: str) -> dict[str, Any]:
        """What answers searches of ``gallery`` in this process: ``exact`` or ``hnsw`` (loads it if needed)."""
        m = self._entry(validate_name(gallery, "gallery name"))
        if isinstance(m, AnnIndex):
            return {"kind": "hnsw", "faces": m.n_live, "generation": m.generation, "m": m.params.m,
                    "ef_search": m.params.ef_search, "refine_margin": m.params.refine_margin,
                    "refine_ef": m.params.refine_ef_for(m.n_live), "memory_bytes": m.memory_bytes()}
        return {"kind": "exact", "faces": m.n_faces, "generation": m.generation,
                "memory_bytes": 0 if m.matrix is None else int(m.matrix.nbytes)}
