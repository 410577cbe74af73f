"""``test_img.py`` and ``test_frame.py`` run as a user runs them: subprocesses on real shared-data files.

Inputs are folders of symlinks to ../shared/data (nothing is copied) plus a few
files made here (an unreadable "JPEG", a text file).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]
FR = Path("face_recognition_examples")


def _run(*args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FACEREC_DATA_DIR", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.symlink_to(src)


@pytest.fixture(scope="module")
def people_dir(shared_data, tmp_path_factory) -> Path:
    """``<name>/<image>`` from face_recognition_examples/identification/gallery.csv (one photo per person)."""
    root = shared_data / FR
    out = tmp_path_factory.mktemp("people")
    with open(root / "identification" / "gallery.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            p = root / row["path"].strip()
            _link(p, out / row["identity"].strip() / p.name)
    return out


@pytest.fixture(scope="module")
def input_dir(shared_data, tmp_path_factory) -> Path:
    images = shared_data / FR / "images"
    d = tmp_path_factory.mktemp("input")
    _link(images / "two_people.jpg", d / "two_people.jpg")
    _link(images / "obama2.jpg", d / "obama2.jpg")
    _link(images / "knn_test__kit_with_rose.jpg", d / "sub" / "kit_with_rose.jpg")
    (d / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(scope="module")
def img_run(people_dir, input_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("img-out")
    r = _run("test_img.py", str(input_dir), "--gallery-dir", str(people_dir), "--output", str(out), "--no-progress")
    return r, out


def test_img_exit_code_and_summary(img_run):
    r, _ = img_run
    assert r.returncode == 0, r.stderr[-2000:]
    assert "enrolled 6 face(s) of 6 people" in r.stderr
    assert "done" in r.stderr and "barack_obama" in r.stderr


def test_img_results_json_shape(img_run):
    _, out = img_run
    results = json.loads((out / "results.json").read_text())
    by = {r["image"]: r for r in results}
    assert set(by) == {"two_people.jpg", "obama2.jpg", "sub/kit_with_rose.jpg", "sub/broken.jpg", "notes.txt"}
    for r in results:
        assert set(r) >= {"image", "faces", "error"}
        for f in r["faces"]:
            assert set(f) >= {"box", "name", "similarity"}
            assert len(f["box"]) == 4 and f["box"][0] < f["box"][2] and f["box"][1] < f["box"][3]
            assert isinstance(f["similarity"], float)
    assert sorted(f["name"] for f in by["two_people.jpg"]["faces"]) == ["barack_obama", "joe_biden"]
    assert [f["name"] for f in by["obama2.jpg"]["faces"]] == ["barack_obama"]
    assert sorted(f["name"] for f in by["sub/kit_with_rose.jpg"]["faces"]) == ["kit_harington", "rose_leslie"]
    assert by["two_people.jpg"]["error"] is None
    # unreadable files are reported, and the run went on past them
    assert by["sub/broken.jpg"]["error"] and by["sub/broken.jpg"]["faces"] == []
    assert "not an image" in by["notes.txt"]["error"]


def test_img_csv_matches_json(img_run):
    _, out = img_run
    results = json.loads((out / "results.json").read_text())
    with open(out / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image", "face", "x1", "y1", "x2", "y2", "name", "similarity", "error"]
    n_faces = sum(len(r["faces"]) for r in results)
    n_empty = sum(1 for r in results if not r["faces"])
    assert len(rows) == n_faces + n_empty
    broken = [r for r in rows if r["image"] == "sub/broken.jpg"]
    assert len(broken) == 1 and broken[0]["error"] and broken[0]["name"] == ""
    names = sorted(r["name"] for r in rows if r["image"] == "two_people.jpg")
    assert names == ["barack_obama", "joe_biden"]


def test_img_crops_of_recognized_people(img_run):
    _, out = img_run
    results = json.loads((out / "results.json").read_text())
    expected = {f["crop"] for r in results for f in r["faces"] if f["name"] != "unknown"}
    assert expected and all((out / c).is_file() for c in expected)
    assert {p.name for p in out.iterdir() if p.is_dir()} >= {
        "barack_obama",
        "joe_biden",
        "kit_harington",
        "rose_leslie",
    }
    img = cv2.imread(str(out / sorted(expected)[0]))
    assert img is not None and img.shape[0] > 20


def test_img_real_failures_exit_nonzero(tmp_path, people_dir):
    missing = _run(
        "test_img.py", str(tmp_path / "nope"), "--gallery-dir", str(people_dir), "--output", str(tmp_path / "o")
    )
    assert missing.returncode == 1 and "not found" in missing.stderr
    (tmp_path / "in").mkdir()
    no_gallery = _run(
        "test_img.py", str(tmp_path / "in"), "--output", str(tmp_path / "o"), "--data-dir", str(tmp_path / "empty")
    )
    assert no_gallery.returncode == 1 and "no gallery" in no_gallery.stderr
    usage = _run("test_img.py", str(tmp_path / "in"))  # --output is required
    assert usage.returncode == 2


# --- test_frame.py ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_people(shared_data, tmp_path_factory) -> Path:
    clip = shared_data / FR / "video_short_hamilton_clip"
    labels = json.loads((clip / "labels.json").read_text())
    d = tmp_path_factory.mktemp("clip-people")
    for person, rels in labels["enroll"].items():
        for r in rels:
            _link(clip / r, d / person / Path(r).name)
    return d


@pytest.fixture(scope="module")
def clip_path(shared_data) -> Path:
    return shared_data / FR / "video_short_hamilton_clip" / "short_hamilton_clip.mp4"


def test_frame_on_a_video_writes_everything(clip_path, clip_people, tmp_path):
    out = tmp_path / "out"
    r = _run(
        "test_frame.py", str(clip_path), "--gallery-dir", str(clip_people), "--output", str(out), "--max-frames", "150"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fps" in r.stderr  # progress bar with frames per second, and the summary
    lines = (out / "frames.jsonl").read_text().splitlines()
    assert 150 <= len(lines) <= 152
    first = json.loads(lines[0])
    assert set(first) == {"frame", "time_s", "faces"} and first["frame"] == 0
    tracks = json.loads((out / "tracks.json").read_text())
    miranda = [t for t in tracks if t["name"] == "lin_manuel_miranda"]
    assert miranda and all((out / t["best_crop"]).is_file() for t in miranda)
    assert (out / "annotated.mp4").stat().st_size > 10_000
    assert json.loads((out / "summary.json").read_text())["stopped"] is True  # --max-frames stops early


def test_frame_ctrl_c_stops_cleanly_and_keeps_results(clip_path, clip_people, tmp_path):
    """The camera's Ctrl-C path, exercised on a long file: SIGINT mid-run -> exit 0, files complete."""
    long_clip = tmp_path / "long.mp4"
    cap = cv2.VideoCapture(str(clip_path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    w = cv2.VideoWriter(str(long_clip), cv2.VideoWriter_fourcc(*"mp4v"), 29.97, (640, 360))
    for _ in range(8):
        for f in frames:
            w.write(f)
    w.release()
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        [
            sys.executable,
            "test_frame.py",
            str(long_clip),
            "--gallery-dir",
            str(clip_people),
            "--output",
            str(out),
            "--detect-every",
            "1",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and p.poll() is None:
            jl = out / "frames.jsonl"
            if jl.is_file() and jl.stat().st_size > 20_000:
                break
            time.sleep(0.05)
        assert p.poll() is None, "finished before it could be interrupted"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] is True and 0 < summary["frames"] < len(frames) * 8
    lines = (out / "frames.jsonl").read_text().splitlines()
    assert len(lines) == summary["frames"] and all(json.loads(x)["frame"] == i for i, x in enumerate(lines))
    assert json.loads((out / "tracks.json").read_text())
    cap = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert cap.read()[0]
    cap.release()


def test_frame_real_failures_exit_nonzero(tmp_path, clip_people):
    r = _run(
        "test_frame.py",
        str(tmp_path / "missing.mp4"),
        "--gallery-dir",
        str(clip_people),
        "--output",
        str(tmp_path / "o"),
    )
    assert r.returncode == 1 and "not found" in r.stderr
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    r = _run("test_frame.py", str(bad), "--gallery-dir", str(clip_people), "--output", str(tmp_path / "o2"))
    assert r.returncode == 1 and "error" in r.stderr
    assert _run("test_frame.py", "--output", str(tmp_path / "o3")).returncode == 2  # no source
