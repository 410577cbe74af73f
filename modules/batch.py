"""Folder processing for ``test_img.py`` and what both scripts share (gallery set-up, attributes, output).

    rec, gallery, cleanup = open_for_script(args)        # --gallery-dir: enroll <name>/<images> first
    summary = process_folder(rec, "photos/", "out/", gallery)

writes ``out/results.json`` (one entry per file of the folder, recursively:
``{"image", "faces": [{"box", "name", "similarity"}], "error"}``),
``out/results.csv`` (one row per face, or per file without faces) and the
crops of recognized people under ``out/<name>/``.  A file that cannot be
read is reported with its ``error`` and the run goes on.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .attributes import AttributeAnalyzer, parse_attributes
from .images import IMAGE_SUFFIXES, list_people_dir
from .errors import ConfigError, FaceRecError, InvalidRequestError
from .files import open_private, private_dir, private_file, write_private
from .face import UNKNOWN

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
CSV_COLUMNS = ["image", "face", "x1", "y1", "x2", "y2", "name", "similarity", "error"]


# --- shared by the scripts ------------------------------------------------------------------------
def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--gallery-dir", "--people-dir", dest="gallery_dir", type=Path, default=None,
                    help="PEOPLE_DIR with <name>/<images> to enroll before running (into a temporary gallery"
                    " unless --save-gallery); without it the persistent gallery is used")
    ap.add_argument("--output", "-o", type=Path, required=True, help="OUT_DIR for the results")
    ap.add_argument("--config", default=None, help="embedder config (default configs/sface.yaml)")
    ap.add_argument("--data-dir", default=None,
                    help="the persistent gallery is <data-dir>/gallery.db (default ./data or $FACEREC_DATA_DIR)")
    ap.add_argument("--database-url", default=None, help="persistent gallery database, e.g. postgresql://..."
                    " (default: $DATABASE_URL, else <data-dir>/gallery.db)")
    ap.add_argument("--gallery", default="default", help="gallery name (default 'default')")
    ap.add_argument("--save-gallery", action="store_true",
                    help="enroll --gallery-dir into the persistent gallery instead of a temporary one")
    ap.add_argument("--attributes", default=None, help="face attributes to add, comma-separated"
                    " (e.g. age,gender,emotion), if the attributes module is installed")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass
class EnrollReport:
    enrolled: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)


def enroll_folder(rec: Any, people_dir: Path, gallery: str) -> EnrollReport:
    """Enroll one face (the largest) of every image of ``<name>/<images>``; bad images are skipped and reported."""
    from .storage import validate_new_name

    report = EnrollReport()
    prepared: dict[str, list[Any]] = {}
    for name, paths in list_people_dir(Path(people_dir)).items():
        try:
            validate_new_name(name, "person name")
        except InvalidRequestError as exc:
            report.skipped.append({"image": name, "error": exc.message})
            continue
        faces = []
        for p in paths:
            try:
                faces.extend(rec.prepare_enrollment([p], sources=[str(p)]))
            except FaceRecError as exc:
                report.skipped.append({"image": str(p), "error": exc.message})
        if faces:
            prepared[name] = faces
    if not prepared:
        why = "; ".join(f"{s['image']}: {s['error']}" for s in report.skipped[:3])
        raise InvalidRequestError(f"no face could be enrolled from {people_dir}" + (f" ({why})" if why else ""))
    exists = _has_gallery(rec.gallery, gallery)
    for name, faces in prepared.items():
        # a persistent gallery may hold some of these photos already (same bytes): not enrolled twice
        new = [f for f in faces if not (exists and rec.gallery.find_faces_by_source_sha256(gallery, f.source_sha256))]
        if new:
            rec.gallery.add_faces(gallery, name, new)
        report.enrolled[name] = len(faces)
    return report


def _has_gallery(store: Any, gallery: str) -> bool:
    try:
        store.get_gallery(gallery)
        return True
    except FaceRecError:
        return False


def open_for_script(
    args: argparse.Namespace, log: Callable[[str], None] | None = None
) -> tuple[Any, str, Callable[[], None]]:
    """The recognizer with its gallery ready: ``(recognizer, gallery name, cleanup)``."""
    from .recognizer import FaceRecognizer
    from .settings import load_settings
    from .storage import open_gallery

    log = log or (lambda m: print(m, file=sys.stderr))
    tmp: str | None = None
    if args.gallery_dir is not None and not args.save_gallery:
        tmp = tempfile.mkdtemp(prefix="facerec-gallery-")
        location: str | Path = Path(tmp) / "gallery.db"
    else:
        settings = load_settings(data_dir=args.data_dir, gallery_url=getattr(args, "database_url", None))
        location = settings.gallery_location
        if args.gallery_dir is None and isinstance(location, Path) and not location.exists():
            raise ConfigError(
                f"no gallery at {location}: pass --gallery-dir PEOPLE_DIR, or enroll people first"
                " (python -m modules.cli enroll-dir PEOPLE_DIR)"
            )
    store = open_gallery(location)

    def cleanup() -> None:
        store.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    try:
        rec = FaceRecognizer(args.config, store)
        if args.gallery_dir is not None:
            t0 = time.perf_counter()
            report = enroll_folder(rec, args.gallery_dir, args.gallery)
            total = sum(report.enrolled.values())
            log(
                f"enrolled {total} face(s) of {len(report.enrolled)} people from {args.gallery_dir}"
                f" in {time.perf_counter() - t0:.1f}s"
                + (f"; {len(report.skipped)} image(s) skipped" if report.skipped else "")
            )
            for s in report.skipped:
                log(f"  skipped {s['image']}: {s['error']}")
        n = store.num_people(args.gallery) if _has_gallery(store, args.gallery) else 0
        if n == 0:
            log(f"warning: gallery {args.gallery!r} has nobody enrolled: every face will be 'unknown'")
            store.ensure_gallery(args.gallery)
    except BaseException:
        cleanup()
        raise
    return rec, args.gallery, cleanup


def load_attributes(spec: str | None) -> tuple[Any, Any]:
    """``(which, analyzer)`` for ``--attributes``; ``(None, None)`` when none asked."""
    which = parse_attributes(spec)
    return (which, AttributeAnalyzer()) if which else (None, None)


def safe_dirname(name: str) -> str:
    bad = '<>:"\\|?*'
    cleaned = "".join("_" if (c in bad or ord(c) < 32) else c for c in name).strip().strip(".")
    return cleaned or "_"


def crop_box(image: np.ndarray, box: Any, margin: float = 0.25) -> np.ndarray | None:
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    H, W = image.shape[:2]
    a, b = int(max(0, x1 - margin * w)), int(max(0, y1 - margin * h))
    c, d = int(min(W, x2 + margin * w)), int(min(H, y2 + margin * h))
    if c - a < 2 or d - b < 2:
        return None
    return image[b:d, a:c]


# --- folder processing ------------------------------------------------------------------------
def find_files(input_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Every non-hidden file under ``input_dir`` (sorted), skipping ``exclude`` (the output folder)."""
    input_dir = Path(input_dir)
    ex = exclude.resolve() if exclude is not None else None
    out = []
    for root, dirs, files in os.walk(input_dir):
        rp = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (ex is None or (rp / d).resolve() != ex))
        out.extend(rp / f for f in sorted(files) if not f.startswith("."))
    return out


def process_folder(
    rec: Any,
    input_dir: str | Path,
    out_dir: str | Path,
    gallery: str = "default",
    *,
    attributes: Any = None,
    analyzer: Any = None,
    save_crops: bool = True,
    crop_margin: float = 0.25,
    max_faces: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Identify every face of every image under ``input_dir``; write results and crops to ``out_dir``."""
    from tqdm import tqdm

    input_dir, out_dir = Path(input_dir), Path(out_dir)
    if not input_dir.is_dir():
        raise InvalidRequestError(f"input folder not found: {input_dir}")
    private_dir(out_dir)
    files = find_files(input_dir, exclude=out_dir)
    results: list[dict[str, Any]] = []
    names: Counter = Counter()
    crops: list[str] = []
    errors = 0
    t0 = time.perf_counter()
    bar = tqdm(files, unit="img", desc="images", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for path in bar:
            rel = path.relative_to(input_dir).as_posix()
            entry: dict[str, Any] = {"image": rel, "faces": [], "error": None}
            results.append(entry)
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                entry["error"] = (
                    f"not an image file (suffix {path.suffix or 'none'!r});"
                    f" supported: {', '.join(sorted(IMAGE_SUFFIXES))}"
                )
                errors += 1
                continue
            try:
                img = rec.decode(path)  # reduced to the decode budget; boxes come back in the file's pixels
                result = rec.recognize(img, gallery, max_faces=max_faces, attributes=attributes, analyzer=analyzer)
                sx, sy = img.scale
            except FaceRecError as exc:
                entry["error"] = exc.message
                errors += 1
                continue
            for i, (face, ident) in enumerate((rf.face, rf.identification) for rf in result.faces):
                d: dict[str, Any] = {
                    "box": [round(float(v), 1) for v in face.box],
                    "name": ident.name,
                    "similarity": round(float(ident.similarity), 4),
                    "det_score": round(float(face.det_score), 4),
                }
                if face.attributes:
                    d["attributes"] = face.attributes
                entry["faces"].append(d)
                names[ident.name] += 1
                if save_crops and ident.name != UNKNOWN:
                    crop = crop_box(img.pixels, np.asarray(face.box) * [sx, sy, sx, sy], crop_margin)
                    if crop is not None:
                        stem = rel.rsplit(".", 1)[0].replace("/", "__")
                        crel = f"{safe_dirname(ident.name)}/{stem}_face{i}.jpg"
                        private_dir((out_dir / crel).parent)
                        if cv2.imwrite(str(out_dir / crel), crop, [cv2.IMWRITE_JPEG_QUALITY, 92]):
                            private_file(out_dir / crel)
                            crops.append(crel)
                            d["crop"] = crel
            bar.set_postfix(faces=sum(names.values()), errors=errors, refresh=False)
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        write_results(out_dir, results)
    elapsed = time.perf_counter() - t0
    return {
        "input": str(input_dir),
        "files": len(results),
        "images_with_faces": sum(1 for r in results if r["faces"]),
        "errors": errors,
        "faces": sum(names.values()),
        "people": {k: v for k, v in sorted(names.items()) if k != UNKNOWN},
        "unknown_faces": names.get(UNKNOWN, 0),
        "crops": len(crops),
        "seconds": round(elapsed, 3),
        "images_per_s": round(len(results) / elapsed, 2) if elapsed > 0 else None,
        "interrupted": interrupted,
        "outputs": {"json": RESULTS_JSON, "csv": RESULTS_CSV},
    }


def write_results(out_dir: Path, results: list[dict[str, Any]]) -> None:
    tmp = out_dir / f".{RESULTS_JSON}.tmp"
    write_private(tmp, json.dumps(results, indent=2, ensure_ascii=False))
    os.replace(tmp, out_dir / RESULTS_JSON)
    with open_private(out_dir / RESULTS_CSV, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in results:
            if not r["faces"]:
                w.writerow([r["image"], "", "", "", "", "", "", "", r["error"] or ""])
            for i, f in enumerate(r["faces"]):
                w.writerow([r["image"], i, *f["box"], f["name"], f["similarity"], ""])


def print_summary(title: str, summary: dict[str, Any], out_dir: Path, extra: list[str] | None = None) -> None:
    lines = [title, *(f"  {k}: {v}" for k, v in summary.items() if k not in ("outputs", "people", "video"))]
    if summary.get("people"):
        lines += ["  recognized:", *(f"    {name}: {v}" for name, v in summary["people"].items())]
    lines += [*(extra or []), f"  output: {out_dir}"]
    print("\n".join(lines), file=sys.stderr)


def run_folder(args: argparse.Namespace) -> int:
    """``test_img.py``'s work. Exit status: 0 done, 1 real failure, 130 interrupted."""
    try:
        if not args.input_dir.is_dir():
            raise FaceRecError(f"input folder not found: {args.input_dir}")
        which, analyzer = load_attributes(args.attributes)
        rec, gallery, cleanup = open_for_script(args)
        try:
            summary = process_folder(rec, args.input_dir, args.output, gallery, attributes=which, analyzer=analyzer,
                                     save_crops=not args.no_crops, max_faces=args.max_faces,
                                     progress=not args.no_progress)
        finally:
            cleanup()
    except FaceRecError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print_summary("done", summary, args.output)
    return 130 if summary.get("interrupted") else 0
