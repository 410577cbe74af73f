"""Video jobs at scale: the job store, chunking and track joining, and RQ workers on a real Redis.

* no Redis: chunk planning, joining tracks across chunk borders, the store's
  fencing of stale attempts, segment concatenation, and a chunked in-process run
  of the labelled clip that must name the same people as one pass;
* a real ``redis-server`` (``tests/redis_fixtures.py``) and real ``python -m
  modules.worker`` processes: jobs run on the workers; a worker SIGKILLed
  mid-job leads to a retry on another worker (or, with no retries, a clean
  failure) within the heartbeat TTL + cleanup interval; two API servers and two
  workers share one PostgreSQL (``tests/pg_fixtures.py``) and one Redis.
"""
from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.video import evaluate, load_labels
from modules.face import UNKNOWN
from tests.redis_fixtures import WorkerProcess, wait_for_workers

CLIP = Path("face_recognition_examples") / "video_short_hamilton_clip"
FAST = ("--heartbeat-ttl", "3", "--cleanup-interval", "1")  # a dead worker is noticed within ~4 s


@pytest.fixture(scope="module")
def clip_dir(shared_data) -> Path:
    return shared_data / CLIP


@pytest.fixture(scope="module")
def labels(clip_dir):
    return load_labels(clip_dir)


@pytest.fixture(scope="module")
def clip(clip_dir, labels) -> Path:
    return clip_dir / labels["video"]


@pytest.fixture(scope="module")
def short_clip(clip, tmp_path_factory) -> Path:
    """Frames 82-141 (Lin-Manuel Miranda close-up), 60 frames."""
    path = tmp_path_factory.mktemp("short") / "short.mp4"
    cap = cv2.VideoCapture(str(clip))
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 29.97, (640, 360))
    for i in range(142):
        ok, f = cap.read()
        if not ok:
            break
        if i >= 82:
            w.write(f)
    w.release()
    cap.release()
    return path


def _enroll(rec, clip_dir, labels):
    for person, rels in labels["enroll"].items():
        rec.enroll("default", person, [clip_dir / r for r in rels])


@pytest.fixture(scope="module")
def queue_rec(recognizer, clip_dir, labels, tmp_path_factory):
    from modules.storage import open_gallery
    from modules.recognizer import FaceRecognizer

    g = open_gallery(tmp_path_factory.mktemp("queue-gallery") / "gallery.db")
    rec = FaceRecognizer(recognizer.config, g, detector=recognizer.detector, embedder=recognizer.embedder)
    _enroll(rec, clip_dir, labels)
    yield rec
    g.close()


def _named_share(frames, labels):
    ev = evaluate(frames, labels)
    return {(s["identity"], s["frames"]): s["named_share"] for s in ev["segments"]}, ev["false_known_frames"]


def _check_clip_results(frames, tracks, labels):
    assert [f["frame"] for f in frames] == list(range(labels["frames"]))
    shares, false_known = _named_share(frames, labels)
    assert shares[("lin_manuel_miranda", "82-210")] >= 0.9 and shares[("barack_obama", "211-274")] >= 0.9
    assert false_known == 0
    ids = {face["track_id"] for f in frames for face in f["faces"]}
    assert ids == {t["track_id"] for t in tracks}
    named: dict[int, set] = {}
    for f in frames:
        for face in f["faces"]:
            if face["name"] != UNKNOWN:
                named.setdefault(face["track_id"], set()).add(face["name"])
    assert named and all(len(v) == 1 for v in named.values())  # one name per track, across chunk borders too
    for t in tracks:
        seen = [f["frame"] for f in frames for face in f["faces"] if face["track_id"] == t["track_id"]]
        assert (t["first_frame"], t["last_frame"]) == (min(seen), max(seen))


# --- no Redis ---------------------------------------------------------------------------------------------
def test_chunk_plan():
    from modules.jobs.chunks import ChunkPolicy

    p = ChunkPolicy(chunk_seconds=60)
    assert p.plan(30 * 100, 30.0, parallelism=4) == [(0, None)]  # shorter than 2 chunks: whole
    assert p.plan(30 * 600, 30.0, parallelism=1) == [(0, None)]  # nothing in parallel: whole
    assert p.plan(None, 30.0, parallelism=4) == [(0, None)]  # unknown length: whole
    ranges = p.plan(30 * 600, 30.0, parallelism=4)
    assert len(ranges) == 10 and ranges[0] == (0, 1800) and ranges[-1] == (16200, None)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert ChunkPolicy(chunk_seconds=0).plan(10**6, 30.0, 8) == [(0, None)]


def test_chunk_policy_from_the_settings_tree(monkeypatch):
    from modules.errors import ConfigError
    from modules.jobs.chunks import ChunkPolicy
    from modules.settings import load_settings

    monkeypatch.setenv("FACEREC_VIDEO_CHUNK_SECONDS", "5")
    assert ChunkPolicy.from_settings(load_settings()).chunk_seconds == 5.0
    assert ChunkPolicy.from_settings(load_settings(video_chunk_seconds=3.0)).chunk_seconds == 3.0  # the flag wins
    monkeypatch.setenv("FACEREC_VIDEO_CHUNK_SECONDS", "soon")
    with pytest.raises(ConfigError, match="FACEREC_VIDEO_CHUNK_SECONDS"):
        load_settings()


def _face(tid, box, name=UNKNOWN, sim=0.1):
    return {"track_id": tid, "box": box, "name": name, "similarity": sim}


def _piece(tid, name, first, last, sim=0.5, samples=5, evidence=(), crop=None, quality=1.0, core=None):
    from modules.video.ranges import encode_embedding

    return {"track_id": tid, "name": name, "similarity": sim, "first_frame": first, "last_frame": last,
            "samples": samples, "detections_core": core if core is not None else last - first + 1, "crop": crop, "quality": quality,
            "evidence": [encode_embedding(e) for e in evidence],
            "names": [{"frame": first, "name": name, "similarity": sim, "reason": "first frames"}],
            "best_frame": first, "best_box": [0, 0, 1, 1]}


def test_join_tracks_across_chunk_borders():
    """A face crossing the border keeps the first chunk's id and its name; new faces get the next ids."""
    from modules.jobs.chunks import join_chunks

    a_box, b_box = [10.0, 10.0, 60.0, 60.0], [200.0, 10.0, 250.0, 60.0]
    c0 = {"start": 0, "switches": 0, "scene_cuts": 0, "embeddings": 5, "overlap": [],
          "frames": [{"frame": i, "time_s": i / 30, "faces": [_face(1, a_box, "alice", 0.6)]} for i in range(10)],
          "tracks": [_piece(1, "alice", 0, 9, crop="t1.jpg", quality=5.0)]}
    # chunk 1 started 3 frames early: alice (its track 4, still unknown there) and bob (track 2)
    c1 = {"start": 10, "switches": 0, "scene_cuts": 0, "embeddings": 5,
          "overlap": [{"frame": i, "time_s": i / 30, "faces": [_face(4, [11.0, 10.0, 61.0, 60.0])]} for i in (7, 8, 9)],
          "frames": [{"frame": i, "time_s": i / 30, "faces": [_face(4, a_box), _face(2, b_box, "bob", 0.7)]}
                     for i in range(10, 20)],
          "tracks": [_piece(2, "bob", 10, 19, crop="t2.jpg"), _piece(4, UNKNOWN, 7, 19, sim=0.2, samples=1,
                                                                      crop="t4.jpg", quality=9.0, core=10)]}
    out = join_chunks([c0, c1], decide=None)
    assert out["summary"]["joined_tracks"] == 1
    assert [f["frame"] for f in out["frames"]] == list(range(20))
    f15 = {face["track_id"]: face for face in out["frames"][15]["faces"]}
    assert set(f15) == {1, 2}  # alice kept id 1, bob got the next free id
    assert f15[1]["name"] == "alice" and f15[2]["name"] == "bob"
    tracks = {t["track_id"]: t for t in out["tracks"]}
    assert tracks[1]["first_frame"] == 0 and tracks[1]["last_frame"] == 19 and tracks[1]["chunks"] == [0, 1]
    assert tracks[1]["frames"] == 20 and tracks[1]["name"] == "alice"
    assert tracks[1]["names"][-1]["reason"].startswith("joined across chunks")
    assert tracks[1]["best_crop"] == "alice/track_1.jpg"  # the better crop (chunk 1's), under the joined name
    assert (1, "t4.jpg", "alice/track_1.jpg") in out["crops"]


def test_join_redecides_conflicting_pieces_on_all_evidence():
    from modules.jobs.chunks import join_chunks

    e = np.eye(4, dtype=np.float32)
    box = [10.0, 10.0, 60.0, 60.0]
    c0 = {"start": 0, "overlap": [], "frames": [{"frame": i, "time_s": 0.0, "faces": [_face(1, box, "alice")]}
                                                 for i in range(5)],
          "tracks": [_piece(1, "alice", 0, 4, evidence=[e[0]] * 3)]}
    c1 = {"start": 5, "overlap": [{"frame": 4, "time_s": 0.0, "faces": [_face(1, box)]}],
          "frames": [{"frame": i, "time_s": 0.0, "faces": [_face(1, box, "bob")]} for i in range(5, 10)],
          "tracks": [_piece(1, "bob", 4, 9, evidence=[e[1]] * 2)]}
    calls = []

    def decide(embs):
        calls.append(len(embs))
        return ("alice", 0.55) if len(embs) == 5 else (UNKNOWN, 0.0)

    out = join_chunks([c0, c1], decide=decide)
    assert calls == [5]  # one decision on both pieces' evidence
    assert {face["name"] for f in out["frames"] for face in f["faces"]} == {"alice"}
    # a decision naming somebody neither piece had ends unknown
    out = join_chunks([c0, c1], decide=lambda embs: ("carol", 0.9))
    assert {face["name"] for f in out["frames"] for face in f["faces"]} == {UNKNOWN}


def test_store_fences_stale_attempts_and_commits_atomically(tmp_path):
    from modules.jobs.tasks import Superseded, fenced
    from modules.storage.jobs import open_job_store

    store = open_job_store(tmp_path / "jobs.db")
    assert not (tmp_path / "jobs.db").exists() and store.list() == []  # nothing written until a job exists
    jid = "44444444-4444-4444-8444-444444444444"
    with store.tx() as tx:
        tx.put_job({"job_id": jid, "status": "running", "created_at": "2024", "chunks": 1})
        tx.put_chunk({"job_id": jid, "idx": 0, "start_frame": 0, "end_frame": None, "attempt": 2})
    with store.tx() as tx:
        fenced(tx, jid, 0, 2)
        tx.add_frames(jid, [{"frame": i, "time_s": 0.0, "faces": []} for i in range(3)])
    with pytest.raises(Superseded), store.tx() as tx:  # attempt 1 was given up on: it may not write
        tx.add_frames(jid, [{"frame": 9, "time_s": 0.0, "faces": []}])
        fenced(tx, jid, 0, 1)
    assert [f["frame"] for f in store.frames(jid)] == [0, 1, 2]  # the refused transaction left nothing
    assert store.frames(jid, 1, 1) == [{"frame": 1, "time_s": 0.0, "faces": []}]
    store.delete(jid)
    assert store.list() == [] and store.frames(jid) == []
    store.close()


def test_concat_segments_with_and_without_pyav(tmp_path, monkeypatch):
    import builtins

    from modules.video.ranges import concat_videos

    segs = []
    for k in range(3):
        p = tmp_path / f"s{k}.mp4"
        w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (64, 48))
        for i in range(7):
            w.write(np.full((48, 64, 3), 30 * k + i, np.uint8))
        w.release()
        segs.append(p)

    def count(p):
        cap = cv2.VideoCapture(str(p))
        n = 0
        while cap.read()[0]:
            n += 1
        cap.release()
        return n

    try:
        import av  # noqa: F401

        assert concat_videos(segs, tmp_path / "a.mp4") == "pyav" and count(tmp_path / "a.mp4") == 21
    except ImportError:
        pass
    real_import = builtins.__import__

    def no_av(name, *a, **k):
        if name == "av":
            raise ImportError("no av")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_av)
    assert concat_videos(segs, tmp_path / "b.mp4") == "opencv" and count(tmp_path / "b.mp4") == 21


def test_chunked_in_process_job_names_the_same_people_as_one_pass(queue_rec, clip, labels, tmp_path):
    """The clip in 3 chunks on 2 threads: same named segments, one id and one name per track across borders."""
    from modules.jobs import ChunkPolicy, JobLimits, JobManager

    m = JobManager(tmp_path / "jobs", queue_rec, limits=JobLimits(max_running=2),
                   chunking=ChunkPolicy(chunk_seconds=3.0, min_seconds=0, overlap_seconds=1.0))
    try:
        job = m.submit(clip.read_bytes(), "clip.mp4")
        assert job["chunks"] == 3 and job["executor"] == "inprocess"
        state = m.wait(job["job_id"], timeout=90)
        assert state["status"] == "done", state
        assert state["progress"] == 1.0 and state["summary"]["chunks"] == 3
        assert state["summary"]["joined_tracks"] >= 1  # Miranda's close-up crosses a border
        frames, _ = m.frames(job["job_id"])
        tracks, _ = m.tracks(job["job_id"])
        _check_clip_results(frames, tracks, labels)
        named = [t for t in tracks if t["name"] != UNKNOWN]
        assert {t["name"] for t in named} >= {"lin_manuel_miranda", "barack_obama"}
        for t in named:
            assert cv2.imread(str(m.crop_path(job["job_id"], t["best_crop"]))) is not None
        cap = cv2.VideoCapture(str(m.video_path(job["job_id"])))
        n = 0
        while cap.read()[0]:
            n += 1
        cap.release()
        assert n == labels["frames"]
        assert not (m.dir / job["job_id"] / "segments").exists()  # intermediate files are removed
    finally:
        m.shutdown()


# --- real Redis, real workers -------------------------------------------------------------------------
@pytest.fixture
def queue_app(queue_rec, clip_dir, labels, redis_url, tmp_path):
    """An app whose video jobs go to Redis (its data dir is the workers' too: one machine)."""
    from modules.api import videos
    from modules.settings import Settings
    from modules.web import create_app

    app = create_app(Settings(data_dir=tmp_path / "data", queue_url=redis_url, video_chunk_seconds=3.0,
                              rate={"video_jobs": 3}),  # a test sends three jobs at once from one client
                     recognizer=queue_rec, TESTING=True)
    svc = app.extensions["facerec"]
    _enroll(svc.recognizer, clip_dir, labels)
    yield app
    app.extensions[videos.EXTENSION].shutdown(wait=True)
    svc.close()


@pytest.fixture
def workers(redis_url, tmp_path):
    """``start(n, *args)`` -> n ready workers on this test's Redis database (stopped afterwards)."""
    made: list[WorkerProcess] = []

    def start(n: int, *args: str) -> list[WorkerProcess]:
        ws = [WorkerProcess(redis_url, tmp_path, *args) for _ in range(n)]
        made.extend(ws)
        for w in ws:
            w.wait_ready()
        wait_for_workers(redis_url, len([w for w in made if w.proc.poll() is None]))
        return ws

    yield start
    for w in made:
        w.stop()


def _upload(client, path: Path, **fields):
    r = client.post("/api/v1/videos", data={"file": (io.BytesIO(path.read_bytes()), path.name), **fields},
                    content_type="multipart/form-data")
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def _wait(get, job_id, timeout=60.0, until=lambda s: s["status"] not in ("queued", "running")):
    end = time.monotonic() + timeout
    while True:
        s = get(job_id)
        if until(s) or time.monotonic() > end:
            return s
        time.sleep(0.1)


def test_jobs_run_on_separate_worker_processes(queue_app, workers, redis_url, short_clip, clip, labels, tmp_path):
    data = str(tmp_path / "data")
    ws = workers(2, "--data-dir", data, *FAST)
    c = queue_app.test_client()
    get = lambda j: c.get(f"/api/v1/videos/{j}").get_json()
    short = [_upload(c, short_clip) for _ in range(2)]
    long_ = _upload(c, clip)  # 275 frames: 3 chunks of ~3 s
    assert get(long_)["chunks"] == 3 and get(long_)["executor"] == "queue"
    states = {j: _wait(get, j) for j in [*short, long_]}
    assert all(s["status"] == "done" for s in states.values()), states
    pids = {int(w.rsplit(".", 1)[1]) for s in states.values() for w in s["workers"]}
    assert pids <= {w.pid for w in ws} and os.getpid() not in pids
    assert len(pids) == 2  # both workers took tasks
    fr = c.get(f"/api/v1/videos/{short[0]}/frames?limit=60").get_json()
    assert [f["frame"] for f in fr["frames"]] == list(range(60))
    assert any(face["name"] == "lin_manuel_miranda" for f in fr["frames"] for face in f["faces"])
    frames = c.get(f"/api/v1/videos/{long_}/frames?limit=1000").get_json()["frames"]
    tracks = c.get(f"/api/v1/videos/{long_}/tracks").get_json()["tracks"]
    _check_clip_results(frames, tracks, labels)
    v = c.get(f"/api/v1/videos/{long_}/video")
    assert v.status_code == 200 and v.mimetype == "video/mp4" and len(v.data) > 10_000
    st = c.get(f"/api/v1/videos/{long_}/stream")
    assert st.status_code == 200 and next(iter(st.response)).startswith(b"--frame")
    st.close()
    # cancel: a job queued behind the others is cancelled at once, a running one at its next progress tick
    a, b = _upload(c, clip), _upload(c, clip)
    _wait(get, a, until=lambda s: s["status"] == "running")
    for j in (a, b):
        assert c.delete(f"/api/v1/videos/{j}").status_code == 200
    assert _wait(get, a, 30)["status"] == "cancelled" and _wait(get, b, 30)["status"] == "cancelled"


def test_sigkilled_worker_job_is_retried_on_another_worker(queue_app, workers, clip, labels, tmp_path):
    data = str(tmp_path / "data")
    first = workers(1, "--data-dir", data, *FAST)[0]
    c = queue_app.test_client()
    get = lambda j: c.get(f"/api/v1/videos/{j}").get_json()
    job = _upload(c, clip, decision="mean")  # 275 frames: 3 chunks, all taken by the only worker
    s = _wait(get, job, 60, until=lambda s: s["frames_done"] >= 20 or s["status"] not in ("queued", "running"))
    assert s["status"] == "running", s
    os.kill(first.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    first.proc.wait()
    second = workers(1, "--data-dir", data, *FAST)[0]
    s = _wait(get, job, 90)
    assert s["status"] == "done", s
    assert s["retries"] >= 1 and s["attempts"] >= 4  # 3 chunks + at least one retry
    assert any(w.endswith(f".{second.pid}") for w in s["workers"])
    assert time.monotonic() - t_kill < 60
    frames = c.get(f"/api/v1/videos/{job}/frames?limit=1000").get_json()["frames"]
    tracks = c.get(f"/api/v1/videos/{job}/tracks").get_json()["tracks"]
    _check_clip_results(frames, tracks, labels)  # no frame twice, none missing: the dead attempt wrote nothing


def test_sigkilled_worker_without_retries_fails_the_job_cleanly(queue_rec, clip, redis_url, workers, tmp_path):
    from modules.jobs import ChunkPolicy, JobManager
    from modules.jobs.executors import RedisQueueExecutor
    from modules.storage import open_gallery
    from modules.storage.jobs import open_job_store

    data = tmp_path / "data"
    data.mkdir()
    g = open_gallery(data / "gallery.db")  # the workers' gallery (what create_app would make)
    g.ensure_gallery("default")
    g.close()
    store = open_job_store(data / "jobs.db")
    m = JobManager(data / "jobs", queue_rec, store=store, own_store=True,
                   executor=RedisQueueExecutor(redis_url, retries=0, cleanup_interval=1),
                   chunking=ChunkPolicy(chunk_seconds=0))
    try:
        w = workers(1, "--data-dir", str(data), *FAST)[0]
        job = m.submit(clip, "clip.mp4")["job_id"]
        s = _wait(m.get, job, 60, until=lambda s: s["frames_done"] >= 20 or s["status"] not in ("queued", "running"))
        assert s["status"] == "running", s
        w.kill()
        t0 = time.monotonic()
        s = _wait(m.get, job, 30)
        assert s["status"] == "failed" and "no heartbeat" in s["error"] and "no retries left" in s["error"], s
        assert time.monotonic() - t0 < 15  # heartbeat TTL 3 s + cleanup every 1 s, by the API's own cleanup
        assert len(m.frames(job)[0]) < 275  # what it had committed stays readable; the job says failed
    finally:
        m.shutdown()


def test_two_api_servers_and_two_workers_share_postgres_and_redis(pg_url, redis_url, workers, clip_dir, labels,
                                                                  short_clip, clip, tmp_path):
    import requests

    from tests.api_fixtures import ServerProcess

    shared = tmp_path / "shared-storage"  # stands for an NFS mount every machine has
    common = ["--database-url", pg_url, "--queue-url", redis_url, "--storage-dir", str(shared)]
    servers = [ServerProcess(tmp_path / f"api{i}", extra=[*common, "--chunk-seconds", "3"]) for i in range(2)]
    try:
        workers(2, "--data-dir", str(tmp_path / "w"), "--database-url", pg_url, "--storage-dir", str(shared), *FAST)
        a, b = servers[0].url, servers[1].url
        for person, rels in labels["enroll"].items():  # enrolled through one server, used by the workers
            files = [("file", (Path(r).name, (clip_dir / r).read_bytes(), "image/jpeg")) for r in rels]
            r = requests.post(f"{a}/api/v1/galleries/default/people/{person}/faces", files=files, timeout=60)
            assert r.status_code == 201, r.text

        def up(server, path):
            with open(path, "rb") as fh:
                r = requests.post(f"{server}/api/v1/videos", files={"file": (path.name, fh, "video/mp4")}, timeout=60)
            assert r.status_code == 202, r.text
            return r.json()["job_id"]

        def get_on(server):
            return lambda j: requests.get(f"{server}/api/v1/videos/{j}", timeout=10).json()

        jobs = [up(a, clip), up(b, short_clip)]
        for j in jobs:  # each job followed on the other server
            s = _wait(get_on(b if j == jobs[0] else a), j, 90)
            assert s["status"] == "done", s
        s = get_on(a)(jobs[0])
        assert s["chunks"] == 3 and len(s["workers"]) == 2  # one video, both workers
        frames = requests.get(f"{b}/api/v1/videos/{jobs[0]}/frames?limit=1000", timeout=30).json()["frames"]
        tracks = requests.get(f"{a}/api/v1/videos/{jobs[0]}/tracks", timeout=30).json()["tracks"]
        _check_clip_results(frames, tracks, labels)
        v = requests.get(f"{b}/api/v1/videos/{jobs[1]}/video", timeout=30)
        assert v.status_code == 200 and v.headers["Content-Type"] == "video/mp4" and len(v.content) > 1000
        listed = {j["job_id"] for j in requests.get(f"{b}/api/v1/videos", timeout=10).json()["jobs"]}
        assert set(jobs) <= listed
        # cancelled on the server that did not take it
        j = up(a, clip)
        assert requests.delete(f"{b}/api/v1/videos/{j}", timeout=10).status_code == 200
        assert _wait(get_on(a), j, 30)["status"] == "cancelled"
    finally:
        for srv in servers:
            srv.stop()
