"""Shared fixtures: the dev data in ../shared/data and models loaded once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# fixtures shared across files, registered once so session-scoped servers start once
pytest_plugins = ["tests.api_fixtures", "tests.pg_fixtures", "tests.redis_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _require_shared() -> Path:
    if not SHARED_DATA.is_dir():
        msg = f"dev data not found at {SHARED_DATA} (expected ../shared/data beside the repository)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; missing data fails under CI=true and skips elsewhere."""
    return _require_shared()


@pytest.fixture(scope="session")
def recognizer():
    """The default pipeline (YuNet + SFace), loaded once for the whole session, no gallery."""
    from modules.recognizer import FaceRecognizer

    return FaceRecognizer()


@pytest.fixture(scope="session")
def fr_images(shared_data) -> Path:
    """face_recognition's example photos (obama.jpg, biden.jpg, two_people.jpg, ...)."""
    return shared_data / "face_recognition_examples" / "images"


@pytest.fixture()
def gallery(tmp_path):
    from modules.storage import open_gallery

    g = open_gallery(tmp_path / "gallery.db")
    yield g
    g.close()


@pytest.fixture()
def rec_with_gallery(recognizer, gallery):
    """The session's models with a fresh, empty gallery of this test's own."""
    from modules.recognizer import FaceRecognizer

    return FaceRecognizer(recognizer.config, gallery, detector=recognizer.detector, embedder=recognizer.embedder)
