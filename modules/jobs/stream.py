"""MJPEG of a video job for an ``<img>`` tag: the live frame while it runs, then the annotated video.

The task running the job (anywhere) writes its latest annotated frame to ``<job folder>/live.jpg`` a few times a
second; every API server streams that file, so a viewer may follow a job on any server.

:class:`StreamSlots` bounds how many such long responses a process serves at once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2

from ..errors import ServiceUnavailableError
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


class StreamSlots:
    """How many long responses (MJPEG streams, video downloads) a process serves at once: in all, per job and
    per client.

    Each holds a server thread for as long as the client keeps reading (up to an hour for a stream), so
    without a bound a few viewers would take every thread and ``/health`` and ordinary requests would wait.
    :meth:`acquire` raises :class:`~modules.errors.ServiceUnavailableError` (503 with ``Retry-After``) when a
    bound is reached; its release function is called once the response ends (:class:`ReleasingBody`).
    """

    def __init__(self, total: int, per_job: int, per_client: int):
        self.total, self.per_job, self.per_client = total, per_job, per_client
        self._lock = threading.Lock()
        self._jobs: Counter[str] = Counter()
        self._clients: Counter[str] = Counter()
        self._busy = 0

    @property
    def busy(self) -> int:
        return self._busy

    def acquire(self, job_id: str, client: str) -> Callable[[], None]:
        """Take a slot for ``client`` reading ``job_id``; the returned function gives it back (once)."""
        with self._lock:
            for what, used, bound in (("in all", self._busy, self.total),
                                      ("of this job", self._jobs[job_id], self.per_job),
                                      ("to this client", self._clients[client], self.per_client)):
                if used >= bound:
                    raise ServiceUnavailableError(
                        f"too many video streams and downloads {what} ({bound}); retry later",
                        details={"limit": bound},
                    )
            self._busy += 1
            self._jobs[job_id] += 1
            self._clients[client] += 1
        done = threading.Event()

        def release() -> None:
            if done.is_set():
                return
            with self._lock:
                if done.is_set():
                    return
                done.set()
                self._busy -= 1
                self._jobs[job_id] -= 1
                self._clients[client] -= 1
                if not self._jobs[job_id]:
                    del self._jobs[job_id]
                if not self._clients[client]:
                    del self._clients[client]

        return release


class ReleasingBody:
    """A response body that calls ``release`` once it is exhausted or the server closes it (the response
    ended, the client left), whichever comes first."""

    def __init__(self, body: Iterable[bytes], release: Callable[[], None]):
        self._body = body
        self._iter: Iterator[bytes] | None = None
        self._release = release

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iter is None:
            self._iter = iter(self._body)
        try:
            return next(self._iter)
        except StopIteration:
            self._release()
            raise

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._release()
