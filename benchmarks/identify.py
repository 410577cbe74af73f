"""Open-set identification on a set laid out like ``lfw/identification``.

    python -m benchmarks.identify ../shared/data/lfw/identification [--config configs/sface.yaml]

``gallery.csv`` (path, identity) is enrolled into a fresh SQLite gallery;
each row of ``probes.csv`` (path, expected = identity or ``unknown``) is
recognized as the service does (:meth:`FaceRecognizer.recognize`: detection,
one-pass embedding, gallery search, per-person max, open-set threshold for the
gallery's size) and its subject's answer (the face ``--face`` picks) is scored.  Paths are relative to the
folder holding the set's ``manifest.csv``.  The last line is one JSON object
with ``known_rank1`` (known probes named correctly), ``unknown_rejection``
(unknown probes answered ``unknown``) and ``overall``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.devdata import embed_images, find_set_root, read_csv
from modules.errors import FaceRecError
from modules.face import UNKNOWN


def evaluate(set_dir: Path, config: str | None = None, policy: str = "center", progress: bool = True) -> dict:
    from modules.recognizer import FaceRecognizer, primary_face
    from modules.storage import NewFace, open_gallery

    gallery_rows = read_csv(set_dir / "gallery.csv")
    probe_rows = read_csv(set_dir / "probes.csv")
    root = find_set_root(set_dir / "gallery.csv")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_gallery(Path(tmp) / "gallery.db")
        rec = FaceRecognizer(config, store)
        # gallery images are embedded as enrollment does; each probe is recognized as /recognition does
        emb = embed_images(rec, root, [r["path"] for r in gallery_rows], policy=policy, progress=progress)
        E = emb.embeddings
        by_person: dict[str, list] = {}
        for r in gallery_rows:
            if r["path"] in E:
                by_person.setdefault(r["identity"], []).append(
                    NewFace(embedding=E[r["path"]], embedder=rec.model_id, source=r["path"])
                )
        store.add_faces_many("bench", by_person)
        names: dict[str, str] = {}  # probe -> the name given to its subject (the face policy's choice)
        no_face, match_ms = 0, []
        for path in tqdm(sorted({r["path"] for r in probe_rows}), desc="probes", unit="img", disable=not progress):
            try:
                result = rec.recognize(root / path, "bench")
            except FaceRecError:  # unreadable: answered "unknown", like a probe without a face
                continue
            faces = [rf.face for rf in result.faces]
            if not faces:
                no_face += 1
                continue
            subject = primary_face(faces, (result.height, result.width), policy)
            names[path] = next(rf.identification.name for rf in result.faces if rf.face is subject)
            match_ms.append(result.timings_ms["match"])
        n_people = store.num_people("bench")
        threshold = rec.config.matching.identify_threshold_for(n_people)
        store.close()
    known = [r for r in probe_rows if r["expected"] != UNKNOWN]
    unknown = [r for r in probe_rows if r["expected"] == UNKNOWN]
    # a probe whose face was not found counts as answered "unknown"
    ok_known = sum(names.get(r["path"], UNKNOWN) == r["expected"] for r in known)
    ok_unknown = sum(names.get(r["path"], UNKNOWN) == UNKNOWN for r in unknown)
    wrong_name = sum(names.get(r["path"], UNKNOWN) not in (UNKNOWN, r["expected"]) for r in known)
    return {
        "set": str(set_dir),
        "model": rec.model_id,
        "enrolled_people": n_people,
        "gallery_images": len(gallery_rows),
        "probes_known": len(known),
        "probes_unknown": len(unknown),
        "threshold": round(threshold, 4),
        "known_rank1": round(ok_known / max(len(known), 1), 4),
        "known_misidentified": wrong_name,
        "unknown_rejection": round(ok_unknown / max(len(unknown), 1), 4),
        "overall": round((ok_known + ok_unknown) / max(len(probe_rows), 1), 4),
        "no_face": len(emb.no_face) + no_face,
        "search_ms_per_probe": round(float(np.median(match_ms)), 3) if match_ms else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("set_dir", type=Path)
    ap.add_argument("--config", default=None)
    ap.add_argument("--face", choices=["center", "largest"], default="center")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    for f in ("gallery.csv", "probes.csv"):
        if not (args.set_dir / f).is_file():
            print(f"error: {args.set_dir / f} not found", file=sys.stderr)
            return 2
    try:
        out = evaluate(args.set_dir, args.config, args.face, progress=not args.no_progress)
    except FaceRecError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
