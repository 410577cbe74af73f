"""The access log and the Prometheus metrics, on real requests: the Flask test client and a real gunicorn."""
from __future__ import annotations

import io
import logging
import os
import signal
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.api_fixtures import ServerProcess, b64, multipart_files

ENROLL = "/api/v1/galleries/{g}/people/{p}/faces"


def scrape(client, **kw) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of ``/metrics``."""
    r = client.get("/metrics", **kw)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.mimetype == "text/plain"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.get_data(as_text=True)) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def access_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "facerec.access"]


# --- the access log ---------------------------------------------------------------------------------------
def test_access_log_names_routes_keys_and_clients_never_names_tokens_or_images(make_app, obama_jpg, caplog):
    app = make_app(api_keys=True)
    key, rec = app.extensions["facerec"].keys.create(["team"])
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="facerec.access"):
        r = client.post(ENROLL.format(g="team", p="Zoë Secret"), headers={"X-API-Key": key},
                        data=multipart_files(obama_jpg), content_type="multipart/form-data")
        assert r.status_code == 201
        assert client.get("/api/v1/galleries/team/people?token=s3cr3t-token", headers={"X-API-Key": key}).status_code == 200
        assert client.get("/api/v1/galleries/team").status_code == 401
        assert client.get("/no/such/Zoë-path").status_code == 404
        assert client.post("/recognition", json={"file": b64(obama_jpg), "gallery": "team"},
                           headers={"X-API-Key": key}).status_code == 200
    lines = access_lines(caplog)
    assert [r.access["status"] for r in lines] == [201, 200, 401, 404, 200]
    enroll, listing, refused, unmatched, recognized = lines
    assert enroll.getMessage().startswith(
        "method=POST route=/api/v1/galleries/<gallery>/people/<person>/faces status=201 ms=")
    assert enroll.getMessage().endswith(f" key={rec.id} client=127.0.0.1")
    assert enroll.access["ms"] > 0 and enroll.levelno == logging.INFO
    assert listing.access["route"] == "/api/v1/galleries/<gallery>/people"
    assert refused.access["key"] is None and " key=- " in refused.getMessage()
    assert unmatched.access["route"] == "<unmatched>" and recognized.access["route"] == "/recognition"
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("Zo", "Secret", "s3cr3t", "token=", key, b64(obama_jpg)[:40]):
        assert secret not in text


@pytest.mark.parametrize(("access_log", "gunicorn_log", "expected"), [
    (None, None, True), (None, "-", False), (True, "-", True), (False, None, False)])
def test_access_log_leaves_gunicorn_s_own_alone_unless_asked(make_app, caplog, access_log, gunicorn_log, expected):
    from modules.settings import MetricsSettings, ServerSettings

    app = make_app(metrics=MetricsSettings(access_log=access_log), server=ServerSettings(access_log=gunicorn_log))
    with caplog.at_level(logging.INFO, logger="facerec.access"):
        assert app.test_client().get("/health").status_code == 200
    assert len(access_lines(caplog)) == int(expected)


def test_settings_from_the_environment(monkeypatch):
    from modules.errors import ConfigError
    from modules.settings import load_settings

    for name in ("FACEREC_METRICS_ACCESS_LOG", "FACEREC_METRICS_REQUIRE_KEY", "FACEREC_ACCESS_LOG"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().metrics.access_log_on(load_settings().server)
    monkeypatch.setenv("FACEREC_METRICS_ACCESS_LOG", "")  # blank: the default
    monkeypatch.setenv("FACEREC_METRICS_REQUIRE_KEY", "1")
    monkeypatch.setenv("FACEREC_ACCESS_LOG", "-")
    s = load_settings()
    assert s.metrics.access_log is None and s.metrics.require_key and not s.metrics.access_log_on(s.server)
    monkeypatch.setenv("FACEREC_METRICS_ACCESS_LOG", "true")
    assert load_settings().metrics.access_log_on(s.server)
    monkeypatch.setenv("FACEREC_METRICS_ACCESS_LOG", "sometimes")
    with pytest.raises(ConfigError, match="FACEREC_METRICS_ACCESS_LOG"):
        load_settings()


# --- the metrics ------------------------------------------------------------------------------------------------
def test_metrics_move_with_real_recognitions(make_app, two_people_jpg, obama_jpg, biden_jpg, no_face_jpg):
    app = make_app()
    client = app.test_client()
    before = scrape(client)
    for _ in range(2):
        assert client.post("/recognition", json={"file": b64(two_people_jpg)}).status_code == 200
    assert client.post("/api/v1/detect", data=multipart_files(no_face_jpg),
                       content_type="multipart/form-data").status_code == 200
    assert client.post("/api/v1/verify", data={"file_a": (io.BytesIO(obama_jpg), "a.jpg"),
                                               "file_b": (io.BytesIO(biden_jpg), "b.jpg")},
                       content_type="multipart/form-data").status_code == 200
    assert client.post("/recognition", data=b"not an image", content_type="image/jpeg").status_code == 400
    assert client.post("/recognition", data=b"x" * (21 << 20), content_type="image/jpeg").status_code == 413
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"route": "/recognition", "method": "POST"}
    assert delta("facerec_http_requests_total", status="200", **ok) == 2
    assert delta("facerec_http_requests_total", status="400", **ok) == 1
    assert delta("facerec_http_request_duration_seconds_count", **ok) == 4
    assert delta("facerec_http_request_duration_seconds_sum", **ok) > 0
    assert delta("facerec_http_request_duration_seconds_bucket", le="+Inf", **ok) == 4
    assert delta("facerec_http_errors_total", code="bad_image") == 1
    assert delta("facerec_http_errors_total", code="too_large") == 1
    assert delta("facerec_recognitions_total", operation="recognize") == 2
    assert delta("facerec_faces_detected_total", operation="recognize") == 4  # two faces in each
    assert delta("facerec_faces_detected_total", operation="detect") == 0
    assert delta("facerec_recognitions_total", operation="detect") == 1
    assert delta("facerec_recognitions_total", operation="verify") == 1
    for stage in ("decode", "detect", "align", "embed", "match", "total"):
        assert delta("facerec_recognition_stage_seconds_count", operation="recognize", stage=stage) == 2, stage
    assert delta("facerec_recognition_stage_seconds_sum", operation="recognize", stage="detect") > 0
    assert value(after, "facerec_http_requests_total", route="/metrics", method="GET", status="200") >= 1
    assert value(after, "process_resident_memory_bytes") > 0
    assert "/metrics" not in client.get("/openapi.json").get_json()["paths"]  # text, not part of the JSON API


def test_metrics_count_video_jobs_by_state(make_app, shared_data):
    from modules.api import videos
    from modules.settings import VideoLimits

    clip = shared_data / "face_recognition_examples" / "video_short_hamilton_clip" / "short_hamilton_clip.mp4"
    app = make_app(video=VideoLimits(max_running=1, max_queued=2))
    client = app.test_client()
    try:
        ids = []
        for _ in range(2):
            r = client.post("/api/v1/videos", data={"file": (io.BytesIO(clip.read_bytes()), "clip.mp4")},
                            content_type="multipart/form-data")
            assert r.status_code == 202, r.get_json()
            ids.append(r.get_json()["job_id"])
        jobs = scrape(client)
        active = {s: value(jobs, "facerec_video_jobs", status=s) for s in ("queued", "running")}
        assert sum(active.values()) == 2 and value(jobs, "facerec_video_queue_depth") == active["queued"] >= 1
        for job_id in ids:
            assert client.delete(f"/api/v1/videos/{job_id}").status_code == 200
        deadline = time.monotonic() + 60
        while sum(value(jobs := scrape(client), "facerec_video_jobs", status=s) for s in ("queued", "running")):
            assert time.monotonic() < deadline, jobs
            time.sleep(0.2)
        ended = {s: value(jobs, "facerec_video_jobs", status=s) for s in ("cancelled", "done")}
        assert ended["cancelled"] >= 1 and sum(ended.values()) == 2  # the waiting one never ran
        assert value(jobs, "facerec_video_queue_depth") == 0
    finally:
        app.extensions[videos.EXTENSION].shutdown(wait=True, cancel_running=True)


def test_metrics_are_public_unless_a_key_is_required_and_can_be_off(make_app):
    from modules.settings import MetricsSettings

    open_app = make_app("open", api_keys=True)
    assert open_app.test_client().get("/metrics").status_code == 200  # counts, not biometric data
    app = make_app("keyed", api_keys=True, metrics=MetricsSettings(require_key=True))
    scraper, _ = app.extensions["facerec"].keys.create(["metrics"])  # no such gallery: good for nothing else
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": "fr_000000000000_nope"}).status_code == 401
    assert scrape(client, headers={"X-API-Key": scraper})
    assert client.get("/api/v1/galleries/default", headers={"X-API-Key": scraper}).status_code == 403
    off = make_app("off", metrics=MetricsSettings(enabled=False))
    assert off.test_client().get("/metrics").status_code == 404
    assert off.extensions["facerec"].recognizer.listeners == []


def test_gunicorn_workers_share_their_metrics(tmp_path, monkeypatch):
    """gunicorn in multiprocess mode: a scrape, whichever worker answers, sums every worker's counts, also
    those of a worker that has since been replaced."""
    folder = tmp_path / "prometheus"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    srv = ServerProcess(tmp_path / "data", gunicorn=True, workers=2)

    def workers_seen() -> set[int]:  # prometheus-client writes <kind>_<pid>.db files
        return {int(f.stem.rsplit("_", 1)[-1]) for f in folder.glob("*.db")}

    def health() -> None:
        with requests.Session() as s:  # a new connection each time
            assert s.get(srv.url + "/health", timeout=10).status_code == 200

    try:
        for _ in range(5):
            health()
        sent, first = 5, workers_seen()
        # one worker usually takes every request: replace it, so that another one answers the next ones
        for pid in first:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while any(pid_alive(pid) for pid in first):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        while not workers_seen() - first:
            assert time.monotonic() < deadline
            health()
            sent += 1
        for _ in range(4):
            with requests.Session() as s:
                r = s.get(srv.url + "/metrics", timeout=10)
            samples = {(m.name, tuple(sorted(m.labels.items()))): m.value
                       for f in text_string_to_metric_families(r.text) for m in f.samples}
            assert value(samples, "facerec_http_requests_total", route="/health", method="GET", status="200") == sent
        assert "method=GET route=/health status=200" in srv.log()
    finally:
        srv.stop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
