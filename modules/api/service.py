"""What one app instance shares between requests: models, gallery, key store, settings.

Held in ``app.extensions["facerec"]``; :func:`get_service` returns it.  The
recognizer (detector + embedder, loaded once; images decoded within the
settings' byte and pixel limits and the ``decode`` branch's budget) is
thread-safe; the SQLite gallery uses one connection per thread and per process.
The service's :class:`~modules.images.DecodeGate` (one per app, so one per
server process) bounds the decodes running at once: every recognition path of
the recognizer holds one of its slots while it has decoded pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from ..images import DecodeBudget, DecodeGate
from ..jobs.stream import StreamSlots
from ..recognizer import FaceRecognizer
from ..settings import Settings
from .keys import KeyStore

EXTENSION = "facerec"


@dataclass(eq=False)
class FaceRecService:
    settings: Settings
    recognizer: FaceRecognizer
    gallery: Any
    keys: KeyStore | None
    #: the admission limit on decodes (``settings.decode``), built from the settings when not given
    decode_gate: DecodeGate | None = None
    #: the bound on long responses (MJPEG streams, thread-holding downloads: ``FACEREC_STREAM_*``)
    streams: StreamSlots = field(init=False)

    def __post_init__(self) -> None:
        d, server = self.settings.decode, self.settings.server
        self.streams = StreamSlots(server.stream_limit, server.stream_per_job, server.stream_per_client)
        if self.decode_gate is None:
            # the threads a stream holds are not there for waiting decodes: the queue shrinks as streams grow
            room = None if d.max_queued is None else (lambda: max(0, d.max_queued - self.streams.busy))
            self.decode_gate = DecodeGate(d.max_concurrent, d.wait_s, room)
        self.recognizer.configure_decoding(DecodeBudget(d.pixels, d.raster_bytes), self.decode_gate)

    def close(self) -> None:
        close = getattr(self.gallery, "close", None)
        if close is not None:
            close()
        if self.keys is not None:
            self.keys.close()


def get_service() -> FaceRecService:
    return current_app.extensions[EXTENSION]
