"""Per-stage latency of the recognition pipeline on a one-face 640x480 JPEG.

    python -m benchmarks.latency [--image PATH] [--runs 200] [--config configs/sface.yaml]

Stages as :meth:`FaceRecognizer.recognize` (the service's one recognition
path) times them: decode, detect, align, embed, match (against a gallery of 178
people: the subject and 177 random embeddings) and end-to-end.  Prints one JSON
object as its last line with the median and p90 of each stage in milliseconds.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.load import DEFAULT_IMAGE, one_face_jpeg


def main(argv: list[str] | None = None) -> int:
    from modules.storage import NewFace, open_gallery
    from modules.recognizer import FaceRecognizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--config", default=None)
    args = ap.parse_args(argv)
    data = one_face_jpeg(args.image)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_gallery(Path(tmp) / "g.db")
        rec = FaceRecognizer(args.config, store)
        rng = np.random.default_rng(0)
        people = {f"person_{i:03d}": [NewFace(embedding=v / np.linalg.norm(v), embedder=rec.model_id)]
                  for i, v in enumerate(rng.normal(size=(177, rec.embedder.dim)).astype(np.float32))}
        people["subject"] = rec.prepare_enrollment([data], sources=["subject.jpg"])
        store.add_faces_many("bench", people)
        for _ in range(10):  # warm-up
            rec.recognize(data, "bench")
        stages: dict[str, list[float]] = {}
        for _ in range(args.runs):
            r = rec.recognize(data, "bench")
            assert len(r.faces) == 1 and r.faces[0].identification.name == "subject"
            for k, v in r.timings_ms.items():
                stages.setdefault(k, []).append(v)
        store.close()
    out = {
        "model": rec.model_id,
        "flip_gallery": bool(rec.embedder.flip),
        "flip_queries": bool(rec.embedder.flip_queries),
        "image": "640x480 JPEG, one face",
        "runs": args.runs,
        "median_ms": {k: round(float(np.median(v)), 2) for k, v in stages.items()},
        "p90_ms": {k: round(float(np.percentile(v, 90)), 2) for k, v in stages.items()},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
