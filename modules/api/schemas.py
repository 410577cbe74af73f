"""Pydantic models of the HTTP API: what requests may carry and what responses hold.

flask-openapi3 builds ``/openapi.json`` from these.  Path, query and plain
JSON bodies are validated by flask-openapi3 itself (errors become 400
``invalid_request``).  Endpoints that take images accept the same fields as
``multipart/form-data`` (file parts), as JSON (base64 strings) or as a raw
``image/*`` body; :func:`image_request_body` documents both shapes from a
pair of models and :mod:`modules.api.inputs` reads them.
"""
from __future__ import annotations

import copy
import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..storage import MAX_NAME_LEN

MAX_SQL_INT = 2**63 - 1
MAX_TOP_K = 100
MAX_LIST = 1000

NameStr = Field(min_length=1, max_length=MAX_NAME_LEN)
BASE64_DOC = "the image file (JPEG, PNG, WebP, BMP, TIFF, GIF), base64-encoded; a data: URL prefix is accepted"
ATTRIBUTES_DOC = (
    "face attributes to add to every face, comma-separated (e.g. `age,gender,emotion`);"
    " available when the attributes module is installed, otherwise a non-empty value is a 400"
)
LEGACY_DOC = (
    "compatibility with the original `/recognition` clients: the response is only"
    ' `{"name": <name of the largest face, "unknown" or "no face">}`'
)


_SCHEMA_CACHE: dict[tuple, dict[str, Any]] = {}
_SCHEMA_LOCK = threading.Lock()


class _In(BaseModel):
    """Request models.  flask-openapi3 asks for the JSON schema of the query model on every
    request; it is computed once per model and argument set and handed out as a copy."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        key = (cls, args, tuple(sorted(kwargs.items(), key=lambda kv: kv[0])))
        try:
            cached = _SCHEMA_CACHE.get(key)
        except TypeError:  # unhashable argument: no caching
            return super().model_json_schema(*args, **kwargs)
        if cached is None:
            cached = super().model_json_schema(*args, **kwargs)
            with _SCHEMA_LOCK:
                _SCHEMA_CACHE[key] = cached
        return copy.deepcopy(cached)


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- errors ---------------------------------------------------------------------------
class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. `no_face`, `person_not_found`")
    message: str = Field(description="what went wrong, for people")
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    """Every error, whatever the status."""

    error: ErrorBody


# --- path and query parameters ----------------------------------------------------------------
class GalleryPath(_In):
    gallery: str = Field(min_length=1, max_length=MAX_NAME_LEN, description="gallery name")


class PersonPath(GalleryPath):
    person: str = Field(min_length=1, max_length=MAX_NAME_LEN, description="person name")


class FacePath(PersonPath):
    face_id: int = Field(ge=1, le=MAX_SQL_INT, description="face id (from enrollment)")


class PageQuery(_In):
    offset: int = Field(0, ge=0, le=MAX_SQL_INT, description="people to skip (ordered by name)")
    limit: int = Field(100, ge=1, le=MAX_LIST, description="people to return")


class ReembedQuery(_In):
    drop_uncroppable: bool = Field(
        False, description="delete faces that have no stored crop (legacy imports) instead of failing with 409"
    )


class _ImageOptions(_In):
    max_faces: int | None = Field(None, ge=1, le=MAX_LIST, description="analyse at most this many faces, largest first")
    attributes: str | None = Field(None, max_length=200, description=ATTRIBUTES_DOC)


class IdentifyOptions(_ImageOptions):
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K, description="candidates per face (default from the config)")


class RecognitionOptions(IdentifyOptions):
    gallery: str | None = Field(None, min_length=1, max_length=MAX_NAME_LEN, description="gallery (default `default`)")
    legacy: bool = Field(False, description=LEGACY_DOC)


class DetectOptions(_ImageOptions):
    pass


FacePolicy = Literal["largest", "center", "error"]
POLICY_DOC = "which face of a photo with several: the largest, the most central, or refuse (422 `multiple_faces`)"


class EnrollOptions(_In):
    policy: FacePolicy = Field("largest", description=POLICY_DOC)


class VerifyOptions(_In):
    policy: FacePolicy = Field("largest", description=POLICY_DOC)


# --- image request bodies (documentation + validation of the non-file fields) --------------------------
class RecognitionForm(RecognitionOptions):
    file: bytes = Field(description="the image or video frame")


class RecognitionJSON(RecognitionOptions):
    file: str | None = Field(None, description=BASE64_DOC)
    image: str | None = Field(None, description="alias of `file`")


class IdentifyForm(IdentifyOptions):
    file: bytes = Field(description="the image or video frame")


class IdentifyJSON(IdentifyOptions):
    file: str | None = Field(None, description=BASE64_DOC)
    image: str | None = Field(None, description="alias of `file`")


class DetectForm(DetectOptions):
    file: bytes = Field(description="the image")


class DetectJSON(DetectOptions):
    file: str | None = Field(None, description=BASE64_DOC)
    image: str | None = Field(None, description="alias of `file`")


class EnrollForm(EnrollOptions):
    file: list[bytes] = Field(description="one or more photos of the person, one face each (repeat the part)")


class EnrollJSON(EnrollOptions):
    file: str | list[str] | None = Field(None, description=BASE64_DOC + "; or a list of them")
    files: list[str] | None = Field(None, description="alias of `file` (a list)")


class VerifyForm(VerifyOptions):
    file_a: bytes = Field(description="first image")
    file_b: bytes = Field(description="second image")


class VerifyJSON(VerifyOptions):
    file_a: str = Field(description=BASE64_DOC)
    file_b: str = Field(description=BASE64_DOC)


class PersonVerifyForm(VerifyOptions):
    file: bytes = Field(description="the image to compare with the person's enrolled faces")


class PersonVerifyJSON(VerifyOptions):
    file: str | None = Field(None, description=BASE64_DOC)
    image: str | None = Field(None, description="alias of `file`")


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    if "$defs" in schema:  # pragma: no cover - guard for future nested models
        raise TypeError(f"{model.__name__}: image request bodies must be flat models")
    schema.pop("title", None)
    return schema


def image_request_body(form: type[BaseModel], json_model: type[BaseModel], *, raw: bool = True) -> dict[str, Any]:
    """``openapi_extensions`` for an operation that reads images as multipart, JSON or raw bytes."""
    form_schema = _inline_schema(form)
    content: dict[str, Any] = {
        "multipart/form-data": {"schema": form_schema},
        "application/json": {"schema": _inline_schema(json_model)},
    }
    arrays = [k for k, v in form_schema.get("properties", {}).items() if v.get("type") == "array"]
    if arrays:
        content["multipart/form-data"]["encoding"] = {k: {"style": "form", "explode": True} for k in arrays}
    if raw:
        content["application/octet-stream"] = {
            "schema": {"type": "string", "format": "binary"},
        }
    return {
        "requestBody": {
            "required": True,
            "description": "multipart/form-data with file parts, JSON with base64 strings, or the raw image"
            " bytes (options then go in the query string)"
            if raw
            else "multipart/form-data with file parts, or JSON with base64 strings",
            "content": content,
        }
    }


# --- JSON bodies -------------------------------------------------------------------------------
class CreateGalleryBody(_In):
    name: str = Field(min_length=1, max_length=MAX_NAME_LEN, description="gallery name")


class CreatePersonBody(_In):
    name: str = Field(min_length=1, max_length=MAX_NAME_LEN, description="person name, unique in the gallery")
    metadata: dict[str, Any] | None = Field(None, description="any JSON object (at most 64 KiB)")


class UpdatePersonBody(_In):
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_LEN, description="new name (rename)")
    metadata: dict[str, Any] | None = Field(None, description="replaces the metadata")


# --- responses ---------------------------------------------------------------------------------
class CandidateOut(BaseModel):
    name: str
    person_id: int | None = None
    face_id: int | None = None
    similarity: float


class DetectedFace(_Out):
    """A face: box `[x1, y1, x2, y2]`, 5 landmarks (eyes, nose, mouth corners) and the detector's score.
    Attributes, when asked for, are added as extra fields."""

    box: list[float] = Field(min_length=4, max_length=4)
    landmarks: list[list[float]]
    det_score: float


class RecognizedFace(DetectedFace):
    name: str = Field(description='best identity, or "unknown" below the open-set threshold')
    similarity: float = Field(description="cosine similarity of the best candidate")
    candidates: list[CandidateOut] = Field(description="top-k people, best first")


class ImageSize(BaseModel):
    width: int
    height: int


class Timings(_Out):
    """Milliseconds per stage (decode, detect, align, embed, match, attributes) and total."""

    total: float | None = None


class RecognitionResponse(_Out):
    faces: list[RecognizedFace]
    image: ImageSize
    gallery: str | None
    model: str | None
    timings_ms: dict[str, float]
    name: str = Field(
        description='compatibility field for the original clients: name of the largest face, "unknown" or "no face"'
    )


class LegacyRecognitionResponse(BaseModel):
    name: str


class DetectResponse(BaseModel):
    faces: list[DetectedFace]
    image: ImageSize
    timings_ms: dict[str, float]


class VerifyResponse(BaseModel):
    similarity: float
    same_person: bool
    threshold: float
    face_a: DetectedFace | None
    face_b: DetectedFace | None
    timings_ms: dict[str, float]


class PersonVerifyResponse(BaseModel):
    gallery: str
    person: str
    similarity: float = Field(description="best cosine similarity over the person's enrolled faces")
    same_person: bool
    threshold: float
    face_id: int | None = Field(description="the enrolled face that matched best")
    face: DetectedFace
    timings_ms: dict[str, float]


class GalleryOut(BaseModel):
    id: int
    name: str
    created_at: str
    num_people: int
    num_faces: int
    embedders: dict[str, int]


class GalleryList(BaseModel):
    galleries: list[GalleryOut]


class GalleryDeleted(BaseModel):
    deleted: str
    people: int
    faces: int


class PersonOut(BaseModel):
    id: int
    gallery: str
    name: str
    created_at: str
    num_faces: int
    metadata: dict[str, Any] | None = None


class PeoplePage(BaseModel):
    people: list[PersonOut]
    total: int
    offset: int
    limit: int


class PersonDeleted(BaseModel):
    deleted: str
    faces: int


class FaceOut(BaseModel):
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


class FaceList(BaseModel):
    faces: list[FaceOut]


class EnrollResponse(BaseModel):
    face_ids: list[int]
    faces: list[FaceOut]
    person: PersonOut


class FaceDeleted(BaseModel):
    deleted: int


class ReembedResponse(_Out):
    galleries: int
    reembedded: int
    dropped: int
    kept_without_crop: int
    embedder: str
    dim: int


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready"]
    model: str
    gallery: str
    api_keys: bool
