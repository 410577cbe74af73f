"""Video jobs for the HTTP service: upload, queue, run (here or on workers), watch, cancel, survive restarts.

:class:`JobManager` is what the API talks to, whatever runs the jobs.  State and results are in the job store
(:mod:`modules.storage.jobs`), files under ``<storage_dir>/<job_id>/`` (where lives what: docs/queue.md), so any
API server answers for any job.  Limits are checked before a job is queued (503 past ``max_running + max_queued``
active jobs per process in-process, ``max_active`` in all with a queue; 429 past ``client_limit`` active jobs of one
client, counted in the job store; 413 past the size, length and pixel limits of the container's metadata; 415 for
a file that is no video container).  The frames are checked again as they are decoded (:mod:`modules.video.decode`).
Job ids are UUID4 strings, validated before any path is built.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import (
    BadImageError,
    ConfigError,
    ConflictError,
    ImageTooLargeError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    ServiceUnavailableError,
    UnsupportedMediaError,
)
from ..files import open_private, private_dir
from ..video.config import VideoConfig
from ..video.config import video_config as merge_video_config
from ..video.videoio import VIDEO_SUFFIXES, probe
from ..video.process import VIDEO_FILE
from ..storage.jobs import ACTIVE, JobNotFoundError, JobStore, now_iso, open_job_store
from ..settings import QueueSettings, VideoLimits
from .chunks import ChunkPolicy
from .executors import InProcessExecutor, RedisQueueExecutor
from .recovery import RESTARTED, import_job_folders, owner_dead, validate_job_id
from .stream import mjpeg
from .tasks import TaskContext, fail_job, plan

log = logging.getLogger("facerec.jobs")

PRIVATE = {  # state that stays inside: the public status has the rest (stream_token: jobs of earlier versions)
    "gallery_location", "input", "stream_token", "video_config", "max_frames", "owner", "heartbeat", "cancel",
    "phase", "overlap_frames", "result_dir", "pending_summary", "client", "max_pixels", "max_total_pixels",
}
#: ``Retry-After`` of a refusal by the per-client quota: about how often a job's end is worth checking for
QUOTA_RETRY_AFTER_S = 30
_CHUNK = 1 << 20


class JobNotReadyError(ConflictError):
    code = "job_not_ready"


JobLimits = VideoLimits  # FACEREC_VIDEO_MAX_*: the settings tree's video branch


class JobManager:
    """Accepts, tracks and serves video jobs; the executor runs them, the store holds them."""

    def __init__(
        self, jobs_dir: str | Path, recognizer: Any, *, limits: JobLimits | None = None,
        video_config: VideoConfig | None = None, config_name: str | None = None,
        gallery_location: str | Path | None = None, executor: Any = None, store: JobStore | None = None,
        queue_url: str | None = None, queue: QueueSettings | None = None, chunking: ChunkPolicy | None = None,
        stale_after: float = 30.0, own_store: bool | None = None,
    ):
        self.dir = private_dir(jobs_dir)
        self.recognizer = recognizer
        self.limits = limits or JobLimits()
        self.video_config = video_config or VideoConfig()
        self.config_name = config_name
        self.gallery_location = str(gallery_location) if gallery_location is not None else None
        self.store = store if store is not None else open_job_store(self.dir / "jobs.db")
        self._own_store = (store is None) if own_store is None else own_store
        if executor is None and queue_url:
            executor = RedisQueueExecutor(queue_url, queue or QueueSettings())
        self.executor = executor or InProcessExecutor(self.limits.max_running)
        self.chunking = chunking or ChunkPolicy()
        self.stale_after = float(stale_after)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._closed = threading.Event()
        self.ctx = TaskContext(self.store, self.dir, lambda _name: self.recognizer)
        self.executor.start(self.ctx)
        self.recovered = self.recover()
        interval = getattr(self.executor, "cleanup_interval", None) or min(5.0, self.stale_after / 3)
        self._maint = threading.Thread(target=self._maintain, args=(interval,), name="video-jobs-maint", daemon=True)
        self._maint.start()

    @property
    def in_process(self) -> bool:
        return getattr(self.executor, "kind", "") == "inprocess"

    # --- paths and state ---------------------------------------------------------------------------------------
    def _state(self, job_id: str) -> dict[str, Any]:
        return self.store.get(validate_job_id(job_id))

    def get(self, job_id: str) -> dict[str, Any]:
        return self._public(self._state(job_id))

    @staticmethod
    def _public(state: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in state.items() if k not in PRIVATE}
        if state.get("cancel") and state.get("status") in ACTIVE:
            out["cancel_requested"] = True
        return out

    def list(self) -> list[dict[str, Any]]:
        return [self._public(s) for s in self.store.list()]

    def _result_path(self, state: dict[str, Any], rel: str) -> Path:
        return self.dir / state["job_id"] / (state.get("result_dir") or "") / rel

    # --- recovery ----------------------------------------------------------------------------------------------
    def recover(self) -> int:
        """Import job folders of earlier versions; mark jobs of dead in-process executors failed."""
        n = import_job_folders(self.store, self.dir)
        for job in self.store.active():
            orphan = job.get("executor", "inprocess") == "inprocess" and job.get("owner") != self.owner
            if orphan and owner_dead(job, self.stale_after) and fail_job(self.store, job["job_id"], RESTARTED):
                n += 1
        if n:
            log.warning("marked %d unfinished video job(s) as failed after a restart", n)
        return n

    def _maintain(self, interval: float) -> None:
        while not self._closed.wait(interval):
            try:
                if self.in_process:
                    self.store.heartbeat_owner(self.owner)
                    self.recover()
                self.executor.maintenance()
            except Exception:
                log.exception("video job maintenance")

    def _prune(self) -> None:
        done = [s for s in self.store.list() if s.get("status") not in ACTIVE]
        for s in done[: max(0, len(done) - self.limits.max_kept)]:
            self.store.delete(s["job_id"])
            shutil.rmtree(self.dir / s["job_id"], ignore_errors=True)

    # --- submit --------------------------------------------------------------------------------------------------
    def check_client_quota(self, client: str | None, limit: int | None) -> None:
        """:class:`RateLimitedError` (429) when ``client`` has ``limit`` jobs queued or running already."""
        if client is not None and limit is not None:
            self._quota(self.store.count_active(client=client), limit)

    @staticmethod
    def _quota(active: int, limit: int) -> None:
        if active >= limit:
            raise RateLimitedError(
                f"this client has {active} video job(s) queued or running, the limit is {limit};"
                " retry when one has ended (or cancel one)",
                details={"active": active, "limit": limit, "retry_after_s": QUOTA_RETRY_AFTER_S},
                retry_after=QUOTA_RETRY_AFTER_S,
            )

    def submit(self, data: bytes | IO[bytes] | str | Path, filename: str | None = None, gallery: str = "default",
               video_settings: dict[str, Any] | None = None, *, client: str | None = None,
               client_limit: int | None = None) -> dict[str, Any]:
        """Store the upload, check it, queue it: the job's state (``status`` ``queued``).

        :class:`ImageTooLargeError` (413) past the size/frames/duration/pixel limits,
        :class:`NotAVideoError` (415) for an image, a PDF or anything else that is no video container,
        :class:`BadImageError` (400) when it does not decode as a video,
        :class:`RateLimitedError` (429) when ``client`` (who submits: its key or address) has ``client_limit``
        jobs queued or running (counted in the job store, so across processes and servers),
        :class:`ServiceUnavailableError` (503) when the queue is full or unreachable.
        """
        if self._closed.is_set():
            raise ServiceUnavailableError("the video job manager is shutting down")
        self.check_client_quota(client, client_limit)
        try:  # validate now: 400 before any upload work
            effective = merge_video_config(video_settings or {}, self.video_config, where=" (request)")
        except ConfigError as exc:
            raise InvalidRequestError(exc.message) from None
        limit = (self.limits.max_running + self.limits.max_queued) if self.in_process else self.limits.max_active
        if self.store.count_active(owner=self.owner if self.in_process else None) >= limit:
            raise ServiceUnavailableError(f"too many video jobs are queued or running (limit {limit}); retry later")
        suffix = Path(filename or "").suffix.lower()
        if suffix and suffix not in VIDEO_SUFFIXES:
            raise UnsupportedMediaError(f"{suffix!r} is not a supported video type;"
                                        f" use one of {', '.join(sorted(VIDEO_SUFFIXES))}")
        job_id = str(uuid.uuid4())
        d = private_dir(self.dir / job_id)
        try:
            input_name = f"input{suffix or '.mp4'}"
            size = self._store(data, d / input_name)
            if size == 0:
                raise BadImageError("the uploaded video is empty")
            try:
                info = probe(d / input_name, max_pixels=self.limits.max_pixels)
            except (BadImageError, InvalidRequestError):
                raise BadImageError("the uploaded file is not a decodable video") from None
            self._check(info)
            ranges = self.chunking.plan(info.frames, info.fps, getattr(self.executor, "parallelism", 1))
            state = dict(  # the order of the public status
                job_id=job_id, status="queued", progress=0.0, created_at=now_iso(), started_at=None, finished_at=None,
                error=None, gallery=gallery, filename=(filename or "")[:200] or None, bytes=size, video=info.to_dict(),
                frames_done=0, fps=None, summary=None, video_settings=video_settings or None,
                executor=self.executor.kind, chunks=len(ranges), workers=[], attempts=0,
                # private
                input=input_name, config=self.config_name, gallery_location=self.gallery_location,
                video_config=effective.model_dump(mode="json"),
                max_frames=self.limits.max_frames, overlap_frames=self.chunking.overlap_frames(info.fps),
                max_pixels=self.limits.max_pixels, max_total_pixels=self.limits.max_total_pixels,
                owner=self.owner if self.in_process else None, heartbeat=time.time(), phase="analyze", client=client,
            )
            with self.store.tx() as tx:
                if client is not None and client_limit is not None:  # again, counted under the client's lock
                    self._quota(tx.count_client(client), client_limit)
                tx.put_job(state)
                for i, (start, end) in enumerate(ranges):
                    tx.put_chunk({"job_id": job_id, "idx": i, "start_frame": start, "end_frame": end})
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        try:
            self.executor.submit(job_id, plan(state))
        except ServiceUnavailableError:
            self.store.delete(job_id)
            shutil.rmtree(d, ignore_errors=True)
            raise
        self._prune()
        return self._public(self.store.get(job_id))

    def _store(self, data: bytes | IO[bytes] | str | Path, dest: Path) -> int:
        """Copy the upload (bytes, a file object or a path) to ``dest``; at most ``max_upload_bytes``."""
        if isinstance(data, (str, Path)):
            with open(data, "rb") as fh:
                return self._store(fh, dest)
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = io.BytesIO(data)
        limit, size = self.limits.max_upload_bytes, 0
        with open_private(dest, "wb") as out:
            while chunk := data.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ImageTooLargeError(f"the video is larger than the limit of {limit} bytes")
                out.write(chunk)
        return size

    def _check(self, info: Any) -> None:
        lim = self.limits
        if info.width * info.height > lim.max_pixels:
            raise ImageTooLargeError(f"the video is {info.width}x{info.height}; the limit is {lim.max_pixels} pixels")
        if info.frames is not None and info.frames > lim.max_frames:
            raise ImageTooLargeError(f"the video has {info.frames} frames; the limit is {lim.max_frames}")
        if info.duration_s is not None and info.duration_s > lim.max_duration_s:
            raise ImageTooLargeError(f"the video lasts {info.duration_s:.0f} s; the limit is {lim.max_duration_s:.0f} s")
        if info.frames is not None and info.frames * info.width * info.height > lim.max_total_pixels:
            raise ImageTooLargeError(
                f"the video is {info.frames} frames of {info.width}x{info.height}, more than the limit of"
                f" {lim.max_total_pixels} pixels (frames x width x height) for one job; send a shorter or smaller video"
            )

    # --- cancel / delete ------------------------------------------------------------------------------------------
    def cancel(self, job_id: str, purge: bool = False) -> dict[str, Any]:
        """Cancel a queued or running job (idempotent); ``purge`` also deletes a finished job's files."""
        job_id = validate_job_id(job_id)
        with self.store.tx() as tx:
            state = tx.job(job_id, lock=True)
            if state is None:
                raise JobNotFoundError("no such video job")
            cancelled = state["status"] in ACTIVE
            if cancelled:
                changes: dict[str, Any] = {"cancel": True}
                if state["status"] == "queued":  # no task has started: nothing to wait for
                    changes.update(status="cancelled", finished_at=now_iso())
                state = tx.put_job({**state, **changes})
        if cancelled:
            with contextlib.suppress(Exception):
                self.executor.cancel(job_id, int(state.get("chunks") or 1))
            return self._public(state) | {"cancel_requested": True}
        if purge:
            self.store.delete(job_id)
            shutil.rmtree(self.dir / job_id, ignore_errors=True)
            return self._public(state) | {"deleted": True}
        return self._public(state)

    # --- results ---------------------------------------------------------------------------------------------------
    def frames(self, job_id: str, offset: int = 0, limit: int | None = None) -> tuple[list[dict], dict[str, Any]]:
        """Per-frame results committed so far (all of them once ``done``) and the job's state."""
        state = self._state(job_id)
        return self.store.frames(state["job_id"], offset, limit), self._public(state)

    def tracks(self, job_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        state = self._state(job_id)
        tracks = self.store.tracks(state["job_id"])
        if tracks is None:
            raise JobNotReadyError(f"the job is {state['status']}; tracks are written when it ends")
        return tracks, self._public(state)

    def video_path(self, job_id: str) -> Path:
        state = self._state(job_id)
        path = self._result_path(state, VIDEO_FILE)
        if state["status"] not in ("done", "cancelled") or not path.is_file():
            raise JobNotReadyError(f"the job is {state['status']}; the annotated video is available when it is done")
        return path

    def crop_path(self, job_id: str, rel: str) -> Path:
        state = self._state(job_id)
        tracks, _ = self.tracks(job_id)
        if rel not in {t["best_crop"] for t in tracks if t.get("best_crop")}:
            raise NotFoundError("no such crop")
        return self._result_path(state, rel)

    # --- MJPEG ----------------------------------------------------------------------------------------------------
    def stream(self, job_id: str, *, max_seconds: float = 3600.0) -> Iterator[bytes]:
        """MJPEG parts of a job's annotated frames: live while it runs, then the annotated video at its frame rate."""
        state = self._state(job_id)  # 404 before the response starts
        return mjpeg(self.store, self.dir / state["job_id"], lambda s: self._result_path(s, VIDEO_FILE), max_seconds)

    # --- life cycle ------------------------------------------------------------------------------------------------
    def wait(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Block until the job ends (tests, scripts)."""
        end = time.monotonic() + timeout
        while True:
            state = self.get(job_id)
            if state["status"] not in ACTIVE or time.monotonic() > end:
                return state
            time.sleep(0.05)

    def describe(self) -> dict[str, Any]:
        return {**self.executor.describe(), "store": repr(self.store), "storage": str(self.dir)}

    def shutdown(self, wait: bool = True, cancel_running: bool = False) -> None:
        self._closed.set()
        if cancel_running:  # this process's jobs; their tasks stop at their next progress tick
            for job in self.store.active():
                if job.get("owner") == self.owner:
                    self.cancel(job["job_id"])
        self.executor.shutdown(wait=wait)
        self._maint.join(timeout=5)
        if wait and self._own_store:
            self.store.close()


def run_job(job_id: str, store: JobStore, storage_dir: str | Path, recognizer: Any) -> dict[str, Any]:
    """Run every task of a stored job in this thread, one after the other; returns the final state.

    What a task-queue worker does, without the queue (scripts, debugging).
    """
    ex = InProcessExecutor(0)
    ex.start(TaskContext(store, Path(storage_dir), lambda _n: recognizer))
    job = store.get(validate_job_id(job_id))
    ex.submit(job["job_id"], plan(job))
    return store.get(job["job_id"])
