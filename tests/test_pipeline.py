"""Detection, alignment and embedding on real faces, with golden values."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from modules.alignment import ARCFACE_TEMPLATE, Aligner, similarity_transform
from modules.config import DetectorConfig
from modules.detection import YuNetDetector
from modules.errors import InvalidRequestError, MultipleFacesError, NoFaceError
from modules.recognizer import primary_face

GOLDEN = json.loads((Path(__file__).parent / "golden" / "sface_golden.json").read_text())


@pytest.mark.parametrize("name", sorted(GOLDEN["faces"]))
def test_golden_detections_and_embeddings(recognizer, fr_images, name):
    img = recognizer.load_image(fr_images / name)
    faces = recognizer.detector.detect(img)
    recognizer.embed_faces(img, faces)
    golden = GOLDEN["faces"][name]
    assert len(faces) == len(golden)
    for f, g in zip(faces, golden):
        assert np.allclose(f.box, g["box"], atol=1.0)
        assert np.allclose(f.landmarks, g["landmarks"], atol=1.0)
        assert abs(f.det_score - g["det_score"]) < 1e-2
        assert float(f.embedding @ np.array(g["embedding"], np.float32)) > 0.999
        assert abs(np.linalg.norm(f.embedding) - 1) < 1e-5


def test_two_people_found_largest_first(recognizer, fr_images):
    faces = recognizer.detect(fr_images / "two_people.jpg")
    assert len(faces) == 2
    areas = [f.width * f.height for f in faces]
    assert areas == sorted(areas, reverse=True)


def test_large_image_is_shrunk_and_mapped_back(recognizer, fr_images):
    small = recognizer.detect(fr_images / "obama-480p.jpg")
    big = recognizer.detect(fr_images / "obama-1080p.jpg")
    assert len(small) == 1 and len(big) == 1
    s_img = recognizer.load_image(fr_images / "obama-480p.jpg")
    b_img = recognizer.load_image(fr_images / "obama-1080p.jpg")
    scale = b_img.shape[1] / s_img.shape[1]
    # same face, same place relative to the image, in original-pixel coordinates
    assert np.allclose(big[0].box / scale, small[0].box, atol=6)
    assert np.allclose(big[0].landmarks / scale, small[0].landmarks, atol=4)


def test_min_face_size_and_score_threshold(fr_images, recognizer):
    img = recognizer.load_image(fr_images / "two_people.jpg")
    sizes = sorted(f.size for f in recognizer.detector.detect(img))
    strict = YuNetDetector(DetectorConfig(min_face_size=int(sizes[0]) + 1))
    assert len(strict.detect(img)) == 1
    assert YuNetDetector(DetectorConfig(score_threshold=0.9999)).detect(img) == []


def test_blank_image_has_no_face(recognizer):
    blank = np.full((480, 640, 3), 200, np.uint8)
    assert recognizer.detect(blank) == []
    with pytest.raises(NoFaceError):
        recognizer.embed_image(blank)


def test_primary_face_policies(recognizer, fr_images):
    img = recognizer.load_image(fr_images / "two_people.jpg")
    faces = recognizer.detector.detect(img)
    with pytest.raises(MultipleFacesError):
        primary_face(faces, img.shape, "error")
    assert primary_face(faces, img.shape, "largest") is faces[0]
    with pytest.raises(NoFaceError):
        primary_face([], img.shape)


def test_similarity_transform_is_exact_on_template():
    m = similarity_transform(ARCFACE_TEMPLATE)
    assert np.allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    # a rotated, scaled, shifted copy maps back onto the template
    theta, s, t = np.deg2rad(20), 2.5, np.array([40.0, -7.0])
    r = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    moved = (ARCFACE_TEMPLATE @ r.T) * s + t
    m = similarity_transform(moved)
    back = moved @ m[:, :2].T + m[:, 2]
    assert np.allclose(back, ARCFACE_TEMPLATE, atol=1e-6)


def test_aligned_crop_puts_landmarks_on_template(recognizer, fr_images):
    img = recognizer.load_image(fr_images / "obama.jpg")
    face = recognizer.detector.detect(img)[0]
    crop = Aligner().align(img, face.landmarks)
    assert crop.shape == (112, 112, 3)
    # detect again on the crop padded to a bigger canvas: eyes land near the template
    canvas = cv2.copyMakeBorder(crop, 100, 100, 100, 100, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    again = recognizer.detector.detect(canvas)
    assert again, "face not found again in its aligned crop"
    assert np.abs(again[0].landmarks - 100 - ARCFACE_TEMPLATE).max() < 6


def test_embedder_contract(recognizer, fr_images):
    emb = recognizer.embedder
    with pytest.raises(InvalidRequestError):
        emb.embed(np.zeros((2, 64, 64, 3), np.uint8))
    assert emb.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, emb.dim)
    face = recognizer.embed_image(fr_images / "obama.jpg")
    mirrored = emb.embed(face.aligned[:, ::-1][None])[0]
    # flip averaging makes the embedding mirror-invariant
    assert float(mirrored @ face.embedding) > 0.9999
    batch = emb.embed(np.stack([face.aligned, face.aligned[:, ::-1]]))
    assert np.allclose(batch[0], face.embedding, atol=1e-5)


def test_same_and_different_people(recognizer, fr_images):
    same = recognizer.verify(fr_images / "obama.jpg", fr_images / "obama2.jpg")
    diff = recognizer.verify(fr_images / "obama.jpg", fr_images / "biden.jpg")
    assert same.same and not diff.same
    assert same.similarity > same.threshold > diff.similarity


def test_array_inputs(recognizer, fr_images):
    img = recognizer.load_image(fr_images / "obama.jpg")
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert len(recognizer.detect(gray)) == 1
    bgra = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    assert len(recognizer.detect(bgra)) == 1
    with pytest.raises(InvalidRequestError):
        recognizer.load_image(img.astype(np.float32))
    with pytest.raises(InvalidRequestError):
        recognizer.load_image(12345)
