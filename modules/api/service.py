"""What one app instance shares between requests: models, gallery, key store, settings.

Held in ``app.extensions["facerec"]``; :func:`get_service` returns it.  The
recognizer (detector + embedder, loaded once; images decoded within the
settings' byte and pixel limits) is thread-safe; the SQLite gallery uses one
connection per thread and per process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app

from ..recognizer import FaceRecognizer
from .keys import KeyStore
from ..settings import Settings

EXTENSION = "facerec"


@dataclass(eq=False)
class FaceRecService:
    settings: Settings
    recognizer: FaceRecognizer
    gallery: Any
    keys: KeyStore | None

    def close(self) -> None:
        close = getattr(self.gallery, "close", None)
        if close is not None:
            close()
        if self.keys is not None:
            self.keys.close()


def get_service() -> FaceRecService:
    return current_app.extensions[EXTENSION]
