"""The service's settings: one typed tree, read once from ``FACEREC_*`` environment variables.

``load_settings(**overrides)`` builds it: the embedded defaults, then the
environment, then the overrides (command-line flags of ``app.py``, the scripts,
the worker and the CLI map onto field names).  ``python app.py`` with nothing
set serves the embedded defaults (SQLite in ``./data``, SFace, jobs in this
process).  A value that does not parse is a :class:`~modules.errors.ConfigError`
naming the environment variable.

Root (``FACEREC_``): ``DATA_DIR``, ``CONFIG``, ``GALLERY_URL`` (also
``FACEREC_DATABASE_URL`` and the conventional ``DATABASE_URL``), ``QUEUE_URL``
(also ``QUEUE_URL``), ``STORAGE_DIR``, ``MAX_UPLOAD_BYTES``, ``MAX_PIXELS``,
``MAX_FACES``, ``API_KEYS``, ``DEFAULT_GALLERY``, ``VIDEO_CHUNK_SECONDS``.
Branches: ``video`` (``FACEREC_VIDEO_MAX_*``: video job limits), ``chunks``
(``FACEREC_VIDEO_CHUNK_*``: splitting long videos), ``queue``
(``FACEREC_QUEUE_*``: the RQ task queue), ``server`` (``FACEREC_BIND``,
``WORKERS``, ``THREADS``, ``TIMEOUT``, ``CV_THREADS``, ``ACCESS_LOG``,
``LOG_LEVEL``, ``CONNECTION_LIMIT``, ``CLIENT_TIMEOUT_S``, ``KEEPALIVE_S``,
``STREAM_*``: the process that serves, read by ``app.py`` and ``gunicorn.conf.py``), ``decode``
(``FACEREC_DECODE_*``: the memory budget of decoding), ``http`` (``FACEREC_HTTP_*``:
allowed hosts, CORS origins, URL token lifetime), ``rate`` (``FACEREC_RATE_*``:
quotas), ``metrics`` (``FACEREC_METRICS_*``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AliasChoices, Field, NonNegativeFloat, NonNegativeInt, PositiveInt, ValidationError, field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigError

PREFIX = "FACEREC_"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_FACES = 100


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, frozen=True, extra="forbid", populate_by_name=True)


def _blank_is_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _comma_list(value: Any) -> Any:
    """``a,b, c`` (an environment variable) -> ``["a", "b", "c"]``; lists pass through."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


#: a list of strings that an environment variable gives comma-separated
CommaList = Annotated[list[str], NoDecode]


class VideoLimits(BaseSettings):
    """Bounds on video jobs (``FACEREC_VIDEO_MAX_*``)."""

    model_config = _config(PREFIX + "VIDEO_")
    max_upload_bytes: PositiveInt = 200 * 1024 * 1024
    max_frames: PositiveInt = 30 * 60 * 60  # an hour at 30 fps
    max_duration_s: float = Field(3600.0, gt=0)
    #: pixels of one frame, checked on every decoded frame (a stream may change size mid-video)
    max_pixels: PositiveInt = 3840 * 2160
    #: frames x pixels of a whole video, checked from the container's metadata before a job is accepted and
    #: again while decoding; default: an hour of 1080p at 30 fps (so 15 minutes of 4K), about an hour of work
    max_total_pixels: PositiveInt = 1920 * 1080 * 30 * 3600
    max_running: PositiveInt = 1  # in-process: CPU-bound, one task at a time per process on small machines
    max_queued: NonNegativeInt = 8  # in-process: waiting jobs per process
    max_kept: PositiveInt = 200  # finished jobs kept; the oldest beyond are deleted
    max_active: PositiveInt = 10_000  # with a task queue: queued + running jobs in all
    #: longest video the synchronous original-client route ``POST /my_point`` processes (longer ones: 413,
    #: use ``/api/v1/videos``)
    my_point_max_seconds: float = Field(60.0, gt=0, allow_inf_nan=False)


class ChunkSettings(BaseSettings):
    """Splitting long videos (``FACEREC_VIDEO_CHUNK_*``): ``seconds`` per range (0 = never split),
    ``min_seconds`` below which a video stays whole (default twice ``seconds``), ``overlap_seconds``
    of warm-up before each range."""

    model_config = _config(PREFIX + "VIDEO_CHUNK_")
    seconds: NonNegativeFloat = Field(60.0, allow_inf_nan=False)
    min_seconds: NonNegativeFloat | None = Field(None, allow_inf_nan=False)
    overlap_seconds: NonNegativeFloat = Field(1.0, allow_inf_nan=False)

    _none_if_blank = field_validator("min_seconds", mode="before")(_blank_is_none)


class QueueSettings(BaseSettings):
    """The RQ task queue (``FACEREC_QUEUE_*``); the queue's URL is the root's ``queue_url``."""

    model_config = _config(PREFIX + "QUEUE_")
    name: str = Field("facerec-video", min_length=1)
    retries: NonNegativeInt = 2
    task_timeout: PositiveInt = 3600
    cleanup_interval: float = Field(10.0, gt=0)
    heartbeat_ttl: PositiveInt = 30


class ServerSettings(BaseSettings):
    """The serving process (``FACEREC_BIND``, ``FACEREC_THREADS``, ...), read by ``python app.py`` and
    ``gunicorn.conf.py`` through :mod:`modules.server`; 0 means: derived (see each field)."""

    model_config = _config(PREFIX)
    #: gunicorn's listening address (``python app.py`` takes ``--host``/``--port``)
    bind: str = "127.0.0.1:5000"
    #: gunicorn worker processes; 0 = one per core
    workers: NonNegativeInt = 0
    #: request threads of ``python app.py``, and of each gunicorn worker
    threads: PositiveInt = 8
    #: gunicorn kills a worker whose main loop is stuck this long (seconds)
    timeout: PositiveInt = 120
    #: OpenCV/onnxruntime threads per computation; 0 = the cores shared out among every request thread
    #: of every process (at least 1)
    cv_threads: NonNegativeInt = 0
    #: gunicorn's access log (``-`` = stderr); none by default
    access_log: str | None = None
    #: gunicorn's log level
    log_level: str = "info"
    #: open connections per process; beyond, new ones wait in the kernel's listen queue
    connection_limit: PositiveInt = 1000
    #: seconds a client has to send a request's head (gunicorn), or may stay silent (both servers), before it
    #: is disconnected
    client_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False)
    #: seconds an idle kept-alive connection stays open (gunicorn; ``python app.py``: ``client_timeout_s``)
    keepalive_s: NonNegativeInt = 5
    #: long responses (MJPEG streams, video downloads that hold a thread) at once per process;
    #: 0 = half the threads (the other half always answers ordinary requests)
    stream_slots: NonNegativeInt = 0
    #: long responses of one video job at once per process
    stream_per_job: PositiveInt = 4
    #: long responses to one client (API key, else address) at once per process
    stream_per_client: PositiveInt = 3
    #: the longest MJPEG stream (seconds)
    stream_max_s: float = Field(3600.0, gt=0, allow_inf_nan=False)

    _none_if_blank = field_validator("access_log", mode="before")(_blank_is_none)

    @property
    def worker_count(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)

    @property
    def stream_limit(self) -> int:
        return self.stream_slots or max(1, self.threads // 2)


class DecodeSettings(BaseSettings):
    """The memory budget of image decoding (``FACEREC_DECODE_*``); see docs/memory.md."""

    model_config = _config(PREFIX + "DECODE_")
    #: images decoded at once in this process; more requests wait for a slot
    max_concurrent: PositiveInt = 2
    #: how long a request waits for a decoding slot before a 503 with ``Retry-After``
    wait_s: NonNegativeFloat = Field(10.0, allow_inf_nan=False)
    #: requests waiting for a slot beyond which more get a 503 at once (``None``: no bound); at most the
    #: server's request threads minus ``max_concurrent`` minus one keeps a thread free for ``/health``
    max_queued: NonNegativeInt | None = None
    #: images with more pixels are decoded reduced to about this many (JPEGs at 1/2, 1/4 or 1/8 scale)
    pixels: PositiveInt = 16_000_000
    #: decoder memory for one image at its real cost per pixel; other formats needing more are refused (413)
    raster_bytes: PositiveInt = 192 * 1024 * 1024

    _none_if_blank = field_validator("max_queued", mode="before")(_blank_is_none)


#: an allowed-hosts entry: ``*``, a name or IPv4 address (``.`` first: and its subdomains), or an IPv6 address
#: (bare or in brackets); an optional port, ignored
_HOST_ENTRY = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>\*|\.?[a-z0-9_-][a-z0-9_.-]*|[0-9a-f:.]*:[0-9a-f:.]*))"
                         r"(?::[0-9]{1,5})?")
#: a serialized origin: scheme, host, optional port (no path)
_ORIGIN = re.compile(r"https?://(?:\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::[0-9]{1,5})?")


class HttpSettings(BaseSettings):
    """Browser safety of the HTTP service (``FACEREC_HTTP_*``); what each protects: docs/security.md."""

    model_config = _config(PREFIX + "HTTP_")
    #: ``Host`` names served (against DNS rebinding), port ignored; ``.example.com`` also allows its subdomains;
    #: ``*`` = any.  Kept lower-case, IPv6 addresses without brackets.
    allowed_hosts: CommaList = ["localhost", "127.0.0.1", "::1"]
    #: origins (``https://app.example.com[:port]``) whose pages may call the API from the browser (CORS) and
    #: write through it; ``*`` = any page.  Empty: no CORS headers, writes only from the service's own pages
    cors_origins: CommaList = []
    #: lifetime in seconds of the ``?token=`` in a video job's ``stream_url`` and ``video_url``
    token_ttl_s: PositiveInt = 3600

    _lists = field_validator("allowed_hosts", "cors_origins", mode="before")(_comma_list)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        out = []
        for entry in value:
            m = _HOST_ENTRY.fullmatch(entry.strip().lower())
            if m is None:
                raise ValueError(f"{entry!r} is not a host name (give names like example.com, no scheme or path)")
            out.append(m.group("v6") or m.group("name").rstrip(".") or ".")
        return out

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        out = []
        for entry in value:
            origin = entry.strip().lower().rstrip("/")
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{entry!r} is not an origin like https://app.example.com or http://host:8080")
            out.append(origin)
        return out


class RateLimitSettings(BaseSettings):
    """Quotas per API key, or per client address when keys are off (``FACEREC_RATE_*``)."""

    model_config = _config(PREFIX + "RATE_")
    #: off: no request budgets and no video job quota
    enabled: bool = True
    #: every request but health, readiness, metrics and the docs (Flask-Limiter syntax, ``;``-separated;
    #: blank: none)
    default: str = "1200 per minute"
    #: POST, PUT and PATCH requests (they run the models or write), counted on top of ``default``
    heavy: str = "600 per minute"
    #: ``memory://`` or ``redis://...``; ``None``: the queue's Redis when ``queue_url`` is set, else memory
    storage_url: str | None = None
    #: video jobs queued or running per key (or client address)
    video_jobs: PositiveInt = 2

    _none_if_blank = field_validator("storage_url", mode="before")(_blank_is_none)

    @field_validator("default", "heavy")
    @classmethod
    def _limit_syntax(cls, value: str) -> str:
        from limits import parse_many

        if not value.strip():  # blank: no such budget
            return ""
        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like '600 per minute' or '10/second;600/hour': {exc}") from None
        return value


class MetricsSettings(BaseSettings):
    """Observability (``FACEREC_METRICS_*``): Prometheus metrics at ``/metrics`` and the access log."""

    model_config = _config(PREFIX + "METRICS_")
    #: serve Prometheus metrics at ``/metrics`` (counts and timings, no names or images)
    enabled: bool = True
    #: with API keys on, ``/metrics`` needs a valid key; off: public, like ``/health``
    require_key: bool = False
    #: one ``facerec.access`` log line per request (route, status, ms, key id, client); ``None``: on unless
    #: gunicorn writes its own access log (``FACEREC_ACCESS_LOG``)
    access_log: bool | None = None

    _none_if_blank = field_validator("access_log", mode="before")(_blank_is_none)

    def access_log_on(self, server: ServerSettings) -> bool:
        """Whether the service writes its access log, given the serving process's settings."""
        return server.access_log is None if self.access_log is None else self.access_log


class Settings(BaseSettings):
    """Everything the service, the scripts and the worker need; every field has a usable default."""

    model_config = _config(PREFIX)

    #: holds ``gallery.db``, ``keys.db``, ``jobs.db`` and ``jobs/``
    data_dir: Path = Path("data")
    #: embedder config: a path or a bare name from ``configs/``; ``None`` = configs/sface.yaml
    config: str | None = None
    #: gallery database (path, ``sqlite:///`` or ``postgresql://`` URL); ``None`` = ``<data_dir>/gallery.db``
    gallery_url: str | None = Field(
        None,
        validation_alias=AliasChoices("gallery_url", "FACEREC_GALLERY_URL", "FACEREC_DATABASE_URL", "DATABASE_URL"),
    )
    #: ``redis://...``: video jobs run on ``python -m modules.worker`` processes; ``None``: in this process
    queue_url: str | None = Field(None, validation_alias=AliasChoices("queue_url", "FACEREC_QUEUE_URL", "QUEUE_URL"))
    #: video job files (uploads, annotated videos, crops); ``None`` = ``<data_dir>/jobs``
    storage_dir: Path | None = None
    #: largest request body and largest image file
    max_upload_bytes: PositiveInt = DEFAULT_MAX_UPLOAD_BYTES
    #: largest decoded image, in pixels (checked before decoding)
    max_pixels: PositiveInt = DEFAULT_MAX_PIXELS
    #: faces analysed per image (largest first)
    max_faces: PositiveInt = DEFAULT_MAX_FACES
    #: require ``X-API-Key`` on every endpoint but health/readiness/openapi/docs
    api_keys: bool = False
    #: the gallery ``/recognition`` uses when the request names none (created at start-up)
    default_gallery: str = "default"
    #: shorthand for ``chunks.seconds`` (``--chunk-seconds``)
    video_chunk_seconds: NonNegativeFloat | None = None

    video: VideoLimits = Field(default_factory=VideoLimits)
    chunks: ChunkSettings = Field(default_factory=ChunkSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    rate: RateLimitSettings = Field(default_factory=RateLimitSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    _none_if_blank = field_validator(
        "config", "gallery_url", "queue_url", "storage_dir", "video_chunk_seconds", mode="before"
    )(_blank_is_none)

    @field_validator("data_dir", "storage_dir")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @field_validator("gallery_url", "queue_url", "config")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        return None if value is None else value.strip()

    @field_validator("queue_url")
    @classmethod
    def _redis_only(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"the queue URL must look like redis://host:6379/0, got {value!r}")
        return value

    # --- where things live -----------------------------------------------------------------
    @property
    def gallery_location(self) -> str | Path:
        return self.gallery_url or (self.data_dir / "gallery.db")

    @property
    def keys_path(self) -> Path:
        return self.data_dir / "keys.db"

    @property
    def jobs_dir(self) -> Path:
        """Video job files (``storage_dir``, default ``<data_dir>/jobs``)."""
        return self.storage_dir or (self.data_dir / "jobs")

    @property
    def jobs_database(self) -> str | Path:
        """The video job store: the gallery's database when that is PostgreSQL (every server and worker
        reaches it), else ``<data_dir>/jobs.db``."""
        url = self.gallery_url or ""
        if url.lower().startswith(("postgres://", "postgresql://", "postgresql+psycopg://")):
            return url
        return self.data_dir / "jobs.db"

    @property
    def chunk_seconds(self) -> float:
        return self.chunks.seconds if self.video_chunk_seconds is None else self.video_chunk_seconds

    def replace(self, **changes: Any) -> Settings:
        return self.model_copy(update=changes)


_BRANCHES: dict[str, type[BaseSettings]] = {
    "video": VideoLimits, "chunks": ChunkSettings, "queue": QueueSettings, "server": ServerSettings,
    "decode": DecodeSettings, "http": HttpSettings, "rate": RateLimitSettings, "metrics": MetricsSettings,
}


def _variable(exc: ValidationError, error: dict[str, Any]) -> str:
    """The environment variable behind a validation error (its branch's prefix + the field name)."""
    loc = [str(part) for part in error.get("loc", ()) if not str(part).isdigit()]
    model: type[BaseSettings] = next((m for m in _BRANCHES.values() if m.__name__ == exc.title), Settings)
    if loc and loc[0] in _BRANCHES:
        model, loc = _BRANCHES[loc[0]], loc[1:]
    prefix = model.model_config["env_prefix"]
    name = prefix + "_".join(loc).upper() if loc else prefix.rstrip("_")
    alias = {"FACEREC_GALLERY_URL": "DATABASE_URL", "FACEREC_QUEUE_URL": "QUEUE_URL"}.get(name)
    return f"{name} (or {alias})" if alias else name


def load_settings(**overrides: Any) -> Settings:
    """Defaults, then ``FACEREC_*`` (and ``DATABASE_URL`` / ``QUEUE_URL``), then ``overrides``
    (``None`` values are ignored, so unset command-line flags fall through)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_variable(exc, e)} (setting {'.'.join(map(str, e['loc']))}): {e['msg']}"
            + ("" if "got" in e["msg"] else f", got {e.get('input')!r}")
            for e in exc.errors()
        )
        raise ConfigError(f"invalid setting: {problems}") from None
