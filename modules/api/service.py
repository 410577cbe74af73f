"""What one app instance shares between requests: models, gallery, key store, settings.

Held in ``app.extensions["facerec"]``; :func:`get_service` returns it.  The
recognizer (detector + embedder, loaded once; images decoded within the
settings' byte and pixel limits) is thread-safe; the SQLite gallery uses one
connection per thread and per process.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from flask import current_app

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

    def decode(self, upload: Upload) -> np.ndarray:
        """BGR array of an upload, within the byte and pixel limits (400/413/415 otherwise)."""
        return self.recognizer.load_image(upload.data)

    def max_faces(self, requested: int | None) -> int:
        return min(requested or self.settings.max_faces, self.settings.max_faces)

    def close(self) -> None:
        close = getattr(self.gallery, "close", None)
        if close is not None:
            close()
        if self.keys is not None:
            self.keys.close()


def get_service() -> FaceRecService:
    return current_app.extensions[EXTENSION]
