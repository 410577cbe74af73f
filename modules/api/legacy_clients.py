"""The routes of the tools this service replaces, so that their clients keep working with only the address changed.

    POST /add        multipart ``files`` (one or several; ``file`` too) + ``first_name``, ``sur_name``
                     -> 202 ``{"ID": "<face id>"}`` (a list for several files)
    POST /search     multipart ``file`` -> 202 ``{"confidence_score", "image_url", "name"}``,
                     200 ``{"response": "Image Unknown"}``, 202 ``{"image_url", "response": "Found More Known Faces"}``
    POST /my_point   ``json=json.dumps({"video": <base64>, "name": <file name>})`` (a JSON string holding the
                     object; a plain object works too) -> ``{"coordinates", "recognized_person_names", "name"}``,
                     synchronously, for videos up to ``FACEREC_VIDEO_MY_POINT_MAX_SECONDS``

``/add`` and ``/search`` answer their original's messages with status 200 (``No  files inserted yet``, the
bad-extension message, ``No human face, ...``, ``invalid input``); everything else (401, 403, 413, 429, 503)
is the service's error envelope.  Every route works on the default gallery.  ``/my_point`` runs a video job
(:mod:`.videos`' job manager, so the same limits and queue) and waits for it; the job is deleted once answered.
The original ``/recognition`` client is served by :mod:`.recognition` (``legacy=1``).
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from flask import jsonify, request, url_for
from flask_openapi3 import APIBlueprint, Tag
from pydantic import ValidationError

from ..errors import (
    BadImageError,
    FaceRecError,
    ImageTooLargeError,
    InvalidRequestError,
    MultipleFacesError,
    NoFaceError,
    ServiceUnavailableError,
)
from ..face import UNKNOWN
from ..files import write_private
from ..video.videoio import VIDEO_SUFFIXES, probe
from . import operations
from .auth import authorize_gallery
from .common import IMAGE_ERRORS, api_blueprint
from .errors import format_validation_error
from .inputs import Upload, decode_base64
from .legacy_schemas import (
    MyPointRequest,
    MyPointResponse,
    OriginalAdded,
    OriginalFound,
    OriginalFoundMany,
    OriginalMessage,
)
from .limits import client_id
from .schemas import RecognitionOptions
from .service import get_service
from .videos import UPLOAD_ERRORS, get_manager

TAG_ORIGINAL = Tag(name="original clients", description="The routes of the tools this service replaces")
ALLOWED_EXTENSIONS = {"png", "jpg", "jpeg", "webp"}
NO_FILES = "No  files inserted yet"
BAD_EXTENSION = "Please upload the right picture file with extension of  png, jpg or jpeg"
NO_HUMAN_FACE = "No human face, please insert a clear picture of a person with the face looking at the camera"
INVALID_INPUT = "invalid input"
IMAGE_UNKNOWN = "Image Unknown"
MORE_KNOWN_FACES = "Found More Known Faces"


def _message(text: str):
    return jsonify(OriginalMessage(response=text).model_dump())


def _allowed(filename: str) -> bool:
    return "." in filename and filename.rsplit(".", 1)[1].lower() in ALLOWED_EXTENSIONS


def _crop_url(gallery: str, person: str, face_id: int) -> str:
    return url_for("galleries.get_face_crop", gallery=gallery, person=person, face_id=face_id, _external=True)


def _multipart_body(*fields: str, files: str) -> dict[str, Any]:
    props = {f: {"type": "string"} for f in fields}
    props[files] = {"type": "array", "items": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": props, "required": [files, *fields]}}}}}


def add_person_images() -> Any:
    """Add a person's photos (the original `/add`): 202 `{"ID": ...}`

    Multipart `files` (one or several; `file` also works), `first_name` and `sur_name`. The person is
    `"<first_name> <sur_name>"` in the default gallery, with both names in its metadata. The original's messages
    come with status 200: `{"response": "No  files inserted yet"}`, the bad-extension message (png, jpg, jpeg,
    webp), `No human face, ...` and `invalid input` (missing names, an unreadable image).
    """
    svc = get_service()
    gallery = svc.settings.default_gallery
    authorize_gallery(gallery)
    parts = request.files.getlist("files") or request.files.getlist("file")
    if not parts or all(not p.filename for p in parts):
        return _message(NO_FILES)
    if not all(p.filename and _allowed(p.filename) for p in parts):
        return _message(BAD_EXTENSION)
    first, last = (" ".join((request.form.get(k) or "").split()) for k in ("first_name", "sur_name"))
    if not first or not last:
        return _message(INVALID_INPUT)
    person = f"{first} {last}"
    uploads = [Upload(p.read(), p.filename or "file") for p in parts]
    try:
        ids = operations.enroll(svc, gallery, person, uploads, "largest")
        info = svc.gallery.get_person(gallery, person)
        svc.gallery.set_person_metadata(gallery, person, {**(info.metadata or {}), "first_name": first, "sur_name": last})
    except (NoFaceError, MultipleFacesError):
        return _message(NO_HUMAN_FACE)
    except (BadImageError, InvalidRequestError):
        return _message(INVALID_INPUT)
    ids_out = [str(i) for i in ids]
    return jsonify(OriginalAdded(ID=ids_out[0] if len(ids_out) == 1 else ids_out).model_dump()), 202


def search_image() -> Any:
    """Who is in this photo (the original `/search`)

    Multipart `file`. 202 `{"confidence_score", "image_url", "name"}` for one known person (`image_url`: their
    stored face crop); 202 `{"image_url", "response": "Found More Known Faces"}` for several;
    200 `{"response": "Image Unknown"}` for none; the `/add` messages for a missing file or a bad extension.
    """
    svc = get_service()
    gallery = svc.settings.default_gallery
    authorize_gallery(gallery)
    part = request.files.get("file") or request.files.get("files")
    if part is None or not part.filename:
        return _message(NO_FILES)
    if not _allowed(part.filename):
        return _message(BAD_EXTENSION)
    try:
        result = operations.recognize(svc, Upload(part.read(), part.filename), gallery, RecognitionOptions(),
                                      missing_gallery_ok=True)
    except (BadImageError, InvalidRequestError):
        return _message(INVALID_INPUT)
    known = [f.identification for f in result.faces if f.identification is not None and f.identification.known]
    if not known:
        return _message(IMAGE_UNKNOWN)
    best = known[0].candidates[0]  # faces come largest first
    url = _crop_url(gallery, best.person, best.face_id)
    if len(known) > 1:
        return jsonify(OriginalFoundMany(image_url=url, response=MORE_KNOWN_FACES).model_dump()), 202
    body = OriginalFound(confidence_score=f"{known[0].similarity * 100:.2f}", image_url=url, name=known[0].name)
    return jsonify(body.model_dump()), 202


def _my_point_request(max_bytes: int) -> MyPointRequest:
    """The body, JSON whatever the content type, the original client's double encoding undone."""
    request.max_content_length = max_bytes * 4 // 3 + (1 << 20)  # base64 in JSON
    try:
        body: Any = json.loads(request.get_data(cache=False))
        if isinstance(body, str):  # json=json.dumps({...}): a JSON string whose content is the object
            body = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidRequestError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequestError('the body must be a JSON object {"video": <base64>, "name": ...}')
    try:
        return MyPointRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequestError(format_validation_error(exc)) from None


def _coordinates(frames: list[dict[str, Any]]) -> tuple[list[list[list[int]]], list[str]]:
    """Per-frame ``[top, right, bottom, left]`` boxes (face_recognition's order) and the known names seen."""
    coords, names = [], []
    for fr in frames:
        boxes = []
        for f in fr["faces"]:
            x1, y1, x2, y2 = (round(v) for v in f["box"])
            boxes.append([y1, x2, y2, x1])
            if f["name"] != UNKNOWN and f["name"] not in names:
                names.append(f["name"])
        coords.append(boxes)
    return coords, names


def my_point() -> Any:
    """Faces of a short video, synchronously (the original video client's `/my_point`)

    The body is what `requests.post(url, json=json.dumps({"video": <base64>, "name": <file name>}))` sends: a
    JSON string holding the object (a plain object works too, whatever the content type). Answers
    `{"coordinates": [[[top, right, bottom, left], ...] per frame], "recognized_person_names": [...], "name"}`.
    A video longer than `FACEREC_VIDEO_MY_POINT_MAX_SECONDS` is a 413: send it to `POST /api/v1/videos`.
    Anything that is not a video container is a 415 `not_a_video`.
    """
    svc = get_service()
    mgr = get_manager()
    gallery = svc.settings.default_gallery
    authorize_gallery(gallery)
    rate = svc.settings.rate
    client, quota = client_id(), (rate.video_jobs if rate.enabled else None)
    mgr.check_client_quota(client, quota)
    body = _my_point_request(mgr.limits.max_upload_bytes)
    data = decode_base64(body.video, "video", mgr.limits.max_upload_bytes)
    label = body.name if body.name and Path(body.name).suffix.lower() in VIDEO_SUFFIXES else None
    max_s = mgr.limits.my_point_max_seconds
    tmp = mgr.dir / f".my_point-{uuid.uuid4().hex}{Path(label or 'video.mp4').suffix.lower()}"
    try:
        write_private(tmp, data)
        del data
        try:
            info = probe(tmp, max_pixels=mgr.limits.max_pixels)
        except FaceRecError as exc:
            if exc.status == 415:
                raise
            raise BadImageError("the uploaded file is not a decodable video") from None
        seconds = info.duration_s if info.duration_s is not None else (info.frames or 0) / (info.fps or 30.0)
        if seconds > max_s:
            raise ImageTooLargeError(f"the video lasts {seconds:.0f} s; /my_point answers videos up to {max_s:.0f} s:"
                                     " send longer ones to POST /api/v1/videos (a background job)")
        job = mgr.submit(tmp, label, gallery, {"write_video": False, "save_crops": False}, client=client,
                         client_limit=quota)
    finally:
        tmp.unlink(missing_ok=True)
    state = mgr.wait(job["job_id"], timeout=svc.settings.queue.task_timeout)
    if state["status"] in ("queued", "running"):
        raise ServiceUnavailableError(f"the video is still being processed: follow /api/v1/videos/{job['job_id']}")
    if state["status"] != "done":
        mgr.cancel(job["job_id"], purge=True)
        raise BadImageError(f"the video could not be processed: {state.get('error') or state['status']}")
    frames, _ = mgr.frames(job["job_id"])
    mgr.cancel(job["job_id"], purge=True)  # answered: the upload and its results go
    coords, names = _coordinates(frames)
    return jsonify(MyPointResponse(coordinates=coords, recognized_person_names=names, name=body.name).model_dump())


def create_blueprint() -> APIBlueprint:
    bp = api_blueprint("legacy_clients", __name__, abp_tags=[TAG_ORIGINAL])
    messages = {200: OriginalMessage, **IMAGE_ERRORS}

    bp.post("/add", responses={202: OriginalAdded, **messages},
            openapi_extensions=_multipart_body("first_name", "sur_name", files="files"))(add_person_images)
    bp.post("/search", responses={202: OriginalFound, **messages},
            openapi_extensions=_multipart_body(files="file"))(search_image)
    json_body = {"application/json": {"schema": {"oneOf": [MyPointRequest.model_json_schema(), {"type": "string"}]}}}
    bp.post("/my_point", responses={200: MyPointResponse, **UPLOAD_ERRORS},
            openapi_extensions={"requestBody": {"required": True, "content": json_body}})(my_point)
    return bp

