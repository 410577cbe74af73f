"""The image work behind the endpoints, on the recognizer's records (no Flask routing here)."""
from __future__ import annotations

import hashlib
import time
from collections import Counter

from ..errors import ConflictError, InvalidRequestError
from ..storage import mismatch_error
from ..recognizer import RecognitionResult
from .inputs import Upload
from .schemas import DetectOptions, IdentifyOptions, PersonVerifyResponse
from .service import FaceRecService

MAX_ENROLL_IMAGES = 50


def recognize(
    svc: FaceRecService, upload: Upload, gallery: str | None, opts: IdentifyOptions | DetectOptions, **kw
) -> RecognitionResult:
    """Every face of the upload, identified in ``gallery`` (``None``: detection only), with the attributes asked for."""
    limit = svc.settings.max_faces
    return svc.recognizer.recognize(upload.data, gallery, top_k=getattr(opts, "top_k", None),
                                    max_faces=min(opts.max_faces or limit, limit), attributes=opts.attributes, **kw)


def verify_person(svc: FaceRecService, upload: Upload, gallery: str, person: str, policy: str) -> PersonVerifyResponse:
    """The upload's face against every enrolled face of ``person``: the best match decides."""
    rec = svc.recognizer
    t0 = time.perf_counter()
    enrolled = rec.gallery.list_faces(gallery, person, with_embeddings=True)  # 404s first
    if not enrolled:
        raise ConflictError(
            f"person {person!r} has no enrolled faces to compare with", details={"gallery": gallery, "person": person}
        )
    stored = Counter((f.embedder, f.dim) for f in enrolled)
    if set(stored) != {(rec.model_id, rec.embedder.dim)}:
        raise mismatch_error(gallery, stored, rec.model_id, rec.embedder.dim)
    t1 = time.perf_counter()
    img = rec.load_image(upload.data)  # within the byte and pixel limits
    decode_ms = (time.perf_counter() - t1) * 1000
    face = rec.embed_image(img, policy)  # type: ignore[arg-type]
    checks = [rec.matcher.verify(face.embedding, f.embedding) for f in enrolled]
    best = max(range(len(checks)), key=lambda i: checks[i].similarity)
    timings = {"decode": decode_ms, "total": (time.perf_counter() - t0) * 1000}
    return PersonVerifyResponse(
        gallery=gallery, person=enrolled[0].person, similarity=checks[best].similarity, same_person=checks[best].same,
        threshold=checks[best].threshold, face_id=enrolled[best].id, face=face, timings_ms=timings,
    )


def enroll(svc: FaceRecService, gallery: str, person: str, uploads: list[Upload], policy: str) -> list[int]:
    """Enroll one face per upload for ``person`` (gallery and person created if missing); all or nothing."""
    if len(uploads) > MAX_ENROLL_IMAGES:
        raise InvalidRequestError(f"at most {MAX_ENROLL_IMAGES} images per enrollment request, got {len(uploads)}")
    images = [svc.recognizer.load_image(u.data) for u in uploads]
    sources = [u.source for u in uploads]
    new = svc.recognizer.prepare_enrollment(images, sources=sources, policy=policy)  # type: ignore[arg-type]
    for nf, u in zip(new, uploads, strict=True):
        nf.source_sha256 = hashlib.sha256(u.data).hexdigest()  # the uploaded file's hash, not the pixels'
    return svc.recognizer.gallery.add_faces(gallery, person, new)
