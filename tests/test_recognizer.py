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
    result = fr_gallery.identify(fr_images / "two_people.jpg", gallery="fr", top_k=3)
    assert sorted(result.names) == ["barack_obama", "joe_biden"]
    d = result.to_dict()
    assert {"decode", "detect", "align", "embed", "match", "total"} <= set(d["timings_ms"])
    for face in d["faces"]:
        assert len(face["box"]) == 4 and len(face["landmarks"]) == 5
        assert len(face["candidates"]) == 3
        assert face["candidates"][0]["name"] == face["name"]
        sims = [c["similarity"] for c in face["candidates"]]
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
