"""Hostile images against a real server: memory per request and per burst, ``/health`` meanwhile, correct answers;
the admission limit's 503 with ``Retry-After``; base64 measured by its decoded size.

The server's resident memory is sampled every 10 ms (psutil) while the requests run; each bound is on
the peak above the RSS measured just before the case.
"""
from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
import requests

from benchmarks.hostile_memory import ENROLL_COPIES, hostile_cases, jpeg_bomb, run_case, upscaled_jpeg
from tests.api_fixtures import ServerProcess
from tests.test_api import checked, error_of

ALONE_MB = 300
BURST_MB = 1024
HEALTH_S = 1.0
BURST = 8
ENROLL = "{url}/api/v1/galleries/{g}/people/{p}/faces"


@pytest.fixture(scope="module")
def server(tmp_path_factory, images):
    # app.py serves with 8 request threads: 2 decoding + 5 waiting leaves one thread free for /health
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEREC_DECODE_MAX_QUEUED", "5")
        srv = ServerProcess(tmp_path_factory.mktemp("hostile") / "data")
    try:
        requests.post(srv.url + "/recognition", data=jpeg_bomb(), headers={"Content-Type": "image/jpeg"}, timeout=60)
        yield srv
    finally:
        srv.stop()


def _check_answers(name: str, res) -> None:
    """Every answer is the right one for its case, or a 503 ``busy`` with ``Retry-After``."""
    for status, body, retry in zip(res.statuses, res.bodies, res.retry_after, strict=True):
        if status == 503:
            assert body["error"]["code"] == "busy" and int(retry) >= 1, body
        elif name.startswith("enroll"):
            assert status == 422 and body["error"]["code"] == "no_face", body
            assert body["error"]["message"].startswith("bomb0.jpg"), body  # the first image already fails
        else:
            assert status == 200, body
            assert body["faces"] == [] and body["name"] == "no face", body
            size = (6400, 6200) if name.startswith("jpeg") else (6300, 6300)
            assert (body["image"]["width"], body["image"]["height"]) == size


def test_each_hostile_request_alone_costs_little(server):
    for name, send in hostile_cases().items():
        res = run_case(server.url, server.proc.pid, name, send, 1)
        _check_answers(name, res)
        assert res.statuses != [503], name
        assert res.peak_above_idle_mb < ALONE_MB, (name, res.peak_above_idle_mb)
        assert res.health_slowest_s < HEALTH_S and not res.health_failures, (name, res.health_slowest_s)


def test_eight_at_once_stay_under_a_gigabyte_and_health_answers(server):
    for name, send in hostile_cases().items():
        res = run_case(server.url, server.proc.pid, name, send, BURST)
        _check_answers(name, res)
        assert res.statuses.count(503) < BURST, (name, res.statuses)
        assert res.peak_above_idle_mb < BURST_MB, (name, res.peak_above_idle_mb)
        assert res.health_slowest_s < HEALTH_S and not res.health_failures, (name, res.health_slowest_s)
    assert ENROLL_COPIES == 20


def test_large_photo_is_recognised_with_its_box_in_original_pixels(server, obama_jpg, obama2_jpg):
    url = server.url
    r = requests.post(ENROLL.format(url=url, g="big", p="obama"), files={"file": ("o.jpg", obama_jpg)}, timeout=60)
    assert r.status_code == 201, r.text
    ref = requests.post(url + "/recognition?gallery=big", data=obama2_jpg, headers={"Content-Type": "image/jpeg"},
                        timeout=60).json()["faces"][0]
    big = upscaled_jpeg(obama2_jpg, 5)  # 3130x6000 (18.8 Mpx), over the decode budget

    def send(u: str):
        return requests.post(u + "/recognition?gallery=big", data=big, headers={"Content-Type": "image/jpeg"},
                             timeout=120)

    res = run_case(url, server.proc.pid, "upscaled face", send, 1)
    assert res.statuses == [200], res.bodies
    body = res.bodies[0]
    assert body["image"] == {"width": 3130, "height": 6000}
    face = body["faces"][0]
    assert face["name"] == "obama" and face["similarity"] > 0.5, face
    tol = 0.03 * (ref["box"][2] - ref["box"][0]) * 5
    assert np.allclose(face["box"], np.array(ref["box"]) * 5, atol=tol), (face["box"], ref["box"])
    assert np.allclose(face["landmarks"], np.array(ref["landmarks"]) * 5, atol=tol)
    assert res.peak_above_idle_mb < ALONE_MB, res.peak_above_idle_mb


def test_enrollment_decodes_its_images_one_at_a_time(server, obama2_jpg):
    url = server.url
    photo = upscaled_jpeg(obama2_jpg, 4)  # 2504x4800: 12 Mpx, within the budget, decoded at full size
    copies = 10  # held at once, their pixels alone would take 10 x 36 MB

    def send(u: str):
        files = [("file", (f"p{i}.jpg", photo, "image/jpeg")) for i in range(copies)]
        return requests.post(ENROLL.format(url=u, g="one_by_one", p="obama"), files=files, timeout=180)

    res = run_case(url, server.proc.pid, "enrollment of 12 Mpx photos", send, 1)
    assert res.statuses == [201], res.bodies
    faces = res.bodies[0]["faces"]
    assert len(faces) == copies and {f["source"] for f in faces} == {f"p{i}.jpg" for i in range(copies)}
    assert res.peak_above_idle_mb < ALONE_MB, res.peak_above_idle_mb
    ref = requests.post(url + "/api/v1/detect", data=obama2_jpg, headers={"Content-Type": "image/jpeg"},
                        timeout=60).json()["faces"][0]["box"]
    assert np.allclose(faces[0]["box"], np.array(ref) * 4, atol=0.03 * (ref[2] - ref[0]) * 4)


# --- the admission limit, through the app ---------------------------------------------------------
def test_busy_decoding_slots_answer_503_with_retry_after(make_app, obama_jpg):
    from modules.settings import DecodeSettings

    app = make_app(decode=DecodeSettings(max_concurrent=1, wait_s=0))
    client = checked(app)
    gate = app.extensions["facerec"].decode_gate
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gate.slot():
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(10)
        r = client.post("/recognition", data=obama_jpg, content_type="image/jpeg")
        err = error_of(r, 503, "busy")
        assert int(r.headers["Retry-After"]) >= 1 and err["details"]["retry_after_s"] == int(r.headers["Retry-After"])
        files = {"file_a": (io.BytesIO(obama_jpg), "a.jpg"), "file_b": (io.BytesIO(obama_jpg), "b.jpg")}
        r = client.post("/api/v1/verify", data=files, content_type="multipart/form-data")
        error_of(r, 503, "busy")
        assert client.get("/health").status_code == 200  # never waits for a slot
    finally:
        release.set()
        holder.join()
    assert client.post("/recognition", data=obama_jpg, content_type="image/jpeg").status_code == 200
    # a real burst: one slot, no waiting; every answer is a result or a 503 with Retry-After
    with_threads = []
    answers: list = []

    def post() -> None:
        answers.append(app.test_client().post("/api/v1/detect", data=obama_jpg, content_type="image/jpeg"))

    for _ in range(6):
        with_threads.append(threading.Thread(target=post))
    for t in with_threads:
        t.start()
    for t in with_threads:
        t.join()
    assert {a.status_code for a in answers} <= {200, 503} and 200 in {a.status_code for a in answers}
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status_code == 503)


def test_decode_settings_reach_the_gate_and_the_budget(make_app, monkeypatch):
    from modules.errors import ConfigError
    from modules.settings import load_settings

    monkeypatch.setenv("FACEREC_DECODE_MAX_CONCURRENT", "3")
    monkeypatch.setenv("FACEREC_DECODE_WAIT_S", "0.5")
    monkeypatch.setenv("FACEREC_DECODE_PIXELS", "2000000")
    monkeypatch.setenv("FACEREC_DECODE_RASTER_BYTES", "50000000")
    monkeypatch.setenv("FACEREC_DECODE_MAX_QUEUED", "4")
    app = make_app(decode=load_settings().decode)
    svc = app.extensions["facerec"]
    assert (svc.decode_gate.max_concurrent, svc.decode_gate.wait_s, svc.decode_gate.queue_bound) == (3, 0.5, 4)
    assert (svc.recognizer.decode_budget.pixels, svc.recognizer.decode_budget.raster_bytes) == (2_000_000, 50_000_000)
    monkeypatch.setenv("FACEREC_DECODE_MAX_QUEUED", "")
    assert load_settings().decode.max_queued is None  # blank: no bound
    monkeypatch.setenv("FACEREC_DECODE_PIXELS", "0")
    with pytest.raises(ConfigError, match="FACEREC_DECODE_PIXELS"):
        load_settings()


# --- base64 is measured decoded ------------------------------------------------------------------
def test_base64_is_measured_by_its_decoded_size(make_app, obama_jpg):
    limit = len(obama_jpg) + 10
    app = make_app(max_upload_bytes=limit)
    app.config["MAX_CONTENT_LENGTH"] = 4 * limit  # a body limit that leaves room for base64's third more
    client = checked(app)
    assert client.post("/recognition", json={"file": base64.b64encode(obama_jpg).decode()}).status_code == 200
    over = base64.b64encode(obama_jpg + b"\0" * 11).decode()  # one byte over once decoded
    err = error_of(client.post("/recognition", json={"file": over}), 413, "too_large")
    assert f"decodes to {limit + 1} bytes; the limit is {limit}" in err["message"]
    # refused from its length alone: decoding it would have answered 400 "not valid base64"
    junk = "!" * (4 * limit // 3 + 8)
    error_of(client.post("/recognition", json={"file": junk}), 413, "too_large")
    error_of(client.post("/recognition", json={"file": "!" * 40}), 400, "invalid_request")
    # enrollment lists: each image on its own
    r = client.post(ENROLL.format(url="", g="b64", p="obama"), json={"files": [base64.b64encode(obama_jpg).decode(),
                                                                               over]})
    assert "files[1] decodes to" in error_of(r, 413, "too_large")["message"]
