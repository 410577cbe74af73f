"""Galleries written by the previous version (before Alembic) are upgraded in place on first open.

The fixtures in ``tests/fixtures/legacy`` were written by that version's own code
(``make_fixtures.py``): an SQLite gallery at schema version 2 and a PostgreSQL one
at schema version 1 (a ``pg_dump``), with the answers that code gave to a few
searches.  Opened with this code they must answer the same: same people, same
faces, same similarities.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import psycopg
import pytest
from alembic import command
from alembic.config import Config

from modules.errors import ConfigError
from modules.storage import NewFace, open_gallery
from modules.storage.engine import get_engine
from modules.storage.migrate import MIGRATIONS_DIR, VERSION_TABLE, head
from tests.test_gallery import check_counters, query_all

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"
ANSWERS = json.loads((FIXTURES / "answers.json").read_text())
QUERIES = np.asarray(ANSWERS["queries"], dtype=np.float32)
MODEL = ANSWERS["embedder"]


@pytest.fixture
def sqlite_v2(tmp_path) -> Path:
    db = tmp_path / "gallery.db"
    shutil.copy(FIXTURES / "gallery_v2.db", db)
    return db


@pytest.fixture
def pg_v1(pg_url) -> str:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute((FIXTURES / "gallery_pg_v1.sql").read_text())
    return pg_url


def triggers(store) -> set[str]:
    """The gallery's triggers (PostgreSQL: with the functions they ran)."""
    if store.backend == "sqlite":
        return {r[0] for r in query_all(store, "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    return {r[0] for r in query_all(store, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal UNION"
                                           " SELECT proname FROM pg_proc WHERE proname LIKE 'gallery%'")}


def migrate_to(url: str, revision: str) -> None:
    """Upgrade a gallery written before Alembic to ``revision`` only, as the code of that revision left it."""
    with get_engine(url).begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("version_table", VERSION_TABLE)
        cfg.attributes["connection"] = conn
        command.stamp(cfg, "gallery_0001")
        command.upgrade(cfg, revision)


def check_answers(store, want: dict) -> None:
    got = store.search("main", QUERIES, MODEL, top_k=3)
    assert [[(c.person, c.face_id) for c in row] for row in got] == [[(p, f) for p, _, f in row] for row in want["search"]]
    for row, old in zip(got, want["search"]):
        np.testing.assert_allclose([c.similarity for c in row], [s for _, s, _ in old], atol=1e-6)
    assert store.num_people("main") == want["num_people"]
    assert [[p.name, p.num_faces] for p in store.list_people("main", limit=None)[0]] == want["people"]
    assert store.search_people("main", QUERIES[:1], MODEL, top_k=3) == (got[:1], want["num_people"])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_previous_version_gallery_is_upgraded_in_place(backend, request):
    url = str(request.getfixturevalue("sqlite_v2" if backend == "sqlite" else "pg_v1"))
    store = open_gallery(url, ann_threshold=None)
    assert query_all(store, "SELECT version_num FROM facerec_schema") == [(head("gallery"),)]
    check_answers(store, ANSWERS[backend])
    assert store.get_person("main", "no-faces").metadata == {"note": "enrolled later"}
    crops = [f for p in ("ada", "bob") for f in store.list_faces("main", p) if f.has_crop]
    assert len(crops) == 2 and all(store.get_face_crop(f.id).startswith(b"\x89PNG") for f in crops)
    info = store.get_gallery("main")
    assert (info.num_people, info.num_faces, info.embedders) == (6, 8, {MODEL: 8})
    # ids are never reused (the deleted "ghost" had the first one) and the counters stay right
    before = max(f.id for p in ("ada", "dee") for f in store.list_faces("main", p))
    [fid] = store.add_faces("main", "newcomer", [NewFace(QUERIES[3], MODEL)])
    assert fid > before and fid > 10
    assert store.search("main", QUERIES[3], MODEL)[0][0].person == "newcomer"
    assert store.delete_person("main", "ada") == 2
    assert store.num_people("main") == 5 and store.get_gallery("other").num_faces == 1
    check_counters(store)
    assert triggers(store) == ({"faces_log_delete"} if backend == "sqlite" else set())  # the writes count now
    if backend == "postgres":
        assert query_all(store, "SELECT to_regclass('gallery_schema_migrations') IS NULL") == [(True,)]
    else:
        assert store.integrity_check() == []
        assert [r[0] for r in query_all(store, "SELECT face_id FROM face_deletions ORDER BY 1")] == [1, 2, 3]  # log kept
        assert "WITHOUT ROWID" in query_all(store, "SELECT sql FROM sqlite_master WHERE name = 'face_deletions'")[0][0]
        assert query_all(store, "SELECT value FROM meta WHERE key = 'schema_version'") == []
    store.close()
    again = open_gallery(url, ann_threshold=None)  # a second open finds it up to date
    assert again.num_people("main") == 5 and again.search("main", QUERIES[3], MODEL)[0][0].person == "newcomer"
    again.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_counters_kept_by_triggers_are_taken_over_by_the_writes(backend, request):
    """A gallery at gallery_0002 (counters kept by triggers) keeps its counts at gallery_0003, where the writes
    keep them, and answers the same."""
    url = str(request.getfixturevalue("sqlite_v2" if backend == "sqlite" else "pg_v1"))
    migrate_to(url, "gallery_0002")
    log = "SELECT gen, face_id FROM face_deletions ORDER BY 1, 2"
    if backend == "sqlite":
        conn = sqlite3.connect(url)
        logged = conn.execute(log).fetchall()
        conn.close()
    store = open_gallery(url, ann_threshold=None)
    if backend == "sqlite":  # the deletion log, moved into its one-B-tree table, is kept
        assert logged and query_all(store, log) == logged
    assert query_all(store, "SELECT version_num FROM facerec_schema") == [(head("gallery"),)]
    assert triggers(store) == ({"faces_log_delete"} if backend == "sqlite" else set())
    check_counters(store)
    check_answers(store, ANSWERS[backend])
    info = store.get_gallery("main")
    assert (info.num_people, info.num_faces, info.embedders) == (6, 8, {MODEL: 8})
    store.add_faces_many("main", {"ada": [NewFace(QUERIES[4], MODEL)], "no-faces": [NewFace(QUERIES[5], MODEL)]})
    store.delete_face(store.list_faces("main", "bob")[0].id)
    store.delete_person("main", "dee")
    check_counters(store)
    store.close()


def test_previous_version_sqlite_gallery_with_the_ann_index(sqlite_v2):
    """The upgraded gallery is searched through the HNSW index kept in step from the change log."""
    store = open_gallery(sqlite_v2, ann_threshold=4)
    assert store.search_index_info("main")["kind"] == "hnsw"
    got = store.search("main", QUERIES, MODEL, top_k=1)
    assert [row[0].person for row in got] == [row[0][0] for row in ANSWERS["sqlite"]["search"]]
    store.delete_face(ANSWERS["sqlite"]["search"][0][0][2])
    assert store.search("main", QUERIES[0], MODEL)[0][0].face_id != ANSWERS["sqlite"]["search"][0][0][2]
    assert store.ann_builds == 1 and store.ann_catchups >= 1
    store.close()


def test_newer_legacy_schema_refused(sqlite_v2, pg_v1):
    conn = sqlite3.connect(sqlite_v2)
    conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="schema version 99"):
        open_gallery(sqlite_v2)
    with psycopg.connect(pg_v1, autocommit=True) as c:
        c.execute("INSERT INTO gallery_schema_migrations (version, description) VALUES (99, 'future')")
    with pytest.raises(ConfigError, match="schema version 99"):
        open_gallery(pg_v1)
