"""What a video job costs per pixel, and so how long a job at ``FACEREC_VIDEO_MAX_TOTAL_PIXELS`` holds a slot.

    python -m benchmarks.video_pixels [--frames 90] [--sizes 640x360,1280x720,1920x1080,3840x2160]

The labelled hamilton clip (640x360) is upscaled to each size (its first ``--frames`` frames, written as
MJPEG to a temporary folder, removed at the end), and each is run through
:func:`modules.video.process_video` as a one-chunk video job runs it (default video config, H.264 output,
the clip's three people enrolled).  For each size: frames per second, nanoseconds per pixel, and the hours
one slot would take for an hour of that video at 30 fps and for a job at the default ``max_total_pixels``.
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import cv2

from benchmarks.video_scale import CLIP_DIR


def _upscaled(src: Path, dest: Path, size: tuple[int, int], frames: int) -> Path:
    cap = cv2.VideoCapture(str(src))
    out = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"MJPG"), cap.get(cv2.CAP_PROP_FPS) or 30.0, size)
    n = 0
    while n < frames and (frame := cap.read()[1]) is not None:
        out.write(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR))
        n += 1
    cap.release()
    out.release()
    return dest


def main(argv: list[str] | None = None) -> dict:
    from modules.recognizer import FaceRecognizer
    from modules.settings import VideoLimits
    from modules.storage import open_gallery
    from modules.video import VideoConfig, process_video
    from modules.video.videoio import probe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--sizes", default="640x360,1280x720,1920x1080,3840x2160")
    args = ap.parse_args(argv)
    labels = json.loads((CLIP_DIR / "labels.json").read_text())
    budget = VideoLimits().max_total_pixels
    tmp = Path(tempfile.mkdtemp(prefix="facerec-pixels-"))
    rows = []
    try:
        gallery = open_gallery(tmp / "gallery.db")
        rec = FaceRecognizer(None, gallery)
        for person, rels in labels["enroll"].items():
            rec.enroll("default", person, [CLIP_DIR / r for r in rels])
        for spec in args.sizes.split(","):
            w, h = (int(v) for v in spec.lower().split("x"))
            video = _upscaled(CLIP_DIR / labels["video"], tmp / f"{w}x{h}.avi", (w, h), args.frames)
            info = probe(video)
            t0 = time.perf_counter()
            summary = process_video(video, tmp / f"out-{w}x{h}", rec, "default", VideoConfig())
            seconds = time.perf_counter() - t0
            fps = summary["frames"] / seconds
            ns_per_pixel = seconds / (summary["frames"] * w * h) * 1e9
            rows.append({
                "size": f"{w}x{h}", "frames": summary["frames"], "fps": round(fps, 1),
                "ns_per_pixel": round(ns_per_pixel, 2),
                "hours_per_video_hour_30fps": round(30 * 3600 / fps / 3600, 2),
                "hours_at_max_total_pixels": round(budget * ns_per_pixel / 1e9 / 3600, 2),
                "video_hours_at_max_total_pixels_30fps": round(budget / (w * h * 30 * 3600), 2),
            })
            print(f"{w}x{h}: {fps:.1f} frames/s, {ns_per_pixel:.1f} ns/pixel; an hour at 30 fps takes"
                  f" {rows[-1]['hours_per_video_hour_30fps']} h; the budget ({budget:.3g} pixels, "
                  f"{rows[-1]['video_hours_at_max_total_pixels_30fps']} h of this video) takes"
                  f" {rows[-1]['hours_at_max_total_pixels']} h ({info.frames} frames probed)", flush=True)
        gallery.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"max_total_pixels": budget, "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
