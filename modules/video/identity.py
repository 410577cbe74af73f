"""Who a track is: decided from its first good frames, re-checked now and then, never flipped lightly.

A track is **pending** until ``recognize_frames`` good faces (see :meth:`IdentityBook.good`) are embedded, then
**decided** by ``mean`` or ``vote`` (:meth:`Judge.decide`).  Faces too small are tracked but never recognized.  A
decision on at least ``recognize_frames`` samples may use the relaxed threshold (several frames agreeing on one
clear winner is more evidence than one photo).  **Re-checks** every ``recheck_every`` frames: an ``unknown`` track
may become known; a named one changes only after ``switch_after`` consecutive contradicting re-checks (to the
contradicting name if they all agree, else ``unknown``), so one bad frame never renames a track.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..face import UNKNOWN, Candidate, Face
from ..face import Identification as Decision  # a track's decision is an identification
from .config import VideoConfig


def face_pose(face: Face) -> float:
    """How far the face is turned: |nose x - eye midpoint x| / eye distance (0 frontal, >1 profile)."""
    lm = np.asarray(face.landmarks, np.float32)
    eye_mid = (lm[0] + lm[1]) / 2
    eye_dist = float(np.linalg.norm(lm[1] - lm[0]))
    return float(abs(lm[2][0] - eye_mid[0]) / max(eye_dist, 1.0))


def face_quality(face: Face) -> float:
    """Ranks a track's faces for its best crop: size x detector score, penalised when turned."""
    return face.size * float(face.det_score) * max(0.2, 1.0 - min(face_pose(face), 1.0) * 0.8)


class Judge:
    """Turns embeddings into decisions against one gallery with the track rules.

    Searches go through the recognizer (``identify_embeddings``); the open-set threshold is the one the
    recognizer applied for the gallery's current size, ``threshold`` the latest seen.
    """

    #: candidates per search: the runner-up for the relaxed rule, the current name for re-checks
    TOP_K = 5

    def __init__(self, recognizer: Any, gallery: str, config: VideoConfig):
        self.rec = recognizer
        self.gallery_name = gallery
        self.config = config
        self.threshold = float("nan")

    def search(self, embeddings: np.ndarray) -> list[list[Candidate]]:
        idents = self.rec.identify_embeddings(np.atleast_2d(embeddings), self.gallery_name, self.TOP_K)
        if idents:
            self.threshold = float(idents[0].threshold)
        return [i.candidates for i in idents]

    def facts(self) -> dict[str, Any]:
        """The gallery's size and the open-set threshold for it, for summaries."""
        n, threshold = self.rec.open_set_threshold(self.gallery_name)
        return {"gallery_people": n, "threshold": round(threshold, 4)}

    def rule(self, cands: list[Candidate], relaxed: bool = False) -> Decision:
        """The open-set decision; ``relaxed`` (aggregated evidence only) allows the ratio-test margin."""
        if not cands:
            return Decision(UNKNOWN, 0.0, [], self.threshold)
        best = cands[0]
        ok = best.similarity >= self.threshold
        if not ok and relaxed and len(cands) > 1 and self.config.relaxed_delta > 0:
            ok = (
                best.similarity >= self.threshold - self.config.relaxed_delta
                and best.similarity - cands[1].similarity >= self.config.relaxed_margin
            )
        return Decision(best.person if ok else UNKNOWN, float(best.similarity), cands, self.threshold)

    def decide(self, embeddings: list[np.ndarray], method: str) -> Decision:
        """A track's decision; the relaxed threshold needs at least ``recognize_frames`` samples."""
        embs = np.stack(embeddings).astype(np.float32)
        relaxed = len(embs) >= self.config.recognize_frames
        if method == "mean" or len(embs) == 1:
            mean = embs.mean(axis=0)
            mean /= max(float(np.linalg.norm(mean)), 1e-12)
            return self.rule(self.search(mean[None])[0], relaxed)
        decisions = [self.rule(c, relaxed) for c in self.search(embs)]
        votes = Counter(d.name for d in decisions if d.known)
        if votes:
            (winner, count), *rest = votes.most_common()
            tie = bool(rest) and rest[0][1] == count
            if not tie and count >= self.config.vote_min_share * len(decisions):
                sims = [d.similarity for d in decisions if d.name == winner]
                cands = next(d.candidates for d in decisions if d.name == winner)
                return Decision(winner, float(np.mean(sims)), cands, self.threshold)
        best = max(decisions, key=lambda d: d.similarity)
        return Decision(UNKNOWN, best.similarity, best.candidates, self.threshold)

    def similarity_to(self, cands: list[Candidate], name: str) -> float:
        below = float(cands[-1].similarity) if cands else -1.0  # not listed: below every listed candidate
        return next((float(c.similarity) for c in cands if c.person == name), below)


@dataclass(eq=False)  # identity, not field-wise equality (it holds arrays)
class TrackIdentity:
    track_id: int
    first_frame: int
    last_frame: int
    name: str = UNKNOWN
    similarity: float = 0.0
    decided: bool = False
    samples: list[np.ndarray] = field(default_factory=list)
    window: deque = field(default_factory=deque)
    last_sample_frame: int = -(10**9)
    contradictions: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    detections: int = 0
    recognized_samples: int = 0
    best_quality: float = -1.0
    best_crop: np.ndarray | None = None
    best_frame: int | None = None
    best_box: list[float] | None = None
    attribute_samples: list[dict[str, Any]] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    crop_path: str | None = None
    closed: bool = False

    @property
    def state(self) -> str:
        return "decided" if self.decided else "pending"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "track_id": self.track_id, "name": self.name, "similarity": round(float(self.similarity), 4),
            "first_frame": self.first_frame, "last_frame": self.last_frame, "frames": self.detections,
            "decided": self.decided, "samples": self.recognized_samples, "best_crop": self.crop_path,
            "best_frame": self.best_frame, "best_box": self.best_box, "names": self.history,
        }
        if self.attributes:
            out["attributes"] = self.attributes
        return out


class IdentityBook:
    """Every track's identity state for one video, and the rules that change it."""

    def __init__(self, judge: Judge, config: VideoConfig):
        self.judge = judge
        self.config = config
        self.tracks: dict[int, TrackIdentity] = {}
        self.switches = 0  # named -> other name (for tests and the summary)

    def get(self, track_id: int, frame: int) -> TrackIdentity:
        t = self.tracks.get(track_id)
        if t is None:
            t = self.tracks[track_id] = TrackIdentity(track_id, frame, frame)
            t.window = deque(maxlen=self.config.recheck_window)
        return t

    # --- which faces get embedded ---------------------------------------------------------------
    def good(self, face: Face) -> bool:
        c = self.config
        if face.size < c.min_face_size or face.det_score < c.min_det_score:
            return False
        return c.max_pose is None or face_pose(face) <= c.max_pose

    def wants(self, track: TrackIdentity, face: Face, frame: int) -> bool:
        return self.good(face) and (not track.decided or frame - track.last_sample_frame >= self.config.recheck_every)

    # --- evidence ------------------------------------------------------------------------------------
    def add(self, track: TrackIdentity, embedding: np.ndarray, frame: int) -> None:
        track.last_sample_frame = frame
        track.recognized_samples += 1
        track.window.append(embedding)
        if not track.decided:
            track.samples.append(embedding)
            if len(track.samples) >= self.config.recognize_frames:
                self._decide(track, frame, "first frames")
            return
        self._recheck(track, embedding, frame)

    def _set(self, track: TrackIdentity, name: str, similarity: float, frame: int, reason: str) -> None:
        if name != track.name or not track.history:
            if track.name != UNKNOWN and name != UNKNOWN and name != track.name:
                self.switches += 1
            track.history.append(
                {"frame": frame, "name": name, "similarity": round(float(similarity), 4), "reason": reason}
            )
        track.name = name
        track.similarity = similarity

    def _decide(self, track: TrackIdentity, frame: int, reason: str) -> None:
        d = self.judge.decide(track.samples, self.config.decision)
        track.decided = True
        track.contradictions.clear()
        self._set(track, d.name, d.similarity, frame, reason)

    def _recheck(self, track: TrackIdentity, embedding: np.ndarray, frame: int) -> None:
        c = self.config
        if track.name == UNKNOWN:
            if len(track.window) >= min(c.recognize_frames, c.recheck_window):
                d = self.judge.decide(list(track.window), c.decision)
                if d.known:
                    self._set(track, d.name, d.similarity, frame, "re-check")
                else:
                    track.similarity = d.similarity
            return
        cands = self.judge.search(embedding[None])[0]
        single = self.judge.rule(cands)
        current = self.judge.similarity_to(cands, track.name)
        other = single.known and single.name != track.name and single.similarity - current >= c.switch_margin
        dropped = current < self.judge.threshold - c.drop_delta
        if not (other or dropped):
            track.contradictions.clear()
            track.similarity = 0.7 * track.similarity + 0.3 * current
            return
        track.contradictions.append(single.name if other else UNKNOWN)
        if len(track.contradictions) < c.switch_after:
            return
        names = set(track.contradictions)
        new = names.pop() if len(names) == 1 else UNKNOWN
        sim = single.similarity if new != UNKNOWN else current
        track.contradictions.clear()
        self._set(track, new, sim, frame, f"{c.switch_after} re-checks disagreed")

    def finish(self, track: TrackIdentity) -> None:
        """The track ended: decide on what it has (unknown below ``min_decision_frames`` samples)."""
        if track.closed:
            return
        track.closed = True
        if not track.decided:
            if len(track.samples) >= self.config.min_decision_frames:
                self._decide(track, track.last_frame, "track ended")
            else:
                track.decided = True
                self._set(track, UNKNOWN, track.similarity, track.last_frame, "too few good frames")
        if track.attribute_samples:
            track.attributes = aggregate_attributes(track.attribute_samples)

    # --- best crop ------------------------------------------------------------------------------------
    def offer_crop(self, track: TrackIdentity, image: np.ndarray, face: Face, frame: int) -> None:
        q = face_quality(face)
        if q <= track.best_quality:
            return
        m = self.config.crop_margin
        x1, y1, x2, y2 = (float(v) for v in face.box)
        w, h = x2 - x1, y2 - y1
        H, W = image.shape[:2]
        a, b = int(max(0, x1 - m * w)), int(max(0, y1 - m * h))
        c, d = int(min(W, x2 + m * w)), int(min(H, y2 + m * h))
        if c - a < 2 or d - b < 2:
            return
        track.best_quality = q
        track.best_crop = image[b:d, a:c].copy()
        track.best_frame = frame
        track.best_box = [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)]


def aggregate_attributes(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-track attributes: the median of numbers, the most common of labels, recursively in dicts."""
    out: dict[str, Any] = {}
    for k in dict.fromkeys(k for s in samples for k in s):
        values = [s[k] for s in samples if k in s and s[k] is not None]
        if not values:
            continue
        if all(isinstance(v, bool) for v in values) or all(isinstance(v, str) for v in values):
            out[k] = Counter(values).most_common(1)[0][0]
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            med = float(np.median(values))
            out[k] = round(med, 2) if any(isinstance(v, float) for v in values) else int(round(med))
        elif all(isinstance(v, dict) for v in values):
            labelled = [v for v in values if "value" in v]
            if len(labelled) == len(values):  # {"value": label, ...}: the majority label, its own samples' figures
                winner = Counter(v["value"] for v in values).most_common(1)[0][0]
                out[k] = aggregate_attributes([v for v in values if v["value"] == winner])
            else:
                out[k] = aggregate_attributes(values)
        else:
            out[k] = values[-1]
    return out
