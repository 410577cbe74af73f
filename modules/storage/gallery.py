"""The persistent gallery of known people, written once on SQLAlchemy Core; its subclasses in
:mod:`~modules.storage.sqlite_search` and :mod:`~modules.storage.pg_search` only search.

Every write is one transaction (PostgreSQL locks the gallery's row: writes to one gallery are serialised,
other galleries written in parallel) with a new generation, stamped on the galleries it changed; it keeps the
gallery's counters itself and runs its hot statements on the driver (:mod:`~modules.storage.writes`).
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import Connection, bindparam, delete, exc as sa_exc, func, insert, inspect, null, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import ConfigError, ConflictError, FaceNotFoundError, InvalidRequestError
from ..face import Candidate
from .engine import Conn, Prepared, get_engine, read, safe_url, write_transaction
from .maintenance import Maintenance
from .migrate import prepare
from .records import (DEFAULT_ANN_THRESHOLD, FaceInfo, GalleryInfo, NewFace, PersonInfo, as_queries, face_not_found,
                      gallery_not_found, mismatch_error, parse_face_id, person_exists, person_not_found,
                      validate_embedder_id, validate_enrollment, validate_metadata, validate_name, validate_new_name,
                      validate_page, validate_top_k)
from .tables import TABLES, faces, galleries, gallery_embedders as ge, people
from .writes import (DELETE_FACE, DELETE_PERSON, EMBEDDERS, GALLERY_ID, GALLERY_ID_LOCKED, STAMP, Tx, face_deleting, faces_added,
                     more_faces, person_faces_deleting)


_FACES_FROM = faces.join(people, people.c.id == faces.c.person_id).join(galleries,
                                                                        galleries.c.id == faces.c.gallery_id)
_FACE_COLUMNS = (  # FaceInfo's fields, in order, but the embedding
    faces.c.id, faces.c.person_id, people.c.name, galleries.c.name, faces.c.embedder, faces.c.dim,
    faces.c.created_at, faces.c.crop_png.isnot(None), faces.c.source, faces.c.source_sha256, faces.c.box,
    faces.c.landmarks, faces.c.det_score,
)
_PERSON_COLUMNS = (people.c.id, people.c.name, people.c.created_at, people.c.metadata, people.c.num_faces)
_NEW_FACE = ("person_id", "gallery_id", "embedder", "dim", "embedding", "crop_png", "source", "source_sha256", "box",
             "landmarks", "det_score", "gen")  # the columns of an enrolled face
_PERSON = select(*_PERSON_COLUMNS).where(people.c.gallery_id == bindparam("gid"), people.c.name == bindparam("name"))


def _person_info(gallery: str, row: Sequence[Any]) -> PersonInfo:
    pid, name, created_at, metadata, num_faces = row[:5]
    return PersonInfo(id=int(pid), gallery=gallery, name=name, created_at=created_at, num_faces=int(num_faces),
                      metadata=metadata or None)


def _face_info(row: Any) -> FaceInfo:
    """From ``_FACE_COLUMNS`` and the embedding (or a null)."""
    info = FaceInfo(*row)
    info.box, info.landmarks = (json.loads(v) if v else None for v in (info.box, info.landmarks))
    info.has_crop = bool(info.has_crop)
    return info


class GalleryStore(Maintenance):
    """The gallery at ``location`` (see :func:`modules.storage.open_gallery`).  Names are validated and
    NFC-normalised.  ``ann_threshold``: faces in a gallery from which search uses an HNSW index
    (``None``: always exact); ``busy_timeout_s``: how long to wait for the database before a 503."""

    backend = ""

    def __init__(self, location: Any, *, busy_timeout_s: float = 30.0, create: bool = True,
                 ann_threshold: int | None = DEFAULT_ANN_THRESHOLD, pool_min: int | None = None,
                 pool_max: int | None = None, connect_timeout_s: float = 10.0):
        if ann_threshold is not None and (
            isinstance(ann_threshold, bool) or not isinstance(ann_threshold, int) or ann_threshold < 1
        ):
            raise ConfigError(f"ann_threshold must be a positive number of faces or None, got {ann_threshold!r}")
        self.ann_threshold = ann_threshold
        self.busy_timeout_s = float(busy_timeout_s)
        self.engine = get_engine(location, create=create, busy_timeout_s=self.busy_timeout_s, pool_size=pool_max,
                                 connect_timeout_s=connect_timeout_s)
        self._insert = (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert
        self._new_generation = Prepared(text(self.NEXT_GENERATION_SQL))
        try:
            self._prepare()
        except sa_exc.SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).strip()
            raise ConfigError(f"cannot connect to or prepare the gallery database {self}: {reason}") from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({safe_url(self.engine.url)!r})"

    def _prepare(self) -> None:
        prepare(self.engine, "gallery", TABLES[self.engine.dialect.name], legacy=self._legacy_revision)

    # --- what each backend provides -------------------------------------------------------
    NEXT_GENERATION_SQL = GENERATION_SQL = ""  # take a new generation / read the last one
    LEGACY_TABLE = LEGACY_VERSION_SQL = ""  # where a database written before Alembic kept its schema version
    LEGACY_SCHEMA = 0  # the last such version (its revision is gallery_0001)

    def _legacy_revision(self, conn: Connection) -> str | None:
        """The revision of a database written before migrations moved to Alembic (None: none)."""
        version = None
        if inspect(conn).has_table(self.LEGACY_TABLE):
            version = conn.execute(text(self.LEGACY_VERSION_SQL)).scalar()
        if version is not None and int(version) > self.LEGACY_SCHEMA:
            raise ConfigError(f"gallery database {self} has schema version {version}, newer than this code"
                              f" supports ({self.LEGACY_SCHEMA}); upgrade the code")
        return None if version is None else "gallery_0001"

    def _next_generation(self, conn: Conn) -> int:
        return int(self._new_generation(conn).fetchone()[0])

    def _generation(self, conn: Connection) -> int:
        return int(conn.execute(text(self.GENERATION_SQL)).scalar())

    def _search(self, gallery: str, q: np.ndarray, embedder_id: str, top_k: int) -> tuple[list[list[Candidate]], int]:
        raise NotImplementedError

    def _after_commit(self, tx: Tx) -> None:
        pass

    def _gallery_deleted(self, gid: int) -> None:
        pass

    def _reembedded(self, gids: list[int], dim: int) -> None:
        pass

    def _stats_extra(self) -> dict[str, Any]:
        return {}

    def _by_name(self, column: Any) -> Any:
        """``column`` ordered by code point (PostgreSQL: whatever the database's collation)."""
        return column.collate("C") if self.backend == "postgresql" else column

    # --- transactions and lookups -------------------------------------------------------------
    def _read(self) -> Any:
        return read(self.engine, "gallery database")

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        """One write transaction with a new generation, stamped on the galleries it touched (with the change of
        their count of people with faces)."""
        with write_transaction(self.engine, "gallery database", Tx) as tx:
            tx.generation = self._next_generation(tx)
            yield tx
            for gid in sorted(tx.touched):
                STAMP(tx, gid=gid, gen=tx.generation, with_faces=tx.with_faces.get(gid, 0))
        self._after_commit(tx)

    def _gallery_id(self, conn: Conn, name: str, *, lock: bool = False, create_at: int | None = None) -> int:
        """The gallery's id (its row locked if ``lock``; created at generation ``create_at`` if missing)."""
        row = (GALLERY_ID_LOCKED if lock else GALLERY_ID)(conn, name=name).fetchone()
        gid = None if row is None else row[0]
        if gid is None and create_at is not None:
            gid = self._insert_gallery(conn, name, create_at)
            if gid is None:  # created by another transaction meanwhile
                gid = GALLERY_ID_LOCKED(conn, name=name).fetchone()[0]
        if gid is None:
            raise gallery_not_found(name)
        return int(gid)

    def _insert_gallery(self, conn: Conn, name: str, generation: int) -> int | None:
        """The new gallery's id; None if one of that name exists."""
        return conn.execute(self._insert(galleries).values(name=name, generation=generation)
                            .on_conflict_do_nothing(index_elements=["name"]).returning(galleries.c.id)).scalar()

    @staticmethod
    def _person_row(conn: Conn, gid: int, gallery: str, name: str) -> Sequence[Any]:
        row = conn.execute(_PERSON, {"gid": gid, "name": name}).first()
        if row is None:
            raise person_not_found(gallery, name)
        return row

    @staticmethod
    def _embedders(conn: Conn, gid: int) -> dict[tuple[str, int], int]:
        return {(e, int(d)): int(n) for e, d, n in EMBEDDERS(conn, gid=gid).fetchall()}

    def _scope(self, conn: Conn, gallery: str | None, lock: bool = False) -> tuple[list[int], dict[int, str]]:
        """The gallery ids in scope (one or all) and their names; rows locked in id order if asked."""
        q = select(galleries.c.id, galleries.c.name).order_by(galleries.c.id)
        if gallery is not None:
            q = q.where(galleries.c.name == gallery)
        rows = conn.execute(q.with_for_update() if lock else q).all()
        if gallery is not None and not rows:
            raise gallery_not_found(gallery)
        return [int(r[0]) for r in rows], {int(r[0]): r[1] for r in rows}

    # --- galleries ------------------------------------------------------------------------------
    def create_gallery(self, name: str) -> GalleryInfo:
        """Create a gallery; :class:`ConflictError` if it exists."""
        name = validate_name(name, "gallery name")
        with self._write() as tx:
            if self._insert_gallery(tx.conn, name, tx.generation) is None:
                raise ConflictError(f"gallery {name!r} already exists", details={"gallery": name})
        return self.get_gallery(name)

    def ensure_gallery(self, name: str) -> GalleryInfo:
        """The gallery, created if missing."""
        name = validate_name(name, "gallery name")
        with self._read() as conn:
            exists = conn.execute(select(galleries.c.id).where(galleries.c.name == name)).first()
        if not exists:
            with self._write() as tx:
                self._gallery_id(tx.conn, name, create_at=tx.generation)
        return self.get_gallery(name)

    def _gallery_infos(self, conn: Connection, name: str | None = None) -> list[GalleryInfo]:
        n_people = select(func.count()).where(people.c.gallery_id == galleries.c.id).scalar_subquery()
        q = select(galleries.c.id, galleries.c.name, galleries.c.created_at, n_people)
        rows = conn.execute(q.where(galleries.c.name == name) if name is not None else q.order_by(
            self._by_name(galleries.c.name))).all()
        counts: dict[int, dict[str, int]] = {}
        if rows:
            for gid, e, n in conn.execute(
                select(ge.c.gallery_id, ge.c.embedder, func.sum(ge.c.faces))
                .where(ge.c.gallery_id.in_([r[0] for r in rows]), ge.c.faces > 0)
                .group_by(ge.c.gallery_id, ge.c.embedder)
            ):
                counts.setdefault(int(gid), {})[e] = int(n)
        return [
            GalleryInfo(id=int(gid), name=gname, created_at=created_at, num_people=int(n),
                        num_faces=sum(counts.get(int(gid), {}).values()), embedders=counts.get(int(gid), {}))
            for gid, gname, created_at, n in rows
        ]

    def get_gallery(self, name: str) -> GalleryInfo:
        name = validate_name(name, "gallery name")
        with self._read() as conn:
            infos = self._gallery_infos(conn, name)
        if not infos:
            raise gallery_not_found(name)
        return infos[0]

    def list_galleries(self) -> list[GalleryInfo]:
        with self._read() as conn:
            return self._gallery_infos(conn)

    def delete_gallery(self, name: str) -> dict[str, int]:
        """Delete a gallery with its people and faces; returns what was deleted."""
        name = validate_name(name, "gallery name")
        with self._write() as tx:
            gid = self._gallery_id(tx.conn, name, lock=True)
            n_people = tx.conn.execute(select(func.count()).where(people.c.gallery_id == gid)).scalar()
            n_faces = sum(self._embedders(tx.conn, gid).values())
            tx.conn.execute(delete(galleries).where(galleries.c.id == gid))
        self._gallery_deleted(gid)
        return {"people": int(n_people), "faces": int(n_faces)}

    # --- people -----------------------------------------------------------------------------------
    def add_person(
        self, gallery: str, name: str, metadata: Mapping[str, Any] | None = None, *, create_missing: bool = True
    ) -> PersonInfo:
        gallery = validate_name(gallery, "gallery name")
        name = validate_new_name(name, "person name")
        meta_json = validate_metadata(metadata)
        with self._write() as tx:
            gid = self._gallery_id(tx.conn, gallery, lock=True, create_at=tx.generation if create_missing else None)
            row = tx.conn.execute(
                self._insert(people).values(gallery_id=gid, name=name, metadata=meta_json)
                .on_conflict_do_nothing(index_elements=["gallery_id", "name"]).returning(people.c.id)
            ).first()
            if row is None:
                raise person_exists(gallery, name)
            tx.touch(gid)
        return self.get_person(gallery, name)

    def get_person(self, gallery: str, name: str) -> PersonInfo:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        with self._read() as conn:
            row = self._person_row(conn, self._gallery_id(conn, gallery), gallery, name)
        return _person_info(gallery, row)

    def list_people(self, gallery: str, offset: int = 0, limit: int | None = 100) -> tuple[list[PersonInfo], int]:
        """People ordered by name, with face counts, and the total count."""
        gallery = validate_name(gallery, "gallery name")
        offset, limit = validate_page(offset, limit)
        with self._read() as conn:
            gid = self._gallery_id(conn, gallery)
            total = conn.execute(select(func.count()).where(people.c.gallery_id == gid)).scalar()
            rows = conn.execute(
                select(*_PERSON_COLUMNS).where(people.c.gallery_id == gid).order_by(self._by_name(people.c.name))
                .limit(limit).offset(offset)
            ).all()
        return [_person_info(gallery, r) for r in rows], int(total)

    def rename_person(self, gallery: str, name: str, new_name: str) -> PersonInfo:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        new_name = validate_new_name(new_name, "new person name")
        with self._write() as tx:
            gid = self._gallery_id(tx.conn, gallery, lock=True)
            row = self._person_row(tx.conn, gid, gallery, name)
            if new_name != name:
                taken = select(people.c.id).where(people.c.gallery_id == gid, people.c.name == new_name)
                if tx.conn.execute(taken).first():
                    raise person_exists(gallery, new_name)
                tx.conn.execute(update(people).where(people.c.id == row[0]).values(name=new_name))
                tx.touch(gid)
        return self.get_person(gallery, new_name)

    def set_person_metadata(self, gallery: str, name: str, metadata: Mapping[str, Any] | None) -> PersonInfo:
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        meta_json = validate_metadata(metadata)
        with self._write() as tx:
            row = self._person_row(tx.conn, self._gallery_id(tx.conn, gallery, lock=True), gallery, name)
            tx.conn.execute(update(people).where(people.c.id == row[0]).values(metadata=meta_json))
        return self.get_person(gallery, name)

    def delete_person(self, gallery: str, name: str) -> int:
        """Delete a person and their faces; returns how many faces went with them."""
        gallery = validate_name(gallery, "gallery name")
        name = validate_name(name, "person name")
        with self._write() as tx:
            gid = self._gallery_id(tx, gallery, lock=True)
            person_faces_deleting(tx, gid, name)
            row = DELETE_PERSON(tx, gid=gid, name=name).fetchone()
            if row is None:
                raise person_not_found(gallery, name)
            tx.touch(gid, with_faces=-1 if row[1] else 0)
        return int(row[1])

    # --- faces --------------------------------------------------------------------------------------
    def add_faces(self, gallery: str, person: str, faces: Sequence[NewFace], *,
                  create_missing: bool = True) -> list[int]:
        """Enroll ``faces`` for ``person`` (all or nothing); returns the new face ids."""
        ids = self.add_faces_many(gallery, {person: faces}, create_missing=create_missing)
        return ids[validate_name(person, "person name")]

    def add_faces_many(self, gallery: str, faces_by_person: Mapping[str, Sequence[NewFace]], *,
                       create_missing: bool = True) -> dict[str, list[int]]:
        """Enroll faces for several people in one transaction; new face ids per (normalised) name."""
        gallery = validate_name(gallery, "gallery name")
        items, embedder, dim = validate_enrollment(faces_by_person)
        names = list(items)
        with self._write() as tx:
            gid = self._gallery_id(tx, gallery, lock=True, create_at=tx.generation if create_missing else None)
            stored = self._embedders(tx, gid)
            if stored and set(stored) != {(embedder, dim)}:
                raise mismatch_error(gallery, stored, embedder, dim)
            known = self._people_ids(tx, gid, names)  # name -> (id, faces)
            missing = [n for n in names if n not in known]
            if missing and not create_missing:
                raise person_not_found(gallery, missing[0])
            pids = {n: pid for n, (pid, _) in known.items()}
            if missing:
                pids.update(self._insert_people(tx, gid, {n: len(items[n]) for n in missing}))
            more_faces(tx, {pid: len(items[n]) for n, (pid, _) in known.items()})
            ids = iter(self._insert_faces(tx, gid, tx.generation, [(pids[p], f) for p in names for f in items[p]]))
            faces_added(tx, gid, embedder, dim, sum(len(v) for v in items.values()))
            tx.touch(gid, grew=True, with_faces=len(missing) + sum(1 for _, n in known.values() if n == 0))
        return {p: [next(ids) for _ in items[p]] for p in names}

    def _insert_people(self, conn: Conn, gid: int, counts: Mapping[str, int]) -> dict[str, int]:
        """Insert new people ``{name: number of faces}`` into gallery ``gid`` (with their count); their ids."""
        ids = self._insert_ids(conn, people, ("gallery_id", "name", "num_faces"), [(gid, n, k) for n, k in counts.items()])
        return dict(zip(counts, ids))

    def _insert_faces(self, conn: Conn, gid: int, gen: int, rows: list[tuple[int, Any]]) -> list[int]:
        """Insert ``(person id, ValidFace)`` rows; their new ids, in order."""
        return self._insert_ids(conn, faces, _NEW_FACE, [
            (pid, gid, f.embedder, f.dim, f.embedding, f.crop_png, f.source, f.source_sha256, f.box_json,
             f.landmarks_json, f.det_score, gen) for pid, f in rows
        ])

    def _people_ids(self, conn: Conn, gid: int, names: list[str]) -> dict[str, tuple[int, int]]:
        """``{name: (id, number of faces)}`` of the gallery's people among ``names``."""
        found: dict[str, tuple[int, int]] = {}
        for s in range(0, len(names), 500):
            found.update((name, (int(pid), int(n))) for name, pid, n in conn.execute(
                select(people.c.name, people.c.id, people.c.num_faces)
                .where(people.c.gallery_id == gid, people.c.name.in_(names[s : s + 500]))))
        return found

    def _insert_ids(self, conn: Conn, table: Any, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[int]:
        """Insert ``rows`` (values of ``columns``) into ``table``; their new ids, in order."""
        result = conn.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True),
                              [dict(zip(columns, r)) for r in rows])
        return [int(r[0]) for r in result]

    def list_faces(self, gallery: str, person: str, *, with_embeddings: bool = False) -> list[FaceInfo]:
        gallery = validate_name(gallery, "gallery name")
        person = validate_name(person, "person name")
        with self._read() as conn:
            prow = self._person_row(conn, self._gallery_id(conn, gallery), gallery, person)
            rows = conn.execute(
                select(*_FACE_COLUMNS, faces.c.embedding if with_embeddings else null())
                .select_from(_FACES_FROM).where(faces.c.person_id == prow[0]).order_by(faces.c.id)
            ).all()
        return [_face_info(r) for r in rows]

    def _face_row(self, conn: Conn, face_id: Any, gallery: str | None, columns: Sequence[Any],
                  lock: bool = False) -> Sequence[Any]:
        fid = parse_face_id(face_id)
        if gallery is not None:
            gallery = validate_name(gallery, "gallery name")
            self._gallery_id(conn, gallery)
        if fid > 2**63 - 1:
            raise face_not_found(fid, gallery)
        q = select(*columns).select_from(_FACES_FROM).where(faces.c.id == fid)
        if gallery is not None:
            q = q.where(galleries.c.name == gallery)
        row = conn.execute(q.with_for_update(of=galleries) if lock else q).first()
        if row is None:
            raise face_not_found(fid, gallery)
        return row

    def get_face(self, face_id: int, *, gallery: str | None = None, with_embedding: bool = False) -> FaceInfo:
        """A face by id; with ``gallery`` given, a face of another gallery is not found."""
        with self._read() as conn:
            row = self._face_row(conn, face_id, gallery,
                                 (*_FACE_COLUMNS, faces.c.embedding if with_embedding else null()))
        return _face_info(row)

    def get_face_crop(self, face_id: int, *, gallery: str | None = None) -> bytes:
        """The aligned crop as PNG bytes; :class:`FaceNotFoundError` if none is stored."""
        with self._read() as conn:
            row = self._face_row(conn, face_id, gallery, (faces.c.id, faces.c.crop_png))
        if row[1] is None:
            raise FaceNotFoundError(f"face {row[0]} has no stored crop (imported from a legacy pickle)",
                                    details={"face_id": int(row[0])})
        return bytes(row[1])

    def delete_face(self, face_id: int, *, gallery: str | None = None) -> None:
        with self._write() as tx:
            fid, gid, pid = self._face_row(tx, face_id, gallery, (faces.c.id, faces.c.gallery_id, faces.c.person_id),
                                           lock=True)
            with_faces = face_deleting(tx, gid, fid, pid)
            DELETE_FACE(tx, fid=fid)
            tx.touch(gid, with_faces=with_faces)

    def find_faces_by_source_sha256(self, gallery: str, sha256: str) -> list[int]:
        """Ids of the faces of ``gallery`` enrolled from a source with this SHA-256."""
        gallery = validate_name(gallery, "gallery name")
        if not isinstance(sha256, str):
            raise InvalidRequestError("sha256 must be a hex string")
        with self._read() as conn:
            gid = self._gallery_id(conn, gallery)
            rows = conn.execute(select(faces.c.id).where(faces.c.gallery_id == gid,
                                                         faces.c.source_sha256 == sha256.lower()).order_by(faces.c.id))
            return [int(r[0]) for r in rows]

    # --- search ------------------------------------------------------------------------------------------
    def search_people(self, gallery: str, queries: Any, embedder_id: str,
                      top_k: int = 5) -> tuple[list[list[Candidate]], int]:
        """:meth:`search`, and how many people with faces the gallery had in that same snapshot."""
        gallery = validate_name(gallery, "gallery name")
        return self._search(gallery, as_queries(queries), validate_embedder_id(embedder_id), validate_top_k(top_k))

    def search(self, gallery: str, queries: Any, embedder_id: str, top_k: int = 5) -> list[list[Candidate]]:
        """Per query row, the ``top_k`` people by max cosine over their faces, best first."""
        return self.search_people(gallery, queries, embedder_id, top_k)[0]

    def num_people(self, gallery: str) -> int:
        """People of ``gallery`` with at least one face (those a search can return)."""
        gallery = validate_name(gallery, "gallery name")
        with self._read() as conn:
            n = conn.execute(select(galleries.c.people_with_faces).where(galleries.c.name == gallery)).scalar()
        if n is None:
            raise gallery_not_found(gallery)
        return int(n)

    # --- lifecycle ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close this process's connections to the database (other stores on it reconnect when used)."""
        self.engine.dispose()

    def __enter__(self) -> "GalleryStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
