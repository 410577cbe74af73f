"""The Python API end to end: enroll, identify every face, unknowns, all-or-nothing enrollment."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from modules.config import load_config
from modules.errors import BadImageError, ConfigError, EmbedderMismatchError, GalleryNotFoundError, NoFaceError
from modules.face import UNKNOWN
from modules.storage import NewFace


@pytest.fixture()
def fr_gallery(rec_with_gallery, shared_data):
    """The six people of face_recognition's identification split, one photo each."""
    root = shared_data / "face_recognition_examples"
    with open(root / "identification" / "gallery.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            rec_with_gallery.enroll("fr", row["identity"], [root / row["path"]])
    return rec_with_gallery


def test_identifies_every_labelled_person_in_every_probe(fr_gallery, shared_data):
    root = shared_data / "face_recognition_examples"
    with open(root / "identification" / "probes.csv", newline="") as fh:
        probes = list(csv.DictReader(fh))
    misses = []
    for row in probes:
        result = fr_gallery.identify(root / row["path"], gallery="fr")
        expected = set(row["expected_identities"].split(";"))
        found = {n for n in result.names if n != UNKNOWN}
        if found != expected:
            misses.append((row["path"], sorted(expected), sorted(found)))
    assert not misses, misses


def test_two_people_named_with_candidates_and_timings(fr_gallery, fr_images):
    result = fr_gallery.recognize(fr_images / "two_people.jpg", gallery="fr", top_k=3)
    assert sorted(result.names) == ["barack_obama", "joe_biden"]
    assert {"decode", "detect", "align", "embed", "match", "total"} <= set(result.timings_ms)
    assert result.timings_ms["total"] >= sum(v for k, v in result.timings_ms.items() if k != "total") * 0.999
    assert result.name == result.faces[0].identification.name and result.model == fr_gallery.model_id
    for rf in result.faces:
        assert len(rf.face.box) == 4 and rf.face.landmarks.shape == (5, 2)
        cands = rf.identification.candidates
        assert len(cands) == 3
        assert cands[0].person == rf.identification.name
        sims = [c.similarity for c in cands]
        assert sims == sorted(sims, reverse=True)


def test_stranger_is_unknown(fr_gallery, shared_data):
    # deepface's people are not enrolled in the face_recognition gallery
    result = fr_gallery.identify(shared_data / "deepface" / "images" / "img1.jpg", gallery="fr")
    assert result.names == [UNKNOWN]
    assert result.faces[0].identification.similarity < result.faces[0].identification.threshold


def test_empty_gallery_gives_unknown_and_missing_gallery_is_404(rec_with_gallery, fr_images):
    rec_with_gallery.gallery.ensure_gallery("empty")
    result = rec_with_gallery.identify(fr_images / "obama.jpg", gallery="empty")
    assert result.names == [UNKNOWN]
    with pytest.raises(GalleryNotFoundError):
        rec_with_gallery.identify(fr_images / "obama.jpg", gallery="nobody-here")


def test_failed_enrollment_writes_nothing(rec_with_gallery, fr_images, tmp_path):
    rec_with_gallery.enroll("g", "obama", [fr_images / "obama.jpg"])
    before = rec_with_gallery.gallery.stats("g")
    blank = tmp_path / "blank.png"
    import cv2

    cv2.imwrite(str(blank), np.full((200, 200, 3), 90, np.uint8))
    with pytest.raises(NoFaceError, match="blank.png"):
        rec_with_gallery.enroll("g", "obama", [fr_images / "obama2.jpg", blank])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes((fr_images / "obama.jpg").read_bytes()[:500])
    with pytest.raises(BadImageError):
        rec_with_gallery.enroll("g", "new_person", [fr_images / "biden.jpg", bad])
    assert rec_with_gallery.gallery.stats("g") == before
    people, total = rec_with_gallery.gallery.list_people("g")
    assert total == 1 and people[0].num_faces == 1


def test_enrollment_stores_crop_and_source(rec_with_gallery, fr_images):
    (fid,) = rec_with_gallery.enroll("g", "obama", [fr_images / "obama.jpg"])
    info = rec_with_gallery.gallery.get_face(fid)
    assert info.embedder == rec_with_gallery.model_id
    assert info.source.endswith("obama.jpg") and len(info.source_sha256) == 64
    png = rec_with_gallery.gallery.get_face_crop(fid)
    assert png.startswith(b"\x89PNG")


def test_refuses_to_compare_embeddings_of_another_model(rec_with_gallery, fr_images):
    other = np.random.default_rng(0).normal(size=512).astype(np.float32)
    rec_with_gallery.gallery.add_faces("legacy", "someone", [NewFace(embedding=other / np.linalg.norm(other), embedder="arc_res50")])
    with pytest.raises(EmbedderMismatchError, match="reembed"):
        rec_with_gallery.identify(fr_images / "obama.jpg", gallery="legacy")


def test_open_set_threshold_grows_with_gallery_size():
    m = load_config().matching
    assert m.identify_threshold_for(m.identify_reference_size) == pytest.approx(m.identify_threshold)
    assert m.identify_threshold_for(10_000) > m.identify_threshold_for(178) > m.identify_threshold_for(10)
    assert m.identify_threshold_for(1) >= m.verify_threshold
    assert m.identify_threshold > m.verify_threshold


@pytest.mark.parametrize(
    "yaml_text,key",
    [
        ("name: x\nembedder: {type: sface, flipp: true}\nmatching: {verify_threshold: 0.3, identify_threshold: 0.4}\n", "embedder"),
        ("name: x\nembedder: {type: sface}\nmatching: {verify_threshold: high, identify_threshold: 0.4}\n", "matching.verify_threshold"),
        ("name: x\nembedder: {type: sface}\nmatching: {verify_threshold: 0.3, identify_threshold: 0.4}\nextra: 1\n", "extra"),
        ("name: x\nembedder: {type: nope}\nmatching: {verify_threshold: 0.3, identify_threshold: 0.4}\n", "embedder"),
        ("- just\n- a list\n", "mapping"),
        ("name: [unclosed\n", "YAML"),
    ],
)
def test_config_errors_name_the_key(tmp_path, yaml_text, key):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(p)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/does_not_exist.yaml")


def test_shipped_configs_validate():
    from modules.config import CONFIG_DIR

    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.matching.identify_threshold >= cfg.matching.verify_threshold, path


def test_enrollment_quality_gate_refuses_small_faces_and_writes_nothing(rec_with_gallery, fr_images):
    import cv2

    img = rec_with_gallery.load_image(fr_images / "obama.jpg")
    tiny = cv2.resize(img, (img.shape[1] // 12, img.shape[0] // 12), interpolation=cv2.INTER_AREA)
    tiny = cv2.copyMakeBorder(tiny, 100, 100, 100, 100, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    assert rec_with_gallery.detect(tiny), "the small face should still be detected"
    from modules.errors import LowQualityFaceError

    with pytest.raises(LowQualityFaceError, match="too small") as exc:
        rec_with_gallery.enroll("q", "obama", [fr_images / "obama2.jpg", tiny], sources=["obama2.jpg", "tiny.png"])
    assert "tiny.png" in exc.value.message and exc.value.status == 422
    assert rec_with_gallery.gallery.list_galleries() == []
    # the gate can be switched off per call (e.g. for deliberate low-resolution galleries)
    assert len(rec_with_gallery.enroll("q", "obama", [tiny], check_quality=False)) == 1


def test_top_k_beyond_the_config_default(fr_gallery, fr_images):
    assert fr_gallery.config.matching.top_k < 6
    result = fr_gallery.identify(fr_images / "obama.jpg", gallery="fr", top_k=6)
    assert len(result.faces[0].identification.candidates) == 6  # all six enrolled people, ranked


def test_one_gallery_round_trip_and_404_without_faces(rec_with_gallery, fr_images, monkeypatch):
    """A recognition asks the gallery once (search and size together); a missing gallery is a 404 even
    for an image without faces, unless the caller treats it as empty."""
    store = rec_with_gallery.gallery
    rec_with_gallery.enroll("g", "obama", [fr_images / "obama.jpg"])
    calls = []
    real = store.search_people
    monkeypatch.setattr(store, "search_people", lambda *a, **k: calls.append(a) or real(*a, **k))
    result = rec_with_gallery.recognize(fr_images / "two_people.jpg", gallery="g")
    assert len(calls) == 1 and sorted(result.names) == ["obama", UNKNOWN]
    blank = np.full((240, 320, 3), 90, np.uint8)
    assert rec_with_gallery.recognize(blank, gallery="g").faces == [] and len(calls) == 2
    with pytest.raises(GalleryNotFoundError):
        rec_with_gallery.recognize(blank, gallery="nobody-here")
    lenient = rec_with_gallery.recognize(fr_images / "obama.jpg", gallery="nobody-here", missing_gallery_ok=True)
    assert lenient.names == [UNKNOWN] and lenient.faces[0].identification.candidates == []
    found, n_people = store.search_people("g", np.zeros((0, rec_with_gallery.embedder.dim), np.float32),
                                          rec_with_gallery.model_id, 5)
    assert (found, n_people) == ([], 1)


def test_detection_only_attributes_and_the_legacy_name(rec_with_gallery, fr_images):
    result = rec_with_gallery.recognize(fr_images / "two_people.jpg", gallery=None, attributes="pose")
    assert len(result.faces) == 2
    assert all(rf.identification is None and rf.face.embedding is None for rf in result.faces)
    assert all(set(rf.face.attributes) == {"pose"} for rf in result.faces)
    assert set(result.timings_ms) == {"decode", "detect", "attributes", "total"}
    assert result.name == UNKNOWN and result.model is None
    assert rec_with_gallery.recognize(np.full((64, 64, 3), 9, np.uint8), gallery=None).name == "no face"
    from modules.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="shoe_size"):
        rec_with_gallery.recognize(fr_images / "obama.jpg", attributes="shoe_size")


def test_embed_faces_flip_override(recognizer, fr_images):
    img = recognizer.load_image(fr_images / "obama.jpg")
    emb = recognizer.embedder

    def embedding(**kw):
        return recognizer.embed_faces(img, recognizer.detector.detect(img)[:1], **kw)[0].embedding

    averaged, single = embedding(flip=True), embedding(flip=False)
    assert np.allclose(embedding(), averaged) == bool(emb.flip)
    assert np.allclose(embedding(query=True), averaged if emb.flip_queries else single)
    assert np.allclose(embedding(query=True, flip=True), averaged)
    assert not np.allclose(averaged, single) and float(averaged @ single) > 0.95
