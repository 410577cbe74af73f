"""Shared pieces of the blueprints: error responses for the docs, tags, security."""
from __future__ import annotations

from typing import Any

from flask_openapi3 import APIBlueprint, Tag

from .schemas import ErrorResponse

#: documented on every protected operation (the app adds them to each blueprint)
COMMON_ERRORS = {400: ErrorResponse, 401: ErrorResponse, 403: ErrorResponse, 429: ErrorResponse, 500: ErrorResponse}
#: for operations that read an image (503 ``busy``: no decoding slot came free, see ``Retry-After``)
IMAGE_ERRORS = {413: ErrorResponse, 415: ErrorResponse, 422: ErrorResponse, 503: ErrorResponse}
NOT_FOUND = {404: ErrorResponse}
CONFLICT = {409: ErrorResponse}
UNAVAILABLE = {503: ErrorResponse}

API_PREFIX = "/api/v1"
#: room in a request body beside its file: the other JSON fields or form parts, multipart headers
BODY_SLACK = 64 * 1024
SECURITY = [{"ApiKey": []}]
SECURITY_SCHEMES = {
    "ApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "needed when the server runs with API keys on (`--api-keys`); create one with"
        " `python -m modules.api.keys create --gallery NAME`",
    }
}

TAG_RECOGNITION = Tag(name="recognition", description="Who is in this image or frame?")
TAG_ANALYSIS = Tag(name="analysis", description="Detection and 1:1 verification, no gallery needed")
TAG_GALLERIES = Tag(
    name="galleries", description="Named galleries of people (like CompreFace subjects / Azure person groups)"
)
TAG_PEOPLE = Tag(name="people", description="People of a gallery")
TAG_FACES = Tag(name="faces", description="Enrolled faces of a person")
TAG_HEALTH = Tag(name="health", description="Liveness, readiness, documentation")


def api_blueprint(name: str, import_name: str, **kw: Any) -> APIBlueprint:
    """A blueprint documenting :data:`COMMON_ERRORS` and the key on every operation; operation ids = view names."""
    kw.setdefault("abp_responses", COMMON_ERRORS)
    kw.setdefault("abp_security", SECURITY)
    return APIBlueprint(name, import_name, operation_id_callback=lambda name, path, method: name, **kw)


def binary_response(mimetype: str, description: str) -> dict[str, Any]:
    """The documentation of a response whose body is a file of ``mimetype``."""
    return {"description": description, "content": {mimetype: {"schema": {"type": "string", "format": "binary"}}}}


def body_limit(file_bytes: int) -> int:
    """The largest request body that may carry a file of ``file_bytes``: as base64 in JSON it is 4/3 of
    the file (whole 4-character groups), plus :data:`BODY_SLACK`."""
    return -(-file_bytes // 3) * 4 + BODY_SLACK
