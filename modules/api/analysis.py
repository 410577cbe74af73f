"""Detect, verify (two images, or an image against an enrolled person) and identify in a chosen gallery."""
from __future__ import annotations

from flask_openapi3 import APIBlueprint

from . import operations
from .common import API_PREFIX, CONFLICT, IMAGE_ERRORS, NOT_FOUND, TAG_ANALYSIS, TAG_RECOGNITION, api_blueprint
from .inputs import get_images, get_options, read_payload, read_request
from .schemas import (
    DetectOptions,
    DetectResponse,
    GalleryPath,
    IdentifyOptions,
    PersonPath,
    PersonVerifyResponse,
    RecognitionResponse,
    VerifyForm,
    VerifyJSON,
    VerifyOptions,
    VerifyResponse,
    dump,
    image_request_body,
    one_image_body,
)
from .service import get_service


def create_blueprint() -> APIBlueprint:
    bp = api_blueprint("analysis", __name__, url_prefix=API_PREFIX)

    @bp.post("/detect", tags=[TAG_ANALYSIS], responses={200: DetectResponse, **IMAGE_ERRORS},
             openapi_extensions=one_image_body(DetectOptions, "the image"))
    def detect(query: DetectOptions):
        """Detect faces (boxes, landmarks, scores; attributes on request)

        No gallery is used. An image without faces gives `faces: []`.
        """
        opts, uploads = read_request(query)
        return dump(DetectResponse, operations.recognize(get_service(), uploads[0], None, opts))

    @bp.post("/verify", tags=[TAG_ANALYSIS], responses={200: VerifyResponse, **IMAGE_ERRORS},
             openapi_extensions=image_request_body(VerifyForm, VerifyJSON, raw=False))
    def verify(query: VerifyOptions):
        """Verify that two images show the same person

        Compares the largest face of each image (see `policy`); 422 `no_face` when an image has none.
        """
        payload = read_payload()
        opts = get_options(payload, query, exclude=("file_a", "file_b"))
        a = get_images(payload, ("file_a",), raw_ok=False)[0]
        b = get_images(payload, ("file_b",), raw_ok=False)[0]
        return dump(VerifyResponse, get_service().recognizer.verify(a.data, b.data, opts.policy))

    @bp.post("/galleries/<gallery>/identify", tags=[TAG_RECOGNITION],
             responses={200: RecognitionResponse, **IMAGE_ERRORS, **NOT_FOUND},
             openapi_extensions=one_image_body(IdentifyOptions, "the image or video frame"))
    def identify(path: GalleryPath, query: IdentifyOptions):
        """Identify every face of an image in a chosen gallery

        Same response as `POST /recognition`; 404 when the gallery does not exist.
        """
        opts, uploads = read_request(query)
        return dump(RecognitionResponse, operations.recognize(get_service(), uploads[0], path.gallery, opts))

    @bp.post("/galleries/<gallery>/people/<person>/verify", tags=[TAG_ANALYSIS],
             responses={200: PersonVerifyResponse, **IMAGE_ERRORS, **NOT_FOUND, **CONFLICT},
             openapi_extensions=one_image_body(VerifyOptions, "the image to compare with the person's enrolled faces"))
    def verify_person(path: PersonPath, query: VerifyOptions):
        """Verify an image against an enrolled person

        The best cosine similarity over the person's enrolled faces, against the 1:1 threshold.
        409 when the person has no faces or they come from another model.
        """
        opts, uploads = read_request(query)
        answer = operations.verify_person(get_service(), uploads[0], path.gallery, path.person, opts.policy)
        return answer.model_dump(mode="json")

    return bp
