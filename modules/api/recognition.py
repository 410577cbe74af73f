"""``POST /recognition``: the original endpoint, now returning every face.

Accepts what the original clients send (JSON ``{"file": "<base64>"}``, also
``image``, whatever the content type it comes with), a multipart ``file`` part, or the raw image bytes.  ``gallery``
(default ``default``), ``top_k``, ``max_faces``, ``attributes`` and ``legacy``
may be given in the body or the query string.
"""
from __future__ import annotations

from flask import jsonify
from flask_openapi3 import APIBlueprint

from ..face import NO_FACE, UNKNOWN
from . import operations
from .auth import authorize_gallery
from .common import IMAGE_ERRORS, NOT_FOUND, TAG_RECOGNITION, api_blueprint
from .inputs import IMAGE_FIELDS, get_images, get_options, read_payload
from .schemas import (
    LegacyRecognitionResponse, RecognitionOptions, RecognitionReply, RecognitionResponse, dump, one_image_body,
)
from .service import get_service

#: what the original server answered when nobody matched (or no face was found)
ORIGINAL_UNKNOWN = "Unknown"


def create_blueprint() -> APIBlueprint:
    bp = api_blueprint("recognition", __name__, abp_tags=[TAG_RECOGNITION])

    @bp.post("/recognition", responses={200: RecognitionReply, **IMAGE_ERRORS, **NOT_FOUND},
             openapi_extensions=one_image_body(RecognitionOptions, "the image or video frame"))
    def recognize(query: RecognitionOptions):
        """Recognize every face in an image or video frame

        Returns every face, largest first: `box` `[x1, y1, x2, y2]`, 5 `landmarks`, `det_score`,
        the best identity `name` (or `"unknown"`), its cosine `similarity` and the top-k `candidates`,
        plus per-stage `timings_ms`.

        **Original clients**: a JSON body is read whatever its content type (the original read
        `json.loads(request.data)`). With `legacy=1` (query or body) the answer is the original's: a bare
        JSON string, the largest face's name or `"Unknown"`. The top-level `name` field holds that name
        (`"unknown"` or `"no face"` when nobody matched); `legacy=name` answers only `{"name": ...}`.
        """
        svc = get_service()
        payload = read_payload()
        opts = get_options(payload, query, exclude=IMAGE_FIELDS)
        gallery = opts.gallery or svc.settings.default_gallery
        authorize_gallery(gallery)
        upload = get_images(payload, IMAGE_FIELDS)[0]
        missing_ok = gallery == svc.settings.default_gallery  # the default gallery may have been deleted: empty
        result = operations.recognize(svc, upload, gallery, opts, missing_gallery_ok=missing_ok)
        if opts.legacy == "string":  # the original's jsonify(name)
            return jsonify(ORIGINAL_UNKNOWN if result.name in (UNKNOWN, NO_FACE) else result.name)
        return dump(LegacyRecognitionResponse if opts.legacy else RecognitionResponse, result)

    return bp
