"""Video jobs over HTTP: upload a video, follow it, read per-frame and per-track results, watch it.

    POST   /api/v1/videos                         multipart ``file`` (+ ``gallery``), or JSON
                                                  ``{"file"|"video": <base64>, "gallery": ...}``
                                                  -> 202 ``{"job_id", ...}``
    GET    /api/v1/videos                         the jobs (of the galleries the key may use)
    GET    /api/v1/videos/{job_id}                ``{"status", "progress", ...}``
    GET    /api/v1/videos/{job_id}/frames         per-frame results (``frames.jsonl`` shape), ``offset``/``limit``
    GET    /api/v1/videos/{job_id}/tracks         per-track summary (when the job has ended)
    GET    /api/v1/videos/{job_id}/video          the annotated MP4 (when done)
    GET    /api/v1/videos/{job_id}/crops/<path>   a track's best crop (JPEG)
    GET    /api/v1/videos/{job_id}/stream         MJPEG of the annotated frames, for an ``<img>`` tag
    DELETE /api/v1/videos/{job_id}                cancel (``?purge=true`` also deletes a finished job)

Jobs run in this process on a bounded pool, or on ``python -m modules.worker``
processes when the settings have a ``queue_url`` (RQ on Redis); their state
and results are in the job store (``<data_dir>/jobs.db`` or the gallery's
PostgreSQL database), their files under ``storage_dir``, so any API server
answers for any job (see :mod:`modules.jobs`).
Limits come from ``FACEREC_VIDEO_*`` environment variables or
``create_blueprint(limits=...)``.  An ``<img>`` tag cannot send the
``X-API-Key`` header, so with keys on the stream endpoint is public but needs
a ``?token=`` that stands for the caller's key for an hour (``FACEREC_HTTP_TOKEN_TTL_S``), given only to callers
allowed to read the job, freshly in every job record (``stream_url``, ``video_url``; :mod:`.url_tokens`).
Streams and video downloads hold a server thread while they last, so a process serves only
``FACEREC_STREAM_SLOTS`` of them at once (``_PER_JOB``, ``_PER_CLIENT``); beyond, 503 with ``Retry-After``
(:class:`~modules.jobs.stream.StreamSlots`).

Register with ``create_app(..., extra_blueprints=[videos.create_blueprint()])``.
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request, send_file, stream_with_context
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidRequestError, NotFoundError, UnsupportedMediaError
from ..jobs import MJPEG_MIMETYPE, ChunkPolicy, JobLimits, JobManager, validate_job_id
from ..jobs.stream import ReleasingBody, StreamSlots
from ..video.config import VideoConfig
from . import url_tokens
from .auth import authenticate, authorize_gallery, current_key, public
from .common import API_PREFIX, CONFLICT, NOT_FOUND, UNAVAILABLE, api_blueprint, binary_response, body_limit
from .inputs import decode_base64
from .limits import client_id
from .schemas import ErrorResponse
from .service import get_service

EXTENSION = "facerec_videos"
VIDEO_FIELDS = ("file", "video")
TAG_VIDEOS = Tag(name="videos", description="Video jobs: per-frame and per-track recognition, annotated video, MJPEG")
MAX_FRAMES_PAGE = 10_000
UPLOAD_ERRORS = {413: ErrorResponse, 415: ErrorResponse, **UNAVAILABLE}


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class JobPath(_In):
    job_id: str = Field(min_length=36, max_length=36, description="the job id (a UUID)")


class FramesQuery(_In):
    offset: int = Field(0, ge=0, description="frames to skip")
    limit: int = Field(1000, ge=1, le=MAX_FRAMES_PAGE, description="frames to return")


class DeleteQuery(_In):
    purge: bool = Field(False, description="also delete the files of a job that has already ended")


class StreamQuery(_In):
    token: str | None = Field(None, max_length=200, description="the token of the job's `stream_url` or `video_url`"
                              " (needed when API keys are on; it expires)")


class VideoQuery(StreamQuery):
    download: bool = Field(False, description="send it as an attachment (a file to save) rather than inline")


class CropPath(JobPath):
    name: str = Field(min_length=1, max_length=200)
    file: str = Field(min_length=1, max_length=200)


class VideoUploadJSON(BaseModel):
    file: str | None = Field(None, description="the video file, base64 (the original clients' shape); also `video`")
    gallery: str | None = Field(None, description="gallery to recognize against (default: the server's default"
                                " gallery)")
    decision: str | None = Field(None, description="`mean` or `vote`")


class VideoUploadForm(VideoUploadJSON):
    file: Any = Field(description="the video file (MP4, MOV, AVI, MKV, WebM...)",
                      json_schema_extra={"type": "string", "format": "binary"})


class VideoJob(_Out):
    job_id: str
    status: str = Field(description="`queued`, `running`, `done`, `failed` or `cancelled`")
    progress: float = Field(description="0..1")
    error: str | None = None


class VideoJobList(_Out):
    jobs: list[VideoJob]


class FrameFace(_Out):
    track_id: int
    box: list[float]
    name: str
    similarity: float


class FrameOut(_Out):
    frame: int
    time_s: float
    faces: list[FrameFace]


class FramesResponse(_Out):
    job_id: str
    status: str
    offset: int
    frames: list[FrameOut]
    next_offset: int | None = Field(description="offset of the next page, null at the end of what is written")


class TracksResponse(_Out):
    job_id: str
    status: str
    tracks: list[dict[str, Any]]


MP4_RESPONSE = binary_response("video/mp4", "the annotated video (MPEG-4)")
JPEG_RESPONSE = binary_response("image/jpeg", "a JPEG crop")
MJPEG_RESPONSE = binary_response(
    "multipart/x-mixed-replace", "`multipart/x-mixed-replace` stream of JPEG frames (use as `<img src=...>`)"
)


def get_manager() -> JobManager:
    return current_app.extensions[EXTENSION]


def stream_slots() -> StreamSlots:
    """The app's bound on long responses (``FACEREC_STREAM_*``)."""
    return get_service().streams


def _sent_without_a_thread(resp: Response) -> bool:
    """Whether the server sends this body without holding a request thread: waitress gives a
    ``wsgi.file_wrapper`` body to its event loop; nothing is sent for HEAD or 304."""
    if request.method == "HEAD" or resp.status_code not in (200, 206):
        return True
    wrapper = request.environ.get("wsgi.file_wrapper")
    return wrapper is not None and type(resp.response) is wrapper and wrapper.__module__.startswith("waitress.")


def _hold_slot(job_id: str, respond: Any) -> Response:
    """``respond()``'s response, with a stream slot held until the server closes its body if sending it holds a
    thread (503 when none is free)."""
    resp = respond()
    if _sent_without_a_thread(resp):
        return resp
    try:
        release = stream_slots().acquire(job_id, client_id())
    except BaseException:
        resp.close()
        raise
    resp.response = ReleasingBody(resp.response, release)
    return resp


def _job_for_caller(job_id: str) -> dict[str, Any]:
    job = get_manager().get(validate_job_id(job_id))
    if current_key() is not None:
        authorize_gallery(job.get("gallery") or "")
    return job


def _check_stream_token(job_id: str, token: str | None) -> None:
    """401 unless ``token`` is an unexpired link token for this job whose key is not revoked; 403 out of its scope."""
    url_tokens.authenticate(get_manager().dir, job_id, token, get_service().keys)
    _job_for_caller(job_id)


def _with_links(job: dict[str, Any]) -> dict[str, Any]:
    base = f"{API_PREFIX}/videos/{job['job_id']}"
    links = {"self": base, "frames": f"{base}/frames", "tracks": f"{base}/tracks", "video": f"{base}/video"}
    stream, video = f"{base}/stream", f"{base}/video"
    key = current_key()
    if key is not None:  # keys on: the links carry a fresh token standing for the caller's key
        ttl = get_service().settings.http.token_ttl_s
        token = f"?token={url_tokens.issue(get_manager().dir, job['job_id'], key, ttl)}"
        stream, video = stream + token, video + token
    links["stream"] = stream
    return {**job, "links": links, "stream_url": stream, "video_url": video}


def _read_upload(limit: int) -> tuple[Any, str | None, dict[str, Any]]:
    """(file object or bytes, client file name, other fields) from multipart or JSON."""
    # video bodies are larger than image bodies (base64 JSON a third larger); the manager checks the real size
    request.max_content_length = body_limit(limit)
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        fields = {k: request.form.get(k) for k in request.form.keys()}
        for name in VIDEO_FIELDS:
            f = request.files.get(name)
            if f is not None:
                return f.stream, f.filename, fields
        raise InvalidRequestError("no video in the request: send a multipart file part 'file'")
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidRequestError("the JSON body must be an object with a base64 'file' (or 'video')")
        for name in VIDEO_FIELDS:
            if body.get(name):
                data = decode_base64(body[name], name)
                fields = {k: v for k, v in body.items() if k not in VIDEO_FIELDS}
                return data, body.get("filename"), fields
        raise InvalidRequestError("no video in the request: send JSON {'file': <base64>}")
    raise UnsupportedMediaError(
        f"content type {mimetype or '(none)'!r} is not supported; send multipart/form-data with a 'file' part"
        " or JSON with a base64 'file'"
    )


def create_blueprint(
    *, limits: JobLimits | None = None, video_config: VideoConfig | None = None, manager: JobManager | None = None
) -> APIBlueprint:
    """The ``/api/v1/videos`` blueprint; its job manager is created when the app registers it."""
    bp = api_blueprint("videos", __name__, url_prefix=API_PREFIX, abp_tags=[TAG_VIDEOS])

    def _init(state: Any) -> None:
        app = state.app
        if EXTENSION in app.extensions:
            return
        if manager is not None:
            app.extensions[EXTENSION] = manager
            return
        from ..storage.jobs import open_job_store

        svc = app.extensions["facerec"]
        settings = svc.settings
        store = open_job_store(settings.jobs_database)
        try:
            app.extensions[EXTENSION] = JobManager(
                settings.jobs_dir, svc.recognizer, limits=limits or settings.video, video_config=video_config,
                config_name=settings.config, gallery_location=settings.gallery_location, store=store, own_store=True,
                queue_url=settings.queue_url, queue=settings.queue, chunking=ChunkPolicy.from_settings(settings),
            )
        except BaseException:
            store.close()
            raise

    bp.record_once(_init)

    upload_body = {"multipart/form-data": {"schema": VideoUploadForm.model_json_schema()},
                   "application/json": {"schema": VideoUploadJSON.model_json_schema()}}

    @bp.post("/videos", responses={202: VideoJob, **UPLOAD_ERRORS, **NOT_FOUND},
             openapi_extensions={"requestBody": {"required": True, "content": upload_body}})
    def create_video_job():
        """Upload a video: 202 with the job id; it is processed in the background

        Multipart `file` (the original clients' JSON `{"file": <base64>}` also works) and an
        optional `gallery`. Follow it with `GET /api/v1/videos/{job_id}`. 415 `not_a_video` for an
        image, a PDF or any file that is no video container; 429 `rate_limited` (with `Retry-After`) when
        this API key (or client address) already has `FACEREC_RATE_VIDEO_JOBS` jobs queued or running.
        """
        svc = get_service()
        mgr = get_manager()
        rate = svc.settings.rate
        client, quota = client_id(), (rate.video_jobs if rate.enabled else None)
        mgr.check_client_quota(client, quota)  # 429 before the upload is read
        data, filename, fields = _read_upload(mgr.limits.max_upload_bytes)
        gallery = fields.get("gallery") or svc.settings.default_gallery
        if not isinstance(gallery, str):
            raise InvalidRequestError("gallery must be a string")
        authorize_gallery(gallery)
        if gallery != svc.settings.default_gallery:
            svc.gallery.get_gallery(gallery)  # 404 now rather than a failed job later
        settings = {}
        if fields.get("decision"):
            if fields["decision"] not in ("mean", "vote"):
                raise InvalidRequestError("decision must be 'mean' or 'vote'")
            settings["decision"] = fields["decision"]
        job = mgr.submit(data, filename, gallery, settings or None, client=client, client_limit=quota)
        resp = _with_links(job)
        return resp, 202, {"Location": resp["links"]["self"]}

    @bp.get("/videos", responses={200: VideoJobList})
    def list_video_jobs():
        """List video jobs (of the galleries the API key may use)"""
        key = current_key()
        jobs = [j for j in get_manager().list() if key is None or key.allows(j.get("gallery") or "")]
        return {"jobs": jobs}

    @bp.get("/videos/<job_id>", responses={200: VideoJob, **NOT_FOUND})
    def get_video_job(path: JobPath):
        """Status and progress of a video job"""
        return _with_links(_job_for_caller(path.job_id))

    @bp.get("/videos/<job_id>/frames", responses={200: FramesResponse, **NOT_FOUND})
    def get_video_frames(path: JobPath, query: FramesQuery):
        """Per-frame results: `{"frame", "time_s", "faces": [{"track_id", "box", "name", "similarity"}]}`

        Available while the job runs (the frames written so far); page with `offset` and `limit`.
        """
        _job_for_caller(path.job_id)
        frames, job = get_manager().frames(path.job_id, query.offset, query.limit)
        nxt = query.offset + len(frames) if len(frames) == query.limit else None
        return {"job_id": job["job_id"], "status": job["status"], "offset": query.offset, "frames": frames,
                "next_offset": nxt}

    @bp.get("/videos/<job_id>/tracks", responses={200: TracksResponse, **NOT_FOUND, **CONFLICT})
    def get_video_tracks(path: JobPath):
        """Per-track summary: name, first and last frame, best crop, name history (409 until the job ends)"""
        _job_for_caller(path.job_id)
        tracks, job = get_manager().tracks(path.job_id)
        return {"job_id": job["job_id"], "status": job["status"], "tracks": tracks}

    @bp.get("/videos/<job_id>/video", responses={200: MP4_RESPONSE, **NOT_FOUND, **CONFLICT, **UNAVAILABLE})
    @public
    def get_video_annotated(path: JobPath, query: VideoQuery):
        """The annotated video, H.264 MP4 (409 until the job is done)

        Range requests are served, so a `<video>` tag can play and seek it. With API keys on, send a key
        as usual or use the job's `video_url`, whose `?token=` expires (a `<video>` tag cannot send headers).
        `?download=true` asks the browser to save it. 503 with `Retry-After` while the server already sends
        as many videos and streams as it allows (in all, of this job, to this client).
        """
        job_id = validate_job_id(path.job_id)
        if get_service().keys is not None and query.token is not None:
            _check_stream_token(job_id, query.token)
        else:
            authenticate()
            _job_for_caller(job_id)
        p = get_manager().video_path(job_id)
        return _hold_slot(job_id, lambda: send_file(
            p, mimetype="video/mp4", as_attachment=query.download, download_name=f"{job_id}.mp4", conditional=True
        ))

    @bp.get("/videos/<job_id>/crops/<name>/<file>", responses={200: JPEG_RESPONSE, **NOT_FOUND, **CONFLICT})
    def get_video_crop(path: CropPath):
        """A track's best crop (the `best_crop` of `/tracks`)"""
        _job_for_caller(path.job_id)
        p = get_manager().crop_path(path.job_id, f"{path.name}/{path.file}")
        if not p.is_file():
            raise NotFoundError("no such crop")
        return send_file(p, mimetype="image/jpeg")

    @bp.get("/videos/<job_id>/stream", responses={200: MJPEG_RESPONSE, **NOT_FOUND, **UNAVAILABLE})
    @public
    def stream_video_job(path: JobPath, query: StreamQuery):
        """MJPEG stream of the annotated frames for an `<img>` tag (like the original `/video_feed`)

        Live while the job runs, then the annotated video at its frame rate. With API keys on, use the job's
        `stream_url`, whose `?token=` expires (an `<img>` tag cannot send headers). 503 with `Retry-After` while
        the server already sends as many streams and videos as it allows (in all, of this job, to this client).
        """
        mgr = get_manager()
        job_id = validate_job_id(path.job_id)
        if get_service().keys is not None:
            _check_stream_token(job_id, query.token)
        headers = {"Cache-Control": "no-cache, no-store", "X-Accel-Buffering": "no"}
        max_s = get_service().settings.server.stream_max_s
        return _hold_slot(job_id, lambda: Response(
            stream_with_context(mgr.stream(job_id, max_seconds=max_s)), mimetype=MJPEG_MIMETYPE, headers=headers
        ))

    @bp.delete("/videos/<job_id>", responses={200: VideoJob, **NOT_FOUND})
    def cancel_video_job(path: JobPath, query: DeleteQuery):
        """Cancel a queued or running job (results so far are kept); `purge=true` deletes an ended job"""
        _job_for_caller(path.job_id)
        return get_manager().cancel(path.job_id, purge=query.purge)

    return bp
