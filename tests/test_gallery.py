"""The gallery backends: persistence, search ranking, errors, atomicity, concurrency, re-embedding.

Every test that is about behaviour runs against both backends: the embedded
SQLite file and PostgreSQL with pgvector (a throwaway server from the
``pgserver`` package, see ``tests/pg_fixtures.py``).  SQLite-only tests (its
file format, WAL, SIGKILL of a writer, the busy timeout) say so in their name.
Embeddings are random unit vectors: the storage and search logic is under test
here, not a model.
"""
from __future__ import annotations

import hashlib
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
    DegenerateEmbeddingsError,
    EmbedderMismatchError,
    FaceNotFoundError,
    GalleryNotFoundError,
    InvalidRequestError,
    PersonNotFoundError,
    ServiceUnavailableError,
)
from modules.storage import NewFace, open_gallery
from modules.storage.migrate import head

ROOT = Path(__file__).resolve().parents[1]
DIM = 16
BACKENDS = ["sqlite", "postgres"]


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


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def gallery_url(backend, db, request) -> str:
    """Where a fresh, empty gallery of this test's own lives: a SQLite path or a PostgreSQL URL."""
    if backend == "sqlite":
        return str(db)
    return request.getfixturevalue("pg_url")


def open_store(url: str, **kw):
    if url.startswith("postgresql://"):
        kw.setdefault("ann_autobuild", "sync")
    return open_gallery(url, **kw)


@pytest.fixture
def store(gallery_url):
    s = open_store(gallery_url)
    yield s
    s.close()


def is_pg(store) -> bool:
    return store.backend == "postgresql"


def query_all(store, sql: str) -> list[tuple]:
    """Rows of ``sql`` read straight from the backend's database (not through the store)."""
    if is_pg(store):
        import psycopg

        with psycopg.connect(store.url) as conn:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def snapshot(store) -> list[list[tuple]]:
    """Everything a test could care about, to compare 'unchanged'."""
    if is_pg(store):
        return [
            query_all(store, "SELECT * FROM galleries ORDER BY id"),
            query_all(store, "SELECT * FROM people ORDER BY id"),
            query_all(store, "SELECT id, person_id, gallery_id, embedder, dim, embedding::text, crop_png, source"
                             " FROM faces ORDER BY id"),
            query_all(store, "SELECT * FROM gallery_embedders ORDER BY 1, 2, 3"),
        ]
    return [
        query_all(store, "SELECT * FROM galleries ORDER BY id"),
        query_all(store, "SELECT * FROM people ORDER BY id"),
        query_all(store, "SELECT * FROM faces ORDER BY id"),
    ]


def check_counters(store) -> None:
    """The counters the writes keep (faces per person, people with faces, faces per embedder) equal a recount."""
    assert query_all(
        store, "SELECT p.id, p.num_faces, (SELECT count(*) FROM faces f WHERE f.person_id = p.id) FROM people p"
        " WHERE p.num_faces <> (SELECT count(*) FROM faces f WHERE f.person_id = p.id)"
    ) == []
    assert query_all(
        store, "SELECT g.id FROM galleries g WHERE g.people_with_faces <>"
        " (SELECT count(*) FROM people p WHERE p.gallery_id = g.id AND EXISTS"
        " (SELECT 1 FROM faces f WHERE f.person_id = p.id))"
    ) == []
    got = query_all(store, "SELECT gallery_id, embedder, dim, faces FROM gallery_embedders ORDER BY 1, 2, 3")
    want = query_all(store, "SELECT gallery_id, embedder, dim, count(*) FROM faces GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
    assert got == want


# --- basics --------------------------------------------------------------------------
def test_persists_across_reopen(gallery_url, rng):
    s = open_store(gallery_url)
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

    s2 = open_store(gallery_url)
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
    assert s2.get_face(fid, gallery="main").created_at.endswith("Z")
    assert query_all(s2, "SELECT version_num FROM facerec_schema") == [(head("gallery"),)]
    if is_pg(s2):
        assert s2.stats()["pgvector"] >= "0.5"
    else:
        conn = sqlite3.connect(gallery_url)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    s2.close()


def test_open_gallery_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_gallery("sqlite:///rel/g.db").path == tmp_path / "rel" / "g.db"
    assert (tmp_path / "rel" / "g.db").exists()
    assert open_gallery(f"sqlite:///{tmp_path}/abs.db").path == tmp_path / "abs.db"
    assert open_gallery(tmp_path / "p.db").path == tmp_path / "p.db"
    with pytest.raises(ConfigError, match="cannot connect"):
        open_gallery("postgresql://u@127.0.0.1:1/db", connect_timeout_s=1)
    with pytest.raises(ConfigError, match="scheme"):
        open_gallery("mysql://u@h/db")
    with pytest.raises(ConfigError):
        open_gallery(":memory:")
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError):
        open_gallery(tmp_path / "junk.db")


def test_newer_schema_refused(gallery_url):
    s = open_store(gallery_url)
    if is_pg(s):
        import psycopg

        with psycopg.connect(gallery_url) as conn:
            conn.execute("UPDATE facerec_schema SET version_num = 'gallery_0099' WHERE version_num LIKE 'gallery%'")
    else:
        conn = sqlite3.connect(gallery_url)
        conn.execute("UPDATE facerec_schema SET version_num = 'gallery_0099' WHERE version_num LIKE 'gallery%'")
        conn.commit()
        conn.close()
    s.close()
    with pytest.raises(ConfigError, match="schema version gallery_0099"):
        open_store(gallery_url)


SQLITE_SCHEMA_1 = [  # the first SQLite gallery schema (before the change log), as the previous version wrote it
    """CREATE TABLE galleries (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL, generation INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE people (id INTEGER PRIMARY KEY AUTOINCREMENT,
        gallery_id INTEGER NOT NULL REFERENCES galleries(id) ON DELETE CASCADE, name TEXT NOT NULL,
        created_at TEXT NOT NULL, metadata TEXT, UNIQUE (gallery_id, name))""",
    """CREATE TABLE faces (id INTEGER PRIMARY KEY AUTOINCREMENT,
        person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE, embedder TEXT NOT NULL,
        dim INTEGER NOT NULL CHECK (dim > 0), embedding BLOB NOT NULL CHECK (length(embedding) = 4 * dim),
        crop_png BLOB, source TEXT, source_sha256 TEXT, box TEXT, landmarks TEXT, det_score REAL,
        created_at TEXT NOT NULL)""",
    "CREATE INDEX faces_person ON faces(person_id)",
    "CREATE INDEX faces_source_sha256 ON faces(source_sha256) WHERE source_sha256 IS NOT NULL",
]


def test_migration_from_schema_1(db, rng):
    """A version-1 SQLite file (before the change log) is migrated in place and keeps its faces."""
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL)")
    for sql in SQLITE_SCHEMA_1:
        conn.execute(sql)
    conn.execute("INSERT INTO meta VALUES ('schema_version', 1), ('generation', 1), ('created_at', 'x')")
    conn.execute("INSERT INTO galleries (name, created_at, generation) VALUES ('main', 'x', 1)")
    conn.execute("INSERT INTO people (gallery_id, name, created_at) VALUES (1, 'alice', 'x')")
    e = unit(rng, 1)[0]
    conn.execute(
        "INSERT INTO faces (person_id, embedder, dim, embedding, created_at) VALUES (1, 'm1', ?, ?, 'x')",
        (DIM, e.astype("<f4").tobytes()),
    )
    conn.commit()
    conn.close()
    s = open_gallery(db)
    assert s.search("main", e, "m1")[0][0].person == "alice"
    s.delete_person("main", "alice")
    assert query_all(s, "SELECT face_id FROM face_deletions") == [(1,)]
    s.close()


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


@pytest.mark.parametrize("bad", [
    "unknown", "Unknown", "no face", "NO FACE",  # the recognizer's own answers
    "ali\u202ece", "bob\u200b", "\u2066eve\u2069", "z\u200dz", "x\ufeff",  # bidi override, zero-width, isolates, BOM
])
def test_reserved_and_lookalike_person_names_are_refused(store, rng, bad):
    store.add_person("main", "alice")
    with pytest.raises(InvalidRequestError):
        store.add_person("main", bad)
    with pytest.raises(InvalidRequestError):
        store.add_faces("main", bad, faces(rng, 1))
    with pytest.raises(InvalidRequestError):
        store.rename_person("main", "alice", bad)
    assert [p.name for p in store.list_people("main")[0]] == ["alice"]
    assert store.get_person("main", "alice").num_faces == 0


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
    assert query_all(store, "SELECT COUNT(*) FROM faces") == [(0,)]  # cascaded

    store.add_faces("main", "x", faces(rng, 2))
    assert store.delete_gallery("main") == {"people": 2, "faces": 2}
    assert [g.name for g in store.list_galleries()] == ["other"]
    with pytest.raises(GalleryNotFoundError):
        store.num_people("main")
    check_counters(store)


def test_counters_follow_every_write(store, rng):
    """Each kind of write keeps the counts right: new and known people, a person's first and last face, a
    person, a gallery, a failed write."""
    def counts(gallery: str = "main") -> tuple:
        info = store.get_gallery(gallery)
        return store.num_people(gallery), info.num_faces, info.embedders

    store.add_person("main", "empty")
    assert counts() == (0, 0, {})
    store.add_faces_many("main", {"a": faces(rng, 2), "b": faces(rng, 1)})
    store.add_faces_many("main", {"a": faces(rng, 1), "empty": faces(rng, 2), "c": faces(rng, 1)})
    store.add_faces_many("other", {"a": faces(rng, 1)})
    assert counts() == (4, 7, {"m1": 7}) and counts("other") == (1, 1, {"m1": 1})
    assert [(p.name, p.num_faces) for p in store.list_people("main")[0]] == [("a", 3), ("b", 1), ("c", 1), ("empty", 2)]
    check_counters(store)
    with pytest.raises(EmbedderMismatchError):
        store.add_faces_many("main", {"d": faces(rng, 1, embedder="m2"), "a": faces(rng, 1, embedder="m2")})
    [b_face] = [f.id for f in store.list_faces("main", "b")]
    store.delete_face(store.list_faces("main", "a")[0].id)  # not a's last
    store.delete_face(b_face)  # b's last: b stays, without faces
    assert counts() == (3, 5, {"m1": 5}) and store.get_person("main", "b").num_faces == 0
    assert store.delete_person("main", "b") == 0 and store.delete_person("main", "empty") == 2
    assert counts() == (2, 3, {"m1": 3}) and counts("other") == (1, 1, {"m1": 1})
    check_counters(store)
    store.delete_person("main", "a")
    store.delete_person("main", "c")
    assert counts() == (0, 0, {})
    store.add_faces("main", "e", faces(rng, 1, embedder="m2"))  # an emptied gallery takes another embedder
    assert counts() == (1, 1, {"m2": 1})
    store.delete_gallery("other")
    check_counters(store)


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
    with pytest.raises(GalleryNotFoundError):
        store.add_faces("nowhere", "alice", faces(rng, 1), create_missing=False)
    assert snapshot(store) == before


# --- cross-process visibility and concurrency ---------------------------------------------------
def test_other_process_enrollment_seen_by_next_search(gallery_url, rng):
    a, b = open_store(gallery_url), open_store(gallery_url)  # two objects = two processes' views
    a.add_faces("main", "alice", faces(rng, 2))
    q = unit(rng, 1)
    assert [c.person for c in a.search("main", q, "m1", top_k=5)[0]] == ["alice"]
    sqlite = not is_pg(a)
    loads = a.cache_loads if sqlite else 0
    a.search("main", q, "m1")
    if sqlite:
        assert a.cache_loads == loads  # nothing changed: no reload
    b.add_faces("main", "bob", [NewFace(q[0], "m1")])
    top = a.search("main", q, "m1", top_k=5)[0]
    assert top[0].person == "bob" and top[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert a.num_people("main") == 2
    if sqlite:
        assert a.cache_loads == loads + 1
    b.rename_person("main", "bob", "robert")
    assert a.search("main", q, "m1")[0][0].person == "robert"
    b.delete_person("main", "robert")
    assert [c.person for c in a.search("main", q, "m1")[0]] == ["alice"]
    assert a.num_people("main") == 1
    if sqlite:  # a write to another gallery does not invalidate this one
        loads = a.cache_loads
        b.add_faces("elsewhere", "zed", faces(rng, 1))
        a.search("main", q, "m1")
        assert a.cache_loads == loads
    a.close(), b.close()


SEARCH_LOOP = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from modules.storage import open_gallery

    store = open_gallery(sys.argv[1])
    q = np.load(sys.argv[2])
    print("ready", flush=True)
    for line in sys.stdin:  # one search per line from the parent, the top person back
        top = store.search("main", q, "m1", top_k=1)[0]
        print(top[0].person if top else "-", flush=True)
    """
)


def test_separate_processes_see_each_others_enrollments_at_once(gallery_url, tmp_path, rng):
    """An API server process searching while another process enrolls: no restart, no delay."""
    q = unit(rng, 1)
    np.save(tmp_path / "q.npy", q)
    (tmp_path / "search_loop.py").write_text(SEARCH_LOOP)
    writer = open_store(gallery_url)
    writer.ensure_gallery("main")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "search_loop.py"), gallery_url, str(tmp_path / "q.npy")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"

        def ask() -> str:
            proc.stdin.write("?\n")
            proc.stdin.flush()
            return proc.stdout.readline().strip()

        assert ask() == "-"
        writer.add_faces("main", "alice", [NewFace(q[0] + 0.01 * unit(rng, 1)[0], "m1")])
        assert ask() == "alice"
        writer.add_faces("main", "bob", [NewFace(q[0], "m1")])
        assert ask() == "bob"
        writer.delete_person("main", "bob")
        assert ask() == "alice"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        writer.close()


def test_many_threads_enrolling_lose_nothing(gallery_url):
    stores = [open_store(gallery_url), open_store(gallery_url)]
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
    check_counters(stores[0])
    if not is_pg(stores[0]):
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
    # the parent's connections still work (the child neither used nor closed them)
    assert {c.person for c in store.search("main", unit(rng, 1), "m1", top_k=5)[0]} == {"parent", "child"}
    check_counters(store)
    if not is_pg(store):
        assert store.integrity_check() == []


def test_busy_database_is_a_503(gallery_url, rng):
    store = open_store(gallery_url, busy_timeout_s=0.2)
    store.add_faces("main", "alice", faces(rng, 1))
    if is_pg(store):  # another server holds the gallery's row lock (a long enrollment)
        import psycopg

        other = psycopg.connect(gallery_url)
        other.execute("SELECT * FROM galleries WHERE name = 'main' FOR UPDATE")
    else:  # another process holds the write lock
        other = sqlite3.connect(gallery_url, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
    try:
        before = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as exc:
            store.add_faces("main", "bob", faces(rng, 1))
        assert exc.value.status == 503 and time.monotonic() - before < 5
        assert store.search("main", unit(rng, 1), "m1")[0][0].person == "alice"  # readers are not blocked
    finally:
        other.rollback() if is_pg(store) else other.execute("ROLLBACK")
        other.close()
    store.add_faces("main", "bob", faces(rng, 1))
    assert store.num_people("main") == 2
    store.close()


ENROLL_LOOP = textwrap.dedent(
    """
    import sys
    import numpy as np
    from modules.storage import NewFace, open_gallery

    url, k = sys.argv[1], int(sys.argv[2])
    store = open_gallery(url)
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
def test_sigkill_during_enrollment_leaves_consistent_db(gallery_url, tmp_path, kill_after_batches):
    k = 8
    script = tmp_path / "enroll_loop.py"
    script.write_text(ENROLL_LOOP)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    observer = open_store(gallery_url)

    def count_faces() -> int:
        try:
            return query_all(observer, "SELECT COUNT(*) FROM faces")[0][0]
        except sqlite3.OperationalError:
            return 0

    proc = subprocess.Popen([sys.executable, str(script), gallery_url, str(k)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if count_faces() >= kill_after_batches * k:
                break
            assert proc.poll() is None, "the enrolling subprocess died on its own"
            time.sleep(0.005)
        else:
            pytest.fail("the subprocess did not enroll in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    if is_pg(observer):
        time.sleep(0.2)  # the server notices the dead client and rolls its transaction back
    check_counters(observer)
    if not is_pg(observer):
        conn = sqlite3.connect(gallery_url)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        conn.close()
    n_faces = query_all(observer, "SELECT COUNT(*) FROM faces")[0][0]
    n_people = query_all(observer, "SELECT COUNT(*) FROM people")[0][0]
    per_batch = query_all(observer, "SELECT source, COUNT(*) FROM faces GROUP BY source")
    assert n_faces >= kill_after_batches * k and n_faces % k == 0 and n_people == n_faces
    assert all(count == k for _, count in per_batch)
    # the database is still usable
    observer.add_faces("main", "after", faces(np.random.default_rng(1), 1))
    assert observer.stats("main")["faces"] == n_faces + 1
    observer.close()


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


# a broken model is the input under test here: real embedders with the weights of a failed training run
class ZeroEmbedder(Embedder):
    """Every weight zero: all-zero embeddings."""

    MODEL = "zeros-v1"

    def __init__(self):
        super().__init__(model_id=self.MODEL, dim=24, flip=False)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), self.dim), np.float32)


class NaNEmbedder(ZeroEmbedder):
    """A diverged training run: NaN everywhere."""

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), self.dim), np.nan, np.float32)


class CollapsedEmbedder(ZeroEmbedder):
    """A collapsed training run: one vector for every face, nudged a little by the mean brightness."""

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        brightness = batch.reshape(len(batch), -1).mean(axis=1, keepdims=True) / 255.0
        return np.ones((len(batch), self.dim), np.float32) + 0.05 * brightness * np.linspace(-1, 1, self.dim)


class NoiseEmbedder(ZeroEmbedder):
    """A model that ignores the face: a random vector drawn from each crop's hash."""

    MODEL = "noise-v1"

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        seeds = [int.from_bytes(hashlib.sha256(x.tobytes()).digest()[:8], "little") for x in batch]
        return np.stack([np.random.default_rng(seed).normal(size=self.dim) for seed in seeds]).astype(np.float32)


def enroll_random_crops(store, rng, people: int = 3, each: int = 2) -> None:
    for p in range(people):
        store.add_faces("main", f"p{p}", [NewFace(unit(rng, 1)[0], "old-model", crop_png=crop_png(rng)[1])
                                          for _ in range(each)])


@pytest.mark.parametrize(("embedder", "check"), [(ZeroEmbedder, "nonzero"), (NaNEmbedder, "finite"),
                                                 (CollapsedEmbedder, "collapse")])
def test_reembed_refuses_degenerate_embeddings_and_writes_nothing(store, rng, embedder, check):
    enroll_random_crops(store, rng)
    before = snapshot(store)
    with pytest.raises(DegenerateEmbeddingsError) as err:
        store.reembed("main", embedder())
    assert err.value.status == 409 and err.value.code == "degenerate_embeddings"
    assert err.value.details["check"] == check and "nothing was changed" in err.value.message
    if check == "collapse":
        assert err.value.details["different_people_similarity"] > 0.9 and err.value.details["faces_checked"] == 6
    else:
        assert err.value.details["bad"] == 6
    assert snapshot(store) == before
    assert store.search("main", unit(rng, 1), "old-model")[0][0].person.startswith("p")  # still searchable


@pytest.fixture(scope="module")
def lfw_faces(recognizer, shared_data) -> dict[str, list[NewFace]]:
    """Two real faces (SFace embeddings, aligned crops) of each of 10 LFW people."""
    import csv

    root = shared_data / "lfw"
    with open(root / "identification" / "gallery.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:20]
    by: dict[str, list[Path]] = {}
    for r in rows:
        by.setdefault(r["identity"], []).append(root / r["path"])
    return {name: recognizer.prepare_enrollment(paths, check_quality=False) for name, paths in by.items()}


def test_reembed_checks_the_new_model_on_the_gallery_faces(store, recognizer, lfw_faces):
    """A model that ignores the face is refused against the figures of the stored model; the real SFace passes
    and reports the same figures as the stored SFace embeddings."""
    store.add_faces_many("main", lfw_faces)
    store.add_faces("solo", "only", lfw_faces["Ali_Naimi"][:1])  # a gallery of one face: nothing to judge there
    before = snapshot(store)
    with pytest.raises(DegenerateEmbeddingsError) as err:
        store.reembed(None, NoiseEmbedder())
    details = err.value.details
    assert details["check"] == "nearest" and details["faces_checked"] == 21
    assert details["nearest_same_person"] < 0.3 and details["nearest_same_person_before"] >= 0.9
    assert details["required"] == pytest.approx(details["nearest_same_person_before"] - 0.25, abs=1e-3)
    assert snapshot(store) == before

    counts = store.reembed(None, recognizer.embedder)
    assert counts["reembedded"] == 21
    checks = counts["checks"]
    assert checks["nearest_same_person"] >= 0.9 and checks["different_people_similarity"] < 0.3
    assert checks["nearest_same_person"] == pytest.approx(checks["nearest_same_person_before"], abs=0.06)


def test_reembed_judges_a_new_model_by_the_floor_when_the_old_ones_are_mixed(store, recognizer, lfw_faces):
    """Galleries of two models: no "before" figure, the floor alone; too few faces of people with several: no
    ``nearest`` check at all."""
    names = sorted(lfw_faces)
    store.add_faces_many("main", {n: lfw_faces[n] for n in names[:5]})
    rng = np.random.default_rng(3)
    store.add_faces_many("other", {n: [NewFace(unit(rng, 1, 24)[0], "legacy-model", crop_png=f.crop_png)
                                       for f in lfw_faces[n]] for n in names[5:7]})
    with pytest.raises(DegenerateEmbeddingsError) as err:
        store.reembed(None, NoiseEmbedder())
    assert err.value.details["nearest_same_person_before"] is None and err.value.details["required"] == 0.5
    store.add_faces("few", "a", lfw_faces[names[0]])
    store.add_faces("few", "b", lfw_faces[names[1]][:1])
    checks = store.reembed("few", NoiseEmbedder())["checks"]  # 2 faces of people with several: not judged
    assert checks["faces_checked"] == 3 and checks["nearest_same_person"] is None


def test_reembed_checks_whole_people_up_to_the_cap(store, recognizer, lfw_faces, monkeypatch):
    from modules.storage import maintenance

    monkeypatch.setattr(maintenance, "CHECK_FACES", 5)
    store.add_faces_many("main", lfw_faces)
    counts = store.reembed("main", recognizer.embedder)
    assert counts["reembedded"] == 20 and counts["checks"]["faces_checked"] == 4  # two people of two faces
    assert counts["checks"]["nearest_same_person"] == 1.0


# --- the ANN index (large galleries) -------------------------------------------------------------
ANN_THRESHOLD = 100


def open_ann(url: str, **kw):
    return open_store(url, ann_threshold=ANN_THRESHOLD, **kw)


def enroll_crowd(store, rng, n_people: int, gallery: str = "main", prefix: str = "p") -> dict[str, np.ndarray]:
    per_person = {f"{prefix}{i:04d}": unit(rng, int(rng.integers(1, 4))) for i in range(n_people)}
    names = list(per_person)
    for s in range(0, n_people, 100):
        store.add_faces_many(gallery, {n: [NewFace(e, "m1") for e in per_person[n]] for n in names[s : s + 100]})
    return per_person


def near(rng, per_person, names, noise=0.3):
    q = np.stack([per_person[n][0] for n in names]) + noise * unit(rng, len(names)) / np.sqrt(DIM) * 4
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_ann_search_matches_exact(gallery_url, rng):
    store = open_ann(gallery_url)
    per_person = enroll_crowd(store, rng, 400)
    assert store.search_index_info("main")["kind"] == "hnsw"
    names = list(per_person)
    queries = np.concatenate([near(rng, per_person, names[::20]), unit(rng, 20)])
    for top_k in (1, 5):
        got = store.search("main", queries, "m1", top_k=top_k)
        want = brute_force(queries, per_person, top_k)
        same = sum([c.person for c in g] == [n for n, _ in w] for g, w in zip(got, want))
        assert same >= 0.95 * len(queries), (top_k, same)
        for g, w in zip(got, want):
            assert len(g) == top_k
            assert g[0].similarity == pytest.approx(w[0][1], abs=1e-5) or g[0].similarity < w[0][1]
    # the face behind each candidate is that person's best face
    for c in store.search("main", queries[:3], "m1", top_k=3)[0]:
        f = store.get_face(c.face_id, with_embedding=True)
        assert f.person == c.person and float(f.embedding @ queries[0]) == pytest.approx(c.similarity, abs=1e-5)
    assert store.num_people("main") == 400
    if not is_pg(store):  # random queries are near-ties: searched again with the wide beam
        assert store.ann_refined > 0
    # another (small) gallery of the same database is searched on its own
    store.add_faces("small", "solo", [NewFace(queries[0], "m1")])
    assert [c.person for c in store.search("small", queries[0], "m1", top_k=5)[0]] == ["solo"]
    assert store.search_index_info("small")["kind"] == "exact"
    assert all(c.person != "solo" for c in store.search("main", queries[0], "m1", top_k=5)[0])
    store.close()


def test_ann_kept_in_step_with_other_writers(gallery_url, rng):
    a, b = open_ann(gallery_url), open_ann(gallery_url)
    per_person = enroll_crowd(a, rng, 150)
    q = unit(rng, 1)
    a.search("main", q, "m1")
    sqlite = not is_pg(a)
    if sqlite:
        assert (a.ann_builds, a.cache_loads) == (1, 1)
    b.add_faces("main", "newcomer", [NewFace(q[0], "m1")])
    top = a.search("main", q, "m1", top_k=3)[0]
    assert top[0].person == "newcomer" and top[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert a.num_people("main") == 151
    b.rename_person("main", "newcomer", "renamed")
    assert a.search("main", q, "m1")[0][0].person == "renamed"
    [fid] = [f.id for f in b.list_faces("main", "renamed")]
    b.add_faces("main", "renamed", [NewFace(-q[0], "m1")])
    b.delete_face(fid)
    assert a.search("main", q, "m1")[0][0].person != "renamed"
    assert a.search("main", -q, "m1")[0][0].person == "renamed"
    victim = next(iter(per_person))
    b.delete_person("main", victim)
    assert all(c.person != victim for c in a.search("main", per_person[victim], "m1", top_k=5)[0])
    assert a.num_people("main") == 150
    if sqlite:  # all of it by catching up from the change log, no rebuild, no full reload
        assert (a.ann_builds, a.cache_loads) == (1, 1) and a.ann_catchups >= 4
    a.close(), b.close()


def test_ann_index_falls_back_to_exact_when_gallery_shrinks(gallery_url, rng):
    store = open_ann(gallery_url)
    per_person = enroll_crowd(store, rng, 120)
    total = sum(len(v) for v in per_person.values())
    assert store.search_index_info("main")["kind"] == "hnsw"
    names = iter(per_person)
    while total >= ANN_THRESHOLD // 2 - 5:
        total -= store.delete_person("main", next(names))
    assert store.search_index_info("main")["kind"] == "exact"
    left = {n: per_person[n] for n in names}
    q = unit(rng, 3)
    assert [[c.person for c in r] for r in store.search("main", q, "m1", top_k=3)] == [
        [n for n, _ in w] for w in brute_force(q, left, 3)
    ]
    store.close()


def test_ann_index_saved_and_caught_up_on_restart(db, rng):
    a = open_gallery(db, ann_threshold=ANN_THRESHOLD)
    per_person = enroll_crowd(a, rng, 150)
    a.search("main", unit(rng, 1), "m1")
    assert a.ann_builds == 1 and (db.parent / "gallery.db.ann" / "g1.json").exists()
    a.close()
    # while no server runs, another process enrolls and deletes
    b = open_gallery(db, ann_threshold=None)
    q = unit(rng, 1)
    b.add_faces("main", "late", [NewFace(q[0], "m1")])
    victim = next(iter(per_person))
    b.delete_person("main", victim)
    b.close()
    c = open_gallery(db, ann_threshold=ANN_THRESHOLD)
    assert c.search("main", q, "m1")[0][0].person == "late"
    assert (c.ann_loads, c.ann_builds, c.cache_loads) == (1, 0, 0)
    assert all(x.person != victim for x in c.search("main", per_person[victim], "m1", top_k=5)[0])
    assert c.num_people("main") == 150
    c.close()
    # a saved index whose deletions were pruned from the log is not trusted: rebuilt
    d = open_gallery(db, ann_threshold=None)
    d.delete_person("main", "late")
    with d.engine.begin() as conn:
        d._prune_deletions(conn, keep=0)
    d.close()
    e = open_gallery(db, ann_threshold=ANN_THRESHOLD)
    assert e.search("main", q, "m1")[0][0].person != "late"
    assert (e.ann_loads, e.ann_builds) == (0, 1)
    e.close()
    # the index of a deleted gallery goes with it; a different database at the same path ignores old files
    f = open_gallery(db, ann_threshold=ANN_THRESHOLD)
    f.delete_gallery("main")
    assert not (db.parent / "gallery.db.ann" / "g1.json").exists()
    f.close()


def test_ann_index_of_another_database_is_ignored(tmp_path, rng):
    db = tmp_path / "g.db"
    a = open_gallery(db, ann_threshold=ANN_THRESHOLD)
    enroll_crowd(a, rng, 120)
    a.search("main", unit(rng, 1), "m1")
    a.close()
    saved = {p.name: p.read_bytes() for p in (tmp_path / "g.db.ann").iterdir() if p.is_file()}
    for p in tmp_path.glob("g.db*"):
        if p.is_file():
            p.unlink()
    b = open_gallery(db, ann_threshold=ANN_THRESHOLD)  # a new database at the same path
    per_person = enroll_crowd(b, np.random.default_rng(99), 120)
    for name, data in saved.items():
        (tmp_path / "g.db.ann" / name).write_bytes(data)
    b.close()
    c = open_gallery(db, ann_threshold=ANN_THRESHOLD)
    name = next(iter(per_person))
    assert c.search("main", per_person[name][0], "m1")[0][0].person == name
    assert (c.ann_loads, c.ann_builds) == (0, 1)
    c.close()


def test_ann_reembed_switches_model(gallery_url, rng):
    store = open_ann(gallery_url)
    emb = PixelEmbedder()
    crops = {}
    for s in range(0, 110, 55):
        batch = {}
        for i in range(s, s + 55):
            img, png = crop_png(rng)
            crops[f"p{i}"] = img
            batch[f"p{i}"] = [NewFace(unit(rng, 1)[0], "old-model", crop_png=png)]
        store.add_faces_many("main", batch)
    store.search("main", unit(rng, 1), "old-model")
    assert store.search_index_info("main")["kind"] == "hnsw"
    store.reembed("main", emb)
    query = emb.embed(crops["p42"][None])
    assert store.search("main", query, emb.model_id)[0][0].person == "p42"
    assert store.search_index_info("main")["kind"] == "hnsw"
    with pytest.raises(EmbedderMismatchError):
        store.search("main", unit(rng, 1), "old-model")
    check_counters(store)
    store.close()


def test_gallery_deleted_and_recreated_by_another_process(db, rng):
    a, b = open_gallery(db, ann_threshold=ANN_THRESHOLD), open_gallery(db, ann_threshold=ANN_THRESHOLD)
    enroll_crowd(a, rng, 120)
    q = unit(rng, 1)
    a.search("main", q, "m1")
    old_id = a.get_gallery("main").id
    assert old_id in a._cache
    b.delete_gallery("main")
    with pytest.raises(GalleryNotFoundError):
        a.search("main", q, "m1")
    assert old_id not in a._cache  # the index of the deleted gallery is let go
    b.add_faces("main", "fresh", [NewFace(q[0], "m1")])
    assert [c.person for c in a.search("main", q, "m1", top_k=5)[0]] == ["fresh"]
    a.close(), b.close()
