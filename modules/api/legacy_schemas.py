"""Response models of the original clients' routes (``/add``, ``/search``, ``/my_point``): their exact shapes."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OriginalMessage(_Out):
    """The original's answer for everything but a success, with status 200: `No  files inserted yet`,
    `Please upload the right picture file with extension of  png, jpg or jpeg`, `No human face, ...`,
    `Image Unknown` or `invalid input` (the double spaces are the original's)."""

    response: str


class OriginalAdded(_Out):
    """202: the id of the enrolled image (a string), or a list of ids when several `files` were sent."""

    ID: str | list[str]


class OriginalFound(_Out):
    """202: one known person: the URL of their stored face crop and the similarity in percent (`"87.12"`)."""

    confidence_score: str = Field(description="similarity x 100, two decimals, as a string (the original's)")
    image_url: str = Field(description="absolute URL of the matched person's stored face crop (PNG)")
    name: str = Field(description="the person's name (`first_name sur_name` for people added through `/add`)")


class OriginalFoundMany(_Out):
    """202: more than one known person in the image; `image_url` is the largest known face's match."""

    image_url: str
    response: str = Field(description="`Found More Known Faces`")


class MyPointRequest(BaseModel):
    """The video client's body: `json.dumps({...})` sent as `json=`, so a JSON string holding this object
    (a plain object is accepted too)."""

    video: str = Field(description="the video file (MP4, MOV, AVI, MKV, WebM...), base64")
    name: str | None = Field(None, description="the file name: a label, echoed back")


class MyPointResponse(_Out):
    """Per-frame boxes in face_recognition's `(top, right, bottom, left)` order and the people recognised."""

    coordinates: list[list[list[int]]] = Field(
        description="one list per frame, one `[top, right, bottom, left]` per face (pixels)"
    )
    recognized_person_names: list[str] = Field(description="the known people seen, in order of first appearance")
    name: str | None = Field(description="the `name` the client sent")
