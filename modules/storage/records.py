"""The gallery's records and their validation, shared by every backend.

A *gallery* is a named set of *people*; a person has *faces*; a face is one embedding stamped with the id of
the model that produced it, plus the aligned crop it came from (PNG, so the gallery can be re-embedded with
another model).  All faces of a gallery come from one embedder; a search with another raises
:class:`~modules.errors.EmbedderMismatchError` naming the fix.
"""
from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..errors import (BadImageError, ConflictError, EmbedderMismatchError, FaceNotFoundError, FaceRecError,
                      GalleryNotFoundError, InvalidRequestError, PersonNotFoundError)
from ..embedders.checks import check_vectors
from ..face import RESERVED_NAMES, Face

MAX_NAME_LEN = 128
MAX_EMBEDDER_LEN = 128
MAX_SOURCE_LEN = 1024
MAX_METADATA_BYTES = 64 * 1024
MAX_TOP_K = 1000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
REEMBED_COMMAND = "python -m modules.cli reembed --gallery {gallery} --config CONFIG"


# --- validation ---------------------------------------------------------------
def validate_name(name: Any, what: str = "name") -> str:
    """A gallery or person name, NFC-normalised; :class:`InvalidRequestError` if unusable (names end up as
    folder and file names in exports, hence no ``/``, ``.`` or ``..``)."""
    if not isinstance(name, str):
        raise InvalidRequestError(f"{what} must be a string, got {type(name).__name__}")
    name = unicodedata.normalize("NFC", name)
    if not name or not name.strip():
        raise InvalidRequestError(f"{what} must not be empty")
    if len(name) > MAX_NAME_LEN:
        raise InvalidRequestError(f"{what} is {len(name)} characters long; the limit is {MAX_NAME_LEN}")
    if name != name.strip():
        raise InvalidRequestError(f"{what} {name!r} must not start or end with whitespace")
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")]
    if bad:
        raise InvalidRequestError(f"{what} {name!r} contains a control character ({bad[0]!r})")
    if "/" in name:
        raise InvalidRequestError(f"{what} {name!r} must not contain '/'")
    if name in (".", ".."):
        raise InvalidRequestError(f"{what} must not be {name!r}")
    return name


def validate_new_name(name: Any, what: str = "person name") -> str:
    """A name about to be stored: :func:`validate_name`, and neither one of the recognizer's answers
    (``unknown``, ``no face``) nor holding invisible format characters (bidi overrides, zero-width
    characters) that make look-alike names.  Lookups of stored names use :func:`validate_name` only."""
    name = validate_name(name, what)
    if name.casefold() in RESERVED_NAMES:
        raise InvalidRequestError(f"{what} {name!r} is reserved: the recognizer answers it for faces it cannot name")
    hidden = [c for c in name if unicodedata.category(c) == "Cf"]
    if hidden:
        raise InvalidRequestError(
            f"{what} {name!r} contains an invisible formatting character (U+{ord(hidden[0]):04X}):"
            " bidi controls and zero-width characters are refused"
        )
    return name


def validate_embedder_id(embedder: Any) -> str:
    if not isinstance(embedder, str) or not embedder.strip():
        raise InvalidRequestError("embedder id must be a non-empty string")
    if len(embedder) > MAX_EMBEDDER_LEN or any(unicodedata.category(c) == "Cc" for c in embedder):
        raise InvalidRequestError(f"embedder id {embedder[:40]!r}... is not a valid model id")
    return embedder


def validate_metadata(metadata: Any) -> str | None:
    """Person metadata: ``None`` or a JSON object; returned serialised."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise InvalidRequestError(f"person metadata must be a JSON object, got {type(metadata).__name__}")
    try:
        text = json.dumps(dict(metadata), allow_nan=False, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"person metadata is not JSON-serialisable: {exc}") from exc
    if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
        raise InvalidRequestError(f"person metadata is larger than {MAX_METADATA_BYTES} bytes")
    return text


def as_unit_vector(embedding: Any, what: str = "embedding") -> np.ndarray:
    """A finite non-zero vector ``(d,)`` or ``(1, d)``, returned L2-normalised as float32 ``(d,)``."""
    try:
        v = np.asarray(embedding, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{what} is not a numeric vector: {exc}") from exc
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1 or v.size == 0:
        raise InvalidRequestError(f"{what} must be a vector (d,) or (1, d), got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise InvalidRequestError(f"{what} contains NaN or infinite values")
    norm = float(np.linalg.norm(v))
    if not norm > 1e-6:
        raise InvalidRequestError(f"{what} has zero length")
    return (v / norm).astype(np.float32)


def _json_numbers(value: Any, shape: tuple[int, ...], what: str) -> str | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{what} must be numbers: {exc}") from exc
    if arr.shape != shape:
        raise InvalidRequestError(f"{what} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidRequestError(f"{what} contains NaN or infinite values")
    return json.dumps(np.round(arr, 3).tolist())


# --- records ------------------------------------------------------------------
@dataclass
class NewFace:
    """One face to enroll.  ``crop_png``: the aligned 112x112 crop as PNG (``None`` only for legacy imports,
    which cannot be re-embedded); ``source_sha256``: of the source file's bytes; ``box`` ``[x1, y1, x2, y2]``
    and ``landmarks`` ``(5, 2)`` in the source image's pixels."""

    embedding: np.ndarray
    embedder: str
    crop_png: bytes | None = None
    source: str | None = None
    source_sha256: str | None = None
    box: Any = None
    landmarks: Any = None
    det_score: float | None = None

    @classmethod
    def from_face(cls, face: Face, *, source: str | None = None, source_sha256: str | None = None,
                  crop_png: bytes | None = None) -> "NewFace":
        """From a detected, aligned and embedded :class:`~modules.face.Face` (PNG-encodes ``face.aligned``)."""
        if face.embedding is None or face.embedder is None:
            raise InvalidRequestError("the face has no embedding yet")
        if crop_png is None and face.aligned is not None:
            from ..images import encode_png

            crop_png = encode_png(face.aligned)
        return cls(embedding=face.embedding, embedder=face.embedder, crop_png=crop_png, source=source,
                   source_sha256=source_sha256, box=face.box, landmarks=face.landmarks, det_score=float(face.det_score))


@dataclass
class ValidFace:
    """A :class:`NewFace` after validation, ready to store."""

    embedding: np.ndarray  # float32 (d,), unit length
    embedder: str
    crop_png: bytes | None
    source: str | None
    source_sha256: str | None
    box_json: str | None
    landmarks_json: str | None
    det_score: float | None

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[0])


def validate_new_face(face: Any, what: str = "face") -> ValidFace:
    if not isinstance(face, NewFace):
        raise InvalidRequestError(f"{what} must be a NewFace, got {type(face).__name__}")
    embedding = as_unit_vector(face.embedding, f"{what} embedding")
    embedder = validate_embedder_id(face.embedder)
    crop = bytes(face.crop_png) if isinstance(face.crop_png, (bytearray, memoryview)) else face.crop_png
    if crop is not None and (not isinstance(crop, bytes) or not crop.startswith(PNG_SIGNATURE)):
        raise InvalidRequestError(f"{what} crop must be PNG bytes")
    source = None if face.source is None else str(face.source)  # e.g. a Path
    if source is not None and (len(source) > MAX_SOURCE_LEN or "\x00" in source):
        raise InvalidRequestError(f"{what} source must be at most {MAX_SOURCE_LEN} characters, no NUL")
    sha = face.source_sha256
    if sha is not None and (not isinstance(sha, str) or not _SHA256_RE.match(sha.lower())):
        raise InvalidRequestError(f"{what} source_sha256 must be 64 hex digits")
    det_score = face.det_score
    if det_score is not None:
        try:
            det_score = float(det_score)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"{what} det_score must be a number") from exc
        if not math.isfinite(det_score):
            raise InvalidRequestError(f"{what} det_score must be finite")
    return ValidFace(embedding, embedder, crop, source, None if sha is None else sha.lower(),
                     _json_numbers(face.box, (4,), f"{what} box"),
                     _json_numbers(face.landmarks, (5, 2), f"{what} landmarks"), det_score)


@dataclass
class GalleryInfo:
    id: int
    name: str
    created_at: str
    num_people: int
    num_faces: int
    embedders: dict[str, int] = field(default_factory=dict)  # model id -> face count


@dataclass
class PersonInfo:
    id: int
    gallery: str
    name: str
    created_at: str
    num_faces: int
    metadata: dict[str, Any] | None = None


@dataclass
class FaceInfo:
    id: int
    person_id: int
    person: str
    gallery: str
    embedder: str
    dim: int
    created_at: str
    has_crop: bool
    source: str | None = None
    source_sha256: str | None = None
    box: list[float] | None = None
    landmarks: list[list[float]] | None = None
    det_score: float | None = None
    embedding: np.ndarray | None = None  # only when asked for


# --- search helpers --------------------------------------------------------------
def as_queries(queries: Any) -> np.ndarray:
    """Query embeddings ``(d,)`` or ``(M, d)`` as float32 ``(M, d)`` unit rows."""
    try:
        q = np.asarray(queries, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"query embeddings are not numeric: {exc}") from exc
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] == 0:
        raise InvalidRequestError(f"query embeddings must be (d,) or (M, d), got shape {q.shape}")
    if not np.all(np.isfinite(q)):
        raise InvalidRequestError("query embeddings contain NaN or infinite values")
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if q.shape[0] and not np.all(norms > 1e-6):
        raise InvalidRequestError("a query embedding has zero length")
    return (q / np.maximum(norms, 1e-12)).astype(np.float32)


def validate_top_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= MAX_TOP_K:
        raise InvalidRequestError(f"top_k must be an integer in [1, {MAX_TOP_K}], got {top_k!r}")
    return int(top_k)


def mismatch_error(gallery: str, stored: Mapping[tuple[str, int], int], embedder_id: str,
                   dim: int | None) -> EmbedderMismatchError:
    """The error for a gallery whose embeddings do not come from ``embedder_id`` (``dim``)."""
    stored_txt = ", ".join(f"{e!r} ({d}-d, {n} faces)" for (e, d), n in sorted(stored.items()))
    want = f"{embedder_id!r}" + (f" ({dim}-d)" if dim is not None else "")
    return EmbedderMismatchError(
        f"gallery {gallery!r} holds embeddings from {stored_txt}, but the embedder in use is {want};"
        f" embeddings of different models are not comparable. Re-embed the gallery from its stored"
        f" crops with: {REEMBED_COMMAND.format(gallery=gallery)}",
        details={
            "gallery": gallery,
            "gallery_embedders": sorted({e for e, _ in stored}),
            "embedder": embedder_id,
            "command": REEMBED_COMMAND.format(gallery=gallery),
        },
    )


MAX_LIST_LIMIT = 10_000
DEFAULT_ANN_THRESHOLD = 20_000  # faces in one gallery; below it search is exact


def utc_now_iso(dt: datetime | None = None) -> str:
    """``2024-05-01T12:00:00.123Z`` (UTC, milliseconds): the timestamp format of every record."""
    dt = datetime.now(timezone.utc) if dt is None else dt.astimezone(timezone.utc)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_face_id(face_id: Any) -> int:
    """A face id given as an int or a string of digits; :class:`InvalidRequestError` otherwise."""
    if isinstance(face_id, bool) or not isinstance(face_id, (int, np.integer)):
        if not str(face_id).isdecimal():
            raise InvalidRequestError(f"face id must be an integer, got {face_id!r}")
        return int(str(face_id))
    return int(face_id)


def validate_page(offset: Any, limit: Any) -> tuple[int, int | None]:
    """``list_people`` paging: offset >= 0, limit in [1, MAX_LIST_LIMIT] or None (all)."""
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise InvalidRequestError(f"offset must be a non-negative integer, got {offset!r}")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or not 1 <= limit <= MAX_LIST_LIMIT
    ):
        raise InvalidRequestError(f"limit must be an integer in [1, {MAX_LIST_LIMIT}], got {limit!r}")
    return int(offset), None if limit is None else int(limit)


def validate_enrollment(faces_by_person: Any) -> tuple[dict[str, list[ValidFace]], str, int]:
    """``{person: [NewFace]}`` validated: names normalised, one embedder and dim for all; and that pair."""
    if not isinstance(faces_by_person, Mapping):
        raise InvalidRequestError("faces must be given as {person name: [NewFace, ...]}")
    items: dict[str, list[ValidFace]] = {}
    for person, faces in faces_by_person.items():
        pname = validate_new_name(person, "person name")
        if isinstance(faces, (NewFace, str, bytes)) or not isinstance(faces, Sequence):
            raise InvalidRequestError(f"faces of {pname!r} must be a list of NewFace")
        if len(faces) == 0:
            raise InvalidRequestError(f"no faces of {pname!r} to add")
        items.setdefault(pname, []).extend(validate_new_face(f, f"face {i}") for i, f in enumerate(faces))
    if not items:
        raise InvalidRequestError("no faces to add")
    first_name, (first, *_) = next(iter(items.items()))
    for pname, faces in items.items():
        for i, f in enumerate(faces):
            if (f.embedder, f.dim) != (first.embedder, first.dim):
                raise InvalidRequestError(
                    f"face {i} of {pname!r} is a {f.dim}-d embedding from {f.embedder!r} but face 0 of"
                    f" {first_name!r} is a {first.dim}-d one from {first.embedder!r}; one enrollment must use one"
                    " embedder")
    return items, first.embedder, first.dim


def embed_crops(rows: Sequence[tuple[int, bytes]], embedder: Any) -> dict[int, np.ndarray]:
    """``{face id: unit embedding}`` of stored PNG crops ``(face id, png)`` with ``embedder``."""
    import cv2

    crops = []
    for fid, png in rows:
        img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise BadImageError(f"the stored crop of face {fid} cannot be decoded", details={"face_id": fid})
        crops.append(img)
    feats = np.asarray(embedder.embed(np.stack(crops)), dtype=np.float32)
    if feats.shape != (len(rows), int(embedder.dim)):
        raise FaceRecError(
            f"embedder {embedder.model_id!r} returned {feats.shape} for {len(rows)} crops;"
            f" expected ({len(rows)}, {embedder.dim})"
        )
    check_vectors(feats, embedder.model_id, [fid for fid, _ in rows])  # NaN, infinity, zeros: a typed 409
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return {int(fid): feats[i] for i, (fid, _) in enumerate(rows)}


def uncroppable_error(counts: Mapping[str, int], model_id: str) -> ConflictError:
    """Faces without a crop from another model block a re-embed (unless they are dropped)."""
    total = sum(counts.values())
    where = ", ".join(f"{g!r}: {n}" for g, n in sorted(counts.items()))
    return ConflictError(
        f"{total} face(s) have no stored crop (imported from a legacy pickle) and embeddings from another"
        f" model, so they cannot be re-embedded with {model_id!r} ({where}). Re-enroll those people from"
        f" images, or re-embed with drop_uncroppable=True (--drop-uncroppable) to delete those faces.",
        details={"uncroppable": dict(counts)},
    )


def gallery_not_found(name: str) -> GalleryNotFoundError:
    return GalleryNotFoundError(f"gallery {name!r} not found", details={"gallery": name})


def person_not_found(gallery: str, name: str) -> PersonNotFoundError:
    details = {"gallery": gallery, "person": name}
    return PersonNotFoundError(f"person {name!r} not found in gallery {gallery!r}", details=details)


def person_exists(gallery: str, name: str) -> ConflictError:
    details = {"gallery": gallery, "person": name}
    return ConflictError(f"person {name!r} already exists in gallery {gallery!r}", details=details)


def face_not_found(face_id: int, gallery: str | None) -> FaceNotFoundError:
    where = f" in gallery {gallery!r}" if gallery is not None else ""
    return FaceNotFoundError(f"face {face_id} not found{where}", details={"face_id": face_id})
