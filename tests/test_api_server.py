"""Real server processes over loopback: the contract, several processes on one gallery, SIGKILL recovery."""
from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest
import requests

from tests.api_fixtures import ServerProcess, b64

ENROLL = "{url}/api/v1/galleries/{g}/people/{p}/faces"


@pytest.fixture()
def server(tmp_path):
    srv = ServerProcess(tmp_path / "data")
    yield srv
    srv.stop()


def test_real_server_over_loopback(server, obama_jpg, obama2_jpg, two_people_jpg):
    url = server.url
    assert requests.get(url + "/health", timeout=10).json() == {"status": "ok"}
    spec = requests.get(url + "/openapi.json", timeout=10).json()
    assert "/recognition" in spec["paths"]
    r = requests.post(ENROLL.format(url=url, g="default", p="obama"),
                      files=[("file", ("a.jpg", obama_jpg, "image/jpeg")),
                             ("file", ("b.jpg", obama2_jpg, "image/jpeg"))], timeout=60)
    assert r.status_code == 201 and len(r.json()["face_ids"]) == 2
    r = requests.post(url + "/recognition", json={"file": b64(two_people_jpg)}, timeout=60)
    assert r.status_code == 200
    assert sorted(f["name"] for f in r.json()["faces"]) == ["obama", "unknown"]
    r = requests.post(url + "/recognition", files={"file": ("x.jpg", obama2_jpg, "image/jpeg")}, params={"legacy": 1},
                      timeout=60)
    assert r.json() == "obama"
    # errors are JSON over the wire too, never HTML
    for resp, status in (
        (requests.get(url + "/nope", timeout=10), 404),
        (requests.put(url + "/recognition", timeout=10), 405),
        (requests.post(url + "/recognition", data=b"junk", headers={"Content-Type": "image/jpeg"}, timeout=10), 400),
        (requests.post(url + "/recognition", data=b"x" * (21 * 1024 * 1024),
                       headers={"Content-Type": "image/jpeg"}, timeout=60), 413),
    ):
        assert resp.status_code == status
        assert resp.headers["Content-Type"].startswith("application/json")
        assert set(resp.json()) == {"error"}


def test_two_processes_share_one_gallery(tmp_path, obama_jpg, obama2_jpg, biden_jpg):
    """An enrollment made through one process is found by the next request to another."""
    a = ServerProcess(tmp_path / "data")
    b = ServerProcess(tmp_path / "data")
    try:
        for i, (person, img) in enumerate((("obama", obama_jpg), ("biden", biden_jpg))):
            writer, reader = (a, b) if i % 2 == 0 else (b, a)
            r = requests.post(ENROLL.format(url=writer.url, g="shared", p=person),
                              files={"file": ("x.jpg", img, "image/jpeg")}, timeout=60)
            assert r.status_code == 201
            r = requests.post(reader.url + "/recognition", json={"file": b64(img), "gallery": "shared"}, timeout=60)
            assert r.json()["name"] == person, (person, r.json())
        requests.delete(a.url + "/api/v1/galleries/shared/people/obama", timeout=10)
        r = requests.post(b.url + "/recognition", json={"file": b64(obama2_jpg), "gallery": "shared"}, timeout=60)
        assert r.json()["name"] == "unknown"
    finally:
        a.stop()
        b.stop()


def test_gunicorn_workers_see_enrollments(tmp_path, obama_jpg):
    """gunicorn with two workers: every recognition after an enrollment finds it, whichever worker answers."""
    srv = ServerProcess(tmp_path / "data", gunicorn=True, workers=2)
    try:
        for i in range(3):
            person = f"p{i}"
            r = requests.post(ENROLL.format(url=srv.url, g="g", p=person),
                              files={"file": ("x.jpg", obama_jpg, "image/jpeg")}, timeout=60)
            assert r.status_code == 201
            for _ in range(4):  # new connection each time: either worker may answer
                with requests.Session() as s:
                    body = s.post(srv.url + "/recognition?gallery=g&top_k=5", json={"file": b64(obama_jpg)},
                                  timeout=60).json()
                cands = {c["name"] for c in body["faces"][0]["candidates"]}
                assert cands == {f"p{j}" for j in range(i + 1)}, body
    finally:
        srv.stop()


def test_sigkill_during_enrollments_leaves_a_consistent_gallery(tmp_path, obama_jpg, biden_jpg):
    data = tmp_path / "data"
    srv = ServerProcess(data)
    acked: list[tuple[str, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def enroller(k: int) -> None:
        i = 0
        while not stop.is_set():
            person = f"w{k}_{i:03d}"
            try:
                r = requests.post(ENROLL.format(url=srv.url, g="crash", p=person),
                                  files=[("file", ("a.jpg", obama_jpg, "image/jpeg")),
                                         ("file", ("b.jpg", biden_jpg, "image/jpeg"))], timeout=30)
            except requests.RequestException:
                return  # the server died mid-request
            if r.status_code == 201:
                with lock:
                    acked.extend((person, fid) for fid in r.json()["face_ids"])
            i += 1

    threads = [threading.Thread(target=enroller, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let the next enrollments be in flight
    srv.kill()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked) >= 12, srv.log()

    # the database file itself: intact, no half-written enrollment (every person has both faces)
    with sqlite3.connect(data / "gallery.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        counts = conn.execute(
            "SELECT p.name, COUNT(f.id) FROM people p JOIN galleries g ON g.id = p.gallery_id"
            " LEFT JOIN faces f ON f.person_id = p.id WHERE g.name = 'crash' GROUP BY p.id"
        ).fetchall()
    assert all(n == 2 for _, n in counts), counts

    again = ServerProcess(data)
    try:
        url = again.url
        page = requests.get(url + "/api/v1/galleries/crash/people?limit=1000", timeout=10).json()
        stored = {p["name"]: p["num_faces"] for p in page["people"]}
        for person, fid in acked:  # every acknowledged enrollment survived
            assert stored.get(person) == 2, person
            r = requests.get(f"{url}/api/v1/galleries/crash/people/{person}/faces/{fid}/crop", timeout=10)
            assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
        r = requests.post(ENROLL.format(url=url, g="crash", p="after"),
                          files={"file": ("a.jpg", obama_jpg, "image/jpeg")}, timeout=60)
        assert r.status_code == 201
        body = requests.post(url + "/recognition", json={"file": b64(biden_jpg), "gallery": "crash"}, timeout=60).json()
        assert body["faces"][0]["candidates"], json.dumps(body)[:500]
    finally:
        again.stop()
