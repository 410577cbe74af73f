"""The whole web service: the HTTP API (:mod:`modules.api`) with the browser pages (:mod:`modules.ui`).

    from modules.web import create_app
    app = create_app(load_settings())

``create_app`` takes what :func:`modules.api.create_app` takes; the pages are a plain Flask
blueprint, not part of the OpenAPI document.
"""
from __future__ import annotations

from typing import Any

from .api import FaceRecAPI
from .api import create_app as create_api
from .ui import register_ui


def create_app(*args: Any, **kwargs: Any) -> FaceRecAPI:
    app = create_api(*args, **kwargs)
    register_ui(app)
    return app
