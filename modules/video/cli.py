"""``test_frame.py``'s work: the video pipeline on a file or a camera with a progress bar.

Ctrl-C stops cleanly (the results so far are kept); a second Ctrl-C aborts.  The script passes in what it shares
with ``test_img.py`` (:mod:`modules.batch`).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import FaceRecError


def run(
    args: argparse.Namespace,
    open_for_script: Callable[[argparse.Namespace], tuple[Any, str, Callable[[], None]]],
    load_attributes: Callable[[str | None], tuple[Any, Any]],
    print_summary: Callable[..., None],
) -> int:
    """Exit status: 0 done or stopped, 1 real failure, 130 aborted.

    ``open_for_script(args) -> (recognizer, gallery, cleanup)``, ``load_attributes(spec) -> (which, analyzer)``,
    ``print_summary(title, summary, out_dir)``.
    """
    stop = threading.Event()
    interrupted = {"n": 0}

    def on_sigint(signum, frame):  # first Ctrl-C: stop cleanly; second: abort
        interrupted["n"] += 1
        if interrupted["n"] > 1:
            raise KeyboardInterrupt
        print("\nstopping (Ctrl-C again to abort)...", file=sys.stderr)
        stop.set()

    try:
        from . import load_video_config, video_config

        names = ("decision", "min_face_size", "recognize_frames", "recheck_every", "detect_every", "tracker")
        overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
        if args.no_video:
            overrides["write_video"] = False
        if args.save_unknown:
            overrides["save_unknown_crops"] = True
        cfg = video_config(overrides, load_video_config(args.video_config), where=" (command line)")
        source = args.camera if args.camera is not None else args.video
        if args.camera is None and not Path(args.video).is_file():
            raise FaceRecError(f"video file not found: {args.video}")
        if args.camera is None:  # an image, a PDF, a damaged file: said now, before the models load
            from .videoio import probe

            probe(args.video)
        which, analyzer = load_attributes(args.attributes)
        rec, gallery, cleanup = open_for_script(args)
        try:
            from tqdm import tqdm

            from . import process_video

            bar = tqdm(unit="frame", desc="frames", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)

            def progress(done: int, total: int | None, fps: float) -> None:
                if args.max_frames is not None:  # --max-frames: stop cleanly after that many
                    total = args.max_frames if total is None else min(total, args.max_frames)
                    if done >= args.max_frames:
                        stop.set()
                if bar.total is None and total:
                    bar.total = total
                bar.update(done - bar.n)
                if done % 10 == 0:
                    bar.set_postfix(fps=f"{fps:.1f}", refresh=False)

            previous = signal.signal(signal.SIGINT, on_sigint)
            try:
                summary = process_video(source, args.output, rec, gallery, cfg, progress=progress, stop=stop,
                                        show=args.show, attributes=which, analyzer=analyzer)
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
