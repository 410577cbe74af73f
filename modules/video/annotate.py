"""Drawing results on frames: a box and a ``name 0.62 #3`` label per face."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ..face import UNKNOWN

KNOWN = (60, 200, 60)  # BGR
UNKNOWN_COLOR = (60, 60, 220)
PENDING = (0, 200, 230)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_faces(
    frame: np.ndarray, faces: Sequence[dict[str, Any]], *, copy: bool = True, footer: str | None = None
) -> np.ndarray:
    """``faces`` are result dicts (``box``, ``name``, ``similarity``, optional ``track_id``, ``state``)."""
    out = frame.copy() if copy else frame
    h, w = out.shape[:2]
    font = max(0.4, min(1.0, h / 900))
    thick = 1 if h < 720 else 2
    for f in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in f["box"])
        name = f.get("name", UNKNOWN)
        if f.get("state") == "pending":
            color = PENDING
        else:
            color = KNOWN if name != UNKNOWN else UNKNOWN_COLOR
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        label = name if name != UNKNOWN else "unknown"
        if name != UNKNOWN and f.get("similarity") is not None:
            label += f" {float(f['similarity']):.2f}"
        if f.get("track_id") is not None and f["track_id"] >= 0:
            label += f" #{f['track_id']}"
        (tw, th), base = cv2.getTextSize(label, _FONT, font, thick)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else min(h - 1, y2 + th + 4)
        cv2.rectangle(out, (x1, ty - th - base), (min(w - 1, x1 + tw + 4), ty + base - 2), color, cv2.FILLED)
        cv2.putText(out, label, (x1 + 2, ty - 2), _FONT, font, (255, 255, 255), thick, cv2.LINE_AA)
    if footer:
        cv2.putText(out, footer, (8, h - 8), _FONT, font, (255, 255, 255), thick, cv2.LINE_AA)
    return out
