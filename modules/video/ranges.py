"""Frame ranges of a video (chunked jobs): analyse one, draw final results on one, concatenate the segments."""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import ImageTooLargeError
from ..files import private_dir, private_file
from .annotate import draw_faces
from .config import VideoConfig
from .decode import VideoFile
from .identity import TrackIdentity
from .videoio import FrameReader, RateMeter, VideoWriter, open_capture
from .processor import FrameResult, Hooks, VideoProcessor

log = logging.getLogger("facerec.video.ranges")

MAX_EVIDENCE = 16  # embeddings kept per track piece for the join


def encode_embedding(e: np.ndarray) -> str:
    return base64.b64encode(np.asarray(e, np.float32).tobytes()).decode("ascii")


def decode_embedding(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), np.float32)


class _RangeHooks(Hooks):
    """Collects a range's frames, warm-up frames, per-track evidence, core detections, cuts and crops."""

    def __init__(self, start: int, config: VideoConfig, crops_dir: Path | None, on_frame: Callable | None):
        self.start, self.config, self.crops_dir, self.forward = start, config, crops_dir, on_frame
        self.frames: list[dict[str, Any]] = []
        self.warmup: list[dict[str, Any]] = []
        self.evidence: dict[int, list[np.ndarray]] = {}
        self.core: Counter = Counter()
        self.crops: dict[int, tuple[str, float]] = {}
        self.cuts = 0

    def on_sample(self, track: TrackIdentity, embedding: np.ndarray, frame: int) -> None:
        ev = self.evidence.setdefault(track.track_id, [])
        if len(ev) < MAX_EVIDENCE:
            ev.append(np.array(embedding, np.float32, copy=True))

    def on_frame(self, r: FrameResult) -> None:
        if r.index < self.start:
            self.warmup.append(r.to_dict())
            return
        self.frames.append(r.to_dict())
        self.core.update(f["track_id"] for f in r.faces if f["detected"])
        if self.forward is not None:
            self.forward(r)

    def on_cut(self, frame: int) -> None:
        self.cuts += frame >= self.start

    def on_track_end(self, t: TrackIdentity) -> None:
        if t.best_crop is not None and self.crops_dir is not None and self.config.save_crops:
            private_dir(self.crops_dir)
            name = f"t{t.track_id}.jpg"
            if cv2.imwrite(str(self.crops_dir / name), t.best_crop, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]):
                private_file(self.crops_dir / name)
                self.crops[t.track_id] = (name, float(t.best_quality))
        t.best_crop = None

    def track(self, t: TrackIdentity) -> dict[str, Any]:
        d = t.to_dict()
        d.pop("best_crop", None)
        crop = self.crops.get(t.track_id)
        d.update(detections_core=int(self.core.get(t.track_id, 0)),
                 evidence=[encode_embedding(e) for e in self.evidence.get(t.track_id, [])],
                 crop=crop[0] if crop else None, quality=crop[1] if crop else float(t.best_quality))
        return d


def analyze_range(
    source: str | Path, start: int, end: int | None, overlap: int, recognizer: Any, gallery: str,
    config: VideoConfig, *, crops_dir: str | Path | None = None, progress: Callable[[int, float], None] | None = None,
    on_frame: Callable[[FrameResult], None] | None = None, stop: threading.Event | None = None,
    max_frames: int | None = None, max_pixels: int | None = None, max_total_pixels: int | None = None,
) -> dict[str, Any]:
    """Analyse frames ``[start, end)`` (``end`` None: to the end) after ``overlap`` warm-up frames.

    The warm-up makes the range's tracks confirmed (usually named) when it begins; its frames are returned apart
    (``overlap``: what ranges are joined on, :mod:`modules.jobs.chunks`).  Returns a JSON-able result: the range's
    frames (``frames.jsonl`` shape), the track pieces with their identity evidence (a few embeddings), quality and
    crop file, and counters.  ``progress(done, fps)`` after every frame of the range; ``stop`` ends early.
    Limits: ``max_frames`` (frame index), ``max_pixels`` per frame, and this range's share of the whole video's
    ``max_total_pixels`` (:func:`pixel_share`).
    """
    stop = stop or threading.Event()
    warm = max(0, start - max(0, overlap))
    cap, info = open_capture(source, max_pixels=max_pixels)
    if max_total_pixels is not None and isinstance(cap, VideoFile):
        cap.pixel_budget = pixel_share(max_total_pixels, warm, end, info.frames)
    hooks = _RangeHooks(start, config, Path(crops_dir) if crops_dir is not None else None, on_frame)
    proc = VideoProcessor(recognizer, gallery, config, fps=info.fps, live=False, hooks=[hooks])
    meter = RateMeter()
    t0 = time.perf_counter()
    n_core = 0
    reader = FrameReader(cap, stop=stop, start=warm, end=end, size=(info.width, info.height))
    try:
        for index, frame in reader:
            proc.push(index, frame)
            if index >= start:
                n_core += 1
                if max_frames is not None and index + 1 > max_frames:
                    raise ImageTooLargeError(f"the video has more than {max_frames} frames (the limit)")
                if progress is not None:
                    progress(n_core, meter.tick())
            if stop.is_set():
                break
        stopped = stop.is_set()
    finally:
        reader.close()
    proc.finish()
    return {
        "start": start, "end": start + n_core, "warm": warm, "frames": hooks.frames, "overlap": hooks.warmup,
        "tracks": [hooks.track(t) for t in proc.tracks], "switches": proc.book.switches, "scene_cuts": hooks.cuts,
        "embeddings": int(proc.stats["embeddings"]), "seconds": round(time.perf_counter() - t0, 3),
        "stage_seconds": {k: round(v, 3) for k, v in proc.times.items()}, "stopped": stopped,
        "video": info.to_dict(), **proc.judge.facts(),
    }


def pixel_share(total: int, first: int, end: int | None, frames: int | None) -> int:
    """The pixels that reading frames ``[first, end)`` may decode, of ``total`` for all ``frames`` of the video:
    in proportion (the ranges of a job add up to ``total``, plus their warm-ups); the whole of it when the
    video's length is unknown.  An honest video (``frames`` x its size within ``total``) never reaches it."""
    if not frames or frames <= 0:
        return total
    return math.ceil(total * (max(0, (end if end is not None else frames) - first) / frames))


def render_range(
    source: str | Path, start: int, end: int | None, frames: list[dict[str, Any]], out_path: str | Path,
    codec: str = "h264", *, stop: threading.Event | None = None, progress: Callable[[int], None] | None = None,
) -> int:
    """Write frames ``[start, end)`` of ``source`` with ``frames``' faces drawn to ``out_path``; frames written."""
    faces = {f["frame"]: f["faces"] for f in frames}
    cap, info = open_capture(source)
    writer = VideoWriter(out_path, info.fps, (info.width, info.height), codec)
    n = 0
    reader = FrameReader(cap, stop=stop, start=start, end=end)
    try:
        for index, frame in reader:
            writer.write(draw_faces(frame, faces.get(index, ()), copy=False))
            n += 1
            if progress is not None and n % 30 == 0:
                progress(n)
    finally:
        reader.close()
        writer.close()
    return n


def concat_videos(paths: list[str | Path], out_path: str | Path) -> str:
    """Concatenate MP4 segments of the same size and codec into ``out_path``; returns the method used.

    With PyAV the packets are copied (no re-encoding, seconds for an hour of
    video); without it every frame is decoded and encoded again with OpenCV.
    """
    out_path = Path(out_path)
    try:
        _concat_pyav(paths, out_path)
        private_file(out_path)
        return "pyav"
    except ImportError:
        pass  # no PyAV
    except Exception as exc:  # noqa: BLE001 - an odd stream: re-encode instead
        log.warning("remuxing the segments failed (%s); re-encoding them", exc)
    _concat_opencv(paths, out_path)  # a VideoWriter: private already
    return "opencv"


def _concat_pyav(paths: list[str | Path], out_path: Path) -> None:
    import av

    with av.open(str(out_path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        ostream = None
        offset = 0  # in the output stream's time base
        for p in paths:
            with av.open(str(p)) as inp:
                s = inp.streams.video[0]
                if ostream is None:
                    ostream = out.add_stream_from_template(s)
                    tb = s.time_base
                scale = float(s.time_base / tb)
                end = offset
                for pkt in inp.demux(s):
                    if pkt.dts is None:
                        continue
                    dur = pkt.duration or 0
                    pts = pkt.pts if pkt.pts is not None else pkt.dts
                    pkt.dts = offset + int(round(pkt.dts * scale))
                    pkt.pts = offset + int(round(pts * scale))
                    pkt.duration = int(round(dur * scale))
                    pkt.time_base = tb
                    end = max(end, pkt.pts + max(pkt.duration, 1))
                    pkt.stream = ostream
                    out.mux(pkt)
                offset = end


def _concat_opencv(paths: list[str | Path], out_path: Path) -> None:
    """Decode and encode again with OpenCV alone (our own segments: no limits to check)."""
    writer = None
    try:
        for p in paths:
            cap = cv2.VideoCapture(str(p))
            try:
                if writer is None:  # the path without PyAV, so OpenCV's own MPEG-4 encoder
                    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
                    writer = VideoWriter(out_path, cap.get(cv2.CAP_PROP_FPS) or 25.0, size, "mp4v")
                while (frame := cap.read()[1]) is not None:
                    writer.write(frame)
            finally:
                cap.release()
    finally:
        if writer is not None:
            writer.close()
