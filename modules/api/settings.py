"""Settings of the HTTP service: where the data lives, which model, the limits, API keys.

``Settings()`` holds the embedded defaults (what ``python app.py`` serves with);
``Settings.from_env()`` reads ``FACEREC_*`` environment variables, which is how
``gunicorn app:app`` and ``flask run`` are configured.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # one request body (multipart or JSON)
DEFAULT_MAX_PIXELS = 40_000_000  # decoded pixels of one image (decompression bombs)
DEFAULT_MAX_FACES = 100  # faces analysed per image

ENV_PREFIX = "FACEREC_"


def _parse_bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def _parse_int(value: str, name: str, minimum: int = 1) -> int:
    try:
        n = int(value.strip().replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if n < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {n}")
    return n


@dataclass(frozen=True)
class Settings:
    """Everything ``create_app`` needs; every field has a usable default."""

    #: holds ``gallery.db`` (people, faces), ``keys.db`` (hashed API keys), ``jobs.db`` and ``jobs/`` (video jobs)
    data_dir: Path = field(default_factory=lambda: Path("data"))
    #: embedder config: a path or a bare name from ``configs/``; ``None`` = configs/sface.yaml
    config: str | None = None
    #: gallery location (path or ``sqlite:///`` URL); ``None`` = ``<data_dir>/gallery.db``
    gallery_url: str | None = None
    #: largest request body accepted (Flask's ``MAX_CONTENT_LENGTH``) and largest image file
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    #: largest decoded image, in pixels (checked before decoding)
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: faces analysed per image (largest first)
    max_faces: int = DEFAULT_MAX_FACES
    #: require ``X-API-Key`` on every endpoint but health/readiness/openapi/docs
    api_keys: bool = False
    #: the gallery ``/recognition`` uses when the request names none (created at start-up)
    default_gallery: str = "default"
    #: video jobs: ``redis://...`` runs them on ``python -m modules.worker`` processes (RQ); ``None`` in this process
    queue_url: str | None = None
    #: video files of the jobs (uploads, annotated videos, crops); ``None`` = ``<data_dir>/jobs``.  Workers on
    #: other machines need the same folder (e.g. NFS) under their ``--storage-dir``
    storage_dir: Path | None = None
    #: videos at least twice this long are split into chunks of about this many seconds (0 = never);
    #: ``None`` = ``FACEREC_VIDEO_CHUNK_SECONDS`` or 60
    video_chunk_seconds: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if self.storage_dir is not None:
            object.__setattr__(self, "storage_dir", Path(self.storage_dir).expanduser())
        if self.queue_url is not None and not str(self.queue_url).strip():
            object.__setattr__(self, "queue_url", None)
        if self.queue_url is not None and not str(self.queue_url).lower().startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"the queue URL must look like redis://host:6379/0, got {self.queue_url!r}")
        if self.video_chunk_seconds is not None and (
            isinstance(self.video_chunk_seconds, bool)
            or not isinstance(self.video_chunk_seconds, (int, float))
            or self.video_chunk_seconds < 0
        ):
            raise ConfigError(f"setting video_chunk_seconds must be >= 0, got {self.video_chunk_seconds!r}")
        for name in ("max_upload_bytes", "max_pixels", "max_faces"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"setting {name} must be a positive integer, got {value!r}")

    @property
    def gallery_location(self) -> str | Path:
        return self.gallery_url or (self.data_dir / "gallery.db")

    @property
    def keys_path(self) -> Path:
        return self.data_dir / "keys.db"

    @property
    def jobs_dir(self) -> Path:
        """Where the video jobs' files are (``storage_dir``, default ``<data_dir>/jobs``)."""
        return self.storage_dir or (self.data_dir / "jobs")

    @property
    def jobs_database(self) -> str | Path:
        """The video job store: the gallery's database when it is PostgreSQL, else ``<data_dir>/jobs.db``."""
        from ..video.store import job_store_location

        url = self.gallery_url if isinstance(self.gallery_url, str) else None
        return job_store_location(self.data_dir, url)

    def replace(self, **changes: Any) -> "Settings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then ``FACEREC_DATA_DIR``, ``FACEREC_CONFIG``, ``FACEREC_GALLERY_URL`` (else
        ``DATABASE_URL``), ``FACEREC_MAX_UPLOAD_BYTES``, ``FACEREC_MAX_PIXELS``, ``FACEREC_MAX_FACES``,
        ``FACEREC_API_KEYS``, ``FACEREC_DEFAULT_GALLERY``, ``FACEREC_QUEUE_URL`` (else ``QUEUE_URL``),
        ``FACEREC_STORAGE_DIR``, ``FACEREC_VIDEO_CHUNK_SECONDS``, then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, fallback in (("gallery_url", "DATABASE_URL"), ("queue_url", "QUEUE_URL")):
            if ENV_PREFIX + name.upper() not in env and (env.get(fallback) or "").strip():
                values[name] = env[fallback].strip()
        for f in fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if key not in env:
                continue
            raw = env[key]
            if f.name in ("max_upload_bytes", "max_pixels", "max_faces"):
                values[f.name] = _parse_int(raw, key)
            elif f.name == "api_keys":
                values[f.name] = _parse_bool(raw, key)
            elif f.name == "data_dir":
                values[f.name] = Path(raw)
            elif f.name in ("config", "gallery_url", "queue_url"):
                values[f.name] = raw.strip() or None
            elif f.name == "storage_dir":
                values[f.name] = Path(raw) if raw.strip() else None
            elif f.name == "video_chunk_seconds":
                try:
                    values[f.name] = float(raw) if raw.strip() else None
                except ValueError:
                    raise ConfigError(f"{key} must be a number of seconds, got {raw!r}") from None
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
