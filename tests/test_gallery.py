"""The SQLite gallery: persistence, search ranking, errors, atomicity, concurrency, re-embedding.

Embeddings are random unit vectors: the storage and search logic is under test
here, not a model.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pytest

from modules.embedders.base import Embedder
from modules.errors import (
    ConfigError,
    ConflictError,
    EmbedderMismatchError,
    FaceNotFoundError,
    GalleryNotFoundError,
    InvalidRequestError,
    PersonNotFoundError,
)
from modules.gallery import NewFace, SQLiteGallery, open_gallery

ROOT = Path(__file__).resolve().parents[1]
DIM = 16


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def faces(rng: np.random.Generator, n: int, embedder: str = "m1", dim: int = DIM, **kw) -> list[NewFace]:
    return [NewFace(embedding=e, embedder=embedder, **kw) for e in unit(rng, n, dim)]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "gallery.db"


@pytest.fixture
def store(db: Path):
    s = SQLiteGallery(db)
    yield s
    s.close()


def snapshot(store: SQLiteGallery) -> list[tuple]:
    """Everything a test could care about, to compare 'unchanged'."""
    conn = sqlite3.connect(store.path)
    try:
        return [
            conn.execute("SELECT * FROM galleries ORDER BY id").fetchall(),
            conn.execute("SELECT * FROM people ORDER BY id").fetchall(),
            conn.execute("SELECT * FROM faces ORDER BY id").fetchall(),
        ]
    finally:
        conn.close()


# --- basics --------------------------------------------------------------------------
def test_persists_across_reopen(db, rng):
    s = SQLiteGallery(db)
    crop = cv2.imencode(".png", np.zeros((112, 112, 3), np.uint8))[1].tobytes()
    new = NewFace(
        embedding=unit(rng, 1)[0],
        embedder="m1",
        crop_png=crop,
        source="photos/alice.jpg",
        source_sha256="AB" * 32,
        box=np.array([1.0, 2.0, 30.0, 40.0]),
        landmarks=np.arange(10, dtype=float).reshape(5, 2),
        det_score=0.93,
    )
    [fid] = s.add_faces("main", "alice", [new])
    s.add_person("main", "bob", metadata={"team": "x"})
    s.close()

    s2 = open_gallery(str(db))
    info = s2.get_face(fid, with_embedding=True)
    assert info.person == "alice" and info.gallery == "main" and info.embedder == "m1" and info.dim == DIM
    assert info.has_crop and info.source == "photos/alice.jpg" and info.source_sha256 == "ab" * 32
    assert info.box == [1.0, 2.0, 30.0, 40.0] and info.landmarks == np.arange(10).reshape(5, 2).tolist()
    assert info.det_score == pytest.approx(0.93)
    np.testing.assert_allclose(info.embedding, new.embedding, atol=1e-7)
    assert s2.get_face_crop(fid) == crop
    assert s2.get_person("main", "bob").metadata == {"team": "x"}
    [[top]] = s2.search("main", new.embedding, "m1", top_k=1)
    assert (top.person, top.face_id) == ("alice", fid) and top.similarity == pytest.approx(1.0, abs=1e-5)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == 1
    conn.close()
    s2.close()


def test_open_gallery_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_gallery("sqlite:///rel/g.db").path == Path("rel/g.db")
    assert (tmp_path / "rel" / "g.db").exists()
    assert open_gallery(f"sqlite:///{tmp_path}/abs.db").path == tmp_path / "abs.db"
    assert open_gallery(tmp_path / "p.db").path == tmp_path / "p.db"
    with pytest.raises(ConfigError):
        open_gallery("postgresql://u@h/db")
    with pytest.raises(ConfigError):
        open_gallery(":memory:")
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError):
        open_gallery(tmp_path / "junk.db")


def test_newer_schema_refused(db):
    SQLiteGallery(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="schema version 99"):
        SQLiteGallery(db)


@pytest.mark.parametrize("bad", ["", "   ", "a/b", "x" * 129, "tab\there", "nl\n", ".", "..", " lead", 7, None])
def test_invalid_names(store, rng, bad):
    with pytest.raises(InvalidRequestError):
        store.add_person("main", bad)
    with pytest.raises(InvalidRequestError):
        store.add_faces(bad, "alice", faces(rng, 1))
    assert store.list_galleries() == []


def test_names_are_nfc_normalised(store, rng):
    nfd = unicodedata.normalize("NFD", "José")
    store.add_faces("main", nfd, faces(rng, 1))
    assert store.get_person("main", "José").num_faces == 1
    with pytest.raises(ConflictError):
        store.add_person("main", "José")


# --- search ------------------------------------------------------------------------------
def brute_force(queries, per_person, k):
    out = []
    for q in queries:
        scores = {n: float((e @ q).max()) for n, e in per_person.items()}
        out.append(sorted(scores.items(), key=lambda kv: -kv[1])[:k])
    return out


@pytest.mark.parametrize("top_k", [1, 5, 100])
def test_search_matches_brute_force(store, rng, top_k):
    per_person = {}
    for i in range(40):
        embs = unit(rng, int(rng.integers(1, 6)))
        name = f"person{i:02d}"
        store.add_faces("main", name, [NewFace(e, "m1") for e in embs])
        per_person[name] = embs
    store.add_person("main", "no-faces-yet")  # never a candidate
    # queries near some enrolled faces, plus random ones
    queries = np.concatenate([per_person["person07"][:1] + 0.05 * unit(rng, 1), unit(rng, 9)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    got = store.search("main", queries, "m1", top_k=top_k)
    want = brute_force(queries, per_person, top_k)
    assert len(got) == len(queries)
    for q, g, w in zip(queries, got, want):
        assert [c.person for c in g] == [n for n, _ in w]
        np.testing.assert_allclose([c.similarity for c in g], [s for _, s in w], atol=1e-5)
        for c in g:  # face_id is the face that gave the max
            face = store.get_face(c.face_id, gallery="main", with_embedding=True)
            assert face.person == c.person
            assert float(face.embedding @ q) == pytest.approx(c.similarity, abs=1e-5)
    assert got[0][0].person == "person07"
    # one 1-D query gives one list
    assert len(store.search("main", queries[0], "m1")) == 1
    assert store.num_people("main") == 40


def test_search_empty_gallery_and_errors(store, rng):
    store.ensure_gallery("empty")
    assert store.search("empty", unit(rng, 3), "whatever", top_k=3) == [[], [], []]
    with pytest.raises(GalleryNotFoundError):
        store.search("nope", unit(rng, 1), "m1")
    store.add_faces("main", "a", faces(rng, 1))
    with pytest.raises(InvalidRequestError):
        store.search("main", np.full(DIM, np.nan), "m1")
    with pytest.raises(InvalidRequestError):
        store.search("main", unit(rng, 1), "m1", top_k=0)


def test_embedder_mismatch(store, rng):
    store.add_faces("main", "alice", faces(rng, 2, embedder="sface_2021dec"))
    with pytest.raises(EmbedderMismatchError) as exc:
        store.search("main", unit(rng, 1), "arcface_r100")
    msg = exc.value.message
    assert "sface_2021dec" in msg and "arcface_r100" in msg
    assert "python -m modules.cli reembed --gallery main --config CONFIG" in msg
    assert exc.value.status == 409
    with pytest.raises(EmbedderMismatchError):  # same id, other dim
        store.search("main", unit(rng, 1, dim=DIM * 2), "sface_2021dec")
    before = snapshot(store)
    with pytest.raises(EmbedderMismatchError):  # enrolling another model's embeddings is refused too
        store.add_faces("main", "bob", faces(rng, 1, embedder="arcface_r100"))
    assert snapshot(store) == before
    with pytest.raises(EmbedderMismatchError):
        store.embeddings_by_person("main", "arcface_r100")


# --- people / faces CRUD ------------------------------------------------------------------
def test_people_crud_and_status_codes(store, rng):
    with pytest.raises(GalleryNotFoundError) as e404:
        store.get_gallery("main")
    assert e404.value.status == 404
    store.create_gallery("main")
    with pytest.raises(ConflictError) as e409:
        store.create_gallery("main")
    assert e409.value.status == 409
    store.add_person("main", "alice")
    with pytest.raises(ConflictError):
        store.add_person("main", "alice")
    with pytest.raises(GalleryNotFoundError):
        store.add_person("other", "alice", create_missing=False)
    ids = store.add_faces("main", "bob", faces(rng, 3))
    assert store.get_person("main", "bob").num_faces == 3

    with pytest.raises(PersonNotFoundError):
        store.rename_person("main", "carol", "dave")
    with pytest.raises(ConflictError):
        store.rename_person("main", "alice", "bob")
    p = store.rename_person("main", "bob", "robert")
    assert p.name == "robert" and p.num_faces == 3
    with pytest.raises(PersonNotFoundError):
        store.get_person("main", "bob")
    assert {c.person for c in store.search("main", unit(rng, 1), "m1", top_k=5)[0]} == {"robert"}

    store.delete_face(ids[0])
    with pytest.raises(FaceNotFoundError):
        store.get_face(ids[0])
    with pytest.raises(FaceNotFoundError):
        store.delete_face(ids[0])
    store.ensure_gallery("other")
    with pytest.raises(FaceNotFoundError):  # scoped to another gallery
        store.get_face(ids[1], gallery="other")
    with pytest.raises(FaceNotFoundError):  # no crop stored
        store.get_face_crop(ids[1])
    with pytest.raises(InvalidRequestError):
        store.get_face("abc")
    assert [f.id for f in store.list_faces("main", "robert")] == ids[1:]

    assert store.delete_person("main", "robert") == 2
    with pytest.raises(PersonNotFoundError):
        store.delete_person("main", "robert")
    assert store.search("main", unit(rng, 1), "m1") == [[]]
    assert store.num_people("main") == 0
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0] == 0  # cascaded
    conn.close()

    store.add_faces("main", "x", faces(rng, 2))
    assert store.delete_gallery("main") == {"people": 2, "faces": 2}
    assert [g.name for g in store.list_galleries()] == ["other"]


def test_list_people_pagination(store, rng):
    for i in range(7):
        store.add_faces("main", f"p{i}", faces(rng, i + 1))
    page, total = store.list_people("main", offset=2, limit=3)
    assert total == 7
    assert [(p.name, p.num_faces) for p in page] == [("p2", 3), ("p3", 4), ("p4", 5)]
    everyone, _ = store.list_people("main", limit=None)
    assert len(everyone) == 7
    with pytest.raises(InvalidRequestError):
        store.list_people("main", offset=-1)
    info = store.get_gallery("main")
    assert (info.num_people, info.num_faces, info.embedders) == (7, 28, {"m1": 28})
    st = store.stats()
    assert (st["galleries"], st["people"], st["faces"]) == (1, 7, 28)


def test_export_people_rows(store, rng):
    store.add_faces("main", "alice", faces(rng, 2, source="a.jpg"))
    store.add_person("main", "bob")
    rows = store.export_people("main")
    assert [(r["person"], r["source"]) for r in rows] == [("alice", "a.jpg"), ("alice", "a.jpg"), ("bob", None)]
    assert rows[0]["embedder"] == "m1" and rows[2]["face_id"] is None
    assert set(rows[0]) >= {"person", "face_id", "source", "created_at", "embedder"}


# --- atomicity -----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["wrong_dim", "nan", "zero", "bad_png", "bad_box"])
def test_add_faces_all_or_nothing(store, rng, bad):
    store.add_faces("main", "alice", faces(rng, 2))
    before = snapshot(store)
    batch = faces(rng, 3)
    if bad == "wrong_dim":
        batch[1] = NewFace(unit(rng, 1, DIM + 1)[0], "m1")
    elif bad == "nan":
        batch[2].embedding = np.full(DIM, np.nan, np.float32)
    elif bad == "zero":
        batch[0].embedding = np.zeros(DIM, np.float32)
    elif bad == "bad_png":
        batch[1].crop_png = b"GIF89a..."
    else:
        batch[2].box = [1, 2, 3]
    with pytest.raises(InvalidRequestError):
        store.add_faces("main", "newbie", batch)
    with pytest.raises(InvalidRequestError):
        store.add_faces("fresh-gallery", "alice", batch)
    assert snapshot(store) == before


def test_failure_inside_transaction_rolls_back(store, rng):
    store.add_faces("main", "alice", faces(rng, 1))
    before = snapshot(store)
    # the first person's faces are inserted before the second person turns out missing
    with pytest.raises(PersonNotFoundError):
        store.add_faces_many("main", {"alice": faces(rng, 2), "ghost": faces(rng, 2)}, create_missing=False)
    assert snapshot(store) == before


# --- cross-process visibility and concurrency ---------------------------------------------------
def test_other_process_enrollment_seen_by_next_search(db, rng):
    a, b = SQLiteGallery(db), SQLiteGallery(db)  # two objects = two processes' views
    a.add_faces("main", "alice", faces(rng, 2))
    q = unit(rng, 1)
    assert [c.person for c in a.search("main", q, "m1", top_k=5)[0]] == ["alice"]
    loads = a.cache_loads
    a.search("main", q, "m1")
    assert a.cache_loads == loads  # nothing changed: no reload
    b.add_faces("main", "bob", [NewFace(q[0], "m1")])
    top = a.search("main", q, "m1", top_k=5)[0]
    assert top[0].person == "bob" and top[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert a.cache_loads == loads + 1
    b.rename_person("main", "bob", "robert")
    assert a.search("main", q, "m1")[0][0].person == "robert"
    b.delete_person("main", "robert")
    assert [c.person for c in a.search("main", q, "m1")[0]] == ["alice"]
    # a write to another gallery does not invalidate this one
    loads = a.cache_loads
    b.add_faces("elsewhere", "zed", faces(rng, 1))
    a.search("main", q, "m1")
    assert a.cache_loads == loads
    a.close(), b.close()


def test_many_threads_enrolling_lose_nothing(db):
    stores = [SQLiteGallery(db), SQLiteGallery(db)]
    n_threads, per_thread, k = 8, 10, 3
    errors: list[BaseException] = []

    def work(t: int) -> None:
        rng = np.random.default_rng(t)
        s = stores[t % 2]
        try:
            for i in range(per_thread):
                s.add_faces("main", f"t{t}-p{i % 4}", faces(rng, k, source=f"t{t}-{i}"))
                s.search("main", unit(rng, 2), "m1", top_k=3)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    st = stores[0].stats("main")
    assert st["faces"] == n_threads * per_thread * k
    assert st["people"] == n_threads * 4
    assert stores[1].num_people("main") == n_threads * 4
    assert stores[0].integrity_check() == []
    for s in stores:
        s.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_worker_gets_its_own_connection(store, rng):
    """gunicorn forks workers after the app (and its store) was created."""
    store.add_faces("main", "parent", faces(rng, 1))
    store.search("main", unit(rng, 1), "m1")
    pid = os.fork()
    if pid == 0:  # child: use the inherited store object, then leave without cleanup
        code = 1
        try:
            store.add_faces("main", "child", faces(np.random.default_rng(5), 2))
            code = 0 if store.num_people("main") == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert {c.person for c in store.search("main", unit(rng, 1), "m1", top_k=5)[0]} == {"parent", "child"}
    assert store.integrity_check() == []


def test_busy_database_is_a_503(db, rng):
    from modules.errors import ServiceUnavailableError

    store = SQLiteGallery(db, busy_timeout_s=0.2)
    store.add_faces("main", "alice", faces(rng, 1))
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        before = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as exc:
            store.add_faces("main", "bob", faces(rng, 1))
        assert exc.value.status == 503 and time.monotonic() - before < 5
        assert store.search("main", unit(rng, 1), "m1")[0][0].person == "alice"  # readers are not blocked
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.add_faces("main", "bob", faces(rng, 1))
    assert store.num_people("main") == 2
    store.close()


ENROLL_LOOP = textwrap.dedent(
    """
    import sys
    import numpy as np
    from modules.gallery import NewFace, SQLiteGallery

    path, k = sys.argv[1], int(sys.argv[2])
    store = SQLiteGallery(path)
    rng = np.random.default_rng(0)
    crop = b"\\x89PNG\\r\\n\\x1a\\n" + bytes(20000)
    i = 0
    while True:
        x = rng.normal(size=(k, 16))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store.add_faces_many(
            "main",
            {f"p{i}-{j}": [NewFace(x[j], "m1", crop_png=crop, source=f"batch-{i}")] for j in range(k)},
        )
        i += 1
    """
)


@pytest.mark.parametrize("kill_after_batches", [3, 12])
def test_sigkill_during_enrollment_leaves_consistent_db(db, tmp_path, kill_after_batches):
    k = 8
    script = tmp_path / "enroll_loop.py"
    script.write_text(ENROLL_LOOP)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(k)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if db.exists():
                try:
                    conn = sqlite3.connect(db, timeout=5)
                    n = conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
                    conn.close()
                except sqlite3.OperationalError:
                    n = 0
                if n >= kill_after_batches * k:
                    break
            assert proc.poll() is None, "the enrolling subprocess died on its own"
            time.sleep(0.005)
        else:
            pytest.fail("the subprocess did not enroll in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    n_faces = conn.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
    n_people = conn.execute("SELECT COUNT(*) FROM people").fetchone()[0]
    per_batch = conn.execute("SELECT source, COUNT(*) FROM faces GROUP BY source").fetchall()
    conn.close()
    assert n_faces >= kill_after_batches * k and n_faces % k == 0 and n_people == n_faces
    assert all(count == k for _, count in per_batch)
    # the file is still usable
    s = SQLiteGallery(db)
    s.add_faces("main", "after", faces(np.random.default_rng(1), 1))
    assert s.stats("main")["faces"] == n_faces + 1
    s.close()


# --- re-embedding ------------------------------------------------------------------------------
class PixelEmbedder(Embedder):
    """A real embedder whose network is a fixed random projection of the pixels."""

    def __init__(self, model_id: str = "pixproj-v1", dim: int = 24):
        super().__init__(model_id=model_id, dim=dim, flip=False)
        self._w = np.random.default_rng(7).normal(size=(112 * 112 * 3, dim)).astype(np.float32)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = batch.reshape(len(batch), -1).astype(np.float32) / 255.0 - 0.5
        return x @ self._w


def crop_png(rng: np.random.Generator) -> tuple[np.ndarray, bytes]:
    img = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    return img, cv2.imencode(".png", img)[1].tobytes()


def test_reembed_from_crops(store, rng):
    emb = PixelEmbedder()
    crops = {}
    for name in ("alice", "bob", "carol"):
        img, png = crop_png(rng)
        crops[name] = img
        store.add_faces("main", name, [NewFace(unit(rng, 1)[0], "old-model", crop_png=png, source=f"{name}.jpg")])
    query = emb.embed(crops["bob"][None])
    with pytest.raises(EmbedderMismatchError):
        store.search("main", query, emb.model_id)

    calls = []
    counts = store.reembed("main", emb, batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert counts["reembedded"] == 3 and counts["dropped"] == 0 and counts["embedder"] == emb.model_id
    assert calls[-1] == (3, 3)
    for f in store.list_faces("main", "alice", with_embeddings=True):
        assert (f.embedder, f.dim) == (emb.model_id, emb.dim)
        np.testing.assert_allclose(f.embedding, emb.embed(crops["alice"][None])[0], atol=1e-5)
    [[top, *_]] = store.search("main", query, emb.model_id, top_k=3)
    assert top.person == "bob" and top.similarity == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(EmbedderMismatchError):
        store.search("main", unit(rng, 1), "old-model")


def test_reembed_refuses_or_drops_uncroppable(store, rng):
    emb = PixelEmbedder()
    _, png = crop_png(rng)
    store.add_faces("main", "alice", [NewFace(unit(rng, 1)[0], "old-model", crop_png=png)])
    store.add_faces("main", "legacy", faces(rng, 2, embedder="old-model"))  # no crops
    before = snapshot(store)
    with pytest.raises(ConflictError, match="2 face"):
        store.reembed("main", emb)
    assert snapshot(store) == before
    counts = store.reembed(None, emb, drop_uncroppable=True)
    assert (counts["reembedded"], counts["dropped"], counts["galleries"]) == (1, 2, 1)
    assert store.get_person("main", "legacy").num_faces == 0
    assert store.search("main", unit(rng, 1, emb.dim), emb.model_id)[0][0].person == "alice"
