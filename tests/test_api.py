"""The HTTP API through Flask's test client: every endpoint and every error status."""
from __future__ import annotations

import io
import json
import re
import sqlite3
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from flask.testing import FlaskClient

from modules.api import schemas
from tests.api_fixtures import b64, multipart_files

ENROLL = "/api/v1/galleries/{g}/people/{p}/faces"


def response_model(app, method: str, path: str, status: int) -> type | None:
    """The model ``/openapi.json`` names for this answer (errors: ``ErrorResponse``; None: not an API operation)."""
    if status >= 400:
        return schemas.ErrorResponse
    rule, _ = app.url_map.bind("localhost").match(path, method, return_rule=True)
    doc_path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
    if doc_path not in app.api_doc["paths"]:
        return None  # the document itself, the docs page
    content = app.api_doc["paths"][doc_path][method.lower()]["responses"][str(status)]["content"]
    return getattr(schemas, content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1])


class CheckedClient(FlaskClient):
    """Flask's test client, validating every JSON answer strictly against its documented response model:
    a missing, mistyped or undocumented field fails the test."""

    def open(self, *args, **kwargs):
        resp = super().open(*args, **kwargs)
        if resp.mimetype == "application/json":
            model = response_model(self.application, resp.request.method, resp.request.path, resp.status_code)
            if model is not None:
                model.model_validate(resp.get_json(), strict=True)
        return resp


def checked(app) -> FlaskClient:
    app.test_client_class = CheckedClient
    return app.test_client()


@pytest.fixture()
def client(app):
    return checked(app)


def error_of(resp, status: int, code: str | None = None) -> dict:
    """Assert the one error shape, no HTML, no traceback."""
    assert resp.status_code == status, resp.get_data(as_text=True)[:500]
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    text = resp.get_data(as_text=True)
    assert "Traceback" not in text and "<html" not in text.lower()
    return body["error"]


def enroll(client, gallery: str, person: str, *imgs: bytes, **fields):
    return client.post(ENROLL.format(g=gallery, p=person), data=multipart_files(*imgs, **fields),
                       content_type="multipart/form-data")


# --- health, readiness, docs ---------------------------------------------------------------------
def test_health_and_ready(client):
    assert client.get("/health").get_json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200
    assert r.get_json()["status"] == "ready" and r.get_json()["model"] == "sface_2021dec"


def test_ready_is_503_when_the_database_fails(app, client, monkeypatch):
    from modules.errors import FaceRecError

    def broken(*a, **k):
        raise FaceRecError("gallery database error (/secret/path.db): disk I/O error")

    monkeypatch.setattr(app.extensions["facerec"].gallery, "num_people", broken)
    err = error_of(client.get("/ready"), 503, "unavailable")
    assert "/secret" not in err["message"]
    assert client.get("/health").status_code == 200


def test_openapi_document_is_generated_from_the_routes(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.get_json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    for p in ("/recognition", "/health", "/ready", "/api/v1/galleries/{gallery}/people/{person}/faces",
              "/api/v1/detect", "/api/v1/verify", "/api/v1/galleries/{gallery}/identify",
              "/api/v1/galleries/{gallery}/reembed"):
        assert p in paths, p
    rec = paths["/recognition"]["post"]
    assert {"multipart/form-data", "application/json"} <= set(rec["requestBody"]["content"])
    assert "legacy" in rec["description"]
    assert rec["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "201" in paths["/api/v1/galleries/{gallery}/people/{person}/faces"]["post"]["responses"]
    assert spec["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    assert client.get("/docs/openapi.json").get_json() == spec


def test_docs_page_works_offline(client):
    r = client.get("/docs")
    assert r.status_code == 302
    page = client.get(r.headers["Location"])
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "swagger-ui" in html
    assert "http://" not in html and "https://" not in html  # no CDN
    assert client.get("/docs/swagger/js/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs/swagger/css/swagger-ui.css").status_code == 200


# --- /recognition ----------------------------------------------------------------------------------
def test_recognition_multipart_json_and_raw(client, obama_jpg, obama2_jpg, frame_640x480):
    assert enroll(client, "default", "obama", obama_jpg).status_code == 201
    r = client.post("/recognition", data=multipart_files(frame_640x480), content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert len(body["faces"]) == 1
    face = body["faces"][0]
    assert face["name"] == "obama" and face["similarity"] > 0.5
    assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and 0 < face["det_score"] <= 1
    assert face["candidates"][0]["name"] == "obama"
    assert body["name"] == "obama" and body["gallery"] == "default" and body["model"] == "sface_2021dec"
    assert body["image"] == {"width": 640, "height": 480}
    t = body["timings_ms"]
    assert {"decode", "detect", "align", "embed", "match", "total"} <= set(t)
    assert t["total"] >= t["embed"] > 0
    # the original client's JSON shape, and the `image` alias
    for key in ("file", "image"):
        r = client.post("/recognition", json={key: b64(obama2_jpg)})
        assert r.status_code == 200 and r.get_json()["faces"][0]["name"] == "obama"
    # a data: URL and a raw image body
    r = client.post("/recognition", json={"file": "data:image/jpeg;base64," + b64(obama2_jpg)})
    assert r.get_json()["name"] == "obama"
    r = client.post("/recognition", data=obama2_jpg, content_type="image/jpeg")
    assert r.status_code == 200 and r.get_json()["name"] == "obama"


def test_answers_are_checked_strictly_against_their_models(client, obama_jpg):
    """What CheckedClient relies on: a missing, mistyped or unknown field fails validation."""
    from pydantic import ValidationError

    body = client.post("/recognition", json={"file": b64(obama_jpg)}).get_json()
    face = body["faces"][0]
    bad = [{k: v for k, v in body.items() if k != "name"}, {**body, "extra": 1},
           {**body, "faces": [{**face, "similarity": "0.5"}]}, {**body, "faces": [{**face, "box": [1, 2, 3]}]},
           {**body, "faces": [{**face, "candidates": [{"name": "x"}]}]}]
    for b in bad:
        with pytest.raises(ValidationError):
            schemas.RecognitionResponse.model_validate(b, strict=True)
    assert schemas.RecognitionResponse.model_validate(body, strict=True).name == body["name"]


def test_recognition_every_face_and_unknown(client, obama_jpg, two_people_jpg):
    enroll(client, "default", "obama", obama_jpg)
    body = client.post("/recognition", json={"file": b64(two_people_jpg)}).get_json()
    names = sorted(f["name"] for f in body["faces"])
    assert names == ["obama", "unknown"]  # Biden is not enrolled
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in body["faces"]]
    assert areas == sorted(areas, reverse=True)
    assert body["name"] == body["faces"][0]["name"]  # the largest face's


def test_recognition_legacy_flag(client, obama_jpg, biden_jpg, no_face_jpg):
    enroll(client, "default", "obama", obama_jpg)
    assert client.post("/recognition?legacy=name", json={"file": b64(obama_jpg)}).get_json() == {"name": "obama"}
    r = client.post("/recognition", json={"file": b64(biden_jpg), "legacy": "name"})
    assert r.get_json() == {"name": "unknown"}
    r = client.post("/recognition", data=multipart_files(no_face_jpg, legacy="name"), content_type="multipart/form-data")
    assert r.get_json() == {"name": "no face"}
    # legacy=1: the original's bare JSON string, "Unknown" capitalised as it was
    assert client.post("/recognition?legacy=1", json={"file": b64(obama_jpg)}).data == b'"obama"\n'
    assert client.post("/recognition", json={"file": b64(biden_jpg), "legacy": True}).get_json() == "Unknown"
    r = client.post("/recognition", data=multipart_files(no_face_jpg, legacy="1"), content_type="multipart/form-data")
    assert r.get_json() == "Unknown"
    assert client.post("/recognition?legacy=0", json={"file": b64(obama_jpg)}).get_json()["name"] == "obama"
    assert error_of(client.post("/recognition?legacy=maybe", json={"file": b64(obama_jpg)}), 400)


def test_recognition_options(client, make_app, obama_jpg, biden_jpg, two_people_jpg, no_face_jpg):
    enroll(client, "team", "obama", obama_jpg)
    enroll(client, "team", "biden", biden_jpg)
    # the default gallery has nobody: unknown; the named one knows both
    assert client.post("/recognition", json={"file": b64(obama_jpg)}).get_json()["name"] == "unknown"
    body = client.post("/recognition?gallery=team", json={"file": b64(two_people_jpg)}).get_json()
    assert sorted(f["name"] for f in body["faces"]) == ["biden", "obama"]
    assert body["gallery"] == "team"
    body = client.post("/recognition", json={"file": b64(two_people_jpg), "gallery": "team", "top_k": 1,
                                             "max_faces": 1}).get_json()
    assert len(body["faces"]) == 1 and len(body["faces"][0]["candidates"]) == 1
    body = client.post("/recognition", json={"file": b64(no_face_jpg)}).get_json()
    assert body["faces"] == [] and body["name"] == "no face"
    error_of(client.post("/recognition?gallery=nobody", json={"file": b64(obama_jpg)}), 404, "gallery_not_found")
    error_of(client.post("/recognition", json={"file": b64(obama_jpg), "top_k": 0}), 400, "invalid_request")
    error_of(client.post("/recognition?top_k=abc", json={"file": b64(obama_jpg)}), 400, "invalid_request")


# --- errors ----------------------------------------------------------------------------------------
def test_input_errors(client, obama_jpg):
    error_of(client.post("/recognition", json={}), 400, "invalid_request")  # no image
    error_of(client.post("/recognition"), 400, "invalid_request")
    error_of(client.post("/recognition", json={"file": "!!!not base64!!!"}), 400, "invalid_request")
    error_of(client.post("/recognition", json={"file": 12}), 400, "invalid_request")
    error_of(client.post("/recognition", json=[1, 2]), 400, "invalid_request")
    error_of(client.post("/recognition", data=b"{not json", content_type="application/json"), 400, "invalid_request")
    error_of(client.post("/recognition", json={"file": b64(b"definitely not an image")}), 400, "bad_image")
    error_of(client.post("/recognition", json={"file": b64(obama_jpg[:2000])}), 400, "bad_image")  # truncated
    r = client.post("/recognition", data=multipart_files(b""), content_type="multipart/form-data")
    error_of(r, 400, "bad_image")
    error_of(client.post("/recognition", data="hello", content_type="text/plain"), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "path,data,ctype",
    [
        ("/recognition", b"garbage", "multipart/form-data"),
        ("/recognition", b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nabc",
         "multipart/form-data; boundary=xx"),
        ("/recognition", b"[" * 100_000 + b"]" * 100_000, "application/json"),
        ("/api/v1/galleries", b"[" * 100_000 + b"]" * 100_000, "application/json"),
        ("/recognition", b"\xff\xfe{}", "application/json"),
        ("/recognition", b'{"file": "\\ud800"}', "application/json"),
        ("/recognition", b"a=b&file=zz", "application/x-www-form-urlencoded"),
        ("/api/v1/galleries", b'{"name": "\\u0000"}', "application/json"),
        ("/api/v1/galleries", b'"str"', "application/json"),
        ("/api/v1/verify", b'{"file_a": null, "file_b": 1}', "application/json"),
    ],
)
def test_malformed_requests_are_400(client, path, data, ctype):
    error_of(client.post(path, data=data, content_type=ctype), 400)


def test_unsupported_image_format_is_415(client):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(buf, format="PPM")
    error_of(client.post("/recognition", json={"file": b64(buf.getvalue())}), 415, "unsupported_media_type")


def test_pickles_are_never_unpickled(client):
    import pickle

    class Boom:
        def __reduce__(self):
            return (sys.exit, (3,))

    payload = pickle.dumps(Boom())
    error_of(client.post("/recognition", data=payload, content_type="application/octet-stream"), 400, "bad_image")
    r = enroll(client, "default", "x", payload)
    error_of(r, 400, "bad_image")


def test_request_too_large_is_413_json(make_app, obama_jpg):
    client = checked(make_app(max_upload_bytes=50_000))
    big = b"x" * 60_000
    r = client.post("/recognition", data=multipart_files(big), content_type="multipart/form-data")
    error_of(r, 413, "too_large")
    error_of(client.post("/recognition", json={"file": b64(big)}), 413, "too_large")
    error_of(client.post("/recognition", data=big, content_type="image/jpeg"), 413, "too_large")


def test_too_many_pixels_is_413(make_app, obama_jpg):
    client = checked(make_app(max_pixels=100_000))
    error_of(client.post("/recognition", json={"file": b64(obama_jpg)}), 413, "too_large")
    # a decompression bomb: a tiny file declaring 50000x50000 pixels
    error_of(client.post("/recognition", data=png_bomb(50_000, 50_000), content_type="image/png"), 413, "too_large")


def png_bomb(width: int, height: int) -> bytes:
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    ihdr = png[12:29]  # type + data of the IHDR chunk
    ihdr[4:12] = struct.pack(">II", width, height)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(png)


def test_unknown_route_and_method(client):
    error_of(client.get("/nope"), 404, "not_found")
    error_of(client.get("/api/v1/nope/deeper"), 404, "not_found")
    r = client.delete("/recognition")
    error_of(r, 405, "method_not_allowed")
    assert "POST" in r.headers["Allow"]
    error_of(client.get("/recognition"), 405, "method_not_allowed")


def test_unexpected_error_is_500_json_without_traceback(app, client, obama_jpg, monkeypatch):
    from modules.api import operations

    def crash(*a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(operations, "recognize", crash)
    err = error_of(client.post("/recognition", json={"file": b64(obama_jpg)}), 500, "internal_error")
    assert "secret" not in err["message"]


def test_path_names_never_reach_the_file_system(client, obama_jpg, tmp_path):
    for bad in ("..", ".", "%2e%2e", " padded", "a%00b", "x" * 200):
        r = client.get(f"/api/v1/galleries/{bad}/people")
        assert r.status_code in (400, 404), (bad, r.status_code)
        error_of(r, r.status_code)
    r = client.post(ENROLL.format(g="..", p="x"), data=multipart_files(obama_jpg), content_type="multipart/form-data")
    error_of(r, 400, "invalid_request")
    # uploaded file names are labels only
    r = client.post(ENROLL.format(g="g", p="p"), data={"file": [(io.BytesIO(obama_jpg), "../../../etc/passwd")]},
                    content_type="multipart/form-data")
    assert r.status_code == 201
    assert "/" not in r.get_json()["faces"][0]["source"]
    made = sorted(p.name for p in (tmp_path / "data").iterdir() if not p.name.startswith("gallery.db"))
    assert made in ([], ["jobs"]), made  # only the video job folder the app makes at start
    if made:
        assert list((tmp_path / "data" / "jobs").iterdir()) == []


# --- galleries, people, faces ----------------------------------------------------------------------------
def test_gallery_lifecycle(client, obama_jpg):
    r = client.post("/api/v1/galleries", json={"name": "staff"})
    assert r.status_code == 201 and r.get_json()["name"] == "staff"
    error_of(client.post("/api/v1/galleries", json={"name": "staff"}), 409, "conflict")
    error_of(client.post("/api/v1/galleries", json={}), 400, "invalid_request")
    error_of(client.post("/api/v1/galleries", json={"name": "a/b"}), 400, "invalid_request")
    names = [g["name"] for g in client.get("/api/v1/galleries").get_json()["galleries"]]
    assert names == ["default", "staff"]
    enroll(client, "staff", "obama", obama_jpg)
    g = client.get("/api/v1/galleries/staff").get_json()
    assert g["num_people"] == 1 and g["num_faces"] == 1 and g["embedders"] == {"sface_2021dec": 1}
    error_of(client.get("/api/v1/galleries/nope"), 404, "gallery_not_found")
    r = client.delete("/api/v1/galleries/staff")
    assert r.get_json() == {"deleted": "staff", "people": 1, "faces": 1}
    error_of(client.delete("/api/v1/galleries/staff"), 404, "gallery_not_found")


def test_people_crud_and_pagination(client):
    for name in ("carol", "alice", "bob", "dave", "erin"):
        r = client.post("/api/v1/galleries/g1/people", json={"name": name, "metadata": {"team": "x"}})
        assert r.status_code == 201, r.get_json()
    error_of(client.post("/api/v1/galleries/g1/people", json={"name": "alice"}), 409, "conflict")
    page = client.get("/api/v1/galleries/g1/people?offset=1&limit=2").get_json()
    assert [p["name"] for p in page["people"]] == ["bob", "carol"]
    assert page["total"] == 5 and page["offset"] == 1 and page["limit"] == 2
    assert client.get("/api/v1/galleries/g1/people").get_json()["total"] == 5
    error_of(client.get("/api/v1/galleries/g1/people?limit=100000"), 400, "invalid_request")
    error_of(client.get("/api/v1/galleries/g1/people?offset=-1"), 400, "invalid_request")
    error_of(client.get("/api/v1/galleries/nope/people"), 404, "gallery_not_found")

    p = client.get("/api/v1/galleries/g1/people/alice").get_json()
    assert p["name"] == "alice" and p["metadata"] == {"team": "x"} and p["num_faces"] == 0
    error_of(client.get("/api/v1/galleries/g1/people/zed"), 404, "person_not_found")

    r = client.patch("/api/v1/galleries/g1/people/alice", json={"name": "alicia"})
    assert r.status_code == 200 and r.get_json()["name"] == "alicia"
    error_of(client.get("/api/v1/galleries/g1/people/alice"), 404, "person_not_found")
    error_of(client.patch("/api/v1/galleries/g1/people/alicia", json={"name": "bob"}), 409, "conflict")
    error_of(client.patch("/api/v1/galleries/g1/people/alicia", json={}), 400, "invalid_request")
    r = client.patch("/api/v1/galleries/g1/people/alicia", json={"metadata": {"role": "lead"}})
    assert r.get_json()["metadata"] == {"role": "lead"}
    error_of(client.patch("/api/v1/galleries/g1/people/zed", json={"name": "q"}), 404, "person_not_found")

    assert client.delete("/api/v1/galleries/g1/people/alicia").get_json() == {"deleted": "alicia", "faces": 0}
    error_of(client.delete("/api/v1/galleries/g1/people/alicia"), 404, "person_not_found")
    assert client.get("/api/v1/galleries/g1/people").get_json()["total"] == 4


def test_faces_enroll_list_get_crop_delete(client, obama_jpg, obama2_jpg, biden_jpg):
    r = enroll(client, "new_gallery", "obama", obama_jpg, obama2_jpg)  # creates gallery and person
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    ids = body["face_ids"]
    assert len(ids) == 2 and all(isinstance(i, int) for i in ids)
    assert body["person"]["num_faces"] == 2 and [f["id"] for f in body["faces"]] == ids
    assert body["faces"][0]["source"] == "img0.jpg" and len(body["faces"][0]["source_sha256"]) == 64
    # JSON enrollment, one and several
    r = client.post(ENROLL.format(g="new_gallery", p="biden"), json={"file": b64(biden_jpg)})
    assert r.status_code == 201 and len(r.get_json()["face_ids"]) == 1
    r = client.post(ENROLL.format(g="new_gallery", p="biden"), json={"files": [b64(biden_jpg), b64(biden_jpg)]})
    assert r.status_code == 201 and len(r.get_json()["face_ids"]) == 2

    base = "/api/v1/galleries/new_gallery/people/obama/faces"
    listed = client.get(base).get_json()["faces"]
    assert [f["id"] for f in listed] == ids
    f = client.get(f"{base}/{ids[0]}").get_json()
    assert f["person"] == "obama" and f["has_crop"] and len(f["box"]) == 4
    crop = client.get(f"{base}/{ids[0]}/crop")
    assert crop.status_code == 200 and crop.mimetype == "image/png"
    assert crop.data.startswith(b"\x89PNG") and Image.open(io.BytesIO(crop.data)).size == (112, 112)
    # a face of another person, a missing face, a bad id
    biden_id = client.get("/api/v1/galleries/new_gallery/people/biden/faces").get_json()["faces"][0]["id"]
    error_of(client.get(f"{base}/{biden_id}"), 404, "face_not_found")
    error_of(client.get(f"{base}/999999"), 404, "face_not_found")
    error_of(client.get(f"{base}/abc"), 400, "invalid_request")
    error_of(client.get(f"{base}/{2**70}"), 400, "invalid_request")
    error_of(client.get("/api/v1/galleries/new_gallery/people/nobody/faces"), 404, "person_not_found")

    assert client.delete(f"{base}/{ids[0]}").get_json() == {"deleted": ids[0]}
    error_of(client.delete(f"{base}/{ids[0]}"), 404, "face_not_found")
    assert [f["id"] for f in client.get(base).get_json()["faces"]] == ids[1:]


def test_enroll_errors(client, obama_jpg, no_face_jpg, two_people_jpg):
    error_of(enroll(client, "g", "p", no_face_jpg), 422, "no_face")
    # all or nothing: the good photo is not enrolled either
    r = enroll(client, "g", "p", obama_jpg, no_face_jpg)
    err = error_of(r, 422, "no_face")
    assert "img1.jpg" in err["message"]
    error_of(client.get("/api/v1/galleries/g/people/p"), 404)
    error_of(enroll(client, "g", "p", two_people_jpg, policy="error"), 422, "multiple_faces")
    error_of(enroll(client, "g", "p", two_people_jpg, policy="bogus"), 400, "invalid_request")
    assert enroll(client, "g", "p", two_people_jpg, policy="largest").status_code == 201
    error_of(client.post(ENROLL.format(g="g", p="p"), json={}), 400, "invalid_request")
    error_of(client.post(ENROLL.format(g="g", p="p"), json={"files": ["###"]}), 400, "invalid_request")
    # the recognizer's own answers and look-alike names cannot be enrolled (they would spoof "unknown")
    for name in ("unknown", "No Face", "ob\u202eama", "oba\u200bma"):
        error_of(enroll(client, "g", name, obama_jpg), 400, "invalid_request")
    assert [p["name"] for p in client.get("/api/v1/galleries/g/people").get_json()["people"]] == ["p"]


# --- identify, verify, detect, re-embed -----------------------------------------------------------------------
def test_identify_in_a_chosen_gallery(client, obama_jpg, biden_jpg, two_people_jpg, no_face_jpg):
    enroll(client, "pols", "obama", obama_jpg)
    enroll(client, "pols", "biden", biden_jpg)
    r = client.post("/api/v1/galleries/pols/identify", data=multipart_files(two_people_jpg, top_k=2),
                    content_type="multipart/form-data")
    assert r.status_code == 200
    faces = r.get_json()["faces"]
    assert sorted(f["name"] for f in faces) == ["biden", "obama"]
    assert all(len(f["candidates"]) == 2 for f in faces)
    error_of(client.post("/api/v1/galleries/nobody/identify", json={"file": b64(obama_jpg)}), 404, "gallery_not_found")
    # a missing gallery is a 404 even when the image has no face
    r = client.post("/api/v1/galleries/nobody/identify", json={"file": b64(no_face_jpg)})
    error_of(r, 404, "gallery_not_found")
    error_of(client.post("/recognition?gallery=nobody", json={"file": b64(no_face_jpg)}), 404, "gallery_not_found")


def test_verify_two_images(client, obama_jpg, obama2_jpg, biden_jpg, no_face_jpg):
    r = client.post("/api/v1/verify", data={"file_a": (io.BytesIO(obama_jpg), "a.jpg"),
                                           "file_b": (io.BytesIO(obama2_jpg), "b.jpg")},
                    content_type="multipart/form-data")
    assert r.status_code == 200
    body = r.get_json()
    assert body["same_person"] is True and body["similarity"] > body["threshold"]
    assert len(body["face_a"]["box"]) == 4 and "total" in body["timings_ms"]
    body = client.post("/api/v1/verify", json={"file_a": b64(obama_jpg), "file_b": b64(biden_jpg)}).get_json()
    assert body["same_person"] is False
    error_of(client.post("/api/v1/verify", json={"file_a": b64(obama_jpg), "file_b": b64(no_face_jpg)}), 422, "no_face")
    error_of(client.post("/api/v1/verify", json={"file_a": b64(obama_jpg)}), 400, "invalid_request")


def test_verify_against_a_person(client, obama_jpg, obama2_jpg, biden_jpg):
    enroll(client, "default", "obama", obama_jpg)
    url = "/api/v1/galleries/default/people/obama/verify"
    body = client.post(url, json={"file": b64(obama2_jpg)}).get_json()
    assert body["same_person"] is True and body["person"] == "obama" and isinstance(body["face_id"], int)
    assert client.post(url, data=biden_jpg, content_type="image/jpeg").get_json()["same_person"] is False
    error_of(client.post("/api/v1/galleries/default/people/nobody/verify", json={"file": b64(obama2_jpg)}), 404,
             "person_not_found")
    client.post("/api/v1/galleries/default/people", json={"name": "faceless"})
    error_of(client.post("/api/v1/galleries/default/people/faceless/verify", json={"file": b64(obama2_jpg)}), 409)


def test_detect(client, two_people_jpg, no_face_jpg):
    r = client.post("/api/v1/detect", data=multipart_files(two_people_jpg), content_type="multipart/form-data")
    assert r.status_code == 200
    body = r.get_json()
    assert len(body["faces"]) == 2 and body["image"] == {"width": 1126, "height": 661}
    assert set(body["faces"][0]) == {"box", "landmarks", "det_score"}
    assert {"decode", "detect", "total"} <= set(body["timings_ms"])
    assert len(client.post("/api/v1/detect?max_faces=1", json={"image": b64(two_people_jpg)}).get_json()["faces"]) == 1
    assert client.post("/api/v1/detect", json={"file": b64(no_face_jpg)}).get_json()["faces"] == []


def test_attributes_wiring(client, two_people_jpg):
    # an empty attributes value is no request at all
    body = client.post("/api/v1/detect?attributes=", json={"file": b64(two_people_jpg)}).get_json()
    assert set(body["faces"][0]) == {"box", "landmarks", "det_score"} and "attributes" not in body["timings_ms"]
    body = client.post("/api/v1/detect?attributes=pose,quality", json={"file": b64(two_people_jpg)}).get_json()
    assert all(set(f) == {"box", "landmarks", "det_score", "pose", "quality"} for f in body["faces"])
    assert "attributes" in body["timings_ms"]
    body = client.post("/recognition", json={"file": b64(two_people_jpg), "attributes": "pose"}).get_json()
    assert all(set(f["pose"]) == {"yaw", "pitch", "roll"} and "name" in f and "quality" not in f for f in body["faces"])
    assert "attributes" in body["timings_ms"]
    error_of(client.post("/recognition", json={"file": b64(two_people_jpg), "attributes": "shoe_size"}), 400)


def test_reembed(client, app, obama_jpg):
    enroll(client, "default", "obama", obama_jpg)
    r = client.post("/api/v1/galleries/default/reembed")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["reembedded"] == 1 and body["embedder"] == "sface_2021dec"
    error_of(client.post("/api/v1/galleries/nope/reembed"), 404, "gallery_not_found")
    # embeddings of another model: search is refused with 409 until re-embedded
    db = app.extensions["facerec"].gallery.path
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE faces SET embedder = 'old_model'")
        conn.execute("UPDATE galleries SET generation = generation + 1000")
    error_of(client.post("/recognition", json={"file": b64(obama_jpg)}), 409, "embedder_mismatch")
    assert client.post("/api/v1/galleries/default/reembed").status_code == 200
    assert client.post("/recognition", json={"file": b64(obama_jpg)}).get_json()["name"] == "obama"



def test_reembed_refuses_a_broken_model_and_changes_nothing(client, app, obama_jpg, obama2_jpg, biden_jpg):
    from modules.recognizer import FaceRecognizer
    from modules.web import create_app
    from tests.test_gallery import CollapsedEmbedder

    for person, img in (("obama", obama_jpg), ("obama", obama2_jpg), ("biden", biden_jpg)):
        enroll(client, "default", person, img)
    svc = app.extensions["facerec"]
    broken = FaceRecognizer(svc.recognizer.config, detector=svc.recognizer.detector, embedder=CollapsedEmbedder())
    other = create_app(svc.settings, recognizer=broken, TESTING=True)  # the same data, a badly trained model
    try:
        err = error_of(checked(other).post("/api/v1/galleries/default/reembed"), 409, "degenerate_embeddings")
    finally:
        other.extensions["facerec"].close()
    assert err["details"]["check"] == "collapse" and err["details"]["different_people_similarity"] > 0.9
    assert "collapses" in err["message"]
    assert client.post("/recognition", json={"file": b64(obama2_jpg)}).get_json()["name"] == "obama"
    checks = client.post("/api/v1/galleries/default/reembed").get_json()["checks"]
    assert checks["faces_checked"] == 3 and checks["different_people_similarity"] < 0.5

# --- API keys ------------------------------------------------------------------------------------------------
@pytest.fixture()
def keyed(make_app):
    app = make_app(api_keys=True)
    keys = app.extensions["facerec"].keys
    user, _ = keys.create(["default", "team"], label="user")
    admin, _ = keys.create(["*"], admin=True, label="admin")
    return app, checked(app), user, admin


def test_api_keys_required(keyed, obama_jpg):
    app, client, user, admin = keyed
    for path in ("/health", "/ready", "/openapi.json", "/docs", "/docs/swagger"):
        assert client.get(path).status_code in (200, 302), path
    error_of(client.get("/api/v1/galleries"), 401, "unauthorized")
    error_of(client.post("/recognition", json={"file": b64(obama_jpg)}), 401, "unauthorized")
    error_of(client.get("/api/v1/galleries", headers={"X-API-Key": "frk_000000000000_" + "a" * 43}), 401)
    error_of(client.get("/api/v1/galleries", headers={"X-API-Key": "garbage"}), 401)
    error_of(client.get("/api/v1/galleries", headers={"X-API-Key": user[:-1] + ("A" if user[-1] != "A" else "B")}), 401)
    assert client.get("/api/v1/galleries", headers={"X-API-Key": user}).status_code == 200
    # unknown routes stay 404
    error_of(client.get("/nope"), 404)


def test_api_keys_scopes(keyed, obama_jpg):
    app, client, user, admin = keyed
    u, a = {"X-API-Key": user}, {"X-API-Key": admin}
    r = client.post(ENROLL.format(g="team", p="obama"), headers=u, data=multipart_files(obama_jpg),
                    content_type="multipart/form-data")
    assert r.status_code == 201
    error_of(client.post(ENROLL.format(g="secret", p="obama"), headers=u, data=multipart_files(obama_jpg),
                         content_type="multipart/form-data"), 403, "forbidden")
    r = client.post("/recognition?gallery=team", headers=u, json={"file": b64(obama_jpg)})
    assert r.get_json()["name"] == "obama"
    error_of(client.post("/recognition", headers=u, json={"file": b64(obama_jpg), "gallery": "secret"}), 403)
    error_of(client.post("/api/v1/galleries", headers=u, json={"name": "secret"}), 403)
    assert client.post("/api/v1/galleries", headers=a, json={"name": "secret"}).status_code == 201
    visible = [g["name"] for g in client.get("/api/v1/galleries", headers=u).get_json()["galleries"]]
    assert visible == ["default", "team"]
    all_ = [g["name"] for g in client.get("/api/v1/galleries", headers=a).get_json()["galleries"]]
    assert all_ == ["default", "secret", "team"]
    # admin-only operations
    error_of(client.delete("/api/v1/galleries/team", headers=u), 403, "forbidden")
    error_of(client.post("/api/v1/galleries/team/reembed", headers=u), 403, "forbidden")
    assert client.post("/api/v1/galleries/team/reembed", headers=a).status_code == 200
    assert client.delete("/api/v1/galleries/team", headers=a).status_code == 200
    # revocation takes effect at once
    keys = app.extensions["facerec"].keys
    keys.revoke(keys.verify(user).id)
    error_of(client.get("/api/v1/galleries", headers=u), 401)


# --- settings and app wiring -----------------------------------------------------------------------------
def test_extra_blueprints_plug_in(make_app, api_models, tmp_path):
    from flask_openapi3 import APIBlueprint

    from modules.api import Settings, create_app

    bp = APIBlueprint("jobs", __name__, url_prefix="/api/v1")

    @bp.get("/jobs")
    def list_jobs():
        """List jobs"""
        return {"jobs": []}

    app = create_app(Settings(data_dir=tmp_path / "x"), recognizer=api_models, extra_blueprints=[bp])
    c = app.test_client()
    assert c.get("/api/v1/jobs").get_json() == {"jobs": []}
    assert "/api/v1/jobs" in c.get("/openapi.json").get_json()["paths"]
    app.extensions["facerec"].close()


def test_app_module_exposes_app(monkeypatch, tmp_path):
    monkeypatch.setenv("FACEREC_DATA_DIR", str(tmp_path / "envdata"))
    import importlib

    import app as app_module

    importlib.reload(app_module)
    args = app_module.parse_args([])
    assert (args.host, args.port, args.data_dir) == ("127.0.0.1", 5000, None)  # unset: the settings decide
    args = app_module.parse_args(["--host", "0.0.0.0", "--port", "8080", "--data-dir", "/srv/x"])
    assert (args.host, args.port, args.data_dir) == ("0.0.0.0", 8080, "/srv/x")
    flask_app = app_module.app
    assert flask_app is app_module.application
    assert checked(flask_app).get("/health").status_code == 200
    assert (tmp_path / "envdata" / "gallery.db").exists()
    flask_app.extensions["facerec"].close()


# --- concurrency -----------------------------------------------------------------------------------------------
def test_concurrent_enrollments_and_recognitions(app, obama_jpg, frame_640x480):
    """Many threads enrolling and recognizing at once: no 5xx, no lost enrollment."""
    n_people, n_threads = 24, 8
    enrolled: dict[str, list[int]] = {}
    lock = threading.Lock()
    statuses: list[int] = []

    def enroll_one(i: int) -> None:
        c = checked(app)
        r = c.post(ENROLL.format(g="crowd", p=f"person_{i:02d}"), data=multipart_files(obama_jpg),
                   content_type="multipart/form-data")
        with lock:
            statuses.append(r.status_code)
            if r.status_code == 201:
                enrolled[f"person_{i:02d}"] = r.get_json()["face_ids"]

    def recognize_one(i: int) -> None:
        c = checked(app)
        r = c.post("/recognition?gallery=crowd" if i % 2 else "/recognition",
                   data=frame_640x480, content_type="image/jpeg")
        with lock:
            statuses.append(r.status_code)

    with ThreadPoolExecutor(n_threads) as ex:
        futures = [ex.submit(enroll_one, i) for i in range(n_people)]
        futures += [ex.submit(recognize_one, i) for i in range(n_people)]
        for f in futures:
            f.result()
    assert all(s < 500 for s in statuses), statuses
    assert len(enrolled) == n_people
    c = checked(app)
    page = c.get("/api/v1/galleries/crowd/people?limit=1000").get_json()
    assert page["total"] == n_people and all(p["num_faces"] == 1 for p in page["people"])
    ids = sorted(i for v in enrolled.values() for i in v)
    assert len(set(ids)) == n_people
    body = c.post("/recognition?gallery=crowd&top_k=5", data=frame_640x480, content_type="image/jpeg").get_json()
    assert body["faces"][0]["name"].startswith("person_")
    assert np.isfinite(body["faces"][0]["similarity"])
    json.dumps(body)
