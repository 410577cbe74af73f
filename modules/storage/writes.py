"""What every gallery write runs: its transaction (:class:`Tx`), its statements, compiled once and run on the
driver's cursor (:class:`~modules.storage.engine.Prepared`), and the counters it keeps.

The counters (``people.num_faces``, ``galleries.people_with_faces``, ``gallery_embedders.faces``) are kept by
the writes themselves, in the same transaction, one statement per change rather than one per face: a new
person is inserted with their count, a deletion subtracts a count of the faces it deletes, the change of
``people_with_faces`` rides on the gallery's generation stamp.  Every write holds the gallery's lock
(PostgreSQL: its row; SQLite: the database), so the counts cannot race.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Engine, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from .engine import Conn, Prepared, WriteTx
from .tables import faces, galleries, people
from .tables import gallery_embedders as ge


class Tx(WriteTx):
    """A write transaction (:func:`~modules.storage.engine.write_transaction`), its generation and the galleries
    it changed."""

    def __init__(self, engine: Engine, driver: Any):
        super().__init__(engine, driver)
        self.generation = 0
        self.touched: set[int] = set()
        self.grew: set[int] = set()  # galleries that got faces (PostgreSQL: may need their HNSW index now)
        self.with_faces: dict[int, int] = {}  # change of people_with_faces per gallery

    def touch(self, gallery_id: int, grew: bool = False, with_faces: int = 0) -> None:
        gid = int(gallery_id)
        self.touched.add(gid)
        if grew:
            self.grew.add(gid)
        if with_faces:
            self.with_faces[gid] = self.with_faces.get(gid, 0) + with_faces


def _gid() -> Any:
    return bindparam("gid", type_=galleries.c.id.type)


GALLERY_ID = Prepared(select(galleries.c.id).where(galleries.c.name == bindparam("name")))
GALLERY_ID_LOCKED = Prepared(select(galleries.c.id).where(galleries.c.name == bindparam("name")).with_for_update())
EMBEDDERS = Prepared(select(ge.c.embedder, ge.c.dim, ge.c.faces).where(ge.c.gallery_id == _gid(), ge.c.faces > 0))
STAMP = Prepared(update(galleries).where(galleries.c.id == _gid()).values(
    generation=bindparam("gen"), people_with_faces=galleries.c.people_with_faces + bindparam("with_faces")))
MORE_FACES = Prepared(update(people).where(people.c.id == bindparam("pid"))
                      .values(num_faces=people.c.num_faces + bindparam("n")))
DELETE_PERSON = Prepared(delete(people).where(people.c.gallery_id == _gid(), people.c.name == bindparam("name"))
                         .returning(people.c.id, people.c.num_faces))
DELETE_FACE = Prepared(delete(faces).where(faces.c.id == bindparam("fid")))
LESS_FACES = Prepared(update(people).where(people.c.id == bindparam("pid"))
                      .values(num_faces=people.c.num_faces - 1).returning(people.c.num_faces))
_PRUNE = Prepared(delete(ge).where(ge.c.gallery_id == _gid(), ge.c.faces <= 0))


def _upsert(dialect: str) -> Any:
    return (postgresql if dialect == "postgresql" else sqlite).insert


_MORE_OF_EMBEDDER = {
    d: Prepared(_upsert(d)(ge).values(gallery_id=_gid(), embedder=bindparam("embedder"), dim=bindparam("dim"),
                                      faces=bindparam("n"))
                .on_conflict_do_update(index_elements=[ge.c.gallery_id, ge.c.embedder, ge.c.dim],
                                       set_={"faces": ge.c.faces + bindparam("n")}))
    for d in ("sqlite", "postgresql")
}


def _less_of_embedders(which: Any) -> Prepared:
    """Subtract from each of the gallery's ``(embedder, dim)`` counts its faces that ``which`` selects (before they
    go); a correlated count, cheaper than a ``GROUP BY`` for the few faces of one person."""
    gone = select(func.count()).where(faces.c.gallery_id == _gid(), which, faces.c.embedder == ge.c.embedder,
                                      faces.c.dim == ge.c.dim).scalar_subquery()
    return Prepared(update(ge).where(ge.c.gallery_id == _gid()).values(faces=ge.c.faces - gone).returning(ge.c.faces))


_PERSON_BY_NAME = select(people.c.id).where(people.c.gallery_id == _gid(), people.c.name == bindparam("name"))
_LESS_OF_PERSON = _less_of_embedders(faces.c.person_id == _PERSON_BY_NAME.scalar_subquery())
_LESS_OF_FACE = _less_of_embedders(faces.c.id == bindparam("fid"))


def faces_added(conn: Conn, gid: int, embedder: str, dim: int, n: int) -> None:
    """Count ``n`` new faces of ``(embedder, dim)`` in gallery ``gid``."""
    _MORE_OF_EMBEDDER[conn.dialect.name](conn, gid=gid, embedder=embedder, dim=dim, n=n)


def _less(conn: Conn, statement: Prepared, gid: int, **params: Any) -> None:
    if any(n <= 0 for (n,) in statement(conn, gid=gid, **params).fetchall()):
        _PRUNE(conn, gid=gid)


def person_faces_deleting(conn: Conn, gid: int, name: str) -> None:
    """Uncount the faces of person ``name`` of gallery ``gid``, about to be deleted with them."""
    _less(conn, _LESS_OF_PERSON, gid, name=name)


def face_deleting(conn: Conn, gid: int, face_id: int, person_id: int) -> int:
    """Uncount face ``face_id`` of gallery ``gid``, about to be deleted; the change of ``people_with_faces``."""
    _less(conn, _LESS_OF_FACE, gid, fid=face_id)
    (left,) = LESS_FACES(conn, pid=person_id).fetchone()
    return -1 if left == 0 else 0


def recount(conn: Conn, gids: Iterable[int]) -> None:
    """Count again every counter of galleries ``gids`` from their faces (after a change of many faces)."""
    gids = sorted(gids)
    if not gids:
        return
    conn.execute(delete(ge).where(ge.c.gallery_id.in_(gids)))
    conn.execute(insert(ge).from_select(
        ["gallery_id", "embedder", "dim", "faces"],
        select(faces.c.gallery_id, faces.c.embedder, faces.c.dim, func.count())
        .where(faces.c.gallery_id.in_(gids)).group_by(faces.c.gallery_id, faces.c.embedder, faces.c.dim)))
    conn.execute(update(people).where(people.c.gallery_id.in_(gids)).values(
        num_faces=select(func.count()).where(faces.c.person_id == people.c.id).scalar_subquery()))
    conn.execute(update(galleries).where(galleries.c.id.in_(gids)).values(people_with_faces=select(func.count()).where(
        people.c.gallery_id == galleries.c.id, people.c.num_faces > 0).scalar_subquery()))


def more_faces(conn: Conn, counts: Mapping[int, int]) -> None:
    """Add ``{person id: new faces}`` to the people's counts."""
    MORE_FACES.many(conn, [{"pid": pid, "n": n} for pid, n in counts.items()])
