"""Long videos in chunks: plan the frame ranges, then join the ranges' analyses into one result (docs/queue.md).

The join matches tracks across borders on the overlap (a matched track keeps its earlier id; new tracks take the
next free ids, so ids stay unique and increasing) and merges identity evidence: named pieces that agree name the
whole track (unknown pieces take it, as a single pass would have labelled them); otherwise the track is decided
again on all pieces' embeddings (so the relaxed threshold may apply), a conflict resolving only to one of the
pieces' names, else ``unknown``.  Best crop: the best of all pieces; name history: all pieces', plus a
``joined across chunks`` entry where the join renamed a piece.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..face import UNKNOWN
from ..video.config import VideoConfig
from ..video.identity import Judge
from ..video.process import crop_file, people_summary
from ..video.ranges import decode_embedding
from ..video.tracking import iou

JOIN_IOU = 0.5


@dataclass(frozen=True)
class ChunkPolicy:
    """When and how a video is split.

    ``chunk_seconds``: length of a range (0 = never split); ``min_seconds``: videos
    shorter than this stay whole (default ``2 * chunk_seconds``); ``overlap_seconds``:
    warm-up before each range, also what tracks are joined on.
    """

    chunk_seconds: float = 60.0
    min_seconds: float | None = None
    overlap_seconds: float = 1.0

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or not math.isfinite(v)):
                raise ConfigError(f"chunk setting {k} must be a non-negative number, got {v!r}")

    @classmethod
    def from_settings(cls, settings: Any) -> ChunkPolicy:
        """From the settings tree (``FACEREC_VIDEO_CHUNK_*``; ``--chunk-seconds`` overrides the length)."""
        return cls(settings.chunk_seconds, settings.chunks.min_seconds, settings.chunks.overlap_seconds)

    def overlap_frames(self, fps: float) -> int:
        return max(0, int(round(self.overlap_seconds * fps)))

    def plan(self, frames: int | None, fps: float, parallelism: int = 2) -> list[tuple[int, int | None]]:
        """Frame ranges ``[start, end)``; the last one's end is None (read to the end of the file).

        One range when the length is unknown, the video is short, or nothing runs in parallel.
        """
        if not frames or frames <= 0 or fps <= 0 or self.chunk_seconds <= 0 or parallelism <= 1:
            return [(0, None)]
        seconds = frames / fps
        min_seconds = self.min_seconds if self.min_seconds is not None else 2 * self.chunk_seconds
        if seconds < max(min_seconds, self.chunk_seconds):
            return [(0, None)]
        n = max(1, int(round(seconds / self.chunk_seconds)))
        ov = self.overlap_frames(fps)
        n = min(n, max(1, frames // max(2 * ov, 1)))  # a range is never shorter than two overlaps
        bounds = [i * frames // n for i in range(n)]
        return [(b, bounds[i + 1] if i + 1 < n else None) for i, b in enumerate(bounds)]


# --- joining -----------------------------------------------------------------------------------------------
def match_overlap(before: Iterable[dict[str, Any]], after: Iterable[dict[str, Any]],
                  min_iou: float = JOIN_IOU) -> dict[int, int]:
    """Track ids of ``after`` (warm-up frames of range k) -> ids of ``before`` (range k-1's frames), one to one.

    Faces of the same frame with IoU >= ``min_iou`` vote for their pair; pairs are
    taken by votes, then mean IoU, each id at most once.
    """
    by_frame: dict[int, list[dict[str, Any]]] = {f["frame"]: f["faces"] for f in before}
    votes: Counter = Counter()
    ious: Counter = Counter()
    for f in after:
        prev = by_frame.get(f["frame"])
        if not prev or not f["faces"]:
            continue
        pairs = sorted(((iou(np.float32(a["box"]), np.float32(b["box"])), a["track_id"], b["track_id"])
                        for a in prev for b in f["faces"]), reverse=True)
        used_a, used_b = set(), set()
        for score, a, b in pairs:
            if score < min_iou:
                break
            if a in used_a or b in used_b:
                continue
            used_a.add(a)
            used_b.add(b)
            votes[(b, a)] += 1
            ious[(b, a)] += score
    out: dict[int, int] = {}
    taken: set[int] = set()
    for (b, a), n in sorted(votes.items(), key=lambda kv: (-kv[1], -ious[kv[0]], kv[0])):
        if b in out or a in taken:
            continue
        out[b] = a
        taken.add(a)
    return out


DecideFn = Callable[[list[np.ndarray]], tuple[str, float]]


def _merge_identity(pieces: list[dict[str, Any]], decide: DecideFn | None) -> tuple[str, float, bool]:
    """(name, similarity, re-decided) of a track made of ``pieces`` (see the module docstring)."""
    if len(pieces) == 1:
        return pieces[0]["name"], float(pieces[0]["similarity"]), False
    known = [p for p in pieces if p["name"] != UNKNOWN]
    names = {p["name"] for p in known}
    if len(names) == 1:
        w = [max(1, int(p.get("samples") or 0)) for p in known]
        sim = float(np.average([p["similarity"] for p in known], weights=w))
        return known[0]["name"], sim, False
    evidence = [decode_embedding(e) for p in pieces for e in p.get("evidence", [])]
    best = max(pieces, key=lambda p: p["similarity"])
    if not evidence or decide is None:
        return (UNKNOWN if names else best["name"]), float(best["similarity"]), False
    name, sim = decide(evidence)
    if names and name not in names:
        name = UNKNOWN
    return name, float(sim), True


def join_chunks(results: list[dict[str, Any]], decide: DecideFn | None = None, *,
                save_unknown_crops: bool = False) -> dict[str, Any]:
    """One video's result from its ranges' results (in order): frames, tracks, crops to copy, counters.

    ``decide(embeddings) -> (name, similarity)`` re-decides a joined track whose
    pieces disagree or were never named (the recognizer's track rule); without it
    such tracks stay as the earliest named piece had them, or ``unknown``.
    Returns ``{"frames", "tracks", "crops": [(chunk index, file, destination)], "summary"}``.
    """
    final: dict[tuple[int, int], int] = {}  # (range, its track id) -> id in the video
    groups: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    joins = 0
    for k, res in enumerate(results):
        match = match_overlap(results[k - 1]["frames"], res["overlap"]) if k > 0 else {}
        for t in sorted(res["tracks"], key=lambda t: (t["first_frame"], t["track_id"])):
            fid = final.get((k - 1, match.get(t["track_id"])))  # the earlier range's track this one continues
            joins += fid is not None
            final[(k, t["track_id"])] = fid = fid or len(groups) + 1  # or the next free id
            groups.setdefault(fid, []).append((k, t))

    identity = {fid: _merge_identity([t for _, t in pieces], decide) for fid, pieces in groups.items()}
    renamed = {(k, t["track_id"]) for fid, pieces in groups.items() for k, t in pieces
               if t["name"] != identity[fid][0]}

    frames: list[dict[str, Any]] = []
    seen: dict[int, list[int]] = {}
    by_name: Counter = Counter()
    for k, res in enumerate(results):
        for f in res["frames"]:
            faces = []
            for face in f["faces"]:
                key = (k, face["track_id"])
                fid = final.get(key)
                if fid is None:
                    continue
                face = dict(face, track_id=fid)
                if key in renamed:
                    face["name"], face["similarity"] = identity[fid][0], round(identity[fid][1], 4)
                faces.append(face)
                span = seen.setdefault(fid, [f["frame"], f["frame"]])
                span[1] = f["frame"]
                by_name[face["name"]] += 1
            frames.append({**f, "faces": faces})

    tracks: list[dict[str, Any]] = []
    crops: list[tuple[int, str, str]] = []
    for fid in sorted(groups):
        if fid not in seen:
            continue  # only in warm-up frames: another range's output holds those faces
        pieces = groups[fid]
        name, sim, redecided = identity[fid]
        history: list[dict[str, Any]] = []
        for k, t in pieces:
            history.extend(t.get("names") or [])
            if (k, t["track_id"]) in renamed:
                reason = "joined across chunks" + (" (decided on all pieces)" if redecided else "")
                history.append({"frame": max(results[k]["start"], t["first_frame"]), "name": name,
                                "similarity": round(sim, 4), "reason": reason})
        history.sort(key=lambda h: h["frame"])
        compact: list[dict[str, Any]] = []
        for h in history:
            if not compact or compact[-1]["name"] != h["name"]:
                compact.append(h)
        best_k, best = max(pieces, key=lambda kt: (kt[1].get("crop") is not None, kt[1].get("quality") or -1.0))
        crop_rel = None
        if best.get("crop") and (name != UNKNOWN or save_unknown_crops):
            crop_rel = crop_file(name, fid)
            crops.append((best_k, best["crop"], crop_rel))
        d: dict[str, Any] = {
            "track_id": fid, "name": name, "similarity": round(sim, 4), "first_frame": seen[fid][0],
            "last_frame": seen[fid][1], "frames": sum(int(t.get("detections_core") or 0) for _, t in pieces),
            "decided": True, "samples": sum(int(t.get("samples") or 0) for _, t in pieces), "best_crop": crop_rel,
            "best_frame": best.get("best_frame"), "best_box": best.get("best_box"), "names": compact,
        }
        attrs = next((t["attributes"] for _, t in pieces if t.get("attributes")), None)
        if attrs:
            d["attributes"] = attrs
        if len(pieces) > 1:
            d["chunks"] = sorted({k for k, _ in pieces})
        tracks.append(d)
    summary = {
        "frames": len(frames), "tracks": len(tracks), "named_tracks": sum(1 for t in tracks if t["name"] != UNKNOWN),
        "people": people_summary(tracks, by_name), "name_switches": sum(int(r.get("switches") or 0) for r in results),
        "chunks": len(results), "joined_tracks": joins,
    }
    return {"frames": frames, "tracks": tracks, "crops": crops, "summary": summary}


def judge_decider(recognizer: Any, gallery: str, config: VideoConfig) -> DecideFn:
    """The track rule of :class:`~modules.video.identity.Judge` as a ``decide`` for :func:`join_chunks`."""
    judge = Judge(recognizer, gallery, config)

    def decide(embeddings: list[np.ndarray]) -> tuple[str, float]:
        d = judge.decide(embeddings, config.decision)
        return d.name, d.similarity

    return decide


