"""The image work behind the endpoints: identify, detect, verify, enroll (no Flask routing here)."""
from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

from ..errors import ConflictError, GalleryNotFoundError, InvalidRequestError
from ..face import UNKNOWN, Identification
from ..storage import mismatch_error
from ..recognizer import RecognitionResult, RecognizedFace
from .inputs import Upload
from .schemas import DetectOptions, IdentifyOptions
from .service import FaceRecService

STAGES = ("decode", "detect", "align", "embed", "match", "attributes")
MAX_ENROLL_IMAGES = 50
NO_FACE = "no face"


def _timings(ms: dict[str, float]) -> dict[str, float]:
    out = {k: round(ms[k], 2) for k in STAGES if k in ms}
    out["total"] = round(sum(ms.get(k, 0.0) for k in STAGES), 2)
    return out


def identify(
    svc: FaceRecService, upload: Upload, gallery: str, opts: IdentifyOptions, *, missing_ok: bool = False
) -> dict[str, Any]:
    """Every face with its best identity (or ``unknown``), top-k candidates and timings.

    ``missing_ok``: a gallery that does not exist is treated as empty (every face ``unknown``).
    """
    rec = svc.recognizer
    which = svc.parse_attributes(opts.attributes)  # a bad attribute list fails before the work
    img, decode_ms = svc.decode_timed(upload)
    _, faces, ms = rec.analyze(img, max_faces=svc.max_faces(opts.max_faces))
    ms["decode"] = decode_ms
    t0 = time.perf_counter()
    idents: list[Identification | None]
    try:
        if faces:
            idents = list(rec.identify_embeddings(np.stack([f.embedding for f in faces]), gallery, opts.top_k))
        else:
            rec.gallery.num_people(gallery)  # 404 for an unknown gallery, even without faces
            idents = []
    except GalleryNotFoundError:
        if not missing_ok:
            raise
        thr = rec.config.matching.identify_threshold
        idents = [Identification(name=UNKNOWN, similarity=0.0, candidates=[], threshold=thr) for _ in faces]
    ms["match"] = (time.perf_counter() - t0) * 1000
    svc.add_attributes(img, faces, which, ms)
    result = RecognitionResult(
        faces=[RecognizedFace(f, i) for f, i in zip(faces, idents, strict=True)],
        width=int(img.shape[1]),
        height=int(img.shape[0]),
        timings_ms={},
        gallery=gallery,
        model=rec.model_id,
    )
    out = result.to_dict()
    out["timings_ms"] = _timings(ms)
    out["name"] = legacy_name(result)
    return out


def legacy_name(result: RecognitionResult) -> str:
    """The single name the original endpoint returned: the largest face's, ``unknown`` or ``no face``."""
    if not result.faces:
        return NO_FACE
    largest = max(result.faces, key=lambda rf: rf.face.width * rf.face.height)
    return largest.identification.name if largest.identification is not None else UNKNOWN


def detect(svc: FaceRecService, upload: Upload, opts: DetectOptions) -> dict[str, Any]:
    which = svc.parse_attributes(opts.attributes)
    img, decode_ms = svc.decode_timed(upload)
    t0 = time.perf_counter()
    faces = svc.recognizer.detector.detect(img)[: svc.max_faces(opts.max_faces)]
    ms = {"decode": decode_ms, "detect": (time.perf_counter() - t0) * 1000}
    svc.add_attributes(img, faces, which, ms)
    return {
        "faces": [f.to_dict() for f in faces],
        "image": {"width": int(img.shape[1]), "height": int(img.shape[0])},
        "timings_ms": _timings(ms),
    }


def verify(svc: FaceRecService, a: Upload, b: Upload, policy: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    img_a, da = svc.decode_timed(a)
    img_b, db = svc.decode_timed(b)
    t1 = time.perf_counter()
    out = svc.recognizer.verify(img_a, img_b, policy).to_dict()  # type: ignore[arg-type]
    out["timings_ms"] = {
        "decode": round(da + db, 2),
        "verify": round((time.perf_counter() - t1) * 1000, 2),
        "total": round((time.perf_counter() - t0) * 1000, 2),
    }
    return out


def verify_person(svc: FaceRecService, upload: Upload, gallery: str, person: str, policy: str) -> dict[str, Any]:
    rec = svc.recognizer
    t0 = time.perf_counter()
    enrolled = rec.gallery.list_faces(gallery, person, with_embeddings=True)  # 404s first
    if not enrolled:
        raise ConflictError(
            f"person {person!r} has no enrolled faces to compare with", details={"gallery": gallery, "person": person}
        )
    stored: dict[tuple[str, int], int] = {}
    for f in enrolled:
        stored[(f.embedder, f.dim)] = stored.get((f.embedder, f.dim), 0) + 1
    if set(stored) != {(rec.model_id, rec.embedder.dim)}:
        raise mismatch_error(gallery, stored, rec.model_id, rec.embedder.dim)
    img, decode_ms = svc.decode_timed(upload)
    face = rec.embed_image(img, policy)  # type: ignore[arg-type]
    best_sim, best_id = -2.0, None
    for f in enrolled:
        v = rec.matcher.verify(face.embedding, f.embedding)
        if v.similarity > best_sim:
            best_sim, best_id = v.similarity, f.id
    thr = rec.config.matching.verify_threshold
    return {
        "gallery": gallery,
        "person": enrolled[0].person,
        "similarity": round(float(best_sim), 4),
        "same_person": bool(best_sim >= thr),
        "threshold": thr,
        "face_id": best_id,
        "face": face.to_dict(),
        "timings_ms": {"decode": round(decode_ms, 2), "total": round((time.perf_counter() - t0) * 1000, 2)},
    }


def enroll(svc: FaceRecService, gallery: str, person: str, uploads: list[Upload], policy: str) -> list[int]:
    """Enroll one face per upload for ``person`` (gallery and person created if missing); all or nothing."""
    if len(uploads) > MAX_ENROLL_IMAGES:
        raise InvalidRequestError(f"at most {MAX_ENROLL_IMAGES} images per enrollment request, got {len(uploads)}")
    images = [svc.decode(u) for u in uploads]
    new = svc.recognizer.prepare_enrollment(images, sources=[u.source for u in uploads], policy=policy)  # type: ignore[arg-type]
    for nf, u in zip(new, uploads, strict=True):
        nf.source_sha256 = hashlib.sha256(u.data).hexdigest()  # the uploaded file's hash, not the pixels'
    return svc.recognizer.gallery.add_faces(gallery, person, new)
