"""MJPEG of a video job for an ``<img>`` tag: the live frame while it runs, then the annotated video.

The task running the job (anywhere) writes its latest annotated frame to ``<job folder>/live.jpg`` a few times a
second; every API server streams that file, so a viewer may follow a job on any server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2

from ..storage.jobs import ACTIVE, JobStore
from .tasks import LIVE_FILE

MJPEG_MIMETYPE = "multipart/x-mixed-replace; boundary=frame"


def mjpeg_part(jpeg: bytes) -> bytes:
    return b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(jpeg), jpeg)


def mjpeg(
    store: JobStore, job_dir: Path, video_path: Callable[[dict[str, Any]], Path], max_seconds: float = 3600.0
) -> Iterator[bytes]:
    """MJPEG parts: ``live.jpg`` as it changes while the job is active, then its annotated video at its frame rate."""
    job_id = job_dir.name
    t_end = time.monotonic() + max_seconds
    last, polls = 0.0, 0
    while time.monotonic() < t_end:
        if polls % 5 == 0 and store.get(job_id)["status"] not in ACTIVE:
            break
        polls += 1
        try:
            p = job_dir / LIVE_FILE
            m = p.stat().st_mtime
            if m != last:
                last = m
                yield mjpeg_part(p.read_bytes())
        except OSError:
            pass
        time.sleep(0.1)
    state = store.get(job_id)
    path = video_path(state)
    if state["status"] not in ("done", "cancelled") or not path.is_file():
        return
    cap = cv2.VideoCapture(str(path))
    period = 1.0 / min(max(cap.get(cv2.CAP_PROP_FPS) or 25.0, 1.0), 60.0)
    nxt = time.monotonic()
    try:
        while time.monotonic() < t_end:
            ok, frame = cap.read()
            if not ok:
                break
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
            if ok:
                yield mjpeg_part(buf.tobytes())
            nxt += period
            time.sleep(max(0.0, nxt - time.monotonic()))
    finally:
        cap.release()
