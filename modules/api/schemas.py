"""Pydantic models of the HTTP API: what requests may carry and what responses hold.

flask-openapi3 builds ``/openapi.json`` from these and validates path, query and JSON bodies with them (400
``invalid_request``).  Image endpoints take their fields as multipart file parts, JSON base64 strings or a raw
``image/*`` body (:func:`image_request_body` documents them, :mod:`modules.api.inputs` reads them).  The response
models are also the serialisers (:func:`dump`), so the document and the answers cannot drift apart.
"""
from __future__ import annotations

import copy
import functools
import numbers
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from ..attributes import ATTRIBUTES
from ..face import Face
from ..recognizer import RecognitionResult, RecognizedFace
from ..storage import MAX_NAME_LEN

MAX_SQL_INT = 2**63 - 1
MAX_TOP_K = 100
MAX_LIST = 1000

BASE64_DOC = "the image file (JPEG, PNG, WebP, BMP, TIFF, GIF), base64-encoded; a data: URL prefix is accepted"
ATTRIBUTES_DOC = (
    "face attributes to add to every face, comma-separated (e.g. `age,gender,emotion`);"
    " available when the attributes module is installed, otherwise a non-empty value is a 400"
)
LEGACY_DOC = (
    "compatibility with the original `/recognition` clients: `1` (or `true`, `string`) answers the original's"
    ' bare JSON string, the largest face\'s name or `"Unknown"`; `name` answers'
    ' `{"name": <name of the largest face, "unknown" or "no face">}`'
)
LEGACY_TRUE, LEGACY_FALSE = ("1", "true", "yes", "on", "string"), ("0", "false", "no", "off", "")


def _legacy_mode(value: Any) -> Any:
    """``legacy`` as given (a bool, a form or query string) -> ``"string"``, ``"name"`` or None."""
    text = str(value).strip().lower() if value is not None else ""
    if value is True or text in LEGACY_TRUE:
        return "string"
    if value is False or value is None or text in LEGACY_FALSE:
        return None
    return "name" if text in ("name", "object") else value


@functools.cache
def _json_schema(model: type[BaseModel], *args: Any, **kwargs: Any) -> dict[str, Any]:
    return super(_In, model).model_json_schema(*args, **kwargs)


class _In(BaseModel):
    """Request models.  flask-openapi3 asks for the JSON schema of the query model on every
    request; it is computed once per model and argument set and handed out as a copy."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return copy.deepcopy(_json_schema(cls, *args, **kwargs))


class _Out(BaseModel):
    """Response models: records are read by attribute; a field missing, mistyped or unknown is an error."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)


# --- errors ---------------------------------------------------------------------------
class ErrorBody(_Out):
    code: str = Field(description="stable machine-readable code, e.g. `no_face`, `person_not_found`")
    message: str = Field(description="what went wrong, for people")
    details: dict[str, Any] | None = None


class ErrorResponse(_Out):
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
    legacy: Literal["string", "name"] | None = Field(None, description=LEGACY_DOC)

    _legacy = field_validator("legacy", mode="before")(_legacy_mode)


class DetectOptions(_ImageOptions):
    pass


FacePolicy = Literal["largest", "center", "error"]
POLICY_DOC = "which face of a photo with several: the largest, the most central, or refuse (422 `multiple_faces`)"


class EnrollOptions(_In):
    policy: FacePolicy = Field("largest", description=POLICY_DOC)


class VerifyOptions(_In):
    policy: FacePolicy = Field("largest", description=POLICY_DOC)


# --- image request bodies (documentation + validation of the non-file fields) --------------------------
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


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    if "$defs" in schema:  # pragma: no cover - guard for future nested models
        raise TypeError(f"{model.__name__}: image request bodies must be flat models")
    schema.pop("title", None)
    return schema


def one_image_body(options: type[BaseModel], what: str) -> dict[str, Any]:
    """``openapi_extensions`` for an operation reading one image (``file``, alias ``image``) and ``options``."""
    form = create_model(f"{options.__name__}Form", __base__=options, file=(bytes, Field(description=what)))
    json_model = create_model(
        f"{options.__name__}JSON", __base__=options, file=(str | None, Field(None, description=BASE64_DOC)),
        image=(str | None, Field(None, description="alias of `file`")),
    )
    return image_request_body(form, json_model)


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
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    description = (
        "multipart/form-data with file parts, JSON with base64 strings, or the raw image bytes (options then go in"
        " the query string)" if raw else "multipart/form-data with file parts, or JSON with base64 strings"
    )
    return {"requestBody": {"required": True, "description": description, "content": content}}


# --- JSON bodies -------------------------------------------------------------------------------
class CreateGalleryBody(_In):
    name: str = Field(min_length=1, max_length=MAX_NAME_LEN, description="gallery name")


class CreatePersonBody(_In):
    name: str = Field(min_length=1, max_length=MAX_NAME_LEN, description="person name, unique in the gallery")
    metadata: dict[str, Any] | None = Field(None, description="any JSON object (at most 64 KiB)")


class UpdatePersonBody(_In):
    name: str | None = Field(None, min_length=1, max_length=MAX_NAME_LEN, description="new name (rename)")
    metadata: dict[str, Any] | None = Field(None, description="replaces the metadata")


# --- responses: the JSON of every answer, built from the library's records ------------------------
def _plain(ndigits: int) -> BeforeValidator:
    """Numbers (numpy's too, also in arrays and lists) as floats rounded to ``ndigits``; anything else as given."""

    def conv(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            return round(float(v), ndigits)
        return v

    return BeforeValidator(conv)


Score = Annotated[float, _plain(4)]  # similarities and detector scores
Pixels = Annotated[list[float], _plain(1)]
Millis = dict[str, Annotated[float, _plain(2)]]


class CandidateOut(_Out):
    name: str = Field(validation_alias=AliasChoices("name", "person"))
    person_id: int | None = None
    face_id: int | None = Field(None, description="the enrolled face that gave `similarity`")
    similarity: Score


class GenderOut(_Out):
    value: Literal["female", "male"]
    probability: float


class EmotionOut(_Out):
    value: str
    scores: dict[str, float]


class PoseOut(_Out):
    yaw: float
    pitch: float
    roll: float


class QualityOut(_Out):
    score: float = Field(description="0..1")
    reasons: list[str]
    size_px: float
    sharpness: float | None


class DetectedFace(_Out):
    """A face: box `[x1, y1, x2, y2]`, 5 landmarks (eyes, nose, mouth corners) and the detector's score.
    The attributes asked for (`age`, `gender`, `emotion`, `pose`, `quality`) are added; the others are absent."""

    box: Pixels = Field(min_length=4, max_length=4)
    landmarks: Annotated[list[list[float]], _plain(1)]
    det_score: Score
    age: float | None = Field(None, description="estimated apparent age in years")
    gender: GenderOut | None = None
    emotion: EmotionOut | None = None
    pose: PoseOut | None = None
    quality: QualityOut | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_record(cls, v: Any) -> Any:
        ident = None
        if isinstance(v, RecognizedFace):
            v, ident = v.face, v.identification
        if not isinstance(v, Face):
            return v
        out = {"box": v.box, "landmarks": v.landmarks, "det_score": v.det_score, **v.attributes}
        if ident is not None and "name" in cls.model_fields:
            out.update(name=ident.name, similarity=ident.similarity, candidates=ident.candidates)
        return out

    @model_serializer(mode="wrap")
    def _asked_attributes_only(self, handler: Any):  # no return type: the schema stays the fields
        return {k: v for k, v in handler(self).items() if v is not None or k not in ATTRIBUTES}


class RecognizedFaceOut(DetectedFace):
    name: str = Field(description='best identity, or "unknown" below the open-set threshold')
    similarity: Score = Field(description="cosine similarity of the best candidate")
    candidates: list[CandidateOut] = Field(description="top-k people, best first")


class ImageSize(_Out):
    width: int
    height: int


class _ImageResult(_Out):
    """Built from a :class:`~modules.recognizer.RecognitionResult` (the fields this answer has)."""

    @model_validator(mode="before")
    @classmethod
    def _from_result(cls, v: Any) -> Any:
        if not isinstance(v, RecognitionResult):
            return v
        fields = {"faces": v.faces, "image": {"width": v.width, "height": v.height}, "gallery": v.gallery,
                  "model": v.model, "timings_ms": v.timings_ms, "name": v.name}
        return {k: x for k, x in fields.items() if k in cls.model_fields}


TIMINGS_DOC = "milliseconds per stage (queue: the wait for a decoding slot, decode, detect, align, embed, attributes, match) and total"


class RecognitionResponse(_ImageResult):
    faces: list[RecognizedFaceOut]
    image: ImageSize
    gallery: str | None
    model: str | None
    timings_ms: Millis = Field(description=TIMINGS_DOC)
    name: str = Field(
        description='compatibility field for the original clients: name of the largest face, "unknown" or "no face"'
    )


class LegacyRecognitionResponse(_Out):
    name: str


class RecognitionReply(RootModel[RecognitionResponse | LegacyRecognitionResponse | str]):
    """Every face (`RecognitionResponse`); with `legacy=1` the original's bare name string (`"Unknown"` when
    nobody matched); with `legacy=name` only `{"name": ...}`."""


class DetectResponse(_ImageResult):
    faces: list[DetectedFace]
    image: ImageSize
    timings_ms: Millis = Field(description=TIMINGS_DOC)


class VerifyResponse(_Out):
    similarity: Score
    same_person: bool = Field(validation_alias=AliasChoices("same_person", "same"))
    threshold: float
    face_a: DetectedFace | None
    face_b: DetectedFace | None
    timings_ms: Millis


class PersonVerifyResponse(_Out):
    gallery: str
    person: str
    similarity: Score = Field(description="best cosine similarity over the person's enrolled faces")
    same_person: bool
    threshold: float
    face_id: int | None = Field(description="the enrolled face that matched best")
    face: DetectedFace
    timings_ms: Millis


class GalleryOut(_Out):
    id: int
    name: str
    created_at: str
    num_people: int
    num_faces: int
    embedders: dict[str, int]


class GalleryList(_Out):
    galleries: list[GalleryOut]


class GalleryDeleted(_Out):
    deleted: str
    people: int
    faces: int


class PersonOut(_Out):
    id: int
    gallery: str
    name: str
    created_at: str
    num_faces: int
    metadata: dict[str, Any] | None = None


class PeoplePage(_Out):
    people: list[PersonOut]
    total: int
    offset: int
    limit: int


class PersonDeleted(_Out):
    deleted: str
    faces: int


class FaceOut(_Out):
    id: int
    person_id: int
    person: str
    gallery: str
    embedder: str = Field(description="id of the model that made the embedding")
    dim: int = Field(description="embedding size")
    created_at: str
    has_crop: bool = Field(description="the aligned crop is stored (faces imported from a legacy pickle have none)")
    source: str | None = Field(None, description="file name or label the face was enrolled from")
    source_sha256: str | None = None
    box: list[float] | None = None
    landmarks: list[list[float]] | None = None
    det_score: float | None = None


class FaceList(_Out):
    faces: list[FaceOut]


class EnrollResponse(_Out):
    face_ids: list[int]
    faces: list[FaceOut]
    person: PersonOut


class FaceDeleted(_Out):
    deleted: int


class ReembedResponse(_Out):
    galleries: int
    reembedded: int
    dropped: int
    kept_without_crop: int
    embedder: str
    dim: int
    #: what the new model was checked on and gave (``faces_checked``, ``different_people_similarity``, ...)
    checks: dict[str, int | float | None]


class HealthResponse(_Out):
    status: Literal["ok"]


class ReadyResponse(_Out):
    status: Literal["ready"]
    model: str
    gallery: str
    api_keys: bool


def dump(model: type[BaseModel], value: Any) -> dict[str, Any]:
    """The JSON body of ``value`` (a record, or a mapping of fields and records) as ``model`` describes it."""
    return model.model_validate(value).model_dump(mode="json")
