"""The frame processor: detect, track and name the faces of consecutive frames; results go to :class:`Hooks`.

Frames are held back ``lookahead`` frames (``VideoConfig.lookahead_for``) so that a track's decision also labels
the frames it was decided on and the tracker's confirmation frames.  Faces are embedded and identified by the
recognizer (``embed_faces``, ``identify_embeddings`` through :class:`~modules.video.identity.Judge`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FaceRecError
from ..face import UNKNOWN, Face
from .annotate import draw_faces
from .config import VideoConfig
from .identity import IdentityBook, Judge, TrackIdentity, aggregate_attributes
from .tracking import FaceTracker, SceneCutDetector, Tracked, iou

log = logging.getLogger("facerec.video")


class Hooks:
    """Callbacks of a :class:`VideoProcessor` (after Frigate's real-time processors); override what you need."""

    def on_sample(self, track: TrackIdentity, embedding: np.ndarray, frame: int) -> None:
        """A face of ``track`` was embedded (identity evidence)."""

    def on_frame(self, result: FrameResult) -> None:
        """A frame's result is final."""

    def on_cut(self, frame: int) -> None:
        """A shot cut at ``frame`` ended every track."""

    def on_track_end(self, track: TrackIdentity) -> None:
        """A track ended and every frame it is in has been emitted (its name and best crop are final)."""


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


def build_detector(recognizer: Any, config: VideoConfig) -> Any:
    """The recognizer's detector, or a YuNet with the video's ``detect_max_side``."""
    det = recognizer.detector
    cfg = getattr(det, "config", None)
    if config.detect_max_side is None or cfg is None or getattr(cfg, "max_side", None) == config.detect_max_side:
        return det
    from ..detection import YuNetDetector

    return YuNetDetector(cfg.model_copy(update={"max_side": config.detect_max_side}))


class VideoProcessor:
    """Frame-by-frame core: ``push`` frames in order, then ``finish``; results go to the hooks."""

    def __init__(self, recognizer: Any, gallery: str = "default", config: VideoConfig | None = None, *,
                 fps: float = 30.0, live: bool = False, attributes: Any = None, analyzer: Any = None,
                 detector: Any = None, hooks: Iterable[Hooks] = ()):
        self.rec = recognizer
        self.config = config or VideoConfig()
        self.fps = fps
        self.hooks = list(hooks)
        self.detector = detector or build_detector(recognizer, self.config)
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
    def push(self, index: int, image: np.ndarray, time_s: float | None = None) -> None:
        c = self.config
        ts = index / self.fps if time_s is None else time_s
        self.stats["frames"] += 1
        if self.cuts(image):
            self.stats["scene_cuts"] += 1
            for h in self.hooks:
                h.on_cut(index)
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
        while len(self._buffer) > self.lookahead:
            self._emit(self._buffer.popleft())
        self._end_tracks()

    def finish(self) -> None:
        """End every track and emit the frames still held back."""
        for tid in list(self._active):
            self._close(tid)
        while self._buffer:
            self._emit(self._buffer.popleft())
        self._end_tracks()

    @property
    def tracks(self) -> list[TrackIdentity]:
        return sorted(self.book.tracks.values(), key=lambda t: t.track_id)

    # --- internals ----------------------------------------------------------------------------------
    def _end_tracks(self) -> None:
        """``on_track_end`` for ended tracks whose frames have all been emitted."""
        oldest = self._buffer[0].index if self._buffer else None
        ready = [t for t in self._done if oldest is None or t.last_frame < oldest]
        if ready:
            self._done = [t for t in self._done if t not in ready]
            for t in ready:
                for h in self.hooks:
                    h.on_track_end(t)

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
        self.rec.embed_faces(image, faces, query=True, flip=self.config.embed_flip)
        self.stats["embeddings"] += len(faces)
        if self.analyzer is not None and self.attributes:
            try:
                self.analyzer.analyze(image, faces, self.attributes)
            except FaceRecError as exc:  # attributes are extras: never stop the video for them
                log.warning("attributes failed on frame %d: %s", index, exc.message)
        for track, face in need:
            self.book.add(track, face.embedding, index)
            for h in self.hooks:
                h.on_sample(track, face.embedding, index)
            if face.attributes:
                track.attribute_samples.append(dict(face.attributes))
                track.attributes = aggregate_attributes(track.attribute_samples)  # median / majority so far

    def _emit(self, b: _Buffered) -> None:
        faces = []
        for t in b.faces:
            if t.track_id <= 0:
                continue  # a detection the tracker never confirmed (one-frame flicker)
            track = self.book.tracks.get(t.track_id)
            if track is None:
                continue
            name = track.name if track.decided else UNKNOWN
            d: dict[str, Any] = {
                "track_id": t.track_id, "box": [round(float(v), 1) for v in t.box], "name": name,
                "similarity": round(float(track.similarity), 4), "state": track.state,
                "detected": t.face is not None,  # not extrapolated (internal: not in frames.jsonl)
            }
            if track.attributes:
                d["attributes"] = track.attributes
            faces.append(d)
            self.stats["faces_out"] += 1
            if name != UNKNOWN:
                self.stats["named_faces_out"] += 1
        result = FrameResult(b.index, b.time_s, b.image, faces)
        for h in self.hooks:
            h.on_frame(result)
