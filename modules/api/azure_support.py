"""What the Azure Face routes share: the ``faceId`` cache, id mappings, Azure's error codes and face records.

* ``faceId``: a detected face's embedding is kept in memory, in a bounded LRU with a time to live
  (:class:`FaceIdCache`, one per app, so one per server process): a ``faceId`` is only known to the process that
  detected it (see docs/azure.md for several workers).
* ``persistedFaceId``: the stored face's integer id as a UUID (``uuid.UUID(int=face_id)``), reversible.
* ``personId``: people created through these routes are stored under a new UUID as their name, with Azure's
  ``name`` and ``userData`` in the person's metadata.
* Errors keep this service's envelope; :func:`translate_error` swaps the code for Azure's (``PersonGroupNotFound``,
  ``BadArgument``, ``InvalidImage``...) on every answer under the prefix, route or no route.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

import numpy as np
from flask import Flask, Response, request

from ..errors import FaceNotFoundError, InvalidRequestError
from ..face import Face
from .errors import error_response

PREFIX = "/face/v1.0"
EXTENSION = "facerec.azure"
#: faceIds kept per process (an embedding is 0.5-2 KiB): the least recently used go first
MAX_FACE_IDS = 20_000

#: this service's error code -> Azure's
AZURE_CODES = {
    "invalid_request": "BadArgument", "bad_image": "InvalidImage", "unsupported_media_type": "BadArgument",
    "too_large": "InvalidImageSize", "no_face": "InvalidImage", "multiple_faces": "InvalidImage",
    "low_quality_face": "InvalidImage", "gallery_not_found": "PersonGroupNotFound",
    "person_not_found": "PersonNotFound", "face_not_found": "FaceNotFound", "not_found": "NotImplemented",
    "method_not_allowed": "NotImplemented", "embedder_mismatch": "PersonGroupNotTrained", "conflict": "Conflict",
    "unauthorized": "401", "forbidden": "403", "rate_limited": "429", "too_many_requests": "429",
    "busy": "ServiceUnavailable", "unavailable": "ServiceUnavailable", "internal_error": "InternalServerError",
    "untrusted_host": "BadArgument", "cross_site_request": "BadArgument",
}
#: Azure's attribute names -> this service's
ATTRIBUTES = {"age": "age", "gender": "gender", "emotion": "emotion", "headpose": "pose"}
#: the expression model's labels -> Azure's emotion fields (Azure's ``contempt`` has no class: 0)
EMOTIONS = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness", "sad": "sadness",
            "surprise": "surprise", "neutral": "neutral"}
LANDMARKS = ("pupilLeft", "pupilRight", "noseTip", "mouthLeft", "mouthRight")


class FaceIdCache:
    """``faceId`` -> (embedding, model id) for at most ``max_items`` faces, each for its own time to live."""

    def __init__(self, max_items: int = MAX_FACE_IDS):
        self.max_items = max_items
        self._items: OrderedDict[str, tuple[float, np.ndarray, str]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, embedding: np.ndarray, model_id: str, ttl_s: float) -> str:
        face_id = str(uuid.uuid4())
        with self._lock:
            self._items[face_id] = (time.monotonic() + ttl_s, np.asarray(embedding, np.float32), model_id)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return face_id

    def get(self, face_id: str, model_id: str) -> np.ndarray:
        """The embedding of ``face_id`` (404 ``FaceNotFound`` when unknown, expired or of another model)."""
        with self._lock:
            item = self._items.get(face_id)
            if item is not None and (item[0] < time.monotonic() or item[2] != model_id):
                del self._items[face_id]
                item = None
            if item is not None:
                self._items.move_to_end(face_id)
        if item is None:
            raise FaceNotFoundError(f"faceId {face_id[:64]!r} is unknown or expired; detect the face again",
                                    details={"faceId": face_id[:64]})
        return item[1]


def face_cache(app: Flask) -> FaceIdCache:
    return app.extensions[EXTENSION]


def translate_error(response: Response) -> Response:
    """``after_request``: an error answer under :data:`PREFIX` gets Azure's code (status and message kept)."""
    if response.status_code < 400 or not request.path.startswith(PREFIX + "/") or not response.is_json:
        return response
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return response
    code = error["code"]
    if code == "conflict" and request.method == "PUT":
        code = "PersonGroupExists"
    translated = error_response(response.status_code, AZURE_CODES.get(code, code), str(error.get("message", "")))
    for name, value in response.headers.items():
        if name.lower() not in ("content-type", "content-length"):
            translated.headers[name] = value
    return translated


def install(app: Flask) -> None:
    """The ``faceId`` cache and the error-code translation of the Azure routes."""
    app.extensions[EXTENSION] = FaceIdCache()
    app.after_request(translate_error)


# --- ids ----------------------------------------------------------------------------------------------------
def persisted_face_id(face_id: int) -> str:
    return str(uuid.UUID(int=int(face_id)))


def new_person_id() -> str:
    return str(uuid.uuid4())


def azure_person(info: Any, face_ids: list[int]) -> dict[str, Any]:
    """A stored person as Azure's ``Person``: its name is the ``personId``, Azure's name is in its metadata."""
    meta = info.metadata if isinstance(info.metadata, dict) else {}
    name = meta.get("name") if isinstance(meta.get("name"), str) else info.name
    user_data = meta.get("userData") if isinstance(meta.get("userData"), str) else None
    return {"personId": info.name, "name": name, "userData": user_data,
            "persistedFaceIds": [persisted_face_id(i) for i in face_ids]}


# --- detect -------------------------------------------------------------------------------------------------
def parse_attributes(spec: str | None) -> list[str]:
    """Azure's ``returnFaceAttributes`` as this service's attribute names (400 ``BadArgument`` for others)."""
    names = [s.strip() for s in (spec or "").split(",") if s.strip()]
    unknown = [n for n in names if n.lower() not in ATTRIBUTES]
    if unknown:
        raise InvalidRequestError(f"face attributes {', '.join(unknown)} are not supported; supported: age, gender,"
                                  " emotion, headPose")
    return list(dict.fromkeys(ATTRIBUTES[n.lower()] for n in names))


def detected_face(face: Face, face_id: str | None, landmarks: bool, model_id: str | None) -> dict[str, Any]:
    """One face as Azure's ``DetectedFace`` (box and landmarks in the original image's pixels)."""
    x1, y1, x2, y2 = (float(v) for v in face.box)
    out: dict[str, Any] = {
        "faceId": face_id,
        "recognitionModel": model_id,
        "faceRectangle": {"top": round(y1), "left": round(x1), "width": round(x2 - x1), "height": round(y2 - y1)},
    }
    if landmarks:
        pts = np.asarray(face.landmarks, np.float64).reshape(5, 2)
        out["faceLandmarks"] = {k: {"x": round(float(x), 1), "y": round(float(y), 1)}
                                for k, (x, y) in zip(LANDMARKS, pts)}
    attrs = face.attributes
    if attrs:
        fa: dict[str, Any] = {}
        if "age" in attrs:
            fa["age"] = float(attrs["age"])
        if "gender" in attrs:
            fa["gender"] = str(attrs["gender"]["value"]).lower()
        if "emotion" in attrs:
            scores = attrs["emotion"]["scores"]
            fa["emotion"] = {"contempt": 0.0, **{EMOTIONS[k]: float(v) for k, v in scores.items() if k in EMOTIONS}}
        if "pose" in attrs:
            fa["headPose"] = {k: float(attrs["pose"][k]) for k in ("pitch", "roll", "yaw")}
        out["faceAttributes"] = fa
    return out
