#!/usr/bin/env python
"""Recognize every face of every image in a folder; keep the crops of the people recognized.

    python test_img.py INPUT_DIR --gallery-dir PEOPLE_DIR --output OUT_DIR
    python test_img.py INPUT_DIR --output OUT_DIR                 # the persistent gallery (data/gallery.db)

``PEOPLE_DIR`` holds ``<name>/<images>``, enrolled into a temporary gallery first
(``--save-gallery`` enrolls into the persistent one).  ``INPUT_DIR`` is walked
recursively.  Writes ``OUT_DIR/results.json`` (one entry per file:
``{"image", "faces": [{"box", "name", "similarity"}], "error"}``), the same as
``OUT_DIR/results.csv``, and crops of recognized people under ``OUT_DIR/<name>/``.
Unreadable files are reported in the results and the run goes on.

Exit status: 0 when the folder was processed (even with unreadable files),
1 on a real failure (no such folder, no usable gallery, bad config), 2 on bad
arguments, 130 when interrupted (the results so far are written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from modules.batch import add_common_args

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input_dir", type=Path, help="folder of images (walked recursively)")
    add_common_args(ap)
    ap.add_argument("--max-faces", type=int, default=None, help="faces per image, largest first")
    ap.add_argument("--no-crops", action="store_true", help="do not write crops of recognized people")
    args = ap.parse_args(argv)
    from modules.batch import run_folder
    from modules.files import private_umask

    private_umask()  # results and crops of faces: this user's only

    return run_folder(args)


if __name__ == "__main__":
    sys.exit(main())
