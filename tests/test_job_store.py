"""The video job store on SQLite and PostgreSQL: one API, transactions, row locks, migrations of old databases."""
from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from modules.errors import ServiceUnavailableError
from modules.storage.engine import get_engine
from modules.storage.jobs import ACTIVE, JobNotFoundError, metadata, now_iso, open_job_store
from modules.storage.migrate import head

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
JOB = "11111111-1111-4111-8111-111111111111"


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    return tmp_path / "jobs.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def _job(job_id=JOB, **extra):
    return {"job_id": job_id, "status": "queued", "created_at": now_iso(), "gallery": "default", **extra}


def _versions(location) -> list[str]:
    with get_engine(location).connect() as conn:
        return sorted(conn.scalars(text("SELECT version_num FROM facerec_schema")))


def test_jobs_chunks_and_frames_round_trip(location):
    store = open_job_store(location)
    assert store.list() == [] and store.active() == [] and store.count_active() == 0
    with pytest.raises(JobNotFoundError):
        store.get(JOB)
    with pytest.raises(JobNotFoundError):
        store.tracks(JOB)
    with store.tx() as tx:
        put = tx.put_job(_job(owner="me", cancel=False, video={"fps": 25.0}, name="café"))
        tx.put_job(_job("22222222-2222-4222-8222-222222222222", status="done", created_at="2000-01-01"))
        for i in range(2):
            tx.put_chunk({"job_id": JOB, "idx": i, "start_frame": 10 * i, "end_frame": 10 * i + 10})
    job = store.get(JOB)
    assert job == {**put, "phase": "analyze", "executor": "inprocess", "heartbeat": None, "client": None}
    assert job["cancel"] is False
    assert job["video"] == {"fps": 25.0} and job["name"] == "café" and job["updated_at"]
    assert [j["status"] for j in store.list()] == ["done", "queued"]  # oldest first
    assert [j["job_id"] for j in store.active()] == [JOB] and set(ACTIVE) == {"queued", "running"}
    assert store.count_active() == 1 and store.count_active("me") == 1 and store.count_active("other") == 0
    assert store.tracks(JOB) is None

    with store.tx() as tx:
        assert tx.update_job(JOB, status="running", cancel=True)["cancel"] is True
        assert tx.update_job("nope", status="running") is None
        chunk = tx.chunk(JOB, 1, lock=True)
        assert chunk["status"] == "pending" and chunk["attempt"] == 0 and chunk["render_status"] == "pending"
        tx.put_chunk({**chunk, "status": "done", "attempt": 2}, result={"tracks": [1, 2]})
        tx.put_chunk({**tx.chunk(JOB, 1), "worker": "w1"})  # no result given: the stored one stays
        assert tx.chunk(JOB, 5) is None
        tx.add_frames(JOB, [{"frame": i, "faces": [], "v": 0} for i in range(5)])
        tx.add_frames(JOB, [{"frame": 3, "faces": [], "v": 1}])  # a frame written again replaces the old one
        tx.set_tracks(JOB, [{"track_id": 1, "name": "alice"}])
    assert store.get(JOB)["status"] == "running" and store.get(JOB)["cancel"] is True
    assert [(c["idx"], c["status"], c["attempt"], c["worker"]) for c in store.chunks(JOB)] == [
        (0, "pending", 0, None), (1, "done", 2, "w1")]
    with store.tx(write=False) as tx:
        assert tx.chunk_results(JOB) == [None, {"tracks": [1, 2]}]
        assert [f["frame"] for f in tx.frames(JOB, 1, 3)] == [1, 2] and tx.frames(JOB, 4) == [{"frame": 4,
                                                                                             "faces": [], "v": 0}]
        assert [c["idx"] for c in tx.chunks(JOB, lock=True)] == [0, 1]
    assert store.count_frames(JOB) == 5 and [f["v"] for f in store.frames(JOB)] == [0, 0, 0, 1, 0]
    assert [f["frame"] for f in store.frames(JOB, 2)] == [2, 3, 4]
    assert [f["frame"] for f in store.frames(JOB, 1, 2)] == [1, 2] and store.frames(JOB, 9, 2) == []
    assert store.tracks(JOB) == [{"track_id": 1, "name": "alice"}]

    assert store.heartbeat_owner("me") == 1 and store.heartbeat_owner("other") == 0
    assert store.get(JOB)["heartbeat"] > 0
    with store.tx() as tx:
        tx.delete_frames(JOB)
        tx.set_tracks(JOB, None)
    assert store.frames(JOB) == [] and store.tracks(JOB) is None
    store.delete(JOB)
    with pytest.raises(JobNotFoundError):
        store.get(JOB)
    assert store.chunks(JOB) == [] and len(store.list()) == 1

    again = open_job_store(str(location))  # the same database, another store object: the same id
    assert again.store_id == store.store_id and len(store.store_id) == 16
    assert open_job_store(Path("elsewhere.db")).store_id != store.store_id
    assert "://" in repr(store)
    store.close()
    again.close()


def test_a_failed_transaction_leaves_nothing(location):
    store = open_job_store(location)
    with store.tx() as tx:
        tx.put_job(_job())
    with pytest.raises(RuntimeError), store.tx() as tx:
        tx.update_job(JOB, status="done")
        tx.add_frames(JOB, [{"frame": 0}])
        raise RuntimeError("half way")
    assert store.get(JOB)["status"] == "queued" and store.frames(JOB) == []
    store.close()


def test_locked_read_modify_write_loses_no_update(location):
    """``tx.job(lock=True)``: FOR UPDATE in PostgreSQL, BEGIN IMMEDIATE in SQLite; concurrent increments all count."""
    store = open_job_store(location)
    with store.tx() as tx:
        tx.put_job(_job(n=0))
    errors = []

    def bump():
        try:
            for _ in range(10):
                with store.tx() as tx:
                    tx.put_job({**(job := tx.job(JOB, lock=True)), "n": job["n"] + 1})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and store.get(JOB)["n"] == 40
    store.close()


def test_sqlite_file_is_created_by_the_first_write_private(tmp_path):
    path = tmp_path / "sub" / "jobs.db"
    reader, writer = open_job_store(path), open_job_store(f"sqlite:///{path}")
    assert reader.list() == [] and reader.count_frames(JOB) == 0 and reader.chunks(JOB) == []
    assert not path.exists()  # reads alone never create the file
    with writer.tx() as tx:
        tx.put_job(_job())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [j["job_id"] for j in reader.list()] == [JOB]  # the store opened first finds the new file
    assert _versions(path) == [head("jobs")]
    reader.close()
    writer.close()


def test_a_busy_sqlite_database_is_a_503(tmp_path):
    path = tmp_path / "jobs.db"
    store = open_job_store(path)
    with store.tx() as tx:
        tx.put_job(_job())
    from modules.storage.jobs import JobStore

    (tmp_path / "link").symlink_to(tmp_path)
    impatient = JobStore(tmp_path / "link" / "jobs.db", busy_timeout_s=0.2)  # the same file, its own engine
    held, release = threading.Event(), threading.Event()

    def hold():
        with store.tx():
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        with pytest.raises(ServiceUnavailableError), impatient.tx() as tx:
            tx.put_job(_job())
    finally:
        release.set()
        t.join()
    assert impatient.get(JOB)["status"] == "queued"


def test_a_forked_child_uses_its_own_connections(tmp_path):
    store = open_job_store(tmp_path / "jobs.db")
    with store.tx() as tx:
        tx.put_job(_job())
    pid = os.fork()
    if pid == 0:  # child: write through the inherited store object, then leave without cleanup
        try:
            with store.tx() as tx:
                tx.update_job(JOB, status="running")
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get(JOB)["status"] == "running"
    with store.tx() as tx:  # the parent's pooled connections still work
        tx.update_job(JOB, status="done")
    assert store.active() == []
    store.close()


# --- databases written by the previous version ----------------------------------------------------------------
def _expected() -> dict:
    return json.loads((LEGACY / "expected_job.json").read_text(encoding="utf-8"))


def _assert_reads_the_legacy_job(store, exp: dict, *, same_updated_at: bool) -> None:
    job_id = exp["job"]["job_id"]
    job = store.get(job_id)
    if not same_updated_at:
        job["updated_at"] = exp["job"]["updated_at"]
    assert job == {**exp["job"], "client": None} and job["filename"] == "café.mp4"  # no client: before quotas
    assert store.frames(job_id) == exp["frames"] and store.count_frames(job_id) == 5
    assert store.tracks(job_id) == exp["tracks"]
    assert [(c["status"], c["render_status"], c["rendered"]) for c in store.chunks(job_id)] == [("done", "done", 5)]
    with store.tx() as tx:  # and it can be written to
        tx.put_job(_job())
        tx.add_frames(JOB, [{"frame": 0}])
    assert [j["job_id"] for j in store.list()] == [job_id, JOB]
    store.delete(job_id)
    assert store.frames(job_id) == [] and store.chunks(job_id) == []


def test_legacy_sqlite_jobs_db_is_adopted_with_its_rows(tmp_path):
    path = tmp_path / "jobs.db"
    shutil.copy(LEGACY / "jobs.db", path)
    store = open_job_store(path)
    assert _versions(path) == [head("jobs")]  # stamped at the baseline, then upgraded
    _assert_reads_the_legacy_job(store, _expected(), same_updated_at=True)
    store.close()
    assert _versions(path) == [head("jobs")] and open_job_store(path).count_active() == 1  # opened again: as is


def test_legacy_postgres_job_tables_are_adopted_with_their_rows(pg_url):
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute((LEGACY / "jobs_postgres.sql").read_text(encoding="utf-8"))
    store = open_job_store(pg_url)
    assert _versions(pg_url) == [head("jobs")]
    with get_engine(pg_url).connect() as conn:  # the old tables are exactly what the baseline creates
        ctx = MigrationContext.configure(conn, opts={"compare_server_default": True, "version_table": "facerec_schema"})
        assert compare_metadata(ctx, metadata) == []
    _assert_reads_the_legacy_job(store, _expected(), same_updated_at=False)
