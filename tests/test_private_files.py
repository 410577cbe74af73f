"""What the service writes is its own user's only: folders ``0700``, files ``0600``, after real operations.

The tests run under ``umask 022`` (files everybody may read, the usual default): the in-process ones show
that the service makes its files private by itself; the scripts (subprocesses) show it for the entry points.
"""
from __future__ import annotations

import argparse
import io
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from modules.files import loose_permissions, open_private, private_dir, private_file, write_private
from tests.api_fixtures import multipart_files

ROOT = Path(__file__).resolve().parents[1]
CLIP = Path("face_recognition_examples") / "video_short_hamilton_clip"


@pytest.fixture(autouse=True)
def shared_umask():
    """Files and folders readable by everybody unless the code says otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def not_private(root: Path) -> dict[str, str]:
    """Everything under ``root`` (and ``root``) that is not a ``0700`` folder or a ``0600`` file."""
    found = {}
    for p in [root, *root.rglob("*")]:
        want = 0o700 if p.is_dir() else 0o600
        if mode(p) != want:
            found[str(p.relative_to(root.parent))] = f"{mode(p):04o}"
    return found


def run_scripts(*commands: list[str], timeout: float = 180) -> list[subprocess.CompletedProcess]:
    """Run the commands (``python`` argument lists) at the same time; their results, in order."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FACEREC_DATA_DIR", None)
    procs = [subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for args in commands]
    results = []
    for args, p in zip(commands, procs, strict=True):
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(args, p.returncode, out, err))
    return results


@pytest.fixture(scope="module")
def clip(shared_data) -> Path:
    return shared_data / CLIP


@pytest.fixture(scope="module")
def short_clips(clip, tmp_path_factory) -> tuple[Path, Path]:
    """Frames 82-141 of the clip (Lin-Manuel Miranda close-up) as a 60-frame MP4, and its first 20 frames."""
    d = tmp_path_factory.mktemp("clips")
    cap = cv2.VideoCapture(str(clip / "short_hamilton_clip.mp4"))
    frames = [f for i, (ok, f) in enumerate(iter(lambda: cap.read(), (False, None))) if 82 <= i <= 141]
    cap.release()
    paths = (d / "short.mp4", d / "shorter.mp4")
    for path, n in zip(paths, (60, 20), strict=True):
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 29.97, (640, 360))
        for f in frames[:n]:
            w.write(f)
        w.release()
    return paths


@pytest.fixture(scope="module")
def people_dir(clip, tmp_path_factory) -> Path:
    """``<name>/<photo>`` of the clip's three enrolled people."""
    d = tmp_path_factory.mktemp("people")
    for photo in (clip / "enroll").iterdir():
        (d / photo.stem).mkdir()
        (d / photo.stem / photo.name).symlink_to(photo)
    return d


# --- the helpers ------------------------------------------------------------------------------------------
def test_private_dir_and_files(tmp_path):
    made = private_dir(tmp_path / "a" / "b")
    assert made == tmp_path / "a" / "b" and mode(tmp_path / "a") == mode(made) == 0o700
    (tmp_path / "open").mkdir(mode=0o755)
    private_dir(tmp_path / "open")  # a folder that exists keeps its mode: the user's choice
    assert loose_permissions(tmp_path / "open") == "0755" and loose_permissions(made) is None
    assert loose_permissions(tmp_path / "missing") is None
    old = tmp_path / "old.txt"
    old.write_text("was readable")
    assert mode(old) == 0o644
    with open_private(old, "w", encoding="utf-8") as fh:
        fh.write("now private")
    assert (mode(old), old.read_text()) == (0o600, "now private")
    with open_private(old, "a") as fh:
        fh.write("!")
    assert old.read_text() == "now private!"
    assert mode(write_private(tmp_path / "b.bin", b"\x00")) == 0o600
    cv2.imwrite(str(tmp_path / "c.jpg"), np.zeros((8, 8, 3), np.uint8))
    assert mode(tmp_path / "c.jpg") == 0o644 and mode(private_file(tmp_path / "c.jpg")) == 0o600
    with pytest.raises(ValueError):
        open_private(old, "r")
    with pytest.raises(NotADirectoryError):
        private_dir(old)


# --- the service --------------------------------------------------------------------------------------------
def test_data_dir_gallery_keys_index_and_exports_are_private(api_models, tmp_path, obama_jpg, biden_jpg, caplog):
    from modules import cli
    from modules.settings import Settings
    from modules.storage import NewFace, open_gallery
    from modules.web import create_app

    data = tmp_path / "srv" / "facerec"
    app = create_app(Settings(data_dir=data, api_keys=True), recognizer=api_models, TESTING=True)
    svc = app.extensions["facerec"]
    try:
        key, _ = svc.keys.create(["*"], admin=True)
        client = app.test_client()
        for person, img in (("obama", obama_jpg), ("biden", biden_jpg)):
            r = client.post(f"/api/v1/galleries/default/people/{person}/faces", headers={"X-API-Key": key},
                            data=multipart_files(img), content_type="multipart/form-data")
            assert r.status_code == 201, r.get_json()
        svc.gallery.export_legacy_pickle(data / "exports" / "known.pkl", "default", api_models.model_id)
    finally:
        svc.close()
    # a large gallery's search index, saved beside the database
    store = open_gallery(data / "gallery.db", ann_threshold=100)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(120, 16)).astype(np.float32)
    store.add_faces_many("crowd", {f"p{i}": [NewFace(v / np.linalg.norm(v), "m1")] for i, v in enumerate(vectors)})
    assert store.search("crowd", vectors[:1], "m1")[0][0].person == "p0"
    assert store.search_index_info("crowd")["kind"] == "hnsw"
    store.close()
    with open_gallery(data / "gallery.db") as store:  # python -m modules.cli export --format csv -o ...
        cli.cmd_export(argparse.Namespace(gallery="default", format="csv", output=data / "exports" / "people.csv"),
                       None, store)

    names = {p.name for p in data.rglob("*")}
    assert {"gallery.db", "keys.db", "jobs", "known.pkl", "people.csv"} <= names
    assert any(n.endswith(".hnsw") for n in names), names
    assert mode(tmp_path / "srv") == 0o700  # the missing parents too
    assert not_private(data) == {}

    (tmp_path / "shared").mkdir(mode=0o755)  # a data folder another tool made readable: said, not changed
    with caplog.at_level("WARNING", logger="facerec.api"):
        create_app(Settings(data_dir=tmp_path / "shared"), recognizer=api_models).extensions["facerec"].close()
    assert "is 0755" in caplog.text and mode(tmp_path / "shared") == 0o755


def test_video_jobs_files_are_private(api_models, tmp_path, short_clips, people_dir):
    """A whole-video job and a job in chunks (analysed ranges, joined, rendered, concatenated)."""
    from modules.api import videos
    from modules.settings import ChunkSettings, Settings, VideoLimits
    from modules.web import create_app

    settings = Settings(data_dir=tmp_path / "data", video=VideoLimits(max_running=2),
                        chunks=ChunkSettings(seconds=0.5, overlap_seconds=0.1))
    app = create_app(settings, recognizer=api_models, TESTING=True)
    svc = app.extensions["facerec"]
    client = app.test_client()
    try:
        for person in people_dir.iterdir():
            svc.recognizer.enroll("default", person.name, list(person.iterdir()))
        jobs = []
        for clip in short_clips:
            r = client.post("/api/v1/videos", data={"file": (io.BytesIO(clip.read_bytes()), clip.name)},
                            content_type="multipart/form-data")
            assert r.status_code == 202, r.get_json()
            jobs.append(r.get_json())
        assert [j["chunks"] for j in jobs] == [4, 1]
        for job in jobs:
            deadline = time.monotonic() + 120
            while (state := client.get(f"/api/v1/videos/{job['job_id']}").get_json())["status"] in ("queued",
                                                                                                       "running"):
                assert time.monotonic() < deadline, state
                time.sleep(0.2)
            assert state["status"] == "done", state
            tracks = client.get(f"/api/v1/videos/{job['job_id']}/tracks").get_json()["tracks"]
            assert any(t["name"] == "lin_manuel_miranda" and t.get("best_crop") for t in tracks), tracks
    finally:
        app.extensions[videos.EXTENSION].shutdown(wait=True, cancel_running=True)
        svc.close()
    jobs_dir = settings.jobs_dir
    files = {p.name for p in jobs_dir.rglob("*") if p.is_file()}
    assert {"input.mp4", "annotated.mp4", "frames.jsonl", "tracks.json"} <= files
    assert any(n.endswith(".jpg") for n in files) and any(p.name.startswith("final-") for p in jobs_dir.rglob("*"))
    assert not_private(settings.data_dir) == {}


def test_batch_scripts_write_private_results(short_clips, people_dir, images, tmp_path):
    """``test_img.py`` and ``test_frame.py``: output folders they create, results, crops, the annotated video."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "obama2.jpg").symlink_to(images / "obama2.jpg")
    img_out, frame_out = tmp_path / "img" / "out", tmp_path / "frame" / "out"
    img, frame = run_scripts(
        ["test_img.py", str(tmp_path / "in"), "--gallery-dir", str(people_dir), "--output", str(img_out),
         "--no-progress"],
        ["test_frame.py", str(short_clips[1]), "--gallery-dir", str(people_dir), "--output", str(frame_out),
         "--no-progress"])
    assert img.returncode == 0, img.stderr[-2000:]
    assert frame.returncode == 0, frame.stderr[-2000:]
    assert (img_out / "barack_obama").is_dir() and {p.name for p in img_out.iterdir()} >= {"results.json",
                                                                                               "results.csv"}
    assert {"frames.jsonl", "tracks.json", "annotated.mp4", "summary.json", "lin_manuel_miranda"} <= {
        p.name for p in frame_out.iterdir()}
    assert not_private(tmp_path / "img") == {} and not_private(tmp_path / "frame") == {}
