"""What the gallery store does beyond CRUD and search: re-embedding, stats, export, legacy pickles (a part of
:class:`~modules.storage.gallery.GalleryStore`, using its transactions and lookups)."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, bindparam, delete, func, select, update

from . import legacy_pickles
from .engine import safe_url
from .migrate import head
from ..embedders.checks import check_gallery
from ..errors import InvalidRequestError
from .records import embed_crops, mismatch_error, uncroppable_error, validate_embedder_id, validate_name
from .tables import faces, gallery_embedders as ge, people
from .writes import recount

SCHEMA_VERSION = int(head("gallery").rsplit("_", 1)[1])  # gallery_0003 -> 3
#: faces a re-embedding checks the new model on (whole people, drawn at random up to this many)
CHECK_FACES = 2000


@dataclass
class _Sample:
    """The faces a re-embedding checks the new model on: ids, gallery and person ids, old embeddings or None."""

    ids: list[int]
    galleries: np.ndarray
    people: np.ndarray
    old: np.ndarray | None

    def check(self, computed: dict[int, np.ndarray], model_id: str) -> dict[str, Any]:
        """:func:`~modules.embedders.checks.check_gallery` on the new embeddings (faces deleted meanwhile left out)."""
        keep = np.array([f in computed for f in self.ids], dtype=bool)
        new = [computed[f] for f in self.ids if f in computed]
        return check_gallery(np.stack(new) if new else np.zeros((0, 1), np.float32), self.galleries[keep],
                             self.people[keep], model_id, None if self.old is None else self.old[keep])


class Maintenance:
    """Re-embedding, stats, export and the legacy pickles of a :class:`~modules.storage.gallery.GalleryStore`."""

    def embeddings_by_person(self, gallery: str, embedder_id: str) -> dict[str, np.ndarray]:
        """``{person: (n, d) float32}`` for people with faces; mismatch error if another embedder."""
        gallery = validate_name(gallery, "gallery name")
        embedder_id = validate_embedder_id(embedder_id)
        with self._read() as conn:
            gid = self._gallery_id(conn, gallery)
            groups = self._embedders(conn, gid)
            if groups and (len(groups) != 1 or next(iter(groups))[0] != embedder_id):
                raise mismatch_error(gallery, groups, embedder_id, None)
            rows = conn.execute(select(people.c.name, faces.c.embedding)
                                .join_from(faces, people, people.c.id == faces.c.person_id)
                                .where(faces.c.gallery_id == gid).order_by(faces.c.person_id, faces.c.id)).all()
        by: dict[str, list[np.ndarray]] = {}
        for name, emb in rows:
            by.setdefault(name, []).append(emb)
        return {name: np.stack(v) for name, v in by.items()}

    def reembed(self, gallery: str | None, embedder: Any, *, batch_size: int = 64, drop_uncroppable: bool = False,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Recompute every embedding in scope (one gallery or all) from its stored crop, in one transaction
        (the crops embedded before it); crop-less faces of another model are a :class:`ConflictError` unless
        ``drop_uncroppable`` deletes them.  Before anything is written the new embeddings are checked
        (:mod:`modules.embedders.checks`: finite, non-zero, not collapsed, people told apart at least about as
        well as before): a model that fails is a :class:`DegenerateEmbeddingsError` and nothing changes."""
        gallery = None if gallery is None else validate_name(gallery, "gallery name")
        model_id = validate_embedder_id(getattr(embedder, "model_id", None))
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidRequestError(f"batch_size must be a positive integer, got {batch_size!r}")
        dim = int(embedder.dim)

        def uncroppable(conn: Connection, gids: list[int], names: dict[int, str]) -> tuple[dict[str, int], list[int]]:
            rows = conn.execute(select(faces.c.id, faces.c.gallery_id).where(
                faces.c.gallery_id.in_(gids), faces.c.crop_png.is_(None),
                ~((faces.c.embedder == model_id) & (faces.c.dim == dim)))).all()
            return dict(Counter(names[int(g)] for _, g in rows)), [int(fid) for fid, _ in rows]

        def croppable(conn: Connection, gids: list[int]) -> list[int]:
            q = select(faces.c.id).where(faces.c.gallery_id.in_(gids), faces.c.crop_png.isnot(None))
            return [int(r[0]) for r in conn.execute(q.order_by(faces.c.id))]

        def embed(conn: Connection, chunk: list[int]) -> dict[int, np.ndarray]:
            rows = conn.execute(select(faces.c.id, faces.c.crop_png).where(faces.c.id.in_(chunk),
                                                                           faces.c.crop_png.isnot(None))).all()
            return embed_crops([(int(i), bytes(png)) for i, png in rows], embedder) if rows else {}

        with self._read() as conn:  # 1. what is in scope; refuse early if crop-less faces block it
            gids, names = self._scope(conn, gallery)
            counts, _ = uncroppable(conn, gids, names)
            ids = croppable(conn, gids)
            sample = self._check_sample(conn, gids)
        if counts and not drop_uncroppable:
            raise uncroppable_error(counts, model_id)
        computed: dict[int, np.ndarray] = {}
        for i in range(0, len(ids), batch_size):  # 2. embed outside the write transaction
            with self._read() as conn:
                computed.update(embed(conn, ids[i : i + batch_size]))
            if progress is not None:
                progress(min(i + batch_size, len(ids)), len(ids))
        checks = sample.check(computed, model_id)  # 3. a model unfit for the gallery stops here
        with self._write() as tx:  # 4. catch up on faces enrolled meanwhile, drop, update
            gids, names = self._scope(tx.conn, gallery, lock=True)
            counts, drop_ids = uncroppable(tx.conn, gids, names)
            if counts and not drop_uncroppable:
                raise uncroppable_error(counts, model_id)
            current = croppable(tx.conn, gids)
            late = [fid for fid in current if fid not in computed]
            for i in range(0, len(late), batch_size):
                computed.update(embed(tx.conn, late[i : i + batch_size]))
            if drop_ids:
                tx.conn.execute(delete(faces).where(faces.c.id.in_(drop_ids)))
            if current:
                tx.conn.execute(
                    update(faces).where(faces.c.id == bindparam("fid"))
                    .values(embedder=model_id, dim=dim, embedding=bindparam("emb"), gen=tx.generation),
                    [{"fid": fid, "emb": computed[fid]} for fid in current],
                )
            recount(tx.conn, gids)
            kept = tx.conn.scalar(select(func.count()).where(faces.c.gallery_id.in_(gids), faces.c.crop_png.is_(None)))
            for gid in gids:
                tx.touch(gid, grew=True)
        self._reembedded(gids, dim)
        return {"galleries": len(gids), "reembedded": len(current), "dropped": len(drop_ids),
                "kept_without_crop": int(kept), "embedder": model_id, "dim": dim, "checks": checks}

    def _check_sample(self, conn: Connection, gids: list[int]) -> _Sample:
        """The faces with a crop the new model is checked on: whole people, drawn at random (seeded) up to
        :data:`CHECK_FACES`; with their old embeddings when one model made them all."""
        with_crop = (faces.c.gallery_id.in_(gids), faces.c.crop_png.isnot(None))
        sizes = dict(conn.execute(select(faces.c.person_id, func.count()).where(*with_crop)
                                  .group_by(faces.c.person_id)).all())
        chosen, n = [], 0
        for pid in np.random.default_rng(0).permutation(sorted(sizes)).tolist():
            if n + sizes[pid] <= CHECK_FACES:
                chosen.append(pid)
                n += sizes[pid]
        rows: list[Any] = []
        for i in range(0, len(chosen), 500):
            rows += conn.execute(select(faces.c.id, faces.c.gallery_id, faces.c.person_id, faces.c.embedder,
                                        faces.c.dim, faces.c.embedding)
                                 .where(*with_crop, faces.c.person_id.in_(chosen[i : i + 500]))).all()
        rows.sort(key=lambda r: r.id)
        one_model = len({(r.embedder, r.dim) for r in rows}) == 1
        return _Sample([int(r.id) for r in rows], np.array([int(r.gallery_id) for r in rows], dtype=np.int64),
                       np.array([int(r.person_id) for r in rows], dtype=np.int64),
                       np.stack([r.embedding for r in rows]) if one_model else None)

    def stats(self, gallery: str | None = None) -> dict[str, Any]:
        gallery = None if gallery is None else validate_name(gallery, "gallery name")
        with self._read() as conn:
            gids, _ = self._scope(conn, gallery)
            n_people = conn.execute(select(func.count()).where(people.c.gallery_id.in_(gids))).scalar()
            rows = conn.execute(select(ge.c.embedder, ge.c.dim, func.sum(ge.c.faces)).where(
                ge.c.gallery_id.in_(gids), ge.c.faces > 0).group_by(ge.c.embedder, ge.c.dim)).all()
            no_crop = conn.scalar(select(func.count()).where(faces.c.gallery_id.in_(gids), faces.c.crop_png.is_(None)))
            generation = self._generation(conn)
        return {
            "path": self._location(), "schema_version": SCHEMA_VERSION, "generation": int(generation),
            "galleries": len(gids), "people": int(n_people), "faces": int(sum(r[2] for r in rows)),
            "faces_without_crop": int(no_crop), "embedders": {f"{e} ({d}-d)": int(n) for e, d, n in rows},
            "backend": self.backend, **self._stats_extra(),
        }

    def _location(self) -> str:
        return safe_url(self.engine.url)

    def export_people(self, gallery: str) -> list[dict[str, Any]]:
        """Flat rows (one per face; people without faces get one row with ``face_id`` None)."""
        gallery = validate_name(gallery, "gallery name")
        with self._read() as conn:
            gid = self._gallery_id(conn, gallery)
            rows = conn.execute(
                select(people.c.id.label("person_id"), people.c.name.label("person"), faces.c.id.label("face_id"),
                       faces.c.source, faces.c.source_sha256, faces.c.created_at, faces.c.embedder, faces.c.dim,
                       faces.c.crop_png.isnot(None).label("has_crop"), faces.c.det_score)
                .select_from(people.outerjoin(faces, faces.c.person_id == people.c.id))
                .where(people.c.gallery_id == gid).order_by(self._by_name(people.c.name), faces.c.id)).all()
        out = [{"gallery": gallery, **r._asdict()} for r in rows]
        for row in out:
            row["has_crop"] = None if row["face_id"] is None else bool(row["has_crop"])
        return out

    def import_legacy_pickle(self, path: str | Path, gallery: str, embedder_id: str, *,
                             trusted: bool = False) -> dict[str, Any]:
        return legacy_pickles.import_legacy_pickle(self, path, gallery, embedder_id, trusted=trusted)

    def export_legacy_pickle(self, path: str | Path, gallery: str, embedder_id: str,
                             mode: str = "mean") -> dict[str, Any]:
        return legacy_pickles.export_legacy_pickle(self, path, gallery, embedder_id, mode=mode)
