"""A video file or a camera through the frame processor, results written to a folder.

``frames.jsonl`` (one line per frame: ``{"frame", "time_s", "faces": [{"track_id", "box", "name",
"similarity"}]}``), ``tracks.json`` (per track: name, first and last frame, best crop, name history),
``annotated.mp4``, ``<name>/track_<id>.jpg`` (best crops) and ``summary.json`` (what :func:`process_video` returns).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2

from ..errors import ImageTooLargeError, InvalidRequestError
from ..files import open_private, private_dir, private_file, write_private
from ..face import UNKNOWN
from .config import VideoConfig
from .identity import TrackIdentity
from .videoio import FrameReader, RateMeter, VideoInfo, VideoWriter, open_capture
from .processor import FrameResult, Hooks, VideoProcessor

FRAMES_FILE = "frames.jsonl"
TRACKS_FILE = "tracks.json"
VIDEO_FILE = "annotated.mp4"
SUMMARY_FILE = "summary.json"

ProgressFn = Callable[[int, "int | None", float], None]


def atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write_private(tmp, json.dumps(obj, indent=2, ensure_ascii=False))
    os.replace(tmp, path)


def safe_dirname(name: str) -> str:
    bad = '<>:"\\|?*'
    cleaned = "".join("_" if (c in bad or ord(c) < 32) else c for c in name).strip().strip(".")
    return cleaned or "_"


def crop_file(name: str, track_id: int) -> str:
    """Where a track's best crop goes in a result folder: ``<name>/track_<id>.jpg`` (``unknown/...``)."""
    return f"{'unknown' if name == UNKNOWN else safe_dirname(name)}/track_{track_id}.jpg"


def people_summary(tracks: Iterable[dict[str, Any]], frames_by_name: dict[str, int]) -> dict[str, Any]:
    """``{name: {"tracks", "frames"}}`` of the named people (``tracks``: per-track dicts)."""
    track_counts = Counter(t["name"] for t in tracks)
    names = sorted((set(track_counts) | set(frames_by_name)) - {UNKNOWN})
    return {n: {"tracks": track_counts[n], "frames": frames_by_name.get(n, 0)} for n in names}


class _Outputs(Hooks):
    """Writes ``frames.jsonl``, the annotated video and the crops as the processor emits them."""

    def __init__(self, out_dir: Path, info: VideoInfo, config: VideoConfig, window: str | None,
                 stop: threading.Event):
        self.dir, self.config, self.window, self.stop = out_dir, config, window, stop
        private_dir(out_dir)
        self._jsonl = open_private(out_dir / FRAMES_FILE, "w", encoding="utf-8")
        self._since_flush = 0
        self.video: VideoWriter | None = None
        if config.write_video:
            self.video = VideoWriter(out_dir / VIDEO_FILE, info.fps, (info.width, info.height), config.video_codec)
        self.crops: list[str] = []
        self.frames_by_name: Counter = Counter()
        self.stopped = False

    def on_frame(self, r: FrameResult) -> None:
        self._jsonl.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
        self._since_flush += 1
        if self._since_flush >= 30:
            self._jsonl.flush()
            self._since_flush = 0
        if self.video is not None:
            self.video.write(r.annotated())
        for f in r.faces:
            self.frames_by_name[f["name"]] += 1
        if self.window is not None:
            cv2.imshow(self.window, r.annotated())
            if (cv2.waitKey(1) & 0xFF) in (ord("q"), 27):
                self.stopped = True
                self.stop.set()

    def on_track_end(self, t: TrackIdentity) -> None:
        keep = self.config.save_crops and (t.name != UNKNOWN or self.config.save_unknown_crops)
        if t.best_crop is not None and keep:
            rel = crop_file(t.name, t.track_id)
            path = self.dir / rel
            private_dir(path.parent)
            if cv2.imwrite(str(path), t.best_crop, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality]):
                private_file(path)
                t.crop_path = rel
                self.crops.append(rel)
        t.best_crop = None

    def close(self) -> None:
        self._jsonl.close()
        if self.video is not None:
            self.video.close()


def _open_window(window: str) -> None:
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise InvalidRequestError("cannot show the video: no display (DISPLAY is not set); run without --show")
    try:
        cv2.namedWindow(window, cv2.WINDOW_NORMAL)
    except cv2.error as exc:
        raise InvalidRequestError(f"cannot open a window to show the video: {exc}") from None


def process_video(
    source: str | int | Path, out_dir: str | Path, recognizer: Any, gallery: str = "default",
    config: VideoConfig | None = None, *, progress: ProgressFn | None = None, hooks: Iterable[Hooks] = (),
    stop: threading.Event | None = None, show: bool = False, max_frames: int | None = None, attributes: Any = None,
    analyzer: Any = None, detector: Any = None, max_pixels: int | None = None, max_total_pixels: int | None = None,
) -> dict[str, Any]:
    """Run the processor on a file (path) or a camera (int); returns the summary (also ``summary.json``).

    ``hooks`` see the results too (after the files are written).  ``stop`` ends the
    run cleanly (what was written is kept, ``stopped`` is true); so does Ctrl-C
    (``KeyboardInterrupt``) and ``q`` in the ``show`` window.  ``max_frames`` fails
    the run with :class:`ImageTooLargeError` once more frames than that have been read, ``max_pixels`` at a
    frame larger than that, ``max_total_pixels`` once the decoded frames add up to more pixels than that.
    A file that is no video is a :class:`~modules.errors.NotAVideoError`.
    """
    config = config or VideoConfig()
    window = "facerec" if show else None
    out = Path(out_dir)
    stop = stop or threading.Event()
    cap, info = open_capture(source, max_pixels=max_pixels, pixel_budget=max_total_pixels)
    if window is not None:
        try:
            _open_window(window)
        except BaseException:
            cap.release()
            raise
    outputs = _Outputs(out, info, config, window, stop)
    proc = VideoProcessor(recognizer, gallery, config, fps=info.fps, live=info.live, attributes=attributes,
                          analyzer=analyzer, detector=detector, hooks=[outputs, *hooks])
    meter = RateMeter()
    t0 = time.perf_counter()
    n_read = 0
    stopped = False
    error: BaseException | None = None
    reader = FrameReader(cap, stop=stop, size=(info.width, info.height))
    try:
        for index, frame in reader:
            n_read += 1
            if max_frames is not None and n_read > max_frames:
                raise ImageTooLargeError(f"the video has more than {max_frames} frames (the limit)")
            proc.push(index, frame, (time.perf_counter() - t0) if info.live else None)
            if progress is not None:
                progress(n_read, info.frames, meter.tick())
            if stop.is_set():
                break
        stopped = stop.is_set()
    except KeyboardInterrupt:
        stopped = True
        stop.set()
    except BaseException as exc:
        error = exc
    finally:
        reader.close()
        try:
            proc.finish()
        finally:
            outputs.close()
            if window is not None:
                cv2.destroyWindow(window)
    elapsed = time.perf_counter() - t0
    tracks = [t.to_dict() for t in proc.tracks]
    atomic_json(out / TRACKS_FILE, tracks)
    summary = {
        "source": str(source), "video": info.to_dict(), "frames": n_read, "seconds": round(elapsed, 3),
        "fps": round(n_read / elapsed, 2) if elapsed > 0 else None, "tracks": len(tracks),
        "named_tracks": sum(1 for t in tracks if t["name"] != UNKNOWN),
        "people": people_summary(tracks, outputs.frames_by_name), "name_switches": proc.book.switches,
        "scene_cuts": proc.stats["scene_cuts"], "embeddings": proc.stats["embeddings"],
        "stage_seconds": {k: round(v, 3) for k, v in proc.times.items()}, "gallery": gallery,
        **proc.judge.facts(), "decision": config.decision, "stopped": stopped or outputs.stopped,
        "outputs": {"frames": FRAMES_FILE, "tracks": TRACKS_FILE, "video": VIDEO_FILE if config.write_video else None,
                    "crops": outputs.crops},
    }
    if error is not None:
        summary["error"] = getattr(error, "message", str(error))
    atomic_json(out / SUMMARY_FILE, summary)
    if error is not None:
        raise error
    return summary
