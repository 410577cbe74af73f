"""What one app instance shares between requests: models, gallery, key store, settings.

Held in ``app.extensions["facerec"]``; :func:`get_service` returns it.  The
recognizer (detector + embedder, loaded once) is thread-safe; the SQLite
gallery uses one connection per thread and per process.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
from flask import current_app

from ..errors import InvalidRequestError
from ..face import Face
from ..images import decode_image
from ..recognizer import FaceRecognizer
from .inputs import Upload
from .keys import KeyStore
from ..settings import Settings

EXTENSION = "facerec"


class FaceRecService:
    def __init__(self, settings: Settings, recognizer: FaceRecognizer, gallery: Any, keys: KeyStore | None):
        self.settings = settings
        self.recognizer = recognizer
        self.gallery = gallery
        self.keys = keys
        self._attributes: Any = None
        self._attributes_lock = threading.Lock()

    # --- images ------------------------------------------------------------------------------
    def decode(self, upload: Upload) -> np.ndarray:
        """BGR array of an upload, within the byte and pixel limits (400/413/415 otherwise)."""
        return decode_image(upload.data, max_bytes=self.settings.max_upload_bytes, max_pixels=self.settings.max_pixels)

    def decode_timed(self, upload: Upload) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        img = self.decode(upload)
        return img, (time.perf_counter() - t0) * 1000

    def max_faces(self, requested: int | None) -> int:
        return min(requested or self.settings.max_faces, self.settings.max_faces)

    # --- attributes (optional module, written separately) -----------------------------------------
    def parse_attributes(self, spec: str | None) -> Any:
        """The parsed attribute request, or ``None`` when none was asked for."""
        if spec is None or not spec.strip():
            return None
        try:
            from ..attributes import parse_attributes  # type: ignore[attr-defined]
        except ImportError:
            raise InvalidRequestError(
                "face attributes are not available on this server (the attributes module is not installed)"
            ) from None
        try:
            which = parse_attributes(spec)
        except (ValueError, KeyError, TypeError) as exc:  # the module's own InvalidRequestError passes through
            raise InvalidRequestError(f"invalid attributes {spec!r}: {exc}") from None
        return which or None

    def add_attributes(self, image: np.ndarray, faces: list[Face], which: Any, timings: dict[str, float]) -> None:
        if which is None or not faces:
            return
        t0 = time.perf_counter()
        analyzer = self._attribute_analyzer()
        analyzer.analyze(image, faces, which)
        timings["attributes"] = (time.perf_counter() - t0) * 1000

    def _attribute_analyzer(self) -> Any:
        if self._attributes is None:
            with self._attributes_lock:
                if self._attributes is None:
                    from ..attributes import AttributeAnalyzer  # type: ignore[attr-defined]

                    self._attributes = AttributeAnalyzer()
        return self._attributes

    def close(self) -> None:
        close = getattr(self.gallery, "close", None)
        if close is not None:
            close()
        if self.keys is not None:
            self.keys.close()


def get_service() -> FaceRecService:
    return current_app.extensions[EXTENSION]
