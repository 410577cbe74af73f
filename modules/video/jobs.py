"""Video jobs for the HTTP service: upload, queue, run (here or on workers), watch, cancel, survive restarts.

:class:`JobManager` is what the API talks to, whatever runs the jobs:

* state, progress, chunks, per-frame results and per-track summaries are in a
  job store (:mod:`modules.video.store`: ``<data_dir>/jobs.db`` or the
  PostgreSQL database of the gallery), so any API server answers for any job;
* the uploaded video, the annotated video, crops and the live frame are files
  under the storage folder (``<storage_dir>/<job_id>/``; default
  ``<data_dir>/jobs``), shared between machines by e.g. NFS when workers run
  elsewhere;
* the tasks run on an executor (:mod:`modules.video.queue`): an
  :class:`~modules.video.queue.InProcessExecutor` (``max_running`` threads in
  this process, the default) or a
  :class:`~modules.video.queue.RedisQueueExecutor` (RQ workers, ``queue_url``).

Limits on upload size, frames, duration and pixels are checked before a job is
queued (``max_running + max_queued`` active jobs per process in-process,
``max_active`` in all with a queue; 503 beyond).  Cancellation is a flag in the
store that the running task reads a few times a second.  A job whose
in-process executor died (the server was killed or restarted) is marked
``failed`` ("server restarted") at the next start, or by any other server once
its heartbeat is ``stale_after`` seconds old; what it had finished is kept.
Job folders of earlier versions (``job.json`` files) are imported into the
store at start-up.  Job ids are UUID4 strings, validated before any path is built.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import cv2

from ..errors import (
    BadImageError,
    ConfigError,
    ConflictError,
    FaceRecError,
    ImageTooLargeError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
    UnsupportedMediaError,
)
from .chunks import ChunkPolicy
from .config import VideoConfig
from .io import VIDEO_SUFFIXES, probe
from .queue import (
    LIVE_FILE,
    DaemonPool,
    InProcessExecutor,
    RedisQueueExecutor,
    SyncExecutor,
    TaskContext,
    fail_job,
)
from .store import ACTIVE, JobNotFoundError, JobStore, SQLiteJobStore, now_iso

log = logging.getLogger("facerec.video.jobs")

__all__ = [
    "ACTIVE",
    "MJPEG_MIMETYPE",
    "RESTARTED",
    "STATUSES",
    "DaemonPool",
    "JobLimits",
    "JobManager",
    "JobNotFoundError",
    "JobNotReadyError",
    "read_state",
    "run_job",
    "validate_job_id",
    "write_state",
]

STATUSES = ("queued", "running", "done", "failed", "cancelled")
STATE_FILE = "job.json"  # job folders of earlier versions (imported into the store)
RESTARTED = "server restarted before the job finished"
PRIVATE = {
    "gallery_location",
    "input",
    "stream_token",
    "video_config",
    "max_frames",
    "owner",
    "heartbeat",
    "cancel",
    "phase",
    "overlap_frames",
    "queue_options",
    "result_dir",
    "pending_summary",
}
_CHUNK = 1 << 20


class JobNotReadyError(ConflictError):
    code = "job_not_ready"


def _now() -> str:
    return now_iso()


def validate_job_id(job_id: Any) -> str:
    """The canonical UUID string, or :class:`JobNotFoundError` (never a path)."""
    if not isinstance(job_id, str) or len(job_id) != 36:
        raise JobNotFoundError("no such video job")
    try:
        u = uuid.UUID(job_id)
    except ValueError:
        raise JobNotFoundError("no such video job") from None
    if str(u) != job_id.lower():
        raise JobNotFoundError("no such video job")
    return str(u)


@dataclass(frozen=True)
class JobLimits:
    max_upload_bytes: int = 200 * 1024 * 1024
    max_frames: int = 30 * 60 * 60  # an hour at 30 fps
    max_duration_s: float = 3600.0
    max_pixels: int = 3840 * 2160
    max_running: int = 1  # in-process: CPU-bound, one task at a time per process on small machines
    max_queued: int = 8  # in-process: waiting jobs per process
    max_kept: int = 200  # finished jobs kept; the oldest beyond are deleted
    max_active: int = 10_000  # with a task queue: queued + running jobs in all

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> JobLimits:
        """``FACEREC_VIDEO_MAX_UPLOAD_BYTES``, ``..._MAX_FRAMES``, ``..._MAX_DURATION_S``, ``..._MAX_PIXELS``,
        ``..._MAX_RUNNING``, ``..._MAX_QUEUED``, ``..._MAX_KEPT``, ``..._MAX_ACTIVE``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, typ in (
            ("max_upload_bytes", int),
            ("max_frames", int),
            ("max_duration_s", float),
            ("max_pixels", int),
            ("max_running", int),
            ("max_queued", int),
            ("max_kept", int),
            ("max_active", int),
        ):
            key = "FACEREC_VIDEO_" + name.upper()
            if key in env:
                try:
                    values[name] = typ(env[key].replace("_", ""))
                except ValueError:
                    raise ConfigError(f"{key} must be a number, got {env[key]!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        limits = cls(**values)
        for k, v in asdict(limits).items():
            if v is None or v < (0 if k == "max_queued" else 1):
                raise ConfigError(f"video job limit {k} must be positive, got {v!r}")
        return limits


# --- job folders of earlier versions ------------------------------------------------------------------------
def read_state(job_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(job_dir) / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobNotFoundError("no such video job") from None
    except (OSError, ValueError) as exc:
        raise JobNotFoundError(f"the video job's state is unreadable: {exc}") from None


def write_state(job_dir: Path, state: dict[str, Any]) -> None:
    """A ``job.json`` as earlier versions wrote it (imported into the store at the next start)."""
    job_dir = Path(job_dir)
    tmp = job_dir / f".{STATE_FILE}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(state, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, job_dir / STATE_FILE)


# --- MJPEG --------------------------------------------------------------------------------------------------
class _Live:
    """The latest annotated frame of a job running in this process, for MJPEG viewers."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.jpeg: bytes | None = None
        self.seq = 0
        self.viewers = 0
        self.done = False
        self.cancel = threading.Event()

    def publish(self, result: Any) -> None:
        if self.viewers <= 0:
            return
        ok, buf = cv2.imencode(".jpg", result.annotated(), [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            with self.cond:
                self.jpeg = buf.tobytes()
                self.seq += 1
                self.cond.notify_all()

    def finish(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify_all()


def _mjpeg_part(jpeg: bytes) -> bytes:
    return (
        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
        + str(len(jpeg)).encode()
        + b"\r\n\r\n"
        + jpeg
        + b"\r\n"
    )


MJPEG_MIMETYPE = "multipart/x-mixed-replace; boundary=frame"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process
        return True
    return True


class JobManager:
    """Accepts, tracks and serves video jobs; the executor runs them, the store holds them."""

    def __init__(
        self,
        jobs_dir: str | Path,
        recognizer: Any,
        *,
        limits: JobLimits | None = None,
        video_config: VideoConfig | None = None,
        config_name: str | None = None,
        gallery_location: str | Path | None = None,
        executor: Any = None,
        store: JobStore | None = None,
        queue_url: str | None = None,
        chunking: ChunkPolicy | None = None,
        stale_after: float = 30.0,
        own_store: bool | None = None,
    ):
        self.dir = Path(jobs_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.recognizer = recognizer
        self.limits = limits or JobLimits()
        self.video_config = video_config or VideoConfig()
        self.config_name = config_name
        self.gallery_location = str(gallery_location) if gallery_location is not None else None
        self.store = store if store is not None else SQLiteJobStore(self.dir / "jobs.db")
        self._own_store = (store is None) if own_store is None else own_store
        if executor is None:
            if queue_url:
                executor = RedisQueueExecutor.from_env(queue_url)
            else:
                executor = InProcessExecutor(self.limits.max_running)
        self.executor = executor
        self.chunking = chunking or ChunkPolicy.from_env()
        self.stale_after = float(stale_after)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.ctx = TaskContext(
            store=self.store,
            storage_dir=self.dir,
            recognizer_for=lambda _name: self.recognizer,
            executor=self.executor,
            publish=self._publish,
            stop_event=self._stop_event,
        )
        self.executor.start(self.ctx)
        self.recovered = self.recover()
        interval = getattr(self.executor, "cleanup_interval", None) or min(5.0, self.stale_after / 3)
        self._maint = threading.Thread(target=self._maintain, args=(interval,), name="video-jobs-maint", daemon=True)
        self._maint.start()

    @property
    def in_process(self) -> bool:
        return getattr(self.executor, "kind", "") == "inprocess"

    # --- paths and state ---------------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.dir / validate_job_id(job_id)

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

    def stream_token(self, job_id: str) -> str:
        return self._state(job_id).get("stream_token", "")

    def list(self) -> list[dict[str, Any]]:
        return [self._public(s) for s in self.store.list()]

    def _result_path(self, state: dict[str, Any], rel: str) -> Path:
        base = self.dir / state["job_id"]
        sub = state.get("result_dir")
        return (base / sub / rel) if sub else (base / rel)

    # --- recovery ----------------------------------------------------------------------------------------------
    def recover(self) -> int:
        """Import job folders of earlier versions; mark jobs of dead in-process executors failed."""
        n = self._import_legacy()
        host = socket.gethostname()
        now = time.time()
        for job in self.store.active():
            if job.get("executor", "inprocess") != "inprocess" or job.get("owner") == self.owner:
                continue
            owner = str(job.get("owner") or "")
            parts = owner.split(":")
            dead = not owner
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit():
                pid = int(parts[1])
                dead = dead or (pid != os.getpid() and not _pid_alive(pid))
            beat = job.get("heartbeat")
            dead = dead or beat is None or now - float(beat) > self.stale_after
            if dead and fail_job(self.store, job["job_id"], RESTARTED) is not None:
                n += 1
        if n:
            log.warning("marked %d unfinished video job(s) as failed after a restart", n)
        return n

    def _import_legacy(self) -> int:
        failed = 0
        for d in self.dir.iterdir():
            try:
                job_id = validate_job_id(d.name)
            except FaceRecError:
                continue
            if not (d / STATE_FILE).is_file():
                continue
            with self.store.tx(write=False) as tx:
                if tx.job(job_id) is not None:
                    continue
            try:
                state = read_state(d)
            except FaceRecError:
                continue
            state.update(job_id=job_id, executor="inprocess", owner=None, phase="final", result_dir="")
            state.setdefault("created_at", _now())
            if state.get("status") in ACTIVE:
                state.update(status="failed", error=RESTARTED, finished_at=_now())
                failed += 1
            frames = []
            with contextlib.suppress(OSError, ValueError), open(d / "frames.jsonl", encoding="utf-8") as fh:
                frames = [json.loads(line) for line in fh if line.endswith("\n")]
            tracks = None
            with contextlib.suppress(OSError, ValueError):
                tracks = json.loads((d / "tracks.json").read_text(encoding="utf-8"))
            with self.store.tx() as tx:
                tx.put_job(state)
                tx.add_frames(job_id, frames)
                tx.set_tracks(job_id, tracks)
            with contextlib.suppress(OSError):
                os.replace(d / STATE_FILE, d / f"{STATE_FILE}.imported")
        return failed

    def _maintain(self, interval: float) -> None:
        while not self._closed.wait(interval):
            try:
                if self.in_process:
                    self.store.heartbeat_owner(self.owner)
                    self.recover()
                self.executor.maintenance()
                with self._lock:
                    for job_id in list(self._live):
                        with contextlib.suppress(FaceRecError):
                            if self.store.get(job_id)["status"] in ACTIVE:
                                continue
                        self._live.pop(job_id).finish()
            except Exception:
                log.exception("video job maintenance")

    def _count_active(self) -> int:
        return self.store.count_active(owner=self.owner if self.in_process else None)

    def _prune(self) -> None:
        done = [s for s in self.store.list() if s.get("status") not in ACTIVE]
        for s in done[: max(0, len(done) - self.limits.max_kept)]:
            self.store.delete(s["job_id"])
            shutil.rmtree(self.dir / s["job_id"], ignore_errors=True)

    # --- submit --------------------------------------------------------------------------------------------------
    def submit(
        self,
        data: bytes | IO[bytes] | str | Path,
        filename: str | None = None,
        gallery: str = "default",
        video_settings: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store the upload, check it, queue it: the job's state (``status`` ``queued``).

        :class:`ImageTooLargeError` (413) past the size/frames/duration/pixel limits,
        :class:`BadImageError` (400) when it does not decode as a video,
        :class:`ServiceUnavailableError` (503) when the queue is full or unreachable.
        """
        if self._closed.is_set():
            raise ServiceUnavailableError("the video job manager is shutting down")
        from .config import video_config as merge

        try:  # validate now: 400 before any upload work
            effective = merge(video_settings or {}, self.video_config, where=" (request)")
        except ConfigError as exc:
            raise InvalidRequestError(exc.message) from None
        limit = (self.limits.max_running + self.limits.max_queued) if self.in_process else self.limits.max_active
        if self._count_active() >= limit:
            raise ServiceUnavailableError(f"too many video jobs are queued or running (limit {limit}); retry later")
        suffix = Path(filename or "").suffix.lower()
        if suffix and suffix not in VIDEO_SUFFIXES:
            raise UnsupportedMediaError(
                f"{suffix!r} is not a supported video type; use one of {', '.join(sorted(VIDEO_SUFFIXES))}"
            )
        job_id = str(uuid.uuid4())
        d = self.dir / job_id
        d.mkdir(parents=True)
        try:
            input_name = f"input{suffix or '.mp4'}"
            size = self._store(data, d / input_name)
            if size == 0:
                raise BadImageError("the uploaded video is empty")
            try:
                info = probe(d / input_name)
            except (BadImageError, InvalidRequestError):
                raise BadImageError("the uploaded file is not a decodable video") from None
            self._check(info)
            ranges = self.chunking.plan(info.frames, info.fps, getattr(self.executor, "parallelism", 1))
            state = {
                "job_id": job_id,
                "status": "queued",
                "progress": 0.0,
                "created_at": _now(),
                "started_at": None,
                "finished_at": None,
                "error": None,
                "gallery": gallery,
                "filename": (filename or "")[:200] or None,
                "bytes": size,
                "video": info.to_dict(),
                "frames_done": 0,
                "fps": None,
                "summary": None,
                "video_settings": video_settings or None,
                "executor": self.executor.kind,
                "chunks": len(ranges),
                "workers": [],
                "attempts": 0,
                # private
                "input": input_name,
                "config": self.config_name,
                "gallery_location": self.gallery_location,
                "stream_token": secrets.token_urlsafe(18),
                "video_config": effective.model_dump(mode="json"),
                "max_frames": self.limits.max_frames,
                "overlap_frames": self.chunking.overlap_frames(info.fps),
                "owner": self.owner if self.in_process else None,
                "heartbeat": time.time(),
                "phase": "analyze",
                "queue_options": getattr(self.executor, "options", dict)(),
            }
            with self.store.tx() as tx:
                tx.put_job(state)
                for i, (start, end) in enumerate(ranges):
                    tx.put_chunk({"job_id": job_id, "idx": i, "start_frame": start, "end_frame": end})
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        if self.in_process:
            with self._lock:
                self._live[job_id] = _Live()
        try:
            for i in range(len(ranges)):
                self.executor.enqueue(job_id, "analyze", i)
        except ServiceUnavailableError:
            self.store.delete(job_id)
            shutil.rmtree(d, ignore_errors=True)
            raise
        self._prune()
        return self._public(self.store.get(job_id))

    def _store(self, data: bytes | IO[bytes] | str | Path, dest: Path) -> int:
        limit = self.limits.max_upload_bytes
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) > limit:
                raise ImageTooLargeError(f"the video is {len(data)} bytes; the limit is {limit}")
            dest.write_bytes(bytes(data))
            return len(data)
        if isinstance(data, (str, Path)):
            src = Path(data)
            size = src.stat().st_size
            if size > limit:
                raise ImageTooLargeError(f"the video is {size} bytes; the limit is {limit}")
            shutil.copyfile(src, dest)
            return size
        size = 0
        with open(dest, "wb") as out:
            while True:
                chunk = data.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise ImageTooLargeError(f"the video is larger than the limit of {limit} bytes")
                out.write(chunk)
        return size

    def _check(self, info: Any) -> None:
        lim = self.limits
        if info.width * info.height > lim.max_pixels:
            raise ImageTooLargeError(
                f"the video is {info.width}x{info.height}; the limit is {lim.max_pixels} pixels per frame"
            )
        if info.frames is not None and info.frames > lim.max_frames:
            raise ImageTooLargeError(f"the video has {info.frames} frames; the limit is {lim.max_frames}")
        if info.duration_s is not None and info.duration_s > lim.max_duration_s:
            raise ImageTooLargeError(
                f"the video lasts {info.duration_s:.0f} s; the limit is {lim.max_duration_s:.0f} s"
            )

    def _stop_event(self, job_id: str) -> threading.Event:
        with self._lock:
            live = self._live.get(job_id)
            if live is None:
                live = self._live[job_id] = _Live()
            return live.cancel

    def _publish(self, job_id: str, result: Any) -> None:
        live = self._live.get(job_id)
        if live is not None:
            live.publish(result)

    # --- cancel / delete ------------------------------------------------------------------------------------------
    def cancel(self, job_id: str, purge: bool = False) -> dict[str, Any]:
        """Cancel a queued or running job (idempotent); ``purge`` also deletes a finished job's files."""
        job_id = validate_job_id(job_id)
        with self.store.tx() as tx:
            state = tx.job(job_id, lock=True)
            if state is None:
                raise JobNotFoundError("no such video job")
            if state["status"] in ACTIVE:
                changes: dict[str, Any] = {"cancel": True}
                if state["status"] == "queued":  # no task has started: nothing to wait for
                    changes.update(status="cancelled", finished_at=_now())
                state = tx.put_job({**state, **changes})
                cancelled = True
            else:
                cancelled = False
        if cancelled:
            live = self._live.get(job_id)
            if live is not None:
                live.cancel.set()
            with contextlib.suppress(Exception):
                self.executor.cancel(job_id, int(state.get("chunks") or 1))
            return self._public(state) | {"cancel_requested": True}
        if purge:
            self.store.delete(job_id)
            shutil.rmtree(self.dir / job_id, ignore_errors=True)
            return self._public(state) | {"deleted": True}
        return self._public(state)

    # --- results ---------------------------------------------------------------------------------------------------
    def frames(
        self, job_id: str, offset: int = 0, limit: int | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
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
        path = self._result_path(state, "annotated.mp4")
        if state["status"] not in ("done", "cancelled") or not path.is_file():
            raise JobNotReadyError(f"the job is {state['status']}; the annotated video is available when it is done")
        return path

    def crop_path(self, job_id: str, rel: str) -> Path:
        state = self._state(job_id)
        tracks, _ = self.tracks(job_id)
        allowed = {t.get("best_crop") for t in tracks if t.get("best_crop")}
        if rel not in allowed:
            raise NotFoundError("no such crop")
        return self._result_path(state, rel)

    # --- MJPEG ----------------------------------------------------------------------------------------------------
    def stream(self, job_id: str, *, max_seconds: float = 3600.0) -> Iterator[bytes]:
        """MJPEG parts of a job's annotated frames: live while it runs, then the annotated video at its frame rate."""
        state = self._state(job_id)  # 404 before the response starts
        return self._stream(state["job_id"], max_seconds)

    def _stream(self, job_id: str, max_seconds: float) -> Iterator[bytes]:
        d = self.dir / job_id
        t_end = time.monotonic() + max_seconds
        state = self.store.get(job_id)
        live = self._live.get(job_id) if int(state.get("chunks") or 1) == 1 else None
        if live is not None and state["status"] in ACTIVE:
            with live.cond:
                live.viewers += 1
            try:
                seq = -1
                while time.monotonic() < t_end:
                    with live.cond:
                        changed = live.cond.wait_for(lambda: live.seq != seq or live.done, timeout=1.0)
                        if live.done:
                            break
                        jpeg = live.jpeg if (changed and live.seq != seq) else None
                        seq = live.seq
                    if jpeg is not None:
                        yield _mjpeg_part(jpeg)
                    elif self.store.get(job_id)["status"] not in ACTIVE:
                        break
            finally:
                with live.cond:
                    live.viewers -= 1
        else:  # running elsewhere (or queued): poll its live.jpg
            last = 0.0
            polls = 0
            while time.monotonic() < t_end:
                if polls % 5 == 0 and self.store.get(job_id)["status"] not in ACTIVE:
                    break
                polls += 1
                p = d / LIVE_FILE
                try:
                    m = p.stat().st_mtime
                    if m != last:
                        last = m
                        yield _mjpeg_part(p.read_bytes())
                except OSError:
                    pass
                time.sleep(0.1)
        state = self.store.get(job_id)
        path = self._result_path(state, "annotated.mp4")
        if state["status"] not in ("done", "cancelled") or not path.is_file():
            return
        cap = cv2.VideoCapture(str(path))
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        period = 1.0 / min(max(fps, 1.0), 60.0)
        nxt = time.monotonic()
        try:
            while time.monotonic() < t_end:
                ok, frame = cap.read()
                if not ok:
                    break
                ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
                if ok:
                    yield _mjpeg_part(buf.tobytes())
                nxt += period
                delay = nxt - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        finally:
            cap.release()

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
        if cancel_running:
            for live in list(self._live.values()):
                live.cancel.set()
        self.executor.shutdown(wait=wait)
        self._maint.join(timeout=5)
        with self._lock:
            for live in self._live.values():
                live.finish()
        if wait and self._own_store:
            self.store.close()


def run_job(
    job_id: str,
    store: JobStore,
    storage_dir: str | Path,
    recognizer: Any,
) -> dict[str, Any]:
    """Run every task of a stored job in this thread, one after the other; returns the final state.

    What a task-queue worker does, without the queue (scripts, debugging).
    """
    ex = SyncExecutor()
    ctx = TaskContext(store=store, storage_dir=Path(storage_dir), recognizer_for=lambda _n: recognizer, executor=ex)
    ex.start(ctx)
    job = store.get(validate_job_id(job_id))
    for i in range(int(job.get("chunks") or 1)):
        ex.enqueue(job["job_id"], "analyze", i)
    return store.get(job["job_id"])
