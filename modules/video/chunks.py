"""Long videos in chunks: split into frame ranges, analyse them in parallel, join the tracks, render, concatenate.

A video longer than ``ChunkPolicy.min_seconds`` is cut into ranges of about
``chunk_seconds``.  Each range is analysed on its own (any worker, in any
order) by :func:`analyze_range`: the detector, tracker and track identity of
:class:`~modules.video.pipeline.VideoProcessor`, started ``overlap`` frames
*before* the range so that its tracks are warm (confirmed, usually already
named) when the range begins.  Those warm-up frames are not output; they are
what the join matches on.

:func:`join_chunks` then makes one result of them:

* **tracks across borders**: in the overlap, the frames of range *k-1*
  (its own output) and the warm-up frames of range *k* show the same faces;
  boxes with IoU >= 0.5 in the same frame vote for "same track", and the
  pairs with most votes are matched one to one.  A matched track keeps the
  id it had in the earlier range; tracks that start in range *k* get the next
  free ids, so ids stay unique and increasing over the whole video;
* **identity evidence**: the pieces of a joined track that were named all
  agree -> that name for the whole track (pieces that were still unknown take
  it, as a single pass would have labelled them).  No name, or conflicting
  names -> the track is decided again on the embeddings of all its pieces
  together (more samples, so the relaxed threshold of
  :mod:`~modules.video.identity` may apply); a conflict resolves only to one
  of the names the pieces had, otherwise ``unknown``;
* best crop: the best-quality crop of all pieces; name history: all pieces',
  plus a ``joined across chunks`` entry when the join renamed a piece.

The annotated video is rendered per range after the join
(:func:`render_range`, in parallel, with the final names and ids) and the
segments are concatenated without re-encoding by :func:`concat_videos`
(PyAV remux; OpenCV re-encode when PyAV is not installed).
"""

from __future__ import annotations

import base64
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError
from ..face import UNKNOWN
from .annotate import draw_faces
from .config import VideoConfig
from .io import FrameReader, RateMeter, VideoWriter, open_capture
from .tracking import iou

log = logging.getLogger("facerec.video.chunks")

MAX_EVIDENCE = 16  # embeddings kept per track piece for the join
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
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> ChunkPolicy:
        """``FACEREC_VIDEO_CHUNK_SECONDS``, ``FACEREC_VIDEO_CHUNK_MIN_SECONDS``, ``FACEREC_VIDEO_CHUNK_OVERLAP_SECONDS``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, key in (
            ("chunk_seconds", "FACEREC_VIDEO_CHUNK_SECONDS"),
            ("min_seconds", "FACEREC_VIDEO_CHUNK_MIN_SECONDS"),
            ("overlap_seconds", "FACEREC_VIDEO_CHUNK_OVERLAP_SECONDS"),
        ):
            if env.get(key, "").strip():
                try:
                    values[name] = float(env[key])
                except ValueError:
                    raise ConfigError(f"{key} must be a number of seconds, got {env[key]!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

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


# --- evidence encoding -----------------------------------------------------------------------------------
def encode_embedding(e: np.ndarray) -> str:
    return base64.b64encode(np.asarray(e, np.float32).tobytes()).decode("ascii")


def decode_embedding(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), np.float32)


# --- analysing one range ---------------------------------------------------------------------------------
ProgressFn = Callable[[int, float], None]


def analyze_range(
    source: str | Path,
    start: int,
    end: int | None,
    overlap: int,
    recognizer: Any,
    gallery: str,
    config: VideoConfig,
    *,
    crops_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    on_frame: Callable[[Any], None] | None = None,
    stop: threading.Event | None = None,
    max_frames: int | None = None,
) -> dict[str, Any]:
    """Analyse frames ``[start, end)`` (``end`` None: to the end) after ``overlap`` warm-up frames.

    Returns a JSON-able result: the range's frames (``frames.jsonl`` shape), the
    warm-up frames (``overlap``), the track pieces with their identity evidence
    (a few embeddings), quality and crop file, and counters.  ``progress(done, fps)``
    is called after every frame of the range; ``stop`` ends early (``stopped``).
    """
    from ..errors import ImageTooLargeError
    from .pipeline import VideoProcessor

    stop = stop or threading.Event()
    warm = max(0, start - max(0, overlap))
    cap, info = open_capture(source)
    if warm > 0:
        cap.set(cv2.CAP_PROP_POS_FRAMES, warm)
    proc = VideoProcessor(recognizer, gallery, config, fps=info.fps, live=False)

    evidence: dict[int, list[np.ndarray]] = {}
    core_detections: Counter = Counter()
    cuts = {"n": 0}
    current = {"index": warm}
    orig_add, orig_emit, orig_cuts = proc.book.add, proc._emit, proc.cuts

    def add(track: Any, embedding: np.ndarray, frame: int) -> None:
        ev = evidence.setdefault(track.track_id, [])
        if len(ev) < MAX_EVIDENCE:
            ev.append(np.array(embedding, np.float32, copy=True))
        orig_add(track, embedding, frame)

    def emit(b: Any) -> Any:
        if b.index >= start:
            for t in b.faces:
                if t.track_id > 0 and t.face is not None:
                    core_detections[t.track_id] += 1
        return orig_emit(b)

    def cut(image: np.ndarray) -> bool:
        r = orig_cuts(image)
        if r and current["index"] >= start:
            cuts["n"] += 1
        return r

    proc.book.add, proc._emit, proc.cuts = add, emit, cut  # instance attributes: only this run
    frames: list[dict[str, Any]] = []
    warmup: list[dict[str, Any]] = []
    crops: dict[int, tuple[str, float]] = {}
    crops_path = Path(crops_dir) if crops_dir is not None else None

    def save_crops() -> None:
        for t in proc.pop_finished():
            if t.best_crop is not None and crops_path is not None and config.save_crops:
                crops_path.mkdir(parents=True, exist_ok=True)
                name = f"t{t.track_id}.jpg"
                if cv2.imwrite(str(crops_path / name), t.best_crop, [cv2.IMWRITE_JPEG_QUALITY, config.jpeg_quality]):
                    crops[t.track_id] = (name, float(t.best_quality))
            t.best_crop = None

    def take(results: list[Any]) -> None:
        for r in results:
            (frames if r.index >= start else warmup).append(r.to_dict())
            if on_frame is not None and r.index >= start:
                on_frame(r)
        save_crops()

    meter = RateMeter()
    t0 = time.perf_counter()
    n_core = 0
    stopped = False
    reader = FrameReader(cap, stop=stop)
    index = warm
    try:
        for i, frame in reader:
            index = warm + i
            if end is not None and index >= end:
                break
            if frame.shape[1] != info.width or frame.shape[0] != info.height:
                frame = cv2.resize(frame, (info.width, info.height), interpolation=cv2.INTER_AREA)
            current["index"] = index
            take(proc.push(index, frame))
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
    take(proc.finish())
    save_crops()
    tracks = []
    for t in proc.tracks:
        d = t.to_dict()
        d["detections_core"] = int(core_detections.get(t.track_id, 0))
        d["evidence"] = [encode_embedding(e) for e in evidence.get(t.track_id, [])]
        crop = crops.get(t.track_id)
        d["crop"], d["quality"] = (crop[0], crop[1]) if crop else (None, float(t.best_quality))
        d.pop("best_crop", None)
        tracks.append(d)
    elapsed = time.perf_counter() - t0
    return {
        "start": start,
        "end": start + n_core,
        "warm": warm,
        "frames": frames,
        "overlap": warmup,
        "tracks": tracks,
        "switches": proc.book.switches,
        "scene_cuts": cuts["n"],
        "embeddings": int(proc.stats["embeddings"]),
        "seconds": round(elapsed, 3),
        "stage_seconds": {k: round(v, 3) for k, v in proc.times.items()},
        "stopped": stopped,
        "video": info.to_dict(),
        "gallery_people": proc.judge.n_people,
        "threshold": round(proc.judge.threshold, 4),
    }


# --- joining -----------------------------------------------------------------------------------------------
def match_overlap(
    before: Iterable[dict[str, Any]], after: Iterable[dict[str, Any]], min_iou: float = JOIN_IOU
) -> dict[int, int]:
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
        pairs = sorted(
            (
                (iou(np.asarray(a["box"], np.float32), np.asarray(b["box"], np.float32)), a["track_id"], b["track_id"])
                for a in prev
                for b in f["faces"]
            ),
            reverse=True,
        )
        used_a: set[int] = set()
        used_b: set[int] = set()
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


def _safe_dirname(name: str) -> str:
    bad = '<>:"\\|?*'
    cleaned = "".join("_" if (c in bad or ord(c) < 32) else c for c in name).strip().strip(".")
    return cleaned or "_"


def join_chunks(
    results: list[dict[str, Any]],
    decide: DecideFn | None = None,
    *,
    save_unknown_crops: bool = False,
) -> dict[str, Any]:
    """One video's result from its ranges' results (in order): frames, tracks, crops to copy, counters.

    ``decide(embeddings) -> (name, similarity)`` re-decides a joined track whose
    pieces disagree or were never named (the recognizer's track rule); without it
    such tracks stay as the earliest named piece had them, or ``unknown``.
    Returns ``{"frames", "tracks", "crops": [(chunk index, file, destination)], "joins", ...}``.
    """
    final: dict[tuple[int, int], int] = {}
    next_id = 1
    groups: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    joins = 0
    for k, res in enumerate(results):
        match = match_overlap(results[k - 1]["frames"], res["overlap"]) if k > 0 else {}
        for t in sorted(res["tracks"], key=lambda t: (t["first_frame"], t["track_id"])):
            tid = t["track_id"]
            prev = match.get(tid)
            if prev is not None and (k - 1, prev) in final:
                fid = final[(k - 1, prev)]
                joins += 1
            else:
                fid = next_id
                next_id += 1
            final[(k, tid)] = fid
            groups.setdefault(fid, []).append((k, t))

    identity: dict[int, tuple[str, float, bool]] = {
        fid: _merge_identity([t for _, t in pieces], decide) for fid, pieces in groups.items()
    }
    renamed: set[tuple[int, int]] = set()
    for fid, pieces in groups.items():
        name = identity[fid][0]
        for k, t in pieces:
            if t["name"] != name:
                renamed.add((k, t["track_id"]))

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
    switches = sum(int(r.get("switches") or 0) for r in results)
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
                history.append(
                    {"frame": max(results[k]["start"], t["first_frame"]), "name": name,
                     "similarity": round(sim, 4), "reason": reason}
                )
        history.sort(key=lambda h: h["frame"])
        compact: list[dict[str, Any]] = []
        for h in history:
            if not compact or compact[-1]["name"] != h["name"]:
                compact.append(h)
        best_k, best = max(pieces, key=lambda kt: (kt[1].get("crop") is not None, kt[1].get("quality") or -1.0))
        crop_rel = None
        if best.get("crop") and (name != UNKNOWN or save_unknown_crops):
            folder = "unknown" if name == UNKNOWN else _safe_dirname(name)
            crop_rel = f"{folder}/track_{fid}.jpg"
            crops.append((best_k, best["crop"], crop_rel))
        d: dict[str, Any] = {
            "track_id": fid,
            "name": name,
            "similarity": round(sim, 4),
            "first_frame": seen[fid][0],
            "last_frame": seen[fid][1],
            "frames": sum(int(t.get("detections_core") or 0) for _, t in pieces),
            "decided": True,
            "samples": sum(int(t.get("samples") or 0) for _, t in pieces),
            "best_crop": crop_rel,
            "best_frame": best.get("best_frame"),
            "best_box": best.get("best_box"),
            "names": compact,
        }
        attrs = next((t["attributes"] for _, t in pieces if t.get("attributes")), None)
        if attrs:
            d["attributes"] = attrs
        if len(pieces) > 1:
            d["chunks"] = sorted({k for k, _ in pieces})
        tracks.append(d)
    return {
        "frames": frames,
        "tracks": tracks,
        "crops": crops,
        "joins": joins,
        "frames_by_name": dict(by_name),
        "name_switches": switches,
        "scene_cuts": sum(int(r.get("scene_cuts") or 0) for r in results),
        "embeddings": sum(int(r.get("embeddings") or 0) for r in results),
    }


def judge_decider(recognizer: Any, gallery: str, config: VideoConfig) -> DecideFn:
    """The track rule of :class:`~modules.video.identity.Judge` as a ``decide`` for :func:`join_chunks`."""
    from .identity import Judge

    judge = Judge(recognizer, gallery, config)

    def decide(embeddings: list[np.ndarray]) -> tuple[str, float]:
        d = judge.decide(embeddings, config.decision)
        return d.name, d.similarity

    return decide


# --- rendering and concatenating -------------------------------------------------------------------------
def render_range(
    source: str | Path,
    start: int,
    end: int | None,
    frames: list[dict[str, Any]],
    out_path: str | Path,
    codec: str = "h264",
    *,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write frames ``[start, end)`` of ``source`` with ``frames``' faces drawn to ``out_path``; frames written."""
    faces = {f["frame"]: f["faces"] for f in frames}
    cap, info = open_capture(source)
    if start > 0:
        cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    writer = VideoWriter(out_path, info.fps, (info.width, info.height), codec)
    n = 0
    reader = FrameReader(cap, stop=stop)
    try:
        for i, frame in reader:
            index = start + i
            if end is not None and index >= end:
                break
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
        import av  # noqa: F401
    except ImportError:
        _concat_opencv(paths, out_path)
        return "opencv"
    try:
        _concat_pyav(paths, out_path)
        return "pyav"
    except Exception as exc:  # noqa: BLE001 - an odd stream: re-encode instead
        log.warning("remuxing the segments failed (%s); re-encoding them", exc)
        _concat_opencv(paths, out_path)
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
    writer = None
    try:
        for p in paths:
            cap, info = open_capture(p)
            try:
                if writer is None:
                    # the path without PyAV, so OpenCV's own MPEG-4 encoder
                    writer = VideoWriter(out_path, info.fps, (info.width, info.height), "mp4v")
                while True:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    writer.write(frame)
            finally:
                cap.release()
    finally:
        if writer is not None:
            writer.close()
