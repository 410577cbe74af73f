"""The original clients, unchanged but for the address, against a real server on loopback.

Each test makes its client's calls with ``requests`` exactly as the original client did: the design card's
``/recognition`` client (``data=json.dumps(...)``: no JSON content type), the video client
(``json=json.dumps(...)``: a JSON string holding the object) and the ``/add`` + ``/search`` client (multipart).
"""
from __future__ import annotations

import base64
import json

import pytest
import requests

from tests.api_fixtures import *

ENROLL = "{url}/api/v1/galleries/default/people/{p}/faces"
CLIP = ("face_recognition_examples", "video_short_hamilton_clip")


@pytest.fixture()
def serve(api_models, tmp_path):
    """serve(**settings) -> base URL of the API on waitress (closed after the test)."""
    from modules.settings import Settings
    from modules.ui.server import close_app, serve_in_thread
    from modules.web import create_app

    running = []

    def _serve(**settings):
        app = create_app(Settings(data_dir=tmp_path / f"data{len(running)}", **settings), recognizer=api_models)
        srv = serve_in_thread(app)
        running.append((app, srv))
        return srv.url

    yield _serve
    for app, srv in running:
        srv.close()
        close_app(app)


def enroll(url: str, person: str, data: bytes, filename: str = "x.jpg") -> None:
    r = requests.post(ENROLL.format(url=url, p=person), files={"file": (filename, data)}, timeout=60)
    assert r.status_code == 201, r.text


def test_design_card_recognition_client(serve, obama_jpg, obama2_jpg, biden_jpg, no_face_jpg):
    url = serve()
    enroll(url, "obama", obama_jpg)
    address = url + "/recognition?legacy=1"
    # the original client: requests.post(url, data=json.dumps({...})): no Content-Type at all
    r = requests.post(address, data=json.dumps({"image": base64.b64encode(obama2_jpg).decode()}), timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.content == b'"obama"\n'  # what jsonify(name) sent
    assert r.json() == "obama"
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/json"):
        r = requests.post(address, data=json.dumps({"image": base64.b64encode(biden_jpg).decode()}),
                          headers={"Content-Type": content_type}, timeout=60)
        assert r.status_code == 200 and r.content == b'"Unknown"\n', (content_type, r.text)
    r = requests.post(address, json={"image": base64.b64encode(no_face_jpg).decode()}, timeout=60)
    assert r.json() == "Unknown"
    # without legacy=1 the same body is read too, and answers every face
    r = requests.post(url + "/recognition", data=json.dumps({"image": base64.b64encode(obama_jpg).decode()}),
                      headers={"Content-Type": "text/plain"}, timeout=60)
    assert r.status_code == 200 and r.json()["name"] == "obama" and len(r.json()["faces"]) == 1
    # a body that is no JSON object with an image keeps its content type's meaning
    r = requests.post(address, data="hello", headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_video_client_my_point(serve, shared_data):
    clip = shared_data.joinpath(*CLIP)
    labels = json.loads((clip / "labels.json").read_text())
    url = serve()
    for person, rels in labels["enroll"].items():
        enroll(url, person, (clip / rels[0]).read_bytes(), rels[0])
    video = (clip / labels["video"]).read_bytes()
    filename = labels["video"]
    # the original client: json=json.dumps({...}): the JSON body is a string whose content is the object
    r = requests.post(url + "/my_point", json=json.dumps({"video": base64.b64encode(video).decode(), "name": filename}),
                      timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"coordinates", "recognized_person_names", "name"} and body["name"] == filename
    coords = body["coordinates"]
    assert len(coords) == labels.get("frames", len(coords)) and len(coords) > 200
    boxes = [b for frame in coords for b in frame]
    assert boxes and all(len(b) == 4 and all(isinstance(v, int) for v in b) for b in boxes)
    # face_recognition's (top, right, bottom, left): bottom below top, right of left
    assert all(bottom > top and right > left for top, right, bottom, left in boxes)
    assert "lin_manuel_miranda" in body["recognized_person_names"]
    assert "unknown" not in body["recognized_person_names"]
    # answered synchronously; nothing is left behind as a job
    assert requests.get(url + "/api/v1/videos", timeout=10).json()["jobs"] == []


def test_my_point_bounds(serve, shared_data, obama_jpg):
    from modules.settings import VideoLimits

    clip = shared_data.joinpath(*CLIP)
    video = (clip / json.loads((clip / "labels.json").read_text())["video"]).read_bytes()
    url = serve(video=VideoLimits(my_point_max_seconds=2))
    # a plain JSON object works too; the clip lasts about 9 s: refused, pointing to the job API
    r = requests.post(url + "/my_point", json={"video": base64.b64encode(video).decode(), "name": "clip.mp4"},
                      timeout=60)
    assert r.status_code == 413 and "/api/v1/videos" in r.json()["error"]["message"]
    r = requests.post(url + "/my_point", json=json.dumps({"video": base64.b64encode(obama_jpg).decode(), "name": "a"}),
                      timeout=60)
    assert r.status_code == 415 and r.json()["error"]["code"] == "not_a_video"
    r = requests.post(url + "/my_point", data="[1]", timeout=10)
    assert r.status_code == 400


def test_add_and_search_client(serve, obama_jpg, obama2_jpg, biden_jpg, two_people_jpg, no_face_jpg):
    url = serve()
    # /add: multipart files + first_name, sur_name -> 202 {"ID": ...}
    r = requests.post(url + "/add", files=[("files", ("obama.jpg", obama_jpg, "image/jpeg"))],
                      data={"first_name": "Barack", "sur_name": "Obama"}, timeout=60)
    assert r.status_code == 202 and set(r.json()) == {"ID"} and r.json()["ID"].isdigit()
    r = requests.post(url + "/add", files=[("files", ("a.jpg", biden_jpg, "image/jpeg")),
                                           ("files", ("b.png", biden_jpg, "image/png"))],
                      data={"first_name": "Joe", "sur_name": "Biden"}, timeout=60)
    assert r.status_code == 202 and len(r.json()["ID"]) == 2
    person = requests.get(url + "/api/v1/galleries/default/people/Barack Obama", timeout=10).json()
    assert person["metadata"] == {"first_name": "Barack", "sur_name": "Obama"} and person["num_faces"] == 1
    # the original's messages, status 200
    for files, data, message in (
        ([("files", ("", b"", "application/octet-stream"))], {"first_name": "A", "sur_name": "B"},
         "No  files inserted yet"),
        ([("other", ("a.jpg", obama_jpg))], {"first_name": "A", "sur_name": "B"}, "No  files inserted yet"),
        ([("files", ("a.gif", obama_jpg))], {"first_name": "A", "sur_name": "B"},
         "Please upload the right picture file with extension of  png, jpg or jpeg"),
        ([("files", ("a.jpg", no_face_jpg))], {"first_name": "A", "sur_name": "B"},
         "No human face, please insert a clear picture of a person with the face looking at the camera"),
        ([("files", ("a.jpg", obama_jpg))], {"first_name": "A"}, "invalid input"),
    ):
        r = requests.post(url + "/add", files=files, data=data, timeout=60)
        assert (r.status_code, r.json()) == (200, {"response": message})
    # /search: one multipart file
    r = requests.post(url + "/search", files={"file": ("q.jpg", obama2_jpg, "image/jpeg")}, timeout=60)
    assert r.status_code == 202, r.text
    found = r.json()
    assert set(found) == {"confidence_score", "image_url", "name"} and found["name"] == "Barack Obama"
    assert 30.0 < float(found["confidence_score"]) <= 100.0 and len(found["confidence_score"].split(".")[1]) == 2
    crop = requests.get(found["image_url"], timeout=10)
    assert crop.status_code == 200 and crop.headers["Content-Type"] == "image/png" and crop.content[:4] == b"\x89PNG"
    r = requests.post(url + "/search", files={"file": ("q.jpg", two_people_jpg, "image/jpeg")}, timeout=60)
    assert r.status_code == 202 and r.json()["response"] == "Found More Known Faces"
    assert requests.get(r.json()["image_url"], timeout=10).status_code == 200
    for files, status, body in (
        ({"file": ("q.jpg", no_face_jpg, "image/jpeg")}, 200, {"response": "Image Unknown"}),
        ({"file": ("", b"")}, 200, {"response": "No  files inserted yet"}),
        ({"file": ("q.txt", obama2_jpg)}, 200,
         {"response": "Please upload the right picture file with extension of  png, jpg or jpeg"}),
        ({"file": ("q.jpg", b"not an image")}, 200, {"response": "invalid input"}),
    ):
        r = requests.post(url + "/search", files=files, timeout=60)
        assert (r.status_code, r.json()) == (status, body)
    spec = requests.get(url + "/openapi.json", timeout=10).json()["paths"]
    assert {"/add", "/search", "/my_point"} <= set(spec)
