"""Typed errors that know their HTTP status and a stable machine-readable code.

Every failure a user can cause (bad image, no face, unknown person, a config
typo) is one of these.  The HTTP layer turns them into
``{"error": {"code": ..., "message": ...}}`` with ``status``; the scripts print
``message`` and exit non-zero.  Anything else escaping is a bug.
"""
from __future__ import annotations

from typing import Any


class FaceRecError(Exception):
    """Base class of every error this project raises on purpose."""

    status: int = 500
    code: str = "internal_error"
    #: seconds after which a retry may succeed (the HTTP ``Retry-After``); ``None``: retrying will not help
    retry_after: float | None = None

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if retry_after is not None:
            self.retry_after = retry_after


# input
class InvalidRequestError(FaceRecError): status, code = 400, "invalid_request"
class BadImageError(FaceRecError): status, code = 400, "bad_image"  # empty, truncated, not an image
class UnsupportedMediaError(FaceRecError): status, code = 415, "unsupported_media_type"
class NotAVideoError(UnsupportedMediaError): code = "not_a_video"  # an image, a PDF, no video stream
class ImageTooLargeError(FaceRecError): status, code = 413, "too_large"  # bytes or pixels over the limit
class NoFaceError(FaceRecError): status, code = 422, "no_face"
class MultipleFacesError(FaceRecError): status, code = 422, "multiple_faces"
class LowQualityFaceError(FaceRecError): status, code = 422, "low_quality_face"
class UntrustedPickleError(FaceRecError): status, code = 400, "untrusted_pickle"  # unpickling runs code

# auth
class UnauthorizedError(FaceRecError): status, code = 401, "unauthorized"
class ForbiddenError(FaceRecError): status, code = 403, "forbidden"

# state
class NotFoundError(FaceRecError): status, code = 404, "not_found"
class GalleryNotFoundError(NotFoundError): code = "gallery_not_found"
class PersonNotFoundError(NotFoundError): code = "person_not_found"
class FaceNotFoundError(NotFoundError): code = "face_not_found"
class ConflictError(FaceRecError): status, code = 409, "conflict"
class EmbedderMismatchError(ConflictError): code = "embedder_mismatch"  # re-embed the gallery
class DegenerateEmbeddingsError(ConflictError): code = "degenerate_embeddings"  # a model unfit for a gallery

# configuration (a YAML config missing, malformed, with unknown keys) and models (a weights file missing)
class ConfigError(FaceRecError): status, code = 500, "config_error"
class ModelNotFoundError(ConfigError): code = "model_not_found"
class ServiceUnavailableError(FaceRecError): status, code, retry_after = 503, "unavailable", 1
class ServiceBusyError(ServiceUnavailableError): code = "busy"  # every decoding slot stayed taken: retry later
class RateLimitedError(FaceRecError): status, code, retry_after = 429, "rate_limited", 1  # over a quota
