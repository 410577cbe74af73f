"""Face tracking: Roboflow's ``trackers`` package (ByteTrack, SORT or OC-SORT) adapted to faces, plus shot cuts.

Track ids stay unique across shot cuts (a cut starts a fresh tracker: a face after a cut is never the continuation
of one before it); boxes are extrapolated on frames where the detector is skipped.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import ConfigError
from ..face import Face
from .config import VideoConfig

INSTALL_HINT = "pip install --no-deps trackers==2.6.1 supervision==0.31.2 && pip install scipy pydeprecate defusedxml"


def _tracker_classes() -> dict[str, type]:
    try:
        from trackers import ByteTrackTracker, OCSORTTracker, SORTTracker
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            f"the video pipeline needs the 'trackers' package ({exc}); install it with: {INSTALL_HINT}"
        ) from exc
    return {"bytetrack": ByteTrackTracker, "sort": SORTTracker, "ocsort": OCSORTTracker}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class SceneCutDetector:
    """A shot cut is a jump in the colour histogram of a small thumbnail (Bhattacharyya distance)."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._prev: np.ndarray | None = None

    def __call__(self, frame: np.ndarray) -> bool:
        if self.threshold <= 0:
            return False
        h, w = frame.shape[:2]
        step = max(1, min(h // 72, w // 128))  # subsample big frames first: a thumbnail is all this needs
        small = cv2.resize(np.ascontiguousarray(frame[::step, ::step]), (64, 36), interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256])
        cv2.normalize(hist, hist, 1.0, 0.0, cv2.NORM_L1)
        prev, self._prev = self._prev, hist
        if prev is None:
            return False
        return float(cv2.compareHist(hist, prev, cv2.HISTCMP_BHATTACHARYYA)) >= self.threshold


@dataclass
class Tracked:
    """One face of one frame: its track id (-1 until the tracker confirms it), box, and the detection."""

    track_id: int
    box: np.ndarray
    face: Face | None  # None when the box is extrapolated on a frame without detection


class FaceTracker:
    """Assigns stable, increasing track ids (from 1) to the faces of consecutive frames."""

    def __init__(self, config: VideoConfig, fps: float):
        self.config = config
        self.fps = fps
        self._cls = _tracker_classes()[config.tracker]
        self._next_id = 1
        self._map: dict[int, int] = {}
        self._last: dict[int, tuple[int, np.ndarray]] = {}  # track -> (frame, box) of its last detection
        self._prev: dict[int, tuple[int, np.ndarray]] = {}  # the detection before that
        self._tracker = self._build()

    def _build(self):
        c = self.config
        wanted = {
            "lost_track_buffer": c.lost_track_buffer,
            "frame_rate": self.fps / c.detect_every,
            "track_activation_threshold": c.track_activation_threshold,
            "minimum_consecutive_frames": c.min_track_frames,
            "minimum_iou_threshold": c.min_iou,
            "high_conf_det_threshold": c.high_conf_threshold,
        }
        params = inspect.signature(self._cls.__init__).parameters
        return self._cls(**{k: v for k, v in wanted.items() if k in params})

    def new_scene(self) -> None:
        """Forget every track (after a shot cut); ids keep increasing."""
        self._tracker = self._build()
        self._map.clear()
        self._last.clear()
        self._prev.clear()

    def _global(self, local: int) -> int:
        gid = self._map.get(local)
        if gid is None:
            gid = self._map[local] = self._next_id
            self._next_id += 1
        return gid

    def update(self, faces: list[Face], frame_index: int) -> list[Tracked]:
        """Track ids for ``faces`` (same order); -1 for detections not (yet) part of a confirmed track."""
        import supervision as sv

        n = len(faces)
        if n:
            xyxy = np.stack([f.box for f in faces]).astype(np.float32)
            conf = np.array([f.det_score for f in faces], np.float32)
        else:
            xyxy, conf = np.empty((0, 4), np.float32), np.empty((0,), np.float32)
        dets = sv.Detections(xyxy=xyxy, confidence=conf, data={"idx": np.arange(n)})
        out = self._tracker.update(dets)
        ids = [-1] * n
        if len(out):
            for idx, tid in zip(out.data["idx"], out.tracker_id):
                if int(tid) >= 0:
                    ids[int(idx)] = self._global(int(tid))
        result = []
        for face, gid in zip(faces, ids):
            if gid > 0:
                if gid in self._last:
                    self._prev[gid] = self._last[gid]
                self._last[gid] = (frame_index, face.box.copy())
            result.append(Tracked(gid, face.box, face))
        alive = {gid for gid in ids if gid > 0}
        for gid in [g for g in self._last if g not in alive]:
            self._last.pop(gid, None)
            self._prev.pop(gid, None)
        return result

    def extrapolate(self, frame_index: int, width: int, height: int) -> list[Tracked]:
        """Boxes of the tracks seen at the last detection, moved at their last velocity (detector skipped)."""
        out = []
        for gid, (f1, b1) in self._last.items():
            box = b1
            prev = self._prev.get(gid)
            if prev is not None and f1 > prev[0]:
                f0, b0 = prev
                box = b1 + (b1 - b0) * ((frame_index - f1) / (f1 - f0))
            box = np.clip(box, [0, 0, 0, 0], [width, height, width, height]).astype(np.float32)
            if box[2] - box[0] > 1 and box[3] - box[1] > 1:
                out.append(Tracked(gid, box, None))
        return out
