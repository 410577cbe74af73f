"""The image work behind the endpoints, on the recognizer's records (no Flask routing here)."""
from __future__ import annotations

from collections import Counter
from typing import Any

from ..errors import ConflictError, InvalidRequestError
from ..matching import Verification
from ..recognizer import RecognitionResult, StageTimer
from ..storage import mismatch_error
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


def person_faces(svc: FaceRecService, gallery: str, person: str) -> list[Any]:
    """The enrolled faces of ``person`` with their embeddings, of the recognizer's model (404, 409 otherwise)."""
    rec = svc.recognizer
    enrolled = rec.gallery.list_faces(gallery, person, with_embeddings=True)  # 404s first
    if not enrolled:
        raise ConflictError(
            f"person {person!r} has no enrolled faces to compare with", details={"gallery": gallery, "person": person}
        )
    stored = Counter((f.embedder, f.dim) for f in enrolled)
    if set(stored) != {(rec.model_id, rec.embedder.dim)}:
        raise mismatch_error(gallery, stored, rec.model_id, rec.embedder.dim)
    return enrolled


def best_match(svc: FaceRecService, embedding: Any, enrolled: list[Any]) -> tuple[Verification, Any]:
    """The 1:1 decision against the enrolled face most similar to ``embedding``, and that face."""
    checks = [svc.recognizer.matcher.verify(embedding, f.embedding) for f in enrolled]
    best = max(range(len(checks)), key=lambda i: checks[i].similarity)
    return checks[best], enrolled[best]


def verify_person(svc: FaceRecService, upload: Upload, gallery: str, person: str, policy: str) -> PersonVerifyResponse:
    """The upload's face against every enrolled face of ``person``: the best match decides."""
    timer = StageTimer()
    enrolled = person_faces(svc, gallery, person)
    timer.lap("lookup")
    face = svc.recognizer.embed_image(upload.data, policy, timer=timer)  # type: ignore[arg-type]
    check, match = best_match(svc, face.embedding, enrolled)
    timer.lap("verify")
    timings = timer.total()
    return PersonVerifyResponse(
        gallery=gallery, person=match.person, similarity=check.similarity, same_person=check.same,
        threshold=check.threshold, face_id=match.id, face=face, timings_ms=timings,
    )


def enroll(svc: FaceRecService, gallery: str, person: str, uploads: list[Upload], policy: str) -> list[int]:
    """Enroll one face per upload for ``person`` (gallery and person created if missing); all or nothing.

    The uploads are decoded one at a time (decode, detect, embed, drop the pixels); nothing is written
    unless every one gives a face.  ``source_sha256`` is the hash of each uploaded file.
    """
    if len(uploads) > MAX_ENROLL_IMAGES:
        raise InvalidRequestError(f"at most {MAX_ENROLL_IMAGES} images per enrollment request, got {len(uploads)}")
    rec = svc.recognizer
    new = rec.prepare_enrollment([u.data for u in uploads], sources=[u.source for u in uploads],
                                 policy=policy)  # type: ignore[arg-type]
    return rec.gallery.add_faces(gallery, person, new)
