"""One error shape for every failure: ``{"error": {"code": ..., "message": ...}}``.

Typed :class:`~modules.errors.FaceRecError` s carry their own status and code;
Werkzeug's HTTP errors (unknown route, wrong method, Flask's
``MAX_CONTENT_LENGTH``...) are mapped to the same shape; anything else is a
bug: logged with its traceback, answered with a plain 500 that reveals nothing.
An error with a ``retry_after`` (429 ``rate_limited``, 503 ``unavailable`` and ``busy``) also sets the
``Retry-After`` header, in whole seconds.
"""
from __future__ import annotations

import logging
import math
from typing import Any

from flask import Flask, Response, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from ..errors import FaceRecError, ServiceUnavailableError
from .schemas import ErrorBody, ErrorResponse

log = logging.getLogger("facerec.api")

#: HTTP status -> our stable error code for Werkzeug's exceptions
HTTP_CODES = {
    400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 408: "request_timeout", 409: "conflict", 411: "length_required", 413: "too_large",
    414: "uri_too_long", 415: "unsupported_media_type", 416: "range_not_satisfiable", 422: "unprocessable",
    429: "too_many_requests", 431: "headers_too_large", 500: "internal_error", 501: "not_implemented",
    503: "unavailable",
}


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> Response:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details or None))
    resp = jsonify(body.model_dump(mode="json", exclude_none=True))
    resp.status_code = status
    return resp


def handle_facerec_error(exc: FaceRecError) -> Response:
    if exc.status >= 500 and not isinstance(exc, ServiceUnavailableError):
        # config/model/database failures: the message may name server paths
        log.error("%s %s failed: %s", request.method, request.path, exc.message, exc_info=exc)
        return error_response(exc.status, exc.code, "internal server error; see the server log")
    resp = error_response(exc.status, exc.code, exc.message, exc.details)
    if exc.retry_after is not None:
        resp.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return resp


def handle_http_exception(exc: HTTPException) -> Response:
    if exc.code is None:  # pragma: no cover - abort(Response) is returned as-is by Flask
        return exc.get_response()
    code = HTTP_CODES.get(exc.code, f"http_{exc.code}")
    message = exc.description or exc.name
    if exc.code == 413:
        limit = request.max_content_length  # the route's own (video uploads), else MAX_CONTENT_LENGTH
        message = f"the request body is larger than the limit of {limit} bytes" if limit else message
    resp = error_response(exc.code, code, message)
    for name, value in exc.get_headers():
        if name.lower() not in ("content-type", "content-length"):
            resp.headers[name] = value
    return resp


def handle_unexpected(exc: Exception) -> Response:
    log.exception("unhandled error in %s %s", request.method, request.path)
    return error_response(500, "internal_error", "internal server error; see the server log")


def validation_error_response(exc: ValidationError) -> Response:
    """flask-openapi3's hook for invalid path/query/body parameters: 400 ``invalid_request``."""
    return error_response(400, "invalid_request", format_validation_error(exc), {"errors": validation_details(exc)})


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        where = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "request")
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts[:10])


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(FaceRecError, handle_facerec_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
