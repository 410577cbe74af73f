"""How well each available recognizer tells the clip's profile close-up from strangers.

    python -m benchmarks.profile_probe [CLIP_DIR] [--segment alex_lacamoire] [--no-dlib] [--photo PATH ...]

The hamilton clip's required profile segment (Alex Lacamoire, frames 20-44 of
``labels.json``) is a full profile close-up; his only enrollment photo is frontal.
For every frame of the segment the largest detected face is his, and the other
faces (the blurred audience behind him) belong to nobody enrolled.  For each
recognizer this prints, against each enrolled person's photo:

* ``genuine``: his per-frame similarity to his own photo (mean, min, max);
* ``best_impostor_person``: per frame, his best similarity to someone else enrolled;
* ``strangers``: the audience faces' best similarity to his photo;
* ``frames_separable``: frames where his own score beats both, and by how much at least;
* ``track_mean``: the mean embedding of his first 5 and of all frames (what the video
  pipeline's ``mean`` decision compares), against his photo and the best other person,
  and against each ``--photo`` (other photos of him, not enrolled).

Recognizers: SFace (the default, plain and with a 3-scale test-time augmentation), the
opt-in ``w600k_mbf`` (non-commercial weights) and dlib's ResNet from
``face-recognition-models`` on the same detections (distance turned into ``1 - d``).
The shipped identification threshold is printed next to each.  The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.video import DEFAULT_CLIP_DIR, load_labels
from modules.alignment import Aligner
from modules.embedders.base import l2_normalize
from modules.face import Face
from modules.recognizer import FaceRecognizer

ROOT = Path(__file__).resolve().parents[1]
TTA_SCALES = (0.85, 1.0, 1.15)


def read_frames(clip: Path, first: int, last: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(clip))
    frames, i = [], 0
    try:
        while i <= last:
            ok, frame = cap.read()
            if not ok:
                break
            if i >= first:
                frames.append(frame)
            i += 1
    finally:
        cap.release()
    return frames


Shot = tuple[np.ndarray, list[Face]]  # an image and its faces, largest first


def detect(detector: FaceRecognizer, image: np.ndarray) -> Shot:
    return image, sorted(detector.detect(image), key=lambda f: f.size, reverse=True)


class ArcFaceProbe:
    """An embedder of this project, optionally averaged over a few crop scales."""

    def __init__(self, rec: FaceRecognizer, scales: tuple[float, ...] = (1.0,)):
        self.rec = rec
        self.aligners = [Aligner(zoom=s) for s in scales]
        self.threshold_for = rec.config.matching.identify_threshold_for

    def embed(self, image: np.ndarray, face: Face, gallery: bool) -> np.ndarray:
        crops = np.stack([a.align(image, np.asarray(face.landmarks, np.float32)) for a in self.aligners])
        e = self.rec.embedder.embed(crops, flip=None if gallery else False)
        return l2_normalize(e.mean(axis=0))

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b)


class DlibProbe:
    """dlib's ResNet (face_recognition's encoder) on our detections, its 5-point chip; similarity ``1 - distance``."""

    def __init__(self) -> None:
        import importlib.resources

        import dlib

        models = importlib.resources.files("face_recognition_models") / "models"
        self.sp = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        self._dlib = dlib

    def threshold_for(self, n: int) -> float:
        return 1.0 - 0.6  # face_recognition's tolerance

    def embed(self, image: np.ndarray, face: Face, gallery: bool) -> np.ndarray:
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        shape = self.sp(rgb, self._dlib.rectangle(x1, y1, x2, y2))
        return np.asarray(self.net.compute_face_descriptor(rgb, shape, 1), np.float32)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        return 1.0 - float(np.linalg.norm(a - b))


def stat(a: np.ndarray) -> dict[str, float]:
    return {"mean": round(float(a.mean()), 3), "min": round(float(a.min()), 3), "max": round(float(a.max()), 3)}


def probe(
    name: str, model: Any, enrolled: dict[str, Shot], person: str, frames: list[Shot], photos: dict[str, Shot]
) -> dict[str, Any]:
    gallery = {who: model.embed(img, faces[0], gallery=True) for who, (img, faces) in enrolled.items()}
    genuine, impostor, strangers, embs = [], [], [], []
    for frame, faces in frames:
        if not faces:
            continue
        e = model.embed(frame, faces[0], gallery=False)
        embs.append(e)
        genuine.append(model.similarity(e, gallery[person]))
        impostor.append(max(model.similarity(e, v) for k, v in gallery.items() if k != person))
        others = [model.similarity(model.embed(frame, f, gallery=False), gallery[person]) for f in faces[1:]]
        strangers.append(max(others) if others else -1.0)
    g, imp, st = np.array(genuine), np.array(impostor), np.array(strangers)
    sep = g - np.maximum(imp, st)
    track = {}
    if isinstance(model, ArcFaceProbe):  # what the video pipeline's `mean` decision sees
        extra = {f: model.embed(img, faces[0], gallery=True) for f, (img, faces) in photos.items()}
        for n in (5, len(embs)):
            m = l2_normalize(np.mean(embs[:n], axis=0))
            track[f"first_{n}"] = {
                "genuine": round(model.similarity(m, gallery[person]), 3),
                "best_other_person": round(max(model.similarity(m, v) for k, v in gallery.items() if k != person), 3),
                **{f"photo {f}": round(model.similarity(m, v), 3) for f, v in extra.items()},
            }
    return {
        "recognizer": name,
        "track_mean": track,
        "frames": len(g),
        "identify_threshold": round(float(model.threshold_for(len(gallery))), 3),
        "genuine": stat(g),
        "best_impostor_person": stat(imp),
        "strangers": stat(st[st > -1]) if (st > -1).any() else None,
        "frames_above_threshold": int((g >= model.threshold_for(len(gallery))).sum()),
        "frames_separable": int((sep > 0).sum()),
        "min_separation": round(float(sep.min()), 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("clip_dir", nargs="?", type=Path, default=DEFAULT_CLIP_DIR)
    ap.add_argument("--segment", default="alex_lacamoire", help="identity of the required segment to probe")
    ap.add_argument("--no-dlib", action="store_true")
    ap.add_argument(
        "--photo", action="append", default=[], type=Path, help="another photo of the person: track means against it"
    )
    args = ap.parse_args(argv)
    labels = load_labels(args.clip_dir)
    seg = next(s for s in labels["segments"] if s["identity"] == args.segment and s.get("required"))
    sface = FaceRecognizer.from_config(ROOT / "configs" / "sface.yaml")
    clip = args.clip_dir / labels["video"]
    frames = [detect(sface, f) for f in read_frames(clip, seg["start_frame"], seg["end_frame"])]
    enrolled = {who: detect(sface, cv2.imread(str(args.clip_dir / f[0]))) for who, f in labels["enroll"].items()}
    photos = {p.name: detect(sface, cv2.imread(str(p))) for p in args.photo}
    models: list[tuple[str, Any]] = [
        ("sface", ArcFaceProbe(sface)),
        ("sface + 3-scale TTA", ArcFaceProbe(sface, TTA_SCALES)),
    ]
    try:
        models.append(
            (
                "w600k_mbf (opt-in, non-commercial)",
                ArcFaceProbe(FaceRecognizer.from_config(ROOT / "configs" / "w600k_mbf.yaml")),
            )
        )
    except Exception as exc:  # noqa: BLE001 - the opt-in package may be absent
        print(f"w600k_mbf skipped: {exc}", file=sys.stderr)
    if not args.no_dlib:
        try:
            models.append(("dlib resnet (face_recognition)", DlibProbe()))
        except ImportError as exc:
            print(f"dlib skipped: {exc}", file=sys.stderr)
    rows = [probe(n, m, enrolled, args.segment, frames, photos) for n, m in models]
    print(f"{args.segment}, frames {seg['start_frame']}-{seg['end_frame']} ({seg.get('note', '')})")
    print(
        f"{'recognizer':36} {'thr':>5} {'genuine mean [min, max]':>25} {'other person max':>17}"
        f" {'strangers max':>14} {'>=thr':>6} {'separable':>10}"
    )
    for r in rows:
        gen = r["genuine"]
        print(
            f"{r['recognizer']:36} {r['identify_threshold']:5.2f}"
            f" {gen['mean']:8.3f} [{gen['min']:.3f}, {gen['max']:.3f}]"
            f" {r['best_impostor_person']['max']:17.3f} {(r['strangers'] or {}).get('max', float('nan')):14.3f}"
            f" {r['frames_above_threshold']:3d}/{r['frames']:<2d} {r['frames_separable']:6d}/{r['frames']:<2d}"
        )
    for r in rows:
        for k, v in r["track_mean"].items():
            more = "".join(f", {sim:.3f} {what}" for what, sim in v.items() if what.startswith("photo "))
            print(
                f"{r['recognizer']:36} track mean of {k.replace('_', ' ')} frames: {v['genuine']:.3f} his photo,"
                f" {v['best_other_person']:.3f} the best other person{more}"
            )
    print(json.dumps({"segment": seg, "results": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
