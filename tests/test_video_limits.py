"""Video limits: the per-client quota of queued and running jobs (counted in the shared job store), frames
checked one by one (a stream that grows mid-video fails cleanly), the frames x pixels budget (from the metadata
and while decoding), and real video containers only (images, PDFs, audio, random bytes: 415)."""
from __future__ import annotations

import io
import shutil
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from tests.api_fixtures import *

VIDEOS = "/api/v1/videos"
A, B = {"REMOTE_ADDR": "10.0.0.1"}, {"REMOTE_ADDR": "10.0.0.2"}


# --- videos made here ---------------------------------------------------------------------------------------
def mjpeg_avi(path: Path, parts: list[tuple[int, int, int]], fps: int = 25) -> Path:
    """MJPEG in AVI, each frame a JPEG of its own size: ``parts`` = [(width, height, frames), ...]; the
    container's header says the first size."""
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=fps)
        stream.width, stream.height, stream.pix_fmt = parts[0][0], parts[0][1], "yuvj420p"
        pts = 0
        for w, h, n in parts:
            enc = av.CodecContext.create("mjpeg", "w")
            enc.width, enc.height, enc.pix_fmt, enc.time_base = w, h, "yuvj420p", Fraction(1, fps)
            for _ in range(n):
                frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 40 + 20 * pts, np.uint8), format="bgr24")
                frame = frame.reformat(format="yuvj420p")
                frame.pts = pts
                for packet in enc.encode(frame):
                    packet.stream, packet.pts, packet.dts = stream, pts, pts
                    out.mux(packet)
                pts += 1
    return path


def h264_mp4(path: Path, frames: int, size: tuple[int, int] = (96, 64), *, gop: int = 12,
             rotation: int = 0) -> Path:
    """An H.264 MP4 whose frame i is a distinct pattern (a keyframe every ``gop`` frames)."""
    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"g": str(gop), "preset": "ultrafast", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[: h // 3, : w // 3] = 255  # a corner that shows the orientation
            cv2.putText(img, str(i), (w // 3, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 255, 0), 2)
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def long_video(path: Path, frames: int = 900, size: tuple[int, int] = (640, 360)) -> Path:
    """MJPEG in AVI, one JPEG repeated (made at once): long enough to keep a job running while a test runs
    (about 20 s of work here, several on a fast machine)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.dstack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256]).astype(np.uint8)
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuvj420p"
        frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuvj420p")
        frame.pts = 0
        jpeg = bytes(next(iter(stream.encode(frame))))
        for i in range(frames):
            packet = av.Packet(jpeg)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 25)
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {
        "long": long_video(d / "long.avi"),
        "grows": mjpeg_avi(d / "grows.avi", [(64, 64, 5), (4096, 4096, 2)]),  # 64x64, then 16.7 Mpx frames
        "swells": mjpeg_avi(d / "swells.avi", [(64, 64, 5), (1024, 768, 5)]),  # within the per-frame limit
        "small": mjpeg_avi(d / "small.avi", [(64, 64, 5)]),
    }


def _post(client, path: Path | bytes, env: dict | None = None, name: str = "clip.mp4"):
    data = path.read_bytes() if isinstance(path, Path) else path
    return client.post(VIDEOS, data={"file": (io.BytesIO(data), name)}, content_type="multipart/form-data",
                       environ_base=env or A)


def _wait(client, job_id: str, until=lambda s: s["status"] not in ("queued", "running"), timeout: float = 60):
    end = time.monotonic() + timeout
    while not until(s := client.get(f"{VIDEOS}/{job_id}", environ_base=A).get_json()) and time.monotonic() < end:
        time.sleep(0.05)
    return s


@pytest.fixture()
def video_apps(make_app):
    """``apps(n, **settings)``: n apps on one data directory (one job store: like n servers); their video jobs
    are cancelled and their managers stopped afterwards."""
    from modules.api.videos import EXTENSION

    made = []

    def apps(n: int = 1, **settings):
        made.extend(make_app("data", **settings) for _ in range(n))
        return made[-n:]

    yield apps
    for app in made:
        app.extensions[EXTENSION].shutdown(wait=True, cancel_running=True)


# --- the per-client quota -----------------------------------------------------------------------------------
def test_third_job_of_a_client_is_429_on_any_server_another_client_is_accepted(video_apps, videos):
    one, two = (app.test_client() for app in video_apps(2, video={"max_running": 1}))
    first = _post(one, videos["long"], name="long.avi")  # runs on the only slot of the first server
    second = _post(one, videos["small"], name="small.avi")  # waits behind it
    assert first.status_code == 202 and second.status_code == 202, (first.get_json(), second.get_json())
    for c in (one, two):  # the other server counts them in the shared job store
        r = _post(c, videos["small"], name="small.avi")
        assert r.status_code == 429, r.get_json()
        err = r.get_json()["error"]
        assert err["code"] == "rate_limited" and err["details"] == {"active": 2, "limit": 2, "retry_after_s": 30}
        assert r.headers["Retry-After"] == "30" and "limit is 2" in err["message"]
    assert _post(two, videos["small"], B, name="small.avi").status_code == 202  # another client
    assert _wait(one, first.get_json()["job_id"], until=lambda s: s["status"] != "queued")["status"] == "running"
    job = second.get_json()["job_id"]
    assert one.delete(f"{VIDEOS}/{job}", environ_base=A).get_json()["status"] == "cancelled"
    assert _post(two, videos["small"], name="small.avi").status_code == 202  # room again
    listed = one.get(VIDEOS, environ_base=A).get_json()["jobs"]
    assert len(listed) == 4 and all("client" not in j for j in listed)  # who submitted stays inside


def test_quota_off_with_the_rate_limits(video_apps, videos):
    (app,) = video_apps(1, video={"max_running": 1}, rate={"enabled": False})
    c = app.test_client()
    assert [_post(c, videos["small"], name="small.avi").status_code for _ in range(3)] == [202, 202, 202]


# --- frames checked one by one ------------------------------------------------------------------------------
def test_frames_growing_past_the_per_frame_limit_fail_the_job_cleanly(video_apps, videos, tmp_path,
                                                                     rec_with_gallery):
    from modules.errors import ImageTooLargeError
    from modules.video import process_video

    (app,) = video_apps(1)
    c = app.test_client()
    r = _post(c, videos["grows"], name="grows.avi")
    assert r.status_code == 202, r.get_json()  # the header says 64x64
    assert r.get_json()["video"]["width"] == 64
    s = _wait(c, r.get_json()["job_id"])
    assert s["status"] == "failed" and s["frames_done"] <= 5, s
    assert "frame 5" in s["error"] and f"limit of {3840 * 2160} pixels per frame" in s["error"]
    rec_with_gallery.gallery.ensure_gallery("default")
    with pytest.raises(ImageTooLargeError, match="frame 5"):  # the same in test_frame.py's path
        process_video(videos["grows"], tmp_path / "out", rec_with_gallery, max_pixels=3840 * 2160)
    (strict,) = video_apps(1, video={"max_pixels": 64 * 64 - 1})  # too large from the first frame: refused at once
    r = _post(strict.test_client(), videos["small"], name="small.avi")
    assert r.status_code == 413 and "the video is 64x64, larger than the limit of 4095" in r.get_json()["error"]["message"]


def test_frames_x_pixels_budget_from_the_metadata_and_while_decoding(video_apps, videos):
    budget = 64 * 64 * 10 * 2  # the header: 10 frames of 64x64, half the budget
    (app,) = video_apps(1, video={"max_total_pixels": budget})
    c = app.test_client()
    r = _post(c, videos["swells"], name="swells.avi")
    assert r.status_code == 202, r.get_json()
    s = _wait(c, r.get_json()["job_id"])
    assert s["status"] == "failed" and f"add up to more than {budget} pixels" in s["error"], s
    (small,) = video_apps(1, video={"max_total_pixels": 64 * 64 * 4})
    r = _post(small.test_client(), videos["small"], name="small.avi")
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "too_large"
    assert "5 frames of 64x64" in r.get_json()["error"]["message"]


# --- real video containers only -----------------------------------------------------------------------------
def _audio_only_mp4(path: Path) -> bytes:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path.read_bytes()


def test_images_pdfs_audio_and_random_bytes_are_not_videos(video_apps, images, obama_jpg, tmp_path):
    (app,) = video_apps(1)
    c = app.test_client()
    img = cv2.imread(str(images / "obama.jpg"))
    gif = bytes.fromhex("474946383961010001008000000000ffffff21f90401000000002c00000000010001000002024401003b")
    cases = {
        "a JPEG image": obama_jpg, "a PNG image": cv2.imencode(".png", img)[1].tobytes(),
        "a WebP image": cv2.imencode(".webp", img)[1].tobytes(), "a GIF image": gif,
        "a PDF document": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
        "no video stream": _audio_only_mp4(tmp_path / "audio.mp4"),
        "not a video this service reads": np.random.default_rng(0).bytes(50_000),
    }
    for what, data in cases.items():
        r = _post(c, data, name="upload.mp4")  # a video's name: the content decides
        body = r.get_json()
        assert r.status_code == 415 and body["error"]["code"] == "not_a_video", (what, body)
        assert what in body["error"]["message"] and "/" not in body["error"]["message"].split(";")[0], body
    assert not any(app.config["FACEREC_SETTINGS"].jobs_dir.iterdir())  # nothing kept of them


def test_test_frame_says_an_image_is_not_a_video_before_loading_models(obama_jpg, tmp_path, capsys):
    import test_frame

    jpg = tmp_path / "photo.mp4"
    jpg.write_bytes(obama_jpg)
    t0 = time.perf_counter()
    assert test_frame.main([str(jpg), "--gallery-dir", str(tmp_path), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "error: the file is a JPEG image, not a video" in err and time.perf_counter() - t0 < 10


# --- the reader: real sizes, rotation, seeking --------------------------------------------------------------
def test_reader_starts_at_any_frame_like_a_sequential_read(tmp_path):
    from modules.video.videoio import FrameReader, open_capture

    path = h264_mp4(tmp_path / "n.mp4", 60)
    cap, info = open_capture(path)
    whole = list(FrameReader(cap))
    assert info.frames == 60 and [i for i, _ in whole] == list(range(60))
    for start in (1, 11, 12, 13, 37, 59):
        cap, _ = open_capture(path)
        reader = FrameReader(cap, start=start, end=start + 3)
        got = list(reader)
        reader.close()
        assert [i for i, _ in got] == list(range(start, min(start + 3, 60)))
        assert all(np.array_equal(f, whole[i][1]) for i, f in got), start


def test_rotated_videos_come_upright_as_opencv_shows_them(tmp_path):
    from modules.video.videoio import open_capture

    path = h264_mp4(tmp_path / "r.mp4", 3, (96, 64), rotation=90)
    cap, info = open_capture(path)
    frame = cap.read()
    cap.release()
    ok, cv_frame = cv2.VideoCapture(str(path)).read()
    assert ok and (info.width, info.height) == (64, 96) and frame.shape == cv_frame.shape == (96, 64, 3)
    assert np.abs(frame.astype(int) - cv_frame).mean() < 1


def test_the_client_column_is_added_to_an_old_job_database(tmp_path):
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from modules.storage.engine import get_engine
    from modules.storage.jobs import now_iso, open_job_store
    from modules.storage.migrate import head

    path = tmp_path / "jobs.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "legacy" / "jobs.db", path)
    store = open_job_store(path)
    with get_engine(path).connect() as conn:  # (PostgreSQL: test_job_store compares the whole schema)
        ctx = MigrationContext.configure(conn, opts={"version_table": "facerec_schema"})
        assert ctx.get_current_heads() == (head("jobs"),) == ("jobs_0002",)
        db = inspect(conn)
        assert "client" in {c["name"] for c in db.get_columns("video_jobs")}
        assert {"name": "video_jobs_client", "column_names": ["client", "status"]}.items() <= next(
            i for i in db.get_indexes("video_jobs") if i["name"] == "video_jobs_client").items()
    with store.tx() as tx:
        for i, status in enumerate(["queued", "running", "done"]):
            tx.put_job({"job_id": f"j{i}", "status": status, "created_at": now_iso(), "client": "addr:10.0.0.1"})
        assert tx.count_client("addr:10.0.0.1") == 2 and tx.count_client("addr:10.0.0.2") == 0
    assert store.count_active(client="addr:10.0.0.1") == 2 and store.get("j0")["client"] == "addr:10.0.0.1"
    store.close()
