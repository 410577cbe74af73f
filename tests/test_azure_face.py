"""The Azure Face API v1.0 subset, driven over loopback by the real Azure SDK (azure-cognitiveservices-vision-face)."""
from __future__ import annotations

import io
import time

import pytest
import requests

face_sdk = pytest.importorskip("azure.cognitiveservices.vision.face")
from azure.cognitiveservices.vision.face import FaceClient
from azure.cognitiveservices.vision.face.models import APIErrorException, TrainingStatusType
from msrest.authentication import CognitiveServicesCredentials

from modules.ui.server import serve_in_thread


@pytest.fixture()
def serve():
    servers = []

    def _serve(app):
        srv = serve_in_thread(app)
        servers.append(srv)
        return srv.url

    yield _serve
    for srv in servers:
        srv.close()


def sdk(url: str, key: str = "any key") -> FaceClient:
    return FaceClient(url, CognitiveServicesCredentials(key))


def error_code(exc: APIErrorException) -> str:
    return exc.error.error.code


def test_sdk_flow_identifies_both_people(make_app, serve, obama_jpg, obama2_jpg, biden_jpg, two_people_jpg):
    url = serve(make_app())
    client = sdk(url)
    group = "presidents"
    client.person_group.create(group, name="Presidents", user_data="test")
    assert client.person_group.get(group).person_group_id == group
    assert group in [g.person_group_id for g in client.person_group.list()]
    ids = {}
    for name, photos in (("Barack Obama", (obama_jpg, obama2_jpg)), ("Joe Biden", (biden_jpg,))):
        person = client.person_group_person.create(group, name=name, user_data=f"{name} data")
        ids[person.person_id] = name
        for photo in photos:
            face = client.person_group_person.add_face_from_stream(group, person.person_id, io.BytesIO(photo))
            assert len(face.persisted_face_id) == 36
    listed = client.person_group_person.list(group)
    assert sorted(p.name for p in listed) == ["Barack Obama", "Joe Biden"]
    assert {len(p.persisted_face_ids) for p in listed} == {1, 2}

    client.person_group.train(group)
    for _ in range(50):
        status = client.person_group.get_training_status(group)
        if status.status == TrainingStatusType.succeeded:
            break
        time.sleep(0.1)
    assert status.status == TrainingStatusType.succeeded and status.created is not None

    faces = client.face.detect_with_stream(io.BytesIO(two_people_jpg), return_face_id=True,
                                           return_face_landmarks=True,
                                           return_face_attributes=["age", "gender", "emotion", "headPose"])
    assert len(faces) == 2
    for f in faces:
        r = f.face_rectangle
        assert r.width > 20 and r.height > 20 and r.left >= 0 and r.top >= 0
        assert r.left < f.face_landmarks.nose_tip.x < r.left + r.width
        assert f.face_landmarks.pupil_left.x < f.face_landmarks.pupil_right.x
        assert f.face_landmarks.eyebrow_left_outer is None  # not among the 5 landmarks
        a = f.face_attributes
        assert 10 < a.age < 100 and a.gender in ("male", "female")
        scores = a.emotion.as_dict()
        assert set(scores) == {"anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"}
        assert sum(scores.values()) == pytest.approx(1.0, abs=0.01)
        assert abs(a.head_pose.yaw) < 90

    results = client.face.identify([f.face_id for f in faces], person_group_id=group)
    names = set()
    for res in results:
        assert len(res.candidates) == 1 and 0.5 <= res.candidates[0].confidence <= 1
        person = client.person_group_person.get(group, res.candidates[0].person_id)
        assert person.name == ids[person.person_id]
        names.add(person.name)
    assert names == {"Barack Obama", "Joe Biden"}

    # verify: the two faces of the photo are different people; the same face is identical to itself
    a, b = faces[0].face_id, faces[1].face_id
    assert client.face.verify_face_to_face(a, b).is_identical is False
    same = client.face.verify_face_to_face(a, a)
    assert same.is_identical is True and same.confidence == pytest.approx(1.0)
    obama_id = next(pid for pid, name in ids.items() if name == "Barack Obama")
    one = client.face.detect_with_stream(io.BytesIO(obama2_jpg))
    assert client.face.verify_face_to_person(one[0].face_id, obama_id, person_group_id=group).is_identical is True

    client.person_group_person.delete(group, obama_id)
    assert [p.name for p in client.person_group_person.list(group)] == ["Joe Biden"]
    client.person_group.delete(group)
    with pytest.raises(APIErrorException) as exc:
        client.person_group.get(group)
    assert error_code(exc.value) == "PersonGroupNotFound"


def test_errors_in_azure_shape(make_app, serve, no_face_jpg):
    url = serve(make_app())
    client = sdk(url)
    with pytest.raises(APIErrorException) as exc:
        client.person_group.get_training_status("missing")
    assert error_code(exc.value) == "PersonGroupNotFound"
    with pytest.raises(APIErrorException) as exc:
        client.person_group_person.create("missing", name="x")
    assert error_code(exc.value) == "PersonGroupNotFound"
    client.person_group.create("g1", name="G1")
    with pytest.raises(APIErrorException) as exc:
        client.person_group.create("g1", name="G1")
    assert error_code(exc.value) == "PersonGroupExists"
    with pytest.raises(APIErrorException) as exc:
        client.person_group_person.get("g1", "nobody")
    assert error_code(exc.value) == "PersonNotFound"
    with pytest.raises(APIErrorException) as exc:
        client.face.identify(["0b7e1b2c-0000-4000-8000-000000000000"], person_group_id="g1")
    assert error_code(exc.value) == "FaceNotFound"
    with pytest.raises(APIErrorException) as exc:
        client.face.detect_with_stream(io.BytesIO(b"not an image"))
    assert error_code(exc.value) == "InvalidImage"
    with pytest.raises(APIErrorException) as exc:
        client.face.detect_with_stream(io.BytesIO(no_face_jpg), return_face_attributes=["smile"])
    assert error_code(exc.value) == "BadArgument"
    assert client.face.detect_with_stream(io.BytesIO(no_face_jpg)) == []
    person = client.person_group_person.create("g1", name="x")
    with pytest.raises(APIErrorException) as exc:
        client.person_group_person.add_face_from_stream("g1", person.person_id, io.BytesIO(no_face_jpg))
    assert error_code(exc.value) == "InvalidImage"
    # operations outside the subset: Azure's error shape, never HTML
    for method, path in (("GET", "/facelists"), ("POST", "/findsimilars"), ("PATCH", "/persongroups/g1"),
                         ("GET", "/largepersongroups/x/persons")):
        r = requests.request(method, f"{url}/face/v1.0{path}", json={}, timeout=10)
        assert r.status_code in (404, 405) and r.headers["Content-Type"].startswith("application/json")
        assert r.json()["error"]["code"] == "NotImplemented"
    # the native API keeps its own codes
    r = requests.get(f"{url}/api/v1/galleries/missing", timeout=10)
    assert r.json()["error"]["code"] == "gallery_not_found"


def test_subscription_key_maps_onto_api_keys(make_app, serve, obama_jpg):
    app = make_app(api_keys=True)
    keys = app.extensions["facerec"].keys
    scoped, _ = keys.create(["team"])
    admin, _ = keys.create(["*"], admin=True)
    url = serve(app)
    with pytest.raises(APIErrorException) as exc:
        sdk(url, "wrong").person_group.create("team", name="Team")
    assert exc.value.response.status_code == 401 and error_code(exc.value) == "401"
    client = sdk(url, scoped)
    client.person_group.create("team", name="Team")
    person = client.person_group_person.create("team", name="Obama")
    client.person_group_person.add_face_from_stream("team", person.person_id, io.BytesIO(obama_jpg))
    with pytest.raises(APIErrorException) as exc:  # out of the key's scope
        client.person_group.create("other", name="Other")
    assert exc.value.response.status_code == 403
    with pytest.raises(APIErrorException) as exc:  # deleting a group needs an admin key
        client.person_group.delete("team")
    assert exc.value.response.status_code == 403
    faces = client.face.detect_with_stream(io.BytesIO(obama_jpg))
    [res] = client.face.identify([faces[0].face_id], person_group_id="team")
    assert res.candidates[0].person_id == person.person_id
    sdk(url, admin).person_group.delete("team")
