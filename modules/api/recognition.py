"""``POST /recognition``: the original endpoint, now returning every face.

Accepts what the original clients send (JSON ``{"file": "<base64>"}``, also
``image``), a multipart ``file`` part, or the raw image bytes.  ``gallery``
(default ``default``), ``top_k``, ``max_faces``, ``attributes`` and ``legacy``
may be given in the body or the query string.
"""
from __future__ import annotations

from flask_openapi3 import APIBlueprint

from . import operations
from .auth import authorize_gallery
from .common import IMAGE_ERRORS, NOT_FOUND, TAG_RECOGNITION, api_blueprint
from .inputs import IMAGE_FIELDS, get_images, get_options, read_payload
from .schemas import (
    LegacyRecognitionResponse, RecognitionOptions, RecognitionReply, RecognitionResponse, dump, one_image_body,
)
from .service import get_service


def create_blueprint() -> APIBlueprint:
    bp = api_blueprint("recognition", __name__, abp_tags=[TAG_RECOGNITION])

    @bp.post("/recognition", responses={200: RecognitionReply, **IMAGE_ERRORS, **NOT_FOUND},
             openapi_extensions=one_image_body(RecognitionOptions, "the image or video frame"))
    def recognize(query: RecognitionOptions):
        """Recognize every face in an image or video frame

        Returns every face, largest first: `box` `[x1, y1, x2, y2]`, 5 `landmarks`, `det_score`,
        the best identity `name` (or `"unknown"`), its cosine `similarity` and the top-k `candidates`,
        plus per-stage `timings_ms`.

        **Original clients**: the top-level `name` field holds the single name the original endpoint
        returned (the largest face's name, `"unknown"`, or `"no face"`); with `legacy=1` (query or body)
        the response is only `{"name": ...}`.
        """
        svc = get_service()
        payload = read_payload()
        opts = get_options(payload, query, exclude=IMAGE_FIELDS)
        gallery = opts.gallery or svc.settings.default_gallery
        authorize_gallery(gallery)
        upload = get_images(payload, IMAGE_FIELDS)[0]
        missing_ok = gallery == svc.settings.default_gallery  # the default gallery may have been deleted: empty
        result = operations.recognize(svc, upload, gallery, opts, missing_gallery_ok=missing_ok)
        return dump(LegacyRecognitionResponse if opts.legacy else RecognitionResponse, result)

    return bp
