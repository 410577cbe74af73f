"""The HTTP service: a Flask app factory with one blueprint per area.

    from modules.api import create_app, Settings
    app = create_app(Settings(data_dir="data"))

Models load once, in ``create_app``; the recognizer, gallery and key store are
shared by every request through ``app.extensions["facerec"]``.  The OpenAPI
document (``/openapi.json``) and the Swagger UI (``/docs``) are generated from
the routes and pydantic models by flask-openapi3.

Blueprints: ``health``, ``recognition``, ``analysis``, ``galleries``, ``videos`` and ``azure_face``; another area plugs in
with ``extra_blueprints=[...]`` or ``app.register_api(bp)`` before the first request.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flask.json.provider import DefaultJSONProvider
from flask_openapi3 import APIBlueprint, Info, OpenAPI

from ..errors import ConfigError
from ..files import loose_permissions, private_dir
from ..recognizer import FaceRecognizer
from ..storage import open_gallery
from . import observability
from .auth import check_request
from .common import SECURITY_SCHEMES, body_limit
from .errors import register_error_handlers, validation_error_response
from .keys import KeyStore
from .limits import init_limits, mark_decode_owner
from .schemas import ErrorResponse
from .security import install as install_browser_safety
from .service import EXTENSION, FaceRecService, get_service
from ..settings import Settings

__all__ = ["API_VERSION", "FaceRecService", "Settings", "create_app", "get_service"]

API_VERSION = "1.0.0"
DOCS_PREFIX = "/docs"

log = logging.getLogger("facerec.api")


class SafeJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with a body nested too deeply for the parser being a 400, not a crash."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("the JSON body is nested too deeply") from None


class FaceRecAPI(OpenAPI):
    """flask-openapi3's app, with docstring descriptions kept as Markdown paragraphs."""

    def generate_spec_json(self) -> None:
        super().generate_spec_json()
        for item in self.spec_json.get("paths", {}).values():
            for op in item.values():
                if isinstance(op, dict) and isinstance(op.get("description"), str):
                    op["description"] = op["description"].replace("<br/>", "\n").strip()


def create_app(
    settings: Settings | None = None,
    *,
    recognizer: FaceRecognizer | None = None,
    gallery: Any = None,
    extra_blueprints: Iterable[APIBlueprint] = (),
    **config: Any,
) -> FaceRecAPI:
    """Build the app: load the models (or reuse ``recognizer``'s), open the gallery and key store.

    ``config`` entries go to ``app.config`` (e.g. ``TESTING=True``).
    """
    settings = settings or Settings()
    app = FaceRecAPI(
        __name__,
        info=Info(
            title="Face recognition service",
            version=API_VERSION,
            description="Detect, identify and verify faces; manage galleries of people."
            " Every error is `{\"error\": {\"code\": ..., \"message\": ...}}`.",
        ),
        security_schemes=SECURITY_SCHEMES,
        validation_error_status=400,
        validation_error_model=ErrorResponse,
        validation_error_callback=validation_error_response,
        doc_prefix=DOCS_PREFIX,
        doc_url="/openapi.json",
        static_folder=None,  # no app-level static files
    )
    app.config.update(
        # an image of max_upload_bytes as base64 JSON (the files themselves are checked against max_upload_bytes)
        MAX_CONTENT_LENGTH=body_limit(settings.max_upload_bytes),
        MAX_FORM_MEMORY_SIZE=body_limit(settings.max_upload_bytes),  # base64 in a plain form field
        FACEREC_SETTINGS=settings,
        SWAGGER_CONFIG={"persistAuthorization": True},
    )
    app.json = SafeJSONProvider(app)
    app.config.update(config)

    try:
        private_dir(settings.data_dir)  # 0700: faces and embeddings are biometric data
    except OSError as exc:
        raise ConfigError(f"cannot create the data directory {settings.data_dir}: {exc}") from exc
    if mode := loose_permissions(settings.data_dir):
        log.warning("the data directory %s is %s: others may read it (chmod 700 it)", settings.data_dir, mode)
    gallery = open_gallery(settings.gallery_location) if gallery is None else gallery
    limits = {"max_image_bytes": settings.max_upload_bytes, "max_image_pixels": settings.max_pixels}
    if recognizer is None:
        rec = FaceRecognizer(settings.config, gallery, **limits)
    else:  # reuse loaded models (tests, several apps in one process) with this app's gallery
        rec = FaceRecognizer(recognizer.config, gallery, detector=recognizer.detector, embedder=recognizer.embedder,
                             **limits)
    gallery.ensure_gallery(settings.default_gallery)
    keys = KeyStore(settings.keys_path) if settings.api_keys else None
    app.extensions[EXTENSION] = FaceRecService(settings, rec, gallery, keys)

    register_error_handlers(app)
    install_browser_safety(app)  # Host, cross-site writes, CORS, page headers (docs/security.md)
    init_limits(app)  # before the key check: requests it refuses count too
    observability.install(app, settings, rec)  # access log, /metrics
    app.before_request(check_request)
    app.before_request(mark_decode_owner)  # decoding slots are shared fairly among clients

    from . import analysis, azure_face, azure_support, galleries, health, legacy_clients, recognition, videos

    azure_support.install(app)  # Azure Face API v1.0 subset: faceId cache, Azure error codes (docs/azure.md)
    modules = (health, recognition, analysis, galleries, videos, legacy_clients, azure_face)
    blueprints = [m.create_blueprint() for m in modules]
    for bp in [*blueprints, *extra_blueprints]:
        app.register_api(bp)
    health.register_docs(app)
    log.info("face recognition API ready: model %s, gallery %s, API keys %s", rec.model_id,
             settings.gallery_location, "on" if keys else "off")
    return app
