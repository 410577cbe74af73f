"""The settings tree: defaults, FACEREC_* variables, the conventional DATABASE_URL / QUEUE_URL, flags on top."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("FACEREC_") and not k.startswith("FACEREC_TEST") or k in ("DATABASE_URL", "QUEUE_URL"):
            monkeypatch.delenv(k)


def test_settings_from_env(tmp_path, monkeypatch):
    from modules.errors import ConfigError
    from modules.settings import load_settings

    monkeypatch.setenv("FACEREC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FACEREC_API_KEYS", "1")
    monkeypatch.setenv("FACEREC_MAX_PIXELS", "1000")
    s = load_settings()
    assert s.data_dir == tmp_path and s.api_keys and s.max_pixels == 1000
    assert s.gallery_location == tmp_path / "gallery.db" and s.keys_path == tmp_path / "keys.db"
    assert load_settings(max_pixels=5).max_pixels == 5  # flags override the environment
    monkeypatch.setenv("FACEREC_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="FACEREC_MAX_PIXELS"):
        load_settings()
    monkeypatch.delenv("FACEREC_MAX_PIXELS")
    with pytest.raises(ConfigError, match="FACEREC_MAX_UPLOAD_BYTES"):
        load_settings(max_upload_bytes=0)


def test_settings_tree_reads_each_branch_and_the_conventional_urls(monkeypatch):
    from pathlib import Path

    from modules.errors import ConfigError
    from modules.settings import load_settings

    for k in ("FACEREC_GALLERY_URL", "FACEREC_DATABASE_URL", "FACEREC_QUEUE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/faces")
    monkeypatch.setenv("QUEUE_URL", "redis://q:6379/0")
    monkeypatch.setenv("FACEREC_VIDEO_MAX_RUNNING", "3")
    monkeypatch.setenv("FACEREC_VIDEO_CHUNK_OVERLAP_SECONDS", "2.5")
    monkeypatch.setenv("FACEREC_QUEUE_RETRIES", "5")
    monkeypatch.setenv("FACEREC_BIND", "0.0.0.0:8000")
    s = load_settings()
    assert (s.gallery_url, s.queue_url) == ("postgresql://db/faces", "redis://q:6379/0")
    assert s.jobs_database == "postgresql://db/faces"  # jobs live with a PostgreSQL gallery
    assert (s.video.max_running, s.chunks.overlap_seconds, s.queue.retries, s.server.bind) == (3, 2.5, 5, "0.0.0.0:8000")
    monkeypatch.setenv("FACEREC_GALLERY_URL", "/srv/g.db")  # the service's own name wins
    assert load_settings().gallery_url == "/srv/g.db" and load_settings().jobs_database == Path("data/jobs.db")
    monkeypatch.setenv("FACEREC_VIDEO_MAX_RUNNING", "0")
    with pytest.raises(ConfigError, match="FACEREC_VIDEO_MAX_RUNNING"):
        load_settings()
    monkeypatch.delenv("FACEREC_VIDEO_MAX_RUNNING")
    monkeypatch.setenv("QUEUE_URL", "http://not-redis")
    with pytest.raises(ConfigError, match="FACEREC_QUEUE_URL"):
        load_settings()


def test_database_url_flag_wins_and_blank_means_the_embedded_default(monkeypatch):
    from modules.settings import load_settings

    monkeypatch.setenv("DATABASE_URL", " postgresql://c/d ")
    assert load_settings(gallery_url="postgresql://a/b").gallery_url == "postgresql://a/b"
    assert load_settings().gallery_url == "postgresql://c/d"
    monkeypatch.setenv("DATABASE_URL", "")
    s = load_settings(gallery_url="")
    assert s.gallery_url is None and s.gallery_location == Path("data") / "gallery.db"


def test_jobs_live_with_a_postgres_gallery_else_beside_the_data():
    from modules.settings import load_settings

    assert load_settings().jobs_database == Path("data") / "jobs.db"
    assert load_settings(gallery_url="sqlite:///g.db").jobs_database == Path("data") / "jobs.db"
    assert load_settings(gallery_url="postgres://u@h/db").jobs_database == "postgres://u@h/db"
    assert load_settings(data_dir="/srv/x", storage_dir="/mnt/jobs").jobs_dir == Path("/mnt/jobs")
