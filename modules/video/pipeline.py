"""The video pipeline: detect, track, recognize each track, write results.

    from modules.video import process_video, VideoConfig
    summary = process_video("clip.mp4", "out/", recognizer, gallery="default")

:class:`VideoProcessor` is the frame-by-frame core (push frames, get results
back, a few frames later); :func:`process_video` drives it from a file or a
camera and writes

* ``frames.jsonl``: one line per frame, ``{"frame", "time_s", "faces":
  [{"track_id", "box", "name", "similarity"}]}``;
* ``tracks.json``: per track its name, first and last frame, the frames it
  was seen in, its best crop and the history of its name;
* ``annotated.mp4``: the frames with boxes and names;
* ``<name>/track_<id>.jpg``: the best crop of every named track.

Results are held back ``lookahead`` frames (``recognize_frames +
min_track_frames`` for files, 1 for cameras) so that a track's decision also
labels the frames it was decided on and the tracker's confirmation frames.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import FaceRecError, ImageTooLargeError, InvalidRequestError
from ..face import UNKNOWN, Face
from .annotate import draw_faces
from .config import VideoConfig
from .identity import IdentityBook, Judge, TrackIdentity, aggregate_attributes
from .io import FrameReader, RateMeter, VideoInfo, VideoWriter, open_capture
from .tracking import FaceTracker, SceneCutDetector, Tracked, iou

log = logging.getLogger("facerec.video")

FRAMES_FILE = "frames.jsonl"
TRACKS_FILE = "tracks.json"
VIDEO_FILE = "annotated.mp4"
SUMMARY_FILE = "summary.json"


@dataclass
class _Buffered:
    index: int
    time_s: float
    image: np.ndarray
    faces: list[Tracked]
    detected: bool
    scene: int


@dataclass
class FrameResult:
    """One frame's output: what goes into ``frames.jsonl`` plus the image to annotate."""

    index: int
    time_s: float
    image: np.ndarray
    faces: list[dict[str, Any]]
    _annotated: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        faces = []
        for f in self.faces:
            d = {k: f[k] for k in ("track_id", "box", "name", "similarity")}
            if f.get("attributes"):
                d["attributes"] = f["attributes"]
            faces.append(d)
        return {"frame": self.index, "time_s": round(self.time_s, 3), "faces": faces}

    def annotated(self) -> np.ndarray:
        if self._annotated is None:
            self._annotated = draw_faces(self.image, self.faces, copy=True)
        return self._annotated


def build_embedder(recognizer: Any, config: VideoConfig) -> Any:
    """The recognizer's embedder, or a shallow copy of it (same network and lock) with ``flip`` as configured."""
    emb = recognizer.embedder
    if config.embed_flip is None or getattr(emb, "flip", None) in (None, config.embed_flip):
        return emb
    other = copy.copy(emb)
    other.flip = config.embed_flip
    return other


def build_detector(recognizer: Any, config: VideoConfig) -> Any:
    """The recognizer's detector, or a YuNet with the video's ``detect_max_side``."""
    det = recognizer.detector
    cfg = getattr(det, "config", None)
    if config.detect_max_side is None or cfg is None or getattr(cfg, "max_side", None) == config.detect_max_side:
        return det
    from ..detection import YuNetDetector

    return YuNetDetector(cfg.model_copy(update={"max_side": config.detect_max_side}))


class VideoProcessor:
    """Frame-by-frame core: ``push`` frames in order, write out what it returns, then ``finish``."""

    def __init__(
        self,
        recognizer: Any,
        gallery: str = "default",
        config: VideoConfig | None = None,
        *,
        fps: float = 30.0,
        live: bool = False,
        attributes: Any = None,
        analyzer: Any = None,
        detector: Any = None,
    ):
        self.rec = recognizer
        self.config = config or VideoConfig()
        self.fps = fps
        self.detector = detector or build_detector(recognizer, self.config)
        self.embedder = build_embedder(recognizer, self.config)
        self.tracker = FaceTracker(self.config, fps)
        self.cuts = SceneCutDetector(self.config.scene_cut_threshold)
        self.judge = Judge(recognizer, gallery, self.config)
        self.book = IdentityBook(self.judge, self.config)
        self.lookahead = self.config.lookahead_for(live)
        self.attributes = attributes
        self.analyzer = analyzer
        self._buffer: deque[_Buffered] = deque()
        self._scene = 0
        self._since_detect = 10**9
        self._done: list[TrackIdentity] = []
        self._active: set[int] = set()
        self.stats: Counter = Counter()
        self.times: Counter = Counter()  # seconds per stage
        self._lost_after = int(round(self.config.lost_track_buffer * fps / 30.0)) + self.config.detect_every + 1

    # --- per frame ---------------------------------------------------------------------------------
    def push(self, index: int, image: np.ndarray, time_s: float | None = None) -> list[FrameResult]:
        c = self.config
        ts = index / self.fps if time_s is None else time_s
        self.stats["frames"] += 1
        if self.stats["frames"] % 900 == 0:
            self.judge.refresh()  # people enrolled meanwhile change the open-set threshold
        if self.cuts(image):
            self.stats["scene_cuts"] += 1
            self._end_scene()
        self._since_detect += 1
        if self._since_detect >= c.detect_every:
            self._since_detect = 0
            t0 = time.perf_counter()
            faces = self.detector.detect(image)
            t1 = time.perf_counter()
            self.stats["detections"] += len(faces)
            tracked = self.tracker.update(faces, index)
            self._backfill(tracked, image)
            t2 = time.perf_counter()
            self._recognize(index, image, tracked)
            self.times["detect"] += t1 - t0
            self.times["track"] += t2 - t1
            self.times["recognize"] += time.perf_counter() - t2
            detected = True
        else:
            tracked = self.tracker.extrapolate(index, image.shape[1], image.shape[0])
            for t in tracked:
                if t.track_id in self.book.tracks:
                    self.book.tracks[t.track_id].last_frame = index
            detected = False
        self._buffer.append(_Buffered(index, ts, image, tracked, detected, self._scene))
        self._expire(index)
        out = []
        while len(self._buffer) > self.lookahead:
            out.append(self._emit(self._buffer.popleft()))
        return out

    def finish(self) -> list[FrameResult]:
        """End every track and return the frames still held back."""
        for tid in list(self._active):
            self._close(tid)
        out = [self._emit(b) for b in self._buffer]
        self._buffer.clear()
        return out

    def pop_finished(self) -> list[TrackIdentity]:
        """Tracks that ended and whose frames have all been returned (their crops can be written)."""
        oldest = self._buffer[0].index if self._buffer else None
        ready = [t for t in self._done if oldest is None or t.last_frame < oldest]
        self._done = [t for t in self._done if t not in ready]
        return ready

    @property
    def tracks(self) -> list[TrackIdentity]:
        return sorted(self.book.tracks.values(), key=lambda t: t.track_id)

    # --- internals ----------------------------------------------------------------------------------
    def _end_scene(self) -> None:
        for tid in list(self._active):
            self._close(tid)
        self.tracker.new_scene()
        self._scene += 1
        self._since_detect = 10**9  # detect on the first frame of the new shot

    def _close(self, tid: int) -> None:
        self._active.discard(tid)
        t = self.book.tracks.get(tid)
        if t is not None and not t.closed:
            self.book.finish(t)
            t.samples.clear()
            t.window.clear()
            self._done.append(t)

    def _expire(self, index: int) -> None:
        for tid in [t for t in self._active if index - self.book.tracks[t].last_frame > self._lost_after]:
            self._close(tid)

    def _backfill(self, tracked: list[Tracked], image: np.ndarray) -> None:
        """A track is confirmed after ``min_track_frames`` detections: give it its earlier, unconfirmed faces.

        Frames in between without detection (``detect_every`` > 1) get boxes interpolated between the two.
        """
        for t in tracked:
            if t.track_id <= 0 or t.track_id in self.book.tracks:
                continue
            now = self._buffer[-1].index + 1 if self._buffer else 0
            track = self.book.get(t.track_id, now)
            ref, ref_index = t.box, now
            skipped: list[_Buffered] = []
            steps = self.config.min_track_frames - 1
            for b in reversed(self._buffer):
                if steps <= 0 or b.scene != self._scene:
                    break
                if not b.detected:
                    skipped.append(b)
                    continue
                steps -= 1
                cands = [(iou(ref, f.box), f) for f in b.faces if f.track_id == -1 and f.face is not None]
                if not cands:
                    break
                score, f = max(cands, key=lambda x: x[0])
                if score < 0.3:
                    break
                f.track_id = t.track_id
                for s in skipped:  # linear in time between this detection and the later one
                    w = (s.index - b.index) / max(ref_index - b.index, 1)
                    s.faces.append(Tracked(t.track_id, (f.box + (ref - f.box) * w).astype(np.float32), None))
                skipped = []
                track.first_frame = b.index
                track.detections += 1
                ref, ref_index = f.box, b.index
                if self.book.good(f.face):
                    self.book.offer_crop(track, b.image, f.face, b.index)

    def _recognize(self, index: int, image: np.ndarray, tracked: list[Tracked]) -> None:
        need: list[tuple[TrackIdentity, Face]] = []
        for t in tracked:
            if t.track_id <= 0 or t.face is None:
                continue
            track = self.book.get(t.track_id, index)
            self._active.add(t.track_id)
            track.last_frame = index
            track.detections += 1
            if self.book.good(t.face):
                self.book.offer_crop(track, image, t.face, index)
            if self.book.wants(track, t.face, index):
                need.append((track, t.face))
        if not need:
            return
        faces = [f for _, f in need]
        for f in faces:
            f.aligned = self.rec.aligner.align(image, f.landmarks)
        for f, e in zip(faces, self.embedder.embed(np.stack([f.aligned for f in faces]))):
            f.embedding = e
        self.stats["embeddings"] += len(faces)
        if self.analyzer is not None and self.attributes:
            try:
                self.analyzer.analyze(image, faces, self.attributes)
            except FaceRecError as exc:  # attributes are extras: never stop the video for them
                log.warning("attributes failed on frame %d: %s", index, exc.message)
        for track, face in need:
            self.book.add(track, face.embedding, index)
            if face.attributes:
                track.attribute_samples.append(dict(face.attributes))
                track.attributes = aggregate_attributes(track.attribute_samples)  # median / majority so far

    def _emit(self, b: _Buffered) -> FrameResult:
        faces = []
        for t in b.faces:
            if t.track_id <= 0:
                continue  # a detection the tracker never confirmed (one-frame flicker)
            track = self.book.tracks.get(t.track_id)
            if track is None:
                continue
            name = track.name if track.decided else UNKNOWN
            d: dict[str, Any] = {
                "track_id": t.track_id,
                "box": [round(float(v), 1) for v in t.box],
                "name": name,
                "similarity": round(float(track.similarity), 4),
                "state": track.state,
            }
            if track.attributes:
                d["attributes"] = track.attributes
            faces.append(d)
            self.stats["faces_out"] += 1
            if name != UNKNOWN:
                self.stats["named_faces_out"] += 1
        return FrameResult(b.index, b.time_s, b.image, faces)


# --- driving it from a file or a camera ------------------------------------------------------------------------
ProgressFn = Callable[[int, "int | None", float], None]
FrameFn = Callable[[FrameResult], None]


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _safe_dirname(name: str) -> str:
    bad = '<>:"\\|?*'
    cleaned = "".join("_" if (c in bad or ord(c) < 32) else c for c in name).strip().strip(".")
    return cleaned or "_"


class _Outputs:
    def __init__(self, out_dir: Path, info: VideoInfo, config: VideoConfig):
        self.dir = out_dir
        self.config = config
        out_dir.mkdir(parents=True, exist_ok=True)
        self.frames_path = out_dir / FRAMES_FILE
        self._jsonl = open(self.frames_path, "w", encoding="utf-8")
        self._since_flush = 0
        self.video: VideoWriter | None = None
        if config.write_video:
            self.video = VideoWriter(out_dir / VIDEO_FILE, info.fps, (info.width, info.height), config.video_codec)
        self.crops: list[str] = []

    def frame(self, r: FrameResult) -> None:
        self._jsonl.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        self._since_flush += 1
        if self._since_flush >= 30:
            self._jsonl.flush()
            self._since_flush = 0
        if self.video is not None:
            self.video.write(r.annotated())

    def crop(self, t: TrackIdentity) -> None:
        if t.best_crop is None or not self.config.save_crops:
            t.best_crop = None
            return
        if t.name == UNKNOWN and not self.config.save_unknown_crops:
            t.best_crop = None
            return
        folder = "unknown" if t.name == UNKNOWN else _safe_dirname(t.name)
        rel = f"{folder}/track_{t.track_id}.jpg"
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if cv2.imwrite(str(path), t.best_crop, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]):
            t.crop_path = rel
            self.crops.append(rel)
        t.best_crop = None

    def close(self) -> None:
        self._jsonl.close()
        if self.video is not None:
            self.video.close()


def summarize_tracks(tracks: list[TrackIdentity], frames_by_name: Counter) -> dict[str, Any]:
    people: dict[str, dict[str, int]] = {}
    for t in tracks:
        if t.name != UNKNOWN:
            p = people.setdefault(t.name, {"tracks": 0, "frames": 0})
            p["tracks"] += 1
    for name, n in frames_by_name.items():
        if name != UNKNOWN:
            people.setdefault(name, {"tracks": 0, "frames": 0})["frames"] = n
    return dict(sorted(people.items()))


def process_video(
    source: str | int | Path,
    out_dir: str | Path,
    recognizer: Any,
    gallery: str = "default",
    config: VideoConfig | None = None,
    *,
    progress: ProgressFn | None = None,
    on_frame: FrameFn | None = None,
    stop: threading.Event | None = None,
    show: bool = False,
    max_frames: int | None = None,
    attributes: Any = None,
    analyzer: Any = None,
    detector: Any = None,
) -> dict[str, Any]:
    """Run the pipeline on a file (path) or a camera (int); returns the summary (also ``summary.json``).

    ``stop`` ends the run cleanly (what was written is kept, ``stopped`` is
    true); so does Ctrl-C (``KeyboardInterrupt``) and ``q`` in the ``show``
    window.  ``max_frames`` fails the run with :class:`ImageTooLargeError`
    once more frames than that have been read.
    """
    config = config or VideoConfig()
    window = "facerec" if show else None
    out = Path(out_dir)
    stop = stop or threading.Event()
    cap, info = open_capture(source)
    if info.width <= 0 or info.height <= 0:
        ok, first = cap.read()
        if not ok:
            cap.release()
            from ..errors import BadImageError

            raise BadImageError(f"cannot read a frame from {source}")
        info = VideoInfo(first.shape[1], first.shape[0], info.fps, info.frames, info.live)
        if not info.live:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    if window is not None:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            cap.release()
            raise InvalidRequestError("cannot show the video: no display (DISPLAY is not set); run without --show")
        try:
            cv2.namedWindow(window, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            cap.release()
            raise InvalidRequestError(f"cannot open a window to show the video: {exc}") from None
    proc = VideoProcessor(
        recognizer,
        gallery,
        config,
        fps=info.fps,
        live=info.live,
        attributes=attributes,
        analyzer=analyzer,
        detector=detector,
    )
    outputs = _Outputs(out, info, config)
    frames_by_name: Counter = Counter()
    meter = RateMeter()
    t0 = time.perf_counter()
    n_read = 0
    stopped = False
    error: BaseException | None = None

    def emit(results: list[FrameResult]) -> None:
        nonlocal stopped
        for r in results:
            outputs.frame(r)
            for f in r.faces:
                frames_by_name[f["name"]] += 1
            if on_frame is not None:
                on_frame(r)
            if window is not None:
                cv2.imshow(window, r.annotated())
                if (cv2.waitKey(1) & 0xFF) in (ord("q"), 27):
                    stopped = True
                    stop.set()
        for t in proc.pop_finished():
            outputs.crop(t)

    reader = FrameReader(cap, stop=stop)
    try:
        for index, frame in reader:
            if frame.shape[1] != info.width or frame.shape[0] != info.height:
                frame = cv2.resize(frame, (info.width, info.height), interpolation=cv2.INTER_AREA)
            n_read += 1
            if max_frames is not None and n_read > max_frames:
                raise ImageTooLargeError(f"the video has more than {max_frames} frames (the limit)")
            ts = (time.perf_counter() - t0) if info.live else None
            emit(proc.push(index, frame, ts))
            rate = meter.tick()
            if progress is not None:
                progress(n_read, info.frames, rate)
            if stop.is_set():
                break
        stopped = stopped or stop.is_set()
    except KeyboardInterrupt:
        stopped = True
        stop.set()
    except BaseException as exc:
        error = exc
    finally:
        reader.close()
        try:
            emit(proc.finish())
            for t in proc.pop_finished():
                outputs.crop(t)
        finally:
            outputs.close()
            if window is not None:
                cv2.destroyWindow(window)
    elapsed = time.perf_counter() - t0
    tracks = proc.tracks
    _atomic_json(out / TRACKS_FILE, [t.to_dict() for t in tracks])
    summary = {
        "source": str(source),
        "video": info.to_dict(),
        "frames": n_read,
        "seconds": round(elapsed, 3),
        "fps": round(n_read / elapsed, 2) if elapsed > 0 else None,
        "tracks": len(tracks),
        "named_tracks": sum(1 for t in tracks if t.name != UNKNOWN),
        "people": summarize_tracks(tracks, frames_by_name),
        "name_switches": proc.book.switches,
        "scene_cuts": proc.stats["scene_cuts"],
        "embeddings": proc.stats["embeddings"],
        "stage_seconds": {k: round(v, 3) for k, v in proc.times.items()},
        "gallery": gallery,
        "gallery_people": proc.judge.n_people,
        "threshold": round(proc.judge.threshold, 4),
        "decision": config.decision,
        "stopped": stopped,
        "outputs": {
            "frames": FRAMES_FILE,
            "tracks": TRACKS_FILE,
            "video": VIDEO_FILE if config.write_video else None,
            "crops": outputs.crops,
        },
    }
    if error is not None:
        summary["error"] = getattr(error, "message", str(error))
    _atomic_json(out / SUMMARY_FILE, summary)
    if error is not None:
        raise error
    return summary
