"""Liveness (``/health``), readiness (``/ready``), the OpenAPI document and the docs page."""
from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, redirect
from flask_openapi3 import APIBlueprint

from ..errors import FaceRecError, GalleryNotFoundError, ServiceUnavailableError
from .auth import public
from .common import TAG_HEALTH, UNAVAILABLE, api_blueprint
from .schemas import ErrorResponse, HealthResponse, ReadyResponse
from .security import any_host
from .service import get_service

log = logging.getLogger("facerec.api")


def create_blueprint() -> APIBlueprint:
    errors = {400: ErrorResponse, 500: ErrorResponse}
    bp = api_blueprint("health", __name__, abp_tags=[TAG_HEALTH], abp_responses=errors, abp_security=None)

    @bp.get("/health", responses={200: HealthResponse})
    @public
    @any_host  # probes may name the machine's address
    def health():
        """Liveness: the process answers"""
        return HealthResponse(status="ok").model_dump()

    @bp.get("/ready", responses={200: ReadyResponse, **UNAVAILABLE})
    @public
    @any_host
    def ready():
        """Readiness: models loaded and the gallery database answers (503 otherwise)"""
        svc = get_service()
        try:
            svc.gallery.num_people(svc.settings.default_gallery)
        except GalleryNotFoundError:
            pass  # deleted by a client: still a working database
        except FaceRecError as exc:
            log.warning("readiness check failed: %s", exc.message)
            raise ServiceUnavailableError("the gallery database is not available") from None
        return ReadyResponse(
            status="ready", model=svc.recognizer.model_id, gallery=svc.settings.default_gallery,
            api_keys=svc.keys is not None,
        ).model_dump()

    return bp


def register_docs(app: Flask) -> None:
    """``/openapi.json`` at the root and ``/docs`` -> the Swagger UI (assets served locally)."""

    @public
    def openapi_json():
        return jsonify(current_app.api_doc)  # type: ignore[attr-defined]

    @public
    def docs():
        return redirect(f"{app.doc_prefix}/swagger", code=302)  # type: ignore[attr-defined]

    app.add_url_rule("/openapi.json", "openapi_json", openapi_json, methods=["GET"])
    app.add_url_rule("/docs", "docs", docs, methods=["GET"], strict_slashes=True)
