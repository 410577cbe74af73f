"""Accuracy on the dev data through the benchmark code (embeddings cached in .cache/)."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import identify, verify
from benchmarks.devdata import embed_images, find_set_root, read_csv


def test_lfw_verification_at_shipped_threshold(shared_data):
    out = verify.evaluate(shared_data / "lfw" / "pairs.csv", progress=False)
    assert out["pairs"] == 1800 and out["no_face"] == 0
    assert out["accuracy_at_threshold"] >= 0.993, out
    assert out["accuracy_cv"] >= 0.99, out
    assert out["tar_at_far_1e-3"] >= 0.97, out


def test_lfw_open_set_identification(shared_data):
    out = identify.evaluate(shared_data / "lfw" / "identification", progress=False)
    assert out["enrolled_people"] == 178
    assert out["overall"] >= 0.97, out
    assert out["known_rank1"] >= 0.97, out
    assert out["unknown_rejection"] >= 0.97, out


def test_verification_threshold_alone_is_too_lax_for_open_set(shared_data, recognizer):
    """Why there are two thresholds: at the 1:1 cut-off most strangers get a name."""
    set_dir = shared_data / "lfw" / "identification"
    gal, probes = read_csv(set_dir / "gallery.csv"), read_csv(set_dir / "probes.csv")
    E = embed_images(recognizer, find_set_root(set_dir / "gallery.csv"), [r["path"] for r in gal + probes], progress=False).embeddings
    G = np.stack([E[r["path"]] for r in gal])
    U = np.stack([E[r["path"]] for r in probes if r["expected"] == "unknown"])
    best = (U @ G.T).max(axis=1)
    m = recognizer.config.matching
    assert (best >= m.verify_threshold).mean() > 0.3
    assert (best >= m.identify_threshold_for(178)).mean() < 0.03


@pytest.mark.parametrize("dataset", ["deepface", "face_recognition_examples"])
def test_upstream_unit_test_pairs(shared_data, recognizer, dataset):
    csv_path = shared_data / dataset / "unit_test_pairs.csv"
    rows = read_csv(csv_path)
    root = find_set_root(csv_path)
    for r in rows:
        v = recognizer.verify(root / r["img_a"], root / r["img_b"])
        assert v.same == bool(int(r["same"])), (r, v.similarity)


@pytest.mark.parametrize("dataset", ["deepface", "face_recognition_examples"])
def test_other_pair_sets(shared_data, dataset):
    out = verify.evaluate(shared_data / dataset / "pairs.csv", progress=False)
    assert out["accuracy_at_threshold"] >= 0.97, out
