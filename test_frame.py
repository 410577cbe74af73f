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
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from modules.batch import add_common_args, load_attributes, open_for_script, print_summary

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

    from modules.files import private_umask
    from modules.video.cli import run

    private_umask()  # results, crops and the annotated video: this user's only

    return run(args, open_for_script, load_attributes, print_summary)


if __name__ == "__main__":
    sys.exit(main())
