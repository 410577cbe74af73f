"""Video input and output with OpenCV: files and cameras in, MPEG-4 (``mp4v``) out.

Frames are decoded and encoded on background threads (OpenCV releases the
GIL), so decoding the next frame and encoding the last one overlap with
detection and embedding of the current one.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import BadImageError, InvalidRequestError

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts"}
DEFAULT_FPS = 30.0
_END = object()


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int | None  # None for cameras and streams that do not say
    live: bool

    @property
    def duration_s(self) -> float | None:
        return None if self.frames is None else self.frames / self.fps

    def to_dict(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "fps": round(self.fps, 3),
            "frames": self.frames,
            "live": self.live,
        }


def _fps(cap: cv2.VideoCapture) -> float:
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if math.isfinite(fps) and 1.0 <= fps <= 240.0 else DEFAULT_FPS


def open_capture(source: str | int | Path) -> tuple[cv2.VideoCapture, VideoInfo]:
    """Open a video file or a camera index; :class:`BadImageError` when nothing can be decoded."""
    live = isinstance(source, int)
    if not live:
        p = Path(source)
        if not p.is_file():
            raise InvalidRequestError(f"video file not found: {p}")
        cap = cv2.VideoCapture(str(p))
    else:
        cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        what = f"camera {source}" if live else f"{source}"
        raise BadImageError(f"cannot open {what} as a video")
    w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
    h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    info = VideoInfo(width=w, height=h, fps=_fps(cap), frames=n if (n > 0 and not live) else None, live=live)
    return cap, info


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate and frame count of a video file, reading one frame to prove it decodes."""
    cap, info = open_capture(path)
    try:
        ok, frame = cap.read()
        if not ok or frame is None:
            raise BadImageError("the file is not a decodable video")
        if info.width <= 0 or info.height <= 0:
            info = VideoInfo(frame.shape[1], frame.shape[0], info.fps, info.frames, info.live)
        return info
    finally:
        cap.release()


class FrameReader:
    """Iterates ``(index, frame)`` from a capture, decoding ahead on a thread.

    ``close()`` (or leaving the ``with`` block) stops the thread and releases
    the capture; iteration also stops when ``stop`` (a ``threading.Event``) is set.
    """

    def __init__(self, cap: cv2.VideoCapture, prefetch: int = 8, stop: threading.Event | None = None):
        self._cap = cap
        self._q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = stop or threading.Event()
        self._closed = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="video-reader", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._closed.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self._closed.is_set() and not self._stop.is_set():
                ok, frame = self._cap.read()
                if not ok or frame is None:
                    break
                if not self._put(frame):
                    return
        except BaseException as exc:  # pragma: no cover - OpenCV errors are rare
            self._error = exc
        self._put(_END)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        index = 0
        while True:
            if self._stop.is_set():
                return
            try:
                item = self._q.get(timeout=0.2)
            except queue.Empty:
                if not self._thread.is_alive() and self._q.empty():
                    return
                continue
            if item is _END:
                if self._error is not None:
                    raise BadImageError(f"decoding the video failed: {self._error}")
                return
            yield index, item  # type: ignore[misc]
            index += 1

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._cap.release()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoWriter:
    """An OpenCV ``VideoWriter`` fed from a queue on a thread (frames are encoded in order)."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], codec: str = "mp4v", queue_size: int = 16):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*codec), float(fps), size)
        if not self._writer.isOpened():
            raise InvalidRequestError(f"OpenCV cannot write {codec!r} video to {self.path}")
        self.size = size
        self.frames = 0
        self._q: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="video-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            frame = self._q.get()
            if frame is _END:
                return
            try:
                if self._error is None:
                    self._writer.write(frame)
            except BaseException as exc:  # pragma: no cover
                self._error = exc

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self._q.put(frame)
        self.frames += 1

    def close(self) -> None:
        if self._thread.is_alive():
            self._q.put(_END)
            self._thread.join()
        self._writer.release()
        if self._error is not None:
            raise BadImageError(f"writing the annotated video failed: {self._error}")


class RateMeter:
    """Frames per second over a sliding window of recent frames."""

    def __init__(self, window: int = 30):
        self._times: list[float] = []
        self._window = window

    def tick(self) -> float:
        now = time.perf_counter()
        self._times.append(now)
        if len(self._times) > self._window:
            self._times.pop(0)
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)
