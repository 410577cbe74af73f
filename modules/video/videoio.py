"""Video input and output: files in with PyAV (checked frame by frame, :mod:`.decode`), cameras with OpenCV,
annotated MP4 out.

H.264 (PyAV's libx264, ``yuv420p``, ``+faststart``) plays inline in every browser; other FOURCCs are written by
OpenCV.  Decoding and encoding run on threads (OpenCV and PyAV release the GIL), overlapping with detection.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from ..errors import BadImageError, FaceRecError, ImageTooLargeError, InvalidRequestError
from .decode import DEFAULT_FPS, VideoFile, plausible_fps
from ..files import private_dir, private_file

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts"}
_END = object()
#: codecs written with PyAV's libx264 rather than OpenCV
H264_CODECS = {"h264", "avc1", "x264"}
#: libx264 speed preset: ``ultrafast`` costs ~1.3 ms a 640x360 frame (``mp4v``: ~1 ms), ``veryfast`` ~3.7 ms
H264_PRESET = "ultrafast"


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
        return {**asdict(self), "fps": round(self.fps, 3)}


def _fps(cap: cv2.VideoCapture) -> float:
    return plausible_fps(float(cap.get(cv2.CAP_PROP_FPS) or 0.0))


class Camera:
    """A camera through OpenCV, read like :class:`~modules.video.decode.VideoFile` (``read()``, ``seek()``,
    ``release()``); a frame over ``max_pixels`` is an :class:`ImageTooLargeError`."""

    def __init__(self, index: int, *, max_pixels: int | None = None):
        self._cap = cv2.VideoCapture(index)
        self.max_pixels = max_pixels
        if not self._cap.isOpened():
            self._cap.release()
            raise BadImageError(f"cannot open camera {index} as a video")
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self._pending: np.ndarray | None = None
        if self.width <= 0 or self.height <= 0:  # measured on its first frame
            self._pending = self.read()
            if self._pending is None:
                self._cap.release()
                raise BadImageError(f"cannot read a frame from camera {index}")
            self.height, self.width = self._pending.shape[:2]
        self.fps = _fps(self._cap)

    def read(self) -> np.ndarray | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        if self.max_pixels is not None and frame.shape[0] * frame.shape[1] > self.max_pixels:
            raise ImageTooLargeError(f"the camera's frames are {frame.shape[1]}x{frame.shape[0]}, larger than the"
                                     f" limit of {self.max_pixels} pixels per frame")
        return frame

    def seek(self, index: int) -> None:
        """A camera is live: there is nothing to seek."""

    def release(self) -> None:
        self._cap.release()


Capture = VideoFile | Camera


def open_capture(source: str | int | Path, *, max_pixels: int | None = None,
                 pixel_budget: int | None = None) -> tuple[Capture, VideoInfo]:
    """Open a video file (PyAV: real video containers only, see :mod:`.decode`) or a camera index (OpenCV).

    :class:`InvalidRequestError` for a missing file, :class:`NotAVideoError` for a file that is no video,
    :class:`BadImageError` when nothing decodes, :class:`ImageTooLargeError` when the first frame is over
    ``max_pixels``.  Every frame read is checked against ``max_pixels``; a file stops with
    :class:`ImageTooLargeError` once its frames add up to more than ``pixel_budget`` pixels.
    """
    if isinstance(source, int):
        cam = Camera(source, max_pixels=max_pixels)
        return cam, VideoInfo(width=cam.width, height=cam.height, fps=cam.fps, frames=None, live=True)
    p = Path(source)
    if not p.is_file():
        raise InvalidRequestError(f"video file not found: {p}")
    video = VideoFile(p, max_pixels=max_pixels, pixel_budget=pixel_budget)
    return video, VideoInfo(width=video.width, height=video.height, fps=video.fps, frames=video.frames, live=False)


def probe(path: str | Path, *, max_pixels: int | None = None) -> VideoInfo:
    """Size, frame rate and frame count of a video file, decoding its first frame to prove that it decodes
    (errors: :func:`open_capture`'s)."""
    cap, info = open_capture(path, max_pixels=max_pixels)
    cap.release()
    return info


class FrameReader:
    """Iterates ``(index, frame)`` over frames ``[start, end)`` of a capture (``end`` None: to its end), decoding
    ahead on a thread; frames are resized to ``size`` (width, height) when given.

    ``close()`` stops the thread and releases the capture; iteration also stops when ``stop`` is set.
    """

    def __init__(self, cap: Capture, prefetch: int = 8, stop: threading.Event | None = None, *,
                 start: int = 0, end: int | None = None, size: tuple[int, int] | None = None):
        if start > 0:
            cap.seek(start)
        self._cap, self._start, self._end, self._size = cap, start, end, size
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
        index = self._start
        try:
            while not self._closed.is_set() and not self._stop.is_set() and (self._end is None or index < self._end):
                frame = self._cap.read()
                if frame is None:
                    break
                if self._size is not None and (frame.shape[1], frame.shape[0]) != self._size:
                    frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
                if not self._put(frame):
                    return
                index += 1
        except BaseException as exc:  # noqa: BLE001 - a limit, a damaged frame: raised by the iterating thread
            self._error = exc
        self._put(_END)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        index = self._start
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
                if isinstance(self._error, FaceRecError):
                    raise self._error
                if self._error is not None:
                    raise BadImageError(f"decoding the video failed: {self._error}")
                return
            yield index, item  # type: ignore[misc]
            index += 1

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._cap.release()


class _OpenCVEncoder:
    def __init__(self, path: Path, fps: float, size: tuple[int, int], codec: str):
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), float(fps), size)
        if not self._writer.isOpened():
            raise InvalidRequestError(f"OpenCV cannot write {codec!r} video to {path.name}")

    def write(self, frame: np.ndarray) -> None:
        self._writer.write(frame)

    def close(self) -> None:
        self._writer.release()


class _H264Encoder:
    """H.264 in MP4 through PyAV (libx264, ``yuv420p``, moov atom first so browsers start playing at once)."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        try:
            import av  # a listed dependency; imported here so reading videos does not need it
        except ImportError as exc:
            raise InvalidRequestError("H.264 output needs PyAV (the av package); or set video_codec: mp4v") from exc

        self._av = av
        rate = Fraction(float(fps)).limit_denominator(1001) if fps > 0 else Fraction(int(DEFAULT_FPS))
        # yuv420p needs even sides: odd frames get one black row/column
        self._pad = (size[0] % 2, size[1] % 2)
        try:
            self._out = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})
            self._stream = self._out.add_stream("libx264", rate=rate)
        except Exception as exc:  # noqa: BLE001 - surface as a typed error
            raise InvalidRequestError(f"cannot write H.264 video to {path.name}: {exc}") from exc
        self._stream.width = size[0] + self._pad[0]
        self._stream.height = size[1] + self._pad[1]
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"preset": H264_PRESET, "crf": "23"}
        self._stream.codec_context.time_base = 1 / rate
        self._n = 0

    def write(self, frame: np.ndarray) -> None:
        if self._pad != (0, 0):
            frame = cv2.copyMakeBorder(frame, 0, self._pad[1], 0, self._pad[0], cv2.BORDER_CONSTANT)
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        vf.pts = self._n
        self._n += 1
        for packet in self._stream.encode(vf):
            self._out.mux(packet)

    def close(self) -> None:
        try:
            for packet in self._stream.encode():
                self._out.mux(packet)
        finally:
            self._out.close()


class VideoWriter:
    """The annotated video, encoded in order on a thread fed from a bounded queue.

    ``codec`` is ``"h264"`` (PyAV/libx264, plays in browsers) or an OpenCV FOURCC such as ``"mp4v"``.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], codec: str = "h264", queue_size: int = 16):
        self.path = Path(path)
        private_dir(self.path.parent)
        if codec.lower() in H264_CODECS:
            self._encoder: _OpenCVEncoder | _H264Encoder = _H264Encoder(self.path, fps, size)
        else:
            self._encoder = _OpenCVEncoder(self.path, fps, size, codec)
        self._private()
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
                    self._encoder.write(frame)
            except BaseException as exc:  # noqa: BLE001 - re-raised as a typed error on close()
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
        try:
            self._encoder.close()
        except Exception as exc:  # noqa: BLE001
            self._error = self._error or exc
        self._private()
        if self._error is not None:
            raise BadImageError(f"writing the annotated video failed: {self._error}")

    def _private(self) -> None:
        """The encoder created the file with the process's umask: ``0600`` (nothing if it made none yet)."""
        with contextlib.suppress(FileNotFoundError):
            private_file(self.path)


class RateMeter:
    """Frames per second over a sliding window of recent frames."""

    def __init__(self, window: int = 30):
        self._times: deque[float] = deque(maxlen=window)

    def tick(self) -> float:
        self._times.append(time.perf_counter())
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)
