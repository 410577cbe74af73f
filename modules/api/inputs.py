"""Reading images and options from a request: multipart file parts, JSON base64, or a raw body.

Nothing here touches the file system: uploads stay in memory (Flask's
``MAX_CONTENT_LENGTH`` bounds them) and client file names are only kept as a
label (``source``) after being cut to a safe length.  A base64 image is measured
by its decoded size against ``max_upload_bytes``, refused (413) from the length
of its text before it is decoded.
"""
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import current_app, request
from pydantic import BaseModel, ValidationError

from ..errors import BadImageError, ImageTooLargeError, InvalidRequestError, UnsupportedMediaError
from .errors import format_validation_error

M = TypeVar("M", bound=BaseModel)

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)
_RAW_TYPES = ("application/octet-stream",)
MAX_SOURCE_CHARS = 200
IMAGE_FIELDS = ("file", "image")  # a single image's field and its alias


@dataclass
class Upload:
    data: bytes
    source: str  # a label: the client's file name or the field name


@dataclass
class Payload:
    fields: dict[str, Any]  # non-file fields (form values are strings, JSON values typed)
    files: dict[str, list[Upload]]  # multipart file parts and raw bodies
    kind: str  # "multipart", "json", "raw" or "empty"


def _safe_source(name: str | None, fallback: str) -> str:
    if not name:
        return fallback
    name = "".join(c for c in name if c.isprintable())[:MAX_SOURCE_CHARS]
    return name.replace("/", "_").replace("\\", "_") or fallback


def _json_object_body() -> dict[str, Any] | None:
    """The body as a JSON object naming an image field, whatever its content type (the original clients sent
    ``json.dumps(...)`` as plain data); None when it is not one."""
    head = request.get_data(cache=True)[:64].lstrip()
    if not head.startswith(b"{"):
        return None
    try:
        body = current_app.json.loads(request.get_data(cache=True))
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) and any(k in body for k in IMAGE_FIELDS) else None


def read_payload() -> Payload:
    """The request's fields and files, whatever the content type (415 for unsupported ones).

    A JSON object with an image field is read as JSON whatever the content type says (none, ``text/plain``,
    ``application/x-www-form-urlencoded``), as the original ``json.loads(request.data)`` server did.
    """
    mimetype = request.mimetype or ""
    sniff = mimetype != "multipart/form-data" and not request.is_json and not mimetype.startswith("image/")
    if sniff and (body := _json_object_body()) is not None:
        return Payload(body, {}, "json")
    if mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        fields = {k: request.form.get(k) for k in request.form}
        files: dict[str, list[Upload]] = {}
        for key in request.files:
            parts = []
            for i, f in enumerate(request.files.getlist(key)):
                parts.append(Upload(f.read(), _safe_source(f.filename, f"{key}[{i}]")))
            files[key] = parts
        return Payload(fields, files, "multipart")
    if request.is_json:
        body = request.get_json(silent=True)
        if body is None:
            raise InvalidRequestError("the request body is not valid JSON")
        if not isinstance(body, dict):
            raise InvalidRequestError(f"the JSON body must be an object, got {type(body).__name__}")
        return Payload(body, {}, "json")
    if mimetype.startswith("image/") or mimetype in _RAW_TYPES:
        return Payload({}, {"file": [Upload(request.get_data(cache=False), "body")]}, "raw")
    if not mimetype and not request.content_length:
        return Payload({}, {}, "empty")
    raise UnsupportedMediaError(
        f"content type {mimetype or '(none)'!r} is not supported; send multipart/form-data with a file part,"
        " JSON with base64 strings, or the raw image with an image/* content type"
    )


def base64_size(text: str) -> int:
    """The number of bytes the (padded, whitespace-free) base64 ``text`` decodes to."""
    return len(text) // 4 * 3 - len(text[-2:]) + len(text[-2:].rstrip("="))


def decode_base64(value: Any, field: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a base64 string (a ``data:`` URL, line breaks and the URL-safe alphabet accepted);
    413 before decoding when they would be more than ``max_bytes``."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"{field} must be a base64 string, got {type(value).__name__}")
    text = _DATA_URL.sub("", value.strip(), count=1)
    text = "".join(text.split())  # line breaks from some encoders
    if not text:
        raise BadImageError(f"{field} is empty")
    text = text.replace("-", "+").replace("_", "/")  # URL-safe alphabet
    text += "=" * (-len(text) % 4)
    if max_bytes is not None and (size := base64_size(text)) > max_bytes:
        raise ImageTooLargeError(f"{field} decodes to {size} bytes; the limit is {max_bytes}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"{field} is not valid base64") from None


def get_images(
    payload: Payload, names: Sequence[str], *, many: bool = False, required: bool = True, raw_ok: bool = True
) -> list[Upload]:
    """The uploads of the first of ``names`` present (file parts or base64 strings/lists)."""
    for name in names:
        if name in payload.files:
            uploads = payload.files[name]
        elif name in payload.fields and payload.fields[name] not in (None, ""):
            value = payload.fields[name]
            values = value if isinstance(value, list) else [value]
            if not many and len(values) != 1:
                raise InvalidRequestError(f"{name} must be one image, got {len(values)}")
            limit = current_app.config["FACEREC_SETTINGS"].max_upload_bytes
            uploads = [
                Upload(decode_base64(v, name if len(values) == 1 else f"{name}[{i}]", limit), f"{name}[{i}]")
                for i, v in enumerate(values)
            ]
        else:
            continue
        if not uploads:
            continue
        if not many and len(uploads) > 1:
            raise InvalidRequestError(f"send one image in {name!r}, got {len(uploads)}")
        return uploads
    if required:
        alias = " or ".join(repr(n) for n in names)
        raw = ", or the raw image bytes" if raw_ok else ""
        raise InvalidRequestError(
            f"no image in the request: send a multipart file part {alias} or JSON {{{names[0]!r}: <base64>}}{raw}"
        )
    return []


def get_options(payload: Payload, query: M, exclude: Sequence[str] = ()) -> M:
    """Options from the query string (already validated as ``query``) overridden by body fields."""
    model = type(query)
    values: dict[str, Any] = query.model_dump(exclude_unset=True)
    for key, value in payload.fields.items():
        if key in exclude or key not in model.model_fields:
            continue
        if payload.kind == "multipart" and value == "":
            continue  # an empty form field means "not given"
        values[key] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise InvalidRequestError(format_validation_error(exc)) from None


def read_request(query: M, fields: Sequence[str] = IMAGE_FIELDS, **kw: Any) -> tuple[M, list[Upload]]:
    """The options (``query`` overridden by body fields) and the uploads of the first of ``fields`` present."""
    payload = read_payload()
    return get_options(payload, query, fields), get_images(payload, fields, **kw)
