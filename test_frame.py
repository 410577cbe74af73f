#!/usr/bin/env python
"""Recognize the faces of a video file or a camera: track them, name each track, write the results.

    python test_frame.py VIDEO_PATH --gallery-dir PEOPLE_DIR --output OUT_DIR
    python test_frame.py --camera 0 --gallery-dir PEOPLE_DIR --output OUT_DIR [--show]

Faces are detected, tracked (ByteTrack), and each track is named from its first
``--recognize-frames`` good frames (``--decision mean|vote``), re-checked every
``--recheck-every`` frames; faces smaller than ``--min-face-size`` are tracked but
not recognized.  Writes ``OUT_DIR/frames.jsonl`` (one line per frame:
``{"frame", "time_s", "faces": [{"track_id", "box", "name", "similarity"}]}``),
``OUT_DIR/tracks.json`` (per track: name, first/last frame, best crop),
``OUT_DIR/annotated.mp4``, ``OUT_DIR/summary.json`` and the best crop of every
recognized track under ``OUT_DIR/<name>/``.

Headless by default; ``--show`` opens a window (``q`` stops).  Ctrl-C stops a camera
run cleanly and keeps what was written.  Exit status: 0 on success (also when
stopped by Ctrl-C or ``q``), 1 on a real failure, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from modules.batch import add_common_args, load_attributes, open_for_script, print_summary
    from modules.errors import FaceRecError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("video", nargs="?", type=Path, help="video file")
    src.add_argument("--camera", type=int, metavar="INDEX", help="camera index (e.g. 0)")
    add_common_args(ap)
    ap.add_argument("--show", action="store_true", help="show the annotated frames in a window")
    ap.add_argument("--video-config", default=None, help="YAML file with video settings (see modules/video/config.py)")
    ap.add_argument("--decision", choices=["vote", "mean"], default=None, help="how a track is named (default mean)")
    ap.add_argument(
        "--min-face-size", type=int, default=None, help="faces smaller than this (px) are not recognized (default 32)"
    )
    ap.add_argument("--recognize-frames", type=int, default=None, help="good frames a track is named from (default 5)")
    ap.add_argument(
        "--recheck-every", type=int, default=None, help="re-check a named track every K frames (default 30)"
    )
    ap.add_argument("--detect-every", type=int, default=None, help="run the detector every n-th frame (default 2)")
    ap.add_argument("--tracker", choices=["bytetrack", "sort", "ocsort"], default=None)
    ap.add_argument("--no-video", action="store_true", help="do not write the annotated video")
    ap.add_argument(
        "--save-unknown", action="store_true", help="also keep the best crop of unknown tracks (OUT_DIR/unknown/)"
    )
    ap.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    args = ap.parse_args(argv)

    stop = threading.Event()
    interrupted = {"n": 0}

    def on_sigint(signum, frame):  # first Ctrl-C: stop cleanly; second: abort
        interrupted["n"] += 1
        if interrupted["n"] > 1:
            raise KeyboardInterrupt
        print("\nstopping (Ctrl-C again to abort)...", file=sys.stderr)
        stop.set()

    try:
        from modules.video import load_video_config, video_config

        cfg = load_video_config(args.video_config)
        overrides = {
            "decision": args.decision,
            "min_face_size": args.min_face_size,
            "recognize_frames": args.recognize_frames,
            "recheck_every": args.recheck_every,
            "detect_every": args.detect_every,
            "tracker": args.tracker,
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if args.no_video:
            overrides["write_video"] = False
        if args.save_unknown:
            overrides["save_unknown_crops"] = True
        cfg = video_config(overrides, cfg, where=" (command line)")
        source = args.camera if args.camera is not None else args.video
        if args.camera is None and not Path(args.video).is_file():
            raise FaceRecError(f"video file not found: {args.video}")
        which, analyzer = load_attributes(args.attributes)
        rec, gallery, cleanup = open_for_script(args)
        try:
            from tqdm import tqdm

            from modules.video import process_video

            bar = tqdm(unit="frame", desc="frames", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)

            def progress(done: int, total: int | None, fps: float) -> None:
                if bar.total is None and total:
                    bar.total = total
                bar.update(done - bar.n)
                if done % 10 == 0:
                    bar.set_postfix(fps=f"{fps:.1f}", refresh=False)

            previous = signal.signal(signal.SIGINT, on_sigint)
            try:
                summary = (
                    process_video(
                        source,
                        args.output,
                        rec,
                        gallery,
                        cfg,
                        progress=progress,
                        stop=stop,
                        show=args.show,
                        max_frames=None,
                        attributes=which,
                        analyzer=analyzer,
                    )
                    if args.max_frames is None
                    else _limited(source, args, rec, gallery, cfg, progress, stop, which, analyzer)
                )
            finally:
                signal.signal(signal.SIGINT, previous)
                bar.close()
        finally:
            cleanup()
    except FaceRecError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    print_summary("stopped" if summary["stopped"] else "done", summary, args.output)
    return 0


def _limited(source, args, rec, gallery, cfg, progress, stop, which, analyzer):
    """``--max-frames``: stop (cleanly) after that many frames."""
    from modules.video import process_video

    def limited_progress(done, total, fps):
        progress(done, total if total is None else min(total, args.max_frames), fps)
        if done >= args.max_frames:
            stop.set()

    return process_video(
        source,
        args.output,
        rec,
        gallery,
        cfg,
        progress=limited_progress,
        stop=stop,
        show=args.show,
        attributes=which,
        analyzer=analyzer,
    )


if __name__ == "__main__":
    sys.exit(main())
