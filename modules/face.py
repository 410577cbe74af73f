"""Plain records passed between the stages (detector -> aligner -> embedder -> matcher)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNKNOWN = "unknown"
NO_FACE = "no face"
#: answers of the recognizer that a person's name must never equal (compared case-insensitively)
RESERVED_NAMES = (UNKNOWN, NO_FACE)


@dataclass
class Face:
    """One detected face.

    ``box`` is ``[x1, y1, x2, y2]`` and ``landmarks`` is ``(5, 2)`` in the pixel
    coordinates of the image that was passed to the detector, in the ArcFace
    order: eye, eye, nose tip, mouth corner, mouth corner, image-left first.
    """

    box: np.ndarray
    landmarks: np.ndarray
    det_score: float
    aligned: np.ndarray | None = None  # 112x112x3 BGR uint8 crop on the ArcFace template
    embedding: np.ndarray | None = None  # L2-normalised float32
    embedder: str | None = None  # id of the model that produced ``embedding``
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        """Shorter side of the box in pixels (what minimum-size rules use)."""
        return min(self.width, self.height)

    def rescale(self, sx: float, sy: float, width: float | None = None, height: float | None = None) -> Face:
        """Multiply ``box`` and ``landmarks`` by ``(sx, sy)`` in place (into another image's coordinates),
        the box clipped to ``width`` x ``height`` when given; returns ``self``."""
        factors = np.array([sx, sy], np.float32)
        self.box = (self.box.reshape(2, 2) * factors).reshape(4).astype(np.float32)
        self.landmarks = (np.asarray(self.landmarks, np.float32) * factors).astype(np.float32)
        if width is not None and height is not None:
            self.box = np.clip(self.box, 0, np.array([width, height, width, height], np.float32))
        return self


@dataclass
class Candidate:
    """One person a face may be, with the best cosine similarity over their faces."""

    person: str
    similarity: float
    person_id: int | None = None
    face_id: int | None = None  # the enrolled face that gave ``similarity``


@dataclass
class Identification:
    """Decision for one face: best name (or ``unknown``) plus the top-k candidates."""

    name: str
    similarity: float
    candidates: list[Candidate]
    threshold: float

    @property
    def known(self) -> bool:
        return self.name != UNKNOWN
