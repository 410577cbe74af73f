"""Video files decoded with PyAV: real video containers only, every frame at its real size, within limits.

OpenCV scales every frame of a file to the size of its first one, so a stream that switches from 64x64 to
4096x4096 mid-video would be decoded at full size without anyone seeing it.  :class:`VideoFile` decodes with
PyAV (the same FFmpeg decoders, the same BGR pixels as OpenCV) and sees each frame as it is:

* only the demuxers of :data:`VIDEO_FORMATS` and the ``file`` protocol may open an upload, so images (JPEG,
  PNG, GIF, WebP...), PDFs, playlists that would fetch other files, and anything else are refused with
  :class:`~modules.errors.NotAVideoError` (415), naming what the file is when its first bytes tell;
* a frame over ``max_pixels`` is refused by the decoder before its pixels are allocated (FFmpeg's own
  ``max_pixels``) and checked again once decoded: :class:`~modules.errors.ImageTooLargeError` (413);
* the pixels of every decoded frame are added up; past ``pixel_budget`` decoding stops with the same error;
* frames come rotated as the container's display matrix says (phone videos), as OpenCV does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Self

import cv2
import numpy as np

from ..errors import BadImageError, ImageTooLargeError, NotAVideoError

#: FFmpeg demuxers an upload may be opened with (MP4/MOV/3GP/M4V, AVI, MKV/WebM, MPEG-PS, MPEG-TS, WMV, FLV)
VIDEO_FORMATS = ("mov", "mp4", "avi", "matroska", "webm", "mpeg", "mpegts", "asf", "flv")
#: what a refused file is, by its first bytes (for the error message)
SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "a JPEG image"), (b"\x89PNG\r\n\x1a\n", 0, "a PNG image"), (b"GIF8", 0, "a GIF image"),
    (b"WEBP", 8, "a WebP image"), (b"%PDF", 0, "a PDF document"), (b"BM", 0, "a BMP image"),
    (b"II*\x00", 0, "a TIFF image"), (b"MM\x00*", 0, "a TIFF image"), (b"\x00\x00\x00\x0cjP  ", 0, "a JPEG 2000 image"),
    (b"ftypavif", 4, "an AVIF image"), (b"ftypheic", 4, "a HEIC image"), (b"ftypmif1", 4, "a HEIF image"),
    (b"#EXTM3U", 0, "a playlist"), (b"PK\x03\x04", 0, "a ZIP archive"), (b"ID3", 0, "an MP3 file"),
)
#: the first bytes of the video containers of :data:`VIDEO_FORMATS`: a file that starts so but does not open is
#: a damaged video (400), not something else (415)
CONTAINER_SIGNATURES: tuple[tuple[bytes, int], ...] = (
    (b"ftyp", 4), (b"AVI ", 8), (b"\x1a\x45\xdf\xa3", 0), (b"FLV", 0), (b"\x00\x00\x01\xba", 0),
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", 0),
)
DEFAULT_FPS = 30.0
_ROTATE = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, -90: cv2.ROTATE_90_CLOCKWISE, 270: cv2.ROTATE_90_CLOCKWISE,
           180: cv2.ROTATE_180, -180: cv2.ROTATE_180}
SUPPORTED = "MP4, MOV, AVI, MKV, WebM, MPEG, MPEG-TS, WMV or FLV"


def _head(path: str | Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(32)
    except OSError:
        return b""


def sniff(path: str | Path) -> str | None:
    """What a file is by its first bytes (``"a JPEG image"``...), or None."""
    head = _head(path)
    return next((what for magic, at, what in SIGNATURES if head[at:at + len(magic)] == magic), None)


def _not_a_video(path: Path, why: str = "") -> NotAVideoError:
    what = sniff(path)
    lead = f"the file is {what}, not a video" if what else "the file is not a video this service reads"
    return NotAVideoError(f"{lead}{why}; send a video file ({SUPPORTED})", details={"detected": what} if what else None)


def _unopenable(path: Path, exc: Exception) -> BadImageError | NotAVideoError:
    """Why a file does not open: a damaged video (it starts like one) or not a video at all."""
    head = _head(path)
    if sniff(path) is None and any(head[at:at + len(magic)] == magic for magic, at in CONTAINER_SIGNATURES):
        return BadImageError(f"the video is damaged or truncated: {getattr(exc, 'strerror', None) or 'it does not open'}")
    return _not_a_video(path)


def plausible_fps(fps: float) -> float:
    """A frame rate a container reports, or :data:`DEFAULT_FPS` when it is missing or absurd."""
    return fps if math.isfinite(fps) and 1.0 <= fps <= 240.0 else DEFAULT_FPS


def _fps(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return plausible_fps(float(rate) if rate else 0.0)


class VideoFile:
    """A video file, read frame by frame (``read()``: the next BGR frame or None at the end), like a
    ``cv2.VideoCapture`` but with the checks of the module docstring.  ``seek(index)`` before the first
    ``read()`` starts there.  The first frame is decoded on opening, to prove the file decodes and to learn
    its displayed size: ``width``, ``height``, ``fps``, ``frames`` (None when the container does not say).
    """

    def __init__(self, path: str | Path, *, max_pixels: int | None = None, pixel_budget: int | None = None):
        import av  # a listed dependency; imported here so that importing the package does not load FFmpeg

        self.path = Path(path)
        self.max_pixels, self.pixel_budget = max_pixels, pixel_budget
        self.decoded_pixels = 0
        self._av = av
        options = {"format_whitelist": ",".join(VIDEO_FORMATS), "protocol_whitelist": "file"}
        try:
            self._container = av.open(str(self.path), options=options)
        except av.error.FFmpegError as exc:
            raise _unopenable(self.path, exc) from exc
        try:
            if not self._container.streams.video:
                raise _not_a_video(self.path, ": it has no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            if max_pixels is not None:  # the decoder refuses a larger frame before allocating it
                w, h = self._stream.codec_context.width, self._stream.codec_context.height
                if w * h > max_pixels:
                    raise ImageTooLargeError(f"the video is {w}x{h}, larger than the limit of {max_pixels} pixels"
                                             " per frame")
                self._stream.codec_context.options = {"max_pixels": str(int(max_pixels))}
            self.fps = _fps(self._stream)
            self._frames = self._container.decode(self._stream)
            self._index = 0
            first = self._next()
            if first is None:
                raise BadImageError("the file has a video stream but no frame decodes")
            self._origin = first.pts
            self._pending: np.ndarray | None = self._image(first)
            self.height, self.width = self._pending.shape[:2]
            self.frames = self._count()
        except BaseException:
            self._container.close()
            raise

    def _count(self) -> int | None:
        s = self._stream
        if s.frames and s.frames > 0:
            return int(s.frames)
        if s.duration and s.time_base:
            seconds = float(s.duration * s.time_base)
        elif self._container.duration:
            seconds = self._container.duration / 1_000_000
        else:
            return None
        return max(1, math.floor(seconds * self.fps + 0.5))

    def _next(self) -> Any:
        """The next decoded frame (checked against the limits) or None at the end."""
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except self._av.error.ArgumentError as exc:  # EINVAL: what FFmpeg's max_pixels check answers
            if self.max_pixels is None:
                raise BadImageError(f"decoding the video failed: {exc.strerror or exc}") from exc
            raise ImageTooLargeError(
                f"frame {self._index} of the video is larger than the limit of {self.max_pixels} pixels per frame"
                " (or does not decode)", details={"frame": self._index},
            ) from exc
        except self._av.error.FFmpegError as exc:
            raise BadImageError(f"decoding the video failed at frame {self._index}: {exc.strerror or exc}") from exc
        pixels = frame.width * frame.height
        if self.max_pixels is not None and pixels > self.max_pixels:
            raise ImageTooLargeError(
                f"frame {self._index} of the video is {frame.width}x{frame.height}, larger than the limit of"
                f" {self.max_pixels} pixels per frame", details={"frame": self._index},
            )
        self.decoded_pixels += pixels
        if self.pixel_budget is not None and self.decoded_pixels > self.pixel_budget:
            raise ImageTooLargeError(
                f"the video's frames add up to more than {self.pixel_budget} pixels (frames x width x height),"
                " the limit of one job", details={"frame": self._index},
            )
        return frame

    @staticmethod
    def _image(frame: Any) -> np.ndarray:
        image = frame.to_ndarray(format="bgr24")
        turn = _ROTATE.get(int(getattr(frame, "rotation", 0) or 0))
        return cv2.rotate(image, turn) if turn is not None else image

    def _index_of(self, frame: Any) -> int | None:
        if frame.pts is None or self._origin is None:
            return None
        return round(float((frame.pts - self._origin) * self._stream.time_base) * self.fps)

    def seek(self, index: int) -> None:
        """Start reading at frame ``index``: from the keyframe before its time stamp, decoding up to it
        (from the start when the file has no time stamps or the keyframe found lies beyond it)."""
        if index <= 0:
            return
        if self._origin is None or not self._skip_to(index, self._origin + int(index / self.fps / float(
                self._stream.time_base))):
            self._skip_to(index, None)

    def _skip_to(self, index: int, target: int | None) -> bool:
        """Seek to time stamp ``target`` (None: the start) and decode up to frame ``index``; False when the
        first frame there is already past it."""
        if target is None:
            self._container.seek(0, stream=self._stream, backward=True, any_frame=False)
        else:
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        self._frames = self._container.decode(self._stream)
        self._pending, self._index = None, index
        counted = 0
        while (frame := self._next()) is not None:
            at = self._index_of(frame) if target is not None else counted
            at = counted if at is None else at
            if at > index and counted == 0 and target is not None:
                return False
            counted += 1
            if at >= index:
                self._index = at
                self._pending = self._image(frame)
                return True
        return True

    def read(self) -> np.ndarray | None:
        """The next frame (BGR, as displayed), None at the end of the video."""
        if self._pending is not None:
            image, self._pending = self._pending, None
        elif (frame := self._next()) is not None:
            image = self._image(frame)
        else:
            return None
        self._index += 1
        return image

    def release(self) -> None:
        self._container.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
