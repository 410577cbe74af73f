"""Browser pages served by the Flask app: gallery, photo, video and webcam.

    from modules.ui import register_ui
    register_ui(app)          # after create_app(...), before the first request

Pages (server-rendered Jinja templates, plain JavaScript, no external assets):

    /                 -> redirect to /ui/gallery
    /ui/gallery       galleries, people with their face crops; add (with photos), rename, delete
    /ui/photo         upload a photo: boxes, names, similarity and attributes drawn, and the JSON
    /ui/video         upload a video (progress bar), annotated stream, annotated video,
                      per-person timeline exportable as CSV/JSON
    /ui/webcam        browser camera frames sent to POST /recognition, answer drawn live
    /ui/static/...    app.css and the scripts

The pages call the JSON API from the browser.  With API keys on, the pages
themselves are public (they hold no data); the scripts ask for a key once,
keep it in ``sessionStorage`` and send it as ``X-API-Key``.  The MJPEG
stream of a video job uses the job's ``stream_url`` (with its ``?token=``),
because an ``<img>`` cannot send headers.

This is a plain Flask ``Blueprint`` so nothing here appears in ``/openapi.json``.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, abort, current_app, redirect, render_template, send_from_directory, url_for

from ..api.auth import public
from ..api.security import set_page_headers

__all__ = ["PAGES", "create_blueprint", "register_ui"]

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATE_DIR = HERE / "templates"

#: (endpoint, path, nav label)
PAGES = (
    ("gallery", "/ui/gallery", "Gallery"),
    ("photo", "/ui/photo", "Photo"),
    ("video", "/ui/video", "Video"),
    ("webcam", "/ui/webcam", "Webcam"),
)


@functools.cache
def _static_version(filename: str) -> str:
    """A short content hash for cache busting (``?v=``); computed once per file and process."""
    try:
        return hashlib.sha256((STATIC_DIR / filename).read_bytes()).hexdigest()[:10]
    except OSError:
        return "0"


def _static_url(filename: str) -> str:
    return url_for("ui.static_file", filename=filename, v=_static_version(filename))


def _page_context(active: str) -> dict[str, Any]:
    svc = current_app.extensions.get("facerec")
    settings = getattr(svc, "settings", None)
    videos = current_app.extensions.get("facerec_videos")
    video_limit = getattr(getattr(videos, "limits", None), "max_upload_bytes", None)
    return {
        "active": active,
        "pages": PAGES,
        "static_url": _static_url,
        "keys_required": bool(svc is not None and svc.keys is not None),
        "default_gallery": getattr(settings, "default_gallery", "default"),
        "max_upload_bytes": getattr(settings, "max_upload_bytes", 0),
        "videos_enabled": "videos" in current_app.blueprints,
        "video_max_upload_bytes": video_limit or 0,
    }


def _render(template: str, active: str, title: str):
    # the pages load nothing from elsewhere; crops and video downloads are fetched as blobs
    return set_page_headers(current_app.make_response(render_template(template, title=title, **_page_context(active))))


def create_blueprint() -> Blueprint:
    """The ``ui`` blueprint (every view public: the pages hold no data, the API calls carry the key)."""
    bp = Blueprint("ui", __name__, template_folder=str(TEMPLATE_DIR), static_folder=None)

    @bp.get("/")
    @bp.get("/ui")
    @bp.get("/ui/")
    @public
    def index():
        return redirect(url_for("ui.gallery"))

    def page(endpoint: str, title: str):
        return public(lambda: _render(f"ui/{endpoint}.html", endpoint, title))

    for endpoint, path, title in PAGES:
        bp.add_url_rule(path, endpoint, page(endpoint, title), methods=["GET"])

    @bp.get("/ui/static/<path:filename>")
    @public
    def static_file(filename: str):
        if not (STATIC_DIR / filename).resolve().is_relative_to(STATIC_DIR):
            abort(404)
        resp = send_from_directory(STATIC_DIR, filename, max_age=3600)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    return bp


def register_ui(app: Flask) -> Flask:
    """Add the pages to an app built by :func:`modules.api.create_app` (idempotent; before the first request)."""
    if "ui" not in app.blueprints:
        app.register_blueprint(create_blueprint())
    return app
