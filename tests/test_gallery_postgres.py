"""PostgreSQL-only behaviour: the per-gallery HNSW index, migrations, the extension.

Everything the two backends share is tested against both in ``test_gallery.py``.
"""

from __future__ import annotations

import threading

import numpy as np
import psycopg
import pytest

from modules.errors import ConfigError
from modules.storage import NewFace, open_gallery
from modules.storage.migrate import head
from modules.storage.pg_search import PostgresGallery, index_name
from tests.test_gallery import ANN_THRESHOLD, brute_force, check_counters, enroll_crowd, unit


def sql(url: str, statement: str, params=None) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []


def test_open_gallery_returns_postgres(pg_url):
    store = open_gallery(pg_url)
    assert isinstance(store, PostgresGallery) and "postgresql://" in repr(store)
    store.close()
    store = open_gallery(pg_url.replace("postgresql://", "postgres://"), busy_timeout_s=5)
    assert store.busy_timeout_s == 5
    store.close()


def test_hnsw_index_is_per_gallery_and_used_by_the_planner(pg_url):
    rng = np.random.default_rng(3)
    store = PostgresGallery(pg_url, ann_threshold=ANN_THRESHOLD, ann_autobuild="sync")
    per_person = enroll_crowd(store, rng, 300, gallery="big")
    store.add_faces("small", "solo", [NewFace(unit(rng, 1)[0], "m1")])
    gid = store.get_gallery("big").id
    name = index_name(gid, 16)
    assert sql(pg_url, "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,)) == [(True,)]
    assert sql(pg_url, "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'faces_hnsw%%'") == [(1,)]
    plan = store.explain_search("big", unit(rng, 1)[0])
    assert name in plan, plan
    info = store.search_index_info("big")
    assert info["kind"] == "hnsw" and info["index_bytes"] > 0
    assert store.search_index_info("small")["kind"] == "exact"
    q = unit(rng, 5)
    got = store.search("big", q, "m1", top_k=1)
    want = brute_force(q, per_person, 1)
    assert sum(g[0].person == w[0][0] for g, w in zip(got, want)) >= 4
    # deleting the gallery drops its index
    store.delete_gallery("big")
    assert sql(pg_url, "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'faces_hnsw%%'") == [(0,)]
    check_counters(store)
    store.close()


def test_index_built_in_the_background_while_search_goes_on(pg_url):
    rng = np.random.default_rng(4)
    store = PostgresGallery(pg_url, ann_threshold=ANN_THRESHOLD, ann_autobuild="background")
    per_person = enroll_crowd(store, rng, 120)
    name = next(iter(per_person))
    assert store.search("main", per_person[name][0], "m1")[0][0].person == name  # exact or indexed
    store.wait_for_index_builds(timeout=60)
    assert store.search_index_info("main")["kind"] == "hnsw"
    assert store.search("main", per_person[name][0], "m1")[0][0].person == name
    store.close()


def test_invalid_index_is_not_used_and_is_rebuilt(pg_url):
    """A concurrent build that was interrupted leaves an invalid index: search ignores it, the next build redoes it."""
    rng = np.random.default_rng(5)
    store = PostgresGallery(pg_url, ann_threshold=ANN_THRESHOLD, ann_autobuild="sync")
    per_person = enroll_crowd(store, rng, 120)
    name = index_name(store.get_gallery("main").id, 16)
    sql(pg_url, "UPDATE pg_index SET indisvalid = false WHERE indexrelid = to_regclass(%s)", (name,))
    assert store.search_index_info("main")["kind"] == "exact"
    who = next(iter(per_person))
    assert store.search("main", per_person[who][0], "m1")[0][0].person == who
    assert store.ensure_ann_index("main")["built"] is True
    assert store.search_index_info("main")["kind"] == "hnsw"
    assert store.ensure_ann_index("main") == {"gallery": "main", "built": False, "reason": "exists", "index": name}
    store.close()


def test_servers_starting_together_migrate_once(pg_url):
    stores, errors = [], []

    def start() -> None:
        try:
            stores.append(PostgresGallery(pg_url, pool_min=1, pool_max=2))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 4
    assert sql(pg_url, "SELECT version_num FROM facerec_schema") == [(head("gallery"),)]
    stores[0].add_faces("main", "a", [NewFace(unit(np.random.default_rng(0), 1)[0], "m1")])
    assert all(s.num_people("main") == 1 for s in stores)
    for s in stores:
        s.close()


def test_creates_the_vector_extension_or_says_how(pg_url):
    sql(pg_url, "DROP EXTENSION IF EXISTS vector")
    store = PostgresGallery(pg_url)
    assert sql(pg_url, "SELECT extname FROM pg_extension WHERE extname = 'vector'") == [("vector",)]
    assert store.stats()["pgvector"] >= "0.5"
    store.close()


def test_user_without_rights_gets_a_clear_error(pg_server, pg_url):
    """A database without pgvector, opened by a user who may not create it."""
    if isinstance(pg_server, str):
        pytest.skip("creates a role: only on the throwaway server")
    sql(pg_url, "DROP EXTENSION IF EXISTS vector")
    sql(pg_url, "DROP ROLE IF EXISTS gallery_app")
    sql(pg_url, "CREATE ROLE gallery_app LOGIN")
    url = pg_url.replace("postgresql://postgres@", "postgresql://gallery_app@")
    try:
        with pytest.raises(ConfigError, match="CREATE EXTENSION vector"):
            PostgresGallery(url)
    finally:
        sql(pg_url, "DROP OWNED BY gallery_app")
        sql(pg_url, "DROP ROLE IF EXISTS gallery_app")
