"""The approximate nearest-neighbour index of the embedded backend (hnswlib HNSW; why not FAISS: docs/scale.md).

:class:`AnnIndex` is one gallery's index plus each face's person and the faces per person, so search
aggregates faces into people (and counts them) without asking the database.  It is kept in step
incrementally (:meth:`AnnIndex.apply`) and saved to / loaded from a folder with a generation stamp.
Memory: about ``4*d + 8*M + 20`` bytes per face.  Searches share a read lock; changes take it exclusively.
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..files import private_dir, private_file, write_private

FORMAT = 1


@dataclass(frozen=True)
class HnswParams:
    """HNSW knobs: ``m`` links per node, ``ef_construction`` build beam, ``ef_search`` query beam,
    ``overfetch`` faces fetched per wanted person, ``threads`` for builds (0: all cores).  A query whose best
    person beats the second by less than ``refine_margin`` (cosine; 0: off) is searched again with the wider
    beam ``refine_ef`` (0: ``faces / 100`` within [2048, 16384]): such near-ties are where HNSW errs."""

    m: int = 16
    ef_construction: int = 100
    ef_search: int = 128
    overfetch: int = 4
    threads: int = 0
    refine_margin: float = 0.1
    refine_ef: int = 0

    def refine_ef_for(self, n_faces: int) -> int:
        return self.refine_ef or int(min(16384, max(2048, n_faces // 100)))


class RWLock:
    """Many readers or one writer (writers are not starved: new readers wait for a waiting writer)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = self._waiting_writers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not (self._writer or self._waiting_writers))
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            self._cond.wait_for(lambda: not (self._writer or self._readers))
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class NeedsRebuild(Exception):
    """A change the index cannot take incrementally: rebuild it from the database."""


class _Counts:
    """Faces per person as sorted ``keys`` / ``counts`` arrays (compact for 10^6 people)."""

    def __init__(self, persons: np.ndarray):
        self.keys, self.counts = (a.astype(np.int64) for a in np.unique(persons, return_counts=True))
        self.nonzero = int(np.count_nonzero(self.counts))

    def add(self, persons: np.ndarray, delta: int) -> None:
        if persons.size == 0:
            return
        keys, counts = np.unique(persons, return_counts=True)
        pos = np.searchsorted(self.keys, keys)
        known = np.zeros(keys.size, bool)
        if self.keys.size:
            known = self.keys[np.minimum(pos, self.keys.size - 1)] == keys
        np.add.at(self.counts, pos[known], delta * counts[known])
        new = ~known
        if new.any() and delta > 0:  # (removing faces of a person we do not know: nothing to do)
            # keys are unique and sorted, so are keys[new]: one insert keeps the order, no sort
            self.keys = np.insert(self.keys, pos[new], keys[new])
            self.counts = np.insert(self.counts, pos[new], counts[new])
        np.maximum(self.counts, 0, out=self.counts)
        self.nonzero = int(np.count_nonzero(self.counts))  # people with faces, kept for O(1) reads


class AnnIndex:
    """One gallery's HNSW index over unit vectors (inner product), labels = face ids."""

    def __init__(self, dim: int, embedder: str, params: HnswParams, generation: int, face_ids: np.ndarray,
                 face_person: np.ndarray, *, capacity: int | None = None, path: Path | None = None):
        """An empty index for ``capacity`` faces, or the one saved at ``path``; ``face_ids`` sorted, with
        their person ids (-1: deleted)."""
        import hnswlib

        self.dim, self.embedder, self.params, self.generation = int(dim), embedder, params, int(generation)
        self.lock = RWLock()
        self._index = hnswlib.Index(space="ip", dim=self.dim)
        if path is not None:
            self._index.load_index(str(path), allow_replace_deleted=True)
        else:
            self._index.init_index(max_elements=max(int(capacity or 0), 1024), M=params.m,
                                   ef_construction=params.ef_construction, allow_replace_deleted=True)
        self._index.set_ef(params.ef_search)
        self._threads = params.threads or (os.cpu_count() or 1)
        self.face_ids, self.face_person = face_ids.astype(np.int64), face_person.astype(np.int64)
        live = self.face_person >= 0
        self.people = _Counts(self.face_person[live])
        self.n_live = int(live.sum())
        self.changes_since_save = 0

    # --- building and keeping in step --------------------------------------------------
    @classmethod
    def build(cls, embedder: str, vectors: np.ndarray, face_ids: np.ndarray, face_person: np.ndarray,
              params: HnswParams, generation: int) -> "AnnIndex":
        n, dim = vectors.shape
        order = np.argsort(face_ids, kind="stable")
        idx = cls(dim, embedder, params, generation, face_ids[order], face_person[order], capacity=int(n * 1.1) + 1024)
        for s in range(0, n, 100_000):  # chunks bound the temporary copies
            chunk = slice(s, s + 100_000)
            idx._index.add_items(vectors[order[chunk]], idx.face_ids[chunk], num_threads=idx._threads)
        idx.changes_since_save = n
        return idx

    def _positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.face_ids, ids)
        ok = pos < self.face_ids.size
        ok[ok] = self.face_ids[pos[ok]] == ids[ok]
        return pos, ok

    def apply(self, deleted: np.ndarray, ids: np.ndarray, persons: np.ndarray, vectors: np.ndarray,
              generation: int) -> None:
        """Catch up: drop ``deleted`` face ids, then insert or replace ``ids`` (with their persons);
        :class:`NeedsRebuild` (changing nothing) for what an update cannot express."""
        deleted, ids, persons = (np.asarray(a, np.int64) for a in (deleted, ids, persons))
        with self.lock.write():
            if ids.size:
                if vectors.ndim != 2 or vectors.shape[1] != self.dim:
                    raise NeedsRebuild("another dimension")
                pos, ok = self._positions(ids)
                if (self.face_person[pos[ok]] < 0).any():  # ids are never reused: a deleted id cannot return
                    raise NeedsRebuild("a deleted face came back")
            if deleted.size:
                dpos, dok = self._positions(deleted)
                dpos = dpos[dok]
                live = dpos[self.face_person[dpos] >= 0]
                for fid in self.face_ids[live].tolist():
                    self._index.mark_deleted(fid)
                self.people.add(self.face_person[live], -1)
                self.face_person[live] = -1
                self.n_live -= int(live.size)
            if ids.size:
                pos, ok = self._positions(ids)  # again: deletions above may apply to these ids
                ok[ok] = self.face_person[pos[ok]] >= 0
                if ok.any():  # re-embedded with the same model: replaced in place
                    p = pos[ok]
                    self.people.add(self.face_person[p], -1)
                    self._index.add_items(vectors[ok], ids[ok], num_threads=1)
                    self.face_person[p] = persons[ok]
                    self.people.add(persons[ok], +1)
                new = ~ok
                if new.any():
                    new_ids = ids[new]
                    _, nfound = self._positions(new_ids)
                    if nfound.any():  # deleted in this very catch-up and re-added
                        raise NeedsRebuild("a deleted face came back")
                    need = self._index.get_current_count() + int(new.sum())
                    if need > self._index.get_max_elements():
                        self._index.resize_index(max(need, int(self._index.get_max_elements() * 1.5)))
                    self._index.add_items(vectors[new], new_ids, num_threads=self._threads, replace_deleted=True)
                    all_ids = np.concatenate([self.face_ids, new_ids])
                    all_people = np.concatenate([self.face_person, persons[new]])
                    if self.face_ids.size and new_ids.min() < self.face_ids[-1] or not np.all(np.diff(new_ids) > 0):
                        order = np.argsort(all_ids, kind="stable")
                        all_ids, all_people = all_ids[order], all_people[order]
                    self.face_ids, self.face_person = all_ids, all_people
                    self.people.add(persons[new], +1)
                    self.n_live += int(new.sum())
            self.changes_since_save += int(deleted.size + ids.size)
            self.generation = int(generation)
            self._compact_if_sparse()

    def _compact_if_sparse(self) -> None:
        """Forget deleted faces in the id arrays once they are most of them (hnswlib reuses their slots)."""
        dead = self.face_ids.size - self.n_live
        if dead > 1024 and dead > self.n_live:
            keep = self.face_person >= 0
            self.face_ids, self.face_person = self.face_ids[keep], self.face_person[keep]

    # --- search --------------------------------------------------------------------------
    def knn(self, queries: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(face ids, similarities, person ids)``, each ``(m, k')`` with ``k' = min(k, live faces)``."""
        with self.lock.read():
            k = min(int(k), self.n_live)
            if k <= 0:
                empty = np.zeros((queries.shape[0], 0))
                return empty.astype(np.int64), empty.astype(np.float32), empty.astype(np.int64)
            ef = max(int(ef or self.params.ef_search), k)
            total = self._index.get_current_count()
            while True:
                try:
                    # set_ef is global to the index; a reader racing another's value only changes the
                    # beam width of its search (hnswlib searches with max(ef, k)), never correctness
                    self._index.set_ef(ef)
                    labels, dist = self._index.knn_query(queries, k=k, num_threads=1)
                    break
                except RuntimeError:  # fewer than k reachable: many deleted, or ef too small
                    if ef < total:
                        ef = min(total, ef * 4)
                    elif k > 1:
                        k //= 2
                    else:
                        raise
            labels = labels.astype(np.int64)
            pos, ok = self._positions(labels.ravel())
            person = np.full(labels.size, -1, np.int64)
            person[ok] = self.face_person[pos[ok]]
        return labels, (1.0 - dist).astype(np.float32), person.reshape(labels.shape)

    @property
    def num_people(self) -> int:
        return self.people.nonzero

    @property
    def groups(self) -> dict[tuple[str, int], int]:
        """Faces per ``(embedder, dim)``, as the exact matrix has them."""
        return {(self.embedder, self.dim): self.n_live} if self.n_live else {}

    def memory_bytes(self) -> int:
        n = self._index.get_max_elements()
        per = 4 * self.dim + 8 * self.params.m + 4 * 2 + 8 + 4  # vector, level-0 links, counts, label
        return int(n * per + self.face_ids.nbytes + self.face_person.nbytes + self.people.keys.nbytes * 2)

    # --- persistence --------------------------------------------------------------------------
    def save(self, folder: Path, stem: str, stamp: dict[str, Any]) -> None:
        """Write ``stem.hnsw``, ``stem.npz`` and ``stem.json`` (the stamp last, each atomically)."""
        private_dir(folder)
        with self.lock.read():
            tmp_h = folder / f".{stem}.hnsw.tmp{os.getpid()}"
            tmp_n = folder / f".{stem}.tmp{os.getpid()}.npz"
            self._index.save_index(str(tmp_h))
            np.savez(tmp_n, face_ids=self.face_ids, face_person=self.face_person)
            for tmp in (tmp_h, tmp_n):  # hnswlib and numpy write with the process's umask
                private_file(tmp)
            meta = dict(stamp, format=FORMAT, generation=self.generation, dim=self.dim, embedder=self.embedder,
                        n_live=self.n_live, params={"m": self.params.m, "ef_construction": self.params.ef_construction})
            self.changes_since_save = 0
        # the stamp is removed first and written last: a crash in between leaves no usable stamp
        (folder / f"{stem}.json").unlink(missing_ok=True)
        os.replace(tmp_h, folder / f"{stem}.hnsw")
        os.replace(tmp_n, folder / f"{stem}.npz")
        tmp_j = folder / f".{stem}.json.tmp{os.getpid()}"
        write_private(tmp_j, json.dumps(meta))
        os.replace(tmp_j, folder / f"{stem}.json")

    @staticmethod
    def read_stamp(folder: Path, stem: str) -> dict[str, Any] | None:
        try:
            meta = json.loads((folder / f"{stem}.json").read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None

    @classmethod
    def load(cls, folder: Path, stem: str, meta: dict[str, Any], params: HnswParams) -> "AnnIndex":
        # the graph's own m / ef_construction, this process's search knobs
        params = replace(params, m=int(meta["params"]["m"]), ef_construction=int(meta["params"]["ef_construction"]))
        with np.load(folder / f"{stem}.npz") as z:
            face_ids, face_person = z["face_ids"], z["face_person"]
        idx = cls(int(meta["dim"]), str(meta["embedder"]), params, int(meta["generation"]), face_ids, face_person,
                  path=folder / f"{stem}.hnsw")
        if idx.n_live != int(meta["n_live"]):
            raise ValueError("index files do not match their stamp")
        return idx
