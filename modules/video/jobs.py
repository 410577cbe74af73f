"""Video jobs for the HTTP service: upload, queue, run, watch, cancel, survive restarts.

Every job lives in ``<jobs_dir>/<job_id>/``:

* ``input.<ext>``: the uploaded video;
* ``job.json``: its state, always replaced atomically (``status``: ``queued``,
  ``running``, ``done``, ``failed`` or ``cancelled``; ``progress`` 0..1; counts,
  times, error, summary);
* ``frames.jsonl``, ``tracks.json``, ``summary.json``, ``annotated.mp4`` and the
  crops, written by :func:`~modules.video.pipeline.process_video`;
* ``live.jpg``: the latest annotated frame of a running job (a few per second),
  so that any process can stream it;
* ``cancel``: present when a cancellation was asked for (so a DELETE handled by
  another worker process reaches the job too); ``job.lock``: held (``flock``)
  by the process running the job.

:func:`run_job` runs one job directory to completion and is all a task-queue
worker needs; :class:`JobManager` is the in-process executor: a bounded
pool of daemon threads (``max_running`` at once, ``max_queued`` waiting, 503
beyond; pass ``executor=`` to hand the jobs to something else),
limits on upload size, frames, duration and pixels, cancellation checked every
frame, and restart recovery: a job left ``queued`` or ``running`` by a dead
process is marked ``failed`` ("server restarted") while its finished results
are kept.  Job ids are UUID4 strings and are validated before any path is built.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import cv2

from ..errors import (
    BadImageError,
    ConflictError,
    FaceRecError,
    ImageTooLargeError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
    UnsupportedMediaError,
)
from .config import VideoConfig
from .io import VIDEO_SUFFIXES, probe

try:  # POSIX advisory locks: who is running a job
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("facerec.video.jobs")

STATUSES = ("queued", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "running")
STATE_FILE = "job.json"
LOCK_FILE = "job.lock"
CANCEL_FILE = "cancel"
LIVE_FILE = "live.jpg"
RESTARTED = "server restarted before the job finished"
_CHUNK = 1 << 20


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class JobNotReadyError(ConflictError):
    code = "job_not_ready"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    max_running: int = 1  # CPU-bound: one job at a time per process on small machines
    max_queued: int = 8
    max_kept: int = 200  # finished jobs kept on disk; the oldest beyond are deleted

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> JobLimits:
        """``FACEREC_VIDEO_MAX_UPLOAD_BYTES``, ``..._MAX_FRAMES``, ``..._MAX_DURATION_S``, ``..._MAX_PIXELS``,
        ``..._MAX_RUNNING``, ``..._MAX_QUEUED``, ``..._MAX_KEPT``."""
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
        ):
            key = "FACEREC_VIDEO_" + name.upper()
            if key in env:
                try:
                    values[name] = typ(env[key].replace("_", ""))
                except ValueError:
                    from ..errors import ConfigError

                    raise ConfigError(f"{key} must be a number, got {env[key]!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        limits = cls(**values)
        for k, v in asdict(limits).items():
            if v is None or v < (0 if k == "max_queued" else 1):
                from ..errors import ConfigError

                raise ConfigError(f"video job limit {k} must be positive, got {v!r}")
        return limits


# --- job directory state ------------------------------------------------------------------------
def read_state(job_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((job_dir / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobNotFoundError("no such video job") from None
    except (OSError, ValueError) as exc:
        raise JobNotFoundError(f"the video job's state is unreadable: {exc}") from None


def write_state(job_dir: Path, state: dict[str, Any]) -> None:
    tmp = job_dir / f".{STATE_FILE}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(state, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, job_dir / STATE_FILE)


_state_lock = threading.Lock()


def update_state(job_dir: Path, **changes: Any) -> dict[str, Any]:
    with _state_lock:
        state = read_state(job_dir)
        state.update(changes)
        state["updated_at"] = _now()
        write_state(job_dir, state)
        return state


@contextlib.contextmanager
def _job_lock(job_dir: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold ``job.lock``; yields False when another process holds it (non-blocking)."""
    if fcntl is None:  # pragma: no cover
        yield True
        return
    fh = open(job_dir / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        fh.close()


# --- running one job ------------------------------------------------------------------------
def run_job(
    job_dir: str | Path,
    recognizer: Any = None,
    *,
    video_config: VideoConfig | None = None,
    limits: JobLimits | None = None,
    cancel: threading.Event | None = None,
    on_frame: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Run the job in ``job_dir`` (state ``queued``) to its end; returns the final state.

    ``recognizer`` defaults to one built from the job's recorded ``config`` and
    ``gallery_location`` (what a task-queue worker in another process does).
    Cancellation: ``cancel`` set, or a ``cancel`` file in the job directory.
    """
    from .pipeline import process_video

    job_dir = Path(job_dir)
    limits = limits or JobLimits()
    cancel = cancel or threading.Event()
    with _job_lock(job_dir) as locked:
        if not locked:  # pragma: no cover - blocking lock
            return read_state(job_dir)
        state = read_state(job_dir)
        if state["status"] != "queued":
            return state
        if (job_dir / CANCEL_FILE).exists():
            return update_state(job_dir, status="cancelled", finished_at=_now())
        own = recognizer is None
        if own:
            from ..gallery import open_gallery
            from ..recognizer import FaceRecognizer

            recognizer = FaceRecognizer(state.get("config"), open_gallery(state["gallery_location"]))
        cfg = video_config or VideoConfig()
        if state.get("video_settings"):
            from .config import video_config as merge

            cfg = merge(state["video_settings"], cfg)
        cfg = cfg.model_copy(update={"save_unknown_crops": False})
        total = (state.get("video") or {}).get("frames")
        state = update_state(job_dir, status="running", started_at=_now(), progress=0.0)
        last = {"t": 0.0, "live": 0.0}

        def progress(done: int, _total: int | None, fps: float) -> None:
            now = time.monotonic()
            if done % 10 == 0 and (job_dir / CANCEL_FILE).exists():
                cancel.set()
            if now - last["t"] >= 0.5:
                last["t"] = now
                p = min(1.0, done / total) if total else 0.0
                update_state(job_dir, progress=round(p, 4), frames_done=done, fps=round(fps, 2))

        def frame_cb(result: Any) -> None:
            now = time.monotonic()
            if now - last["live"] >= 0.2:  # a few frames per second for streams in other processes
                last["live"] = now
                ok, buf = cv2.imencode(".jpg", result.annotated(), [cv2.IMWRITE_JPEG_QUALITY, 80])
                if ok:
                    tmp = job_dir / f".{LIVE_FILE}.tmp"
                    tmp.write_bytes(buf.tobytes())
                    os.replace(tmp, job_dir / LIVE_FILE)
            if on_frame is not None:
                on_frame(result)

        input_path = job_dir / state["input"]
        try:
            summary = process_video(
                input_path,
                job_dir,
                recognizer,
                state["gallery"],
                cfg,
                progress=progress,
                on_frame=frame_cb,
                stop=cancel,
                max_frames=limits.max_frames,
            )
        except FaceRecError as exc:
            log.warning("video job %s failed: %s", job_dir.name, exc.message)
            return update_state(job_dir, status="failed", error=exc.message, finished_at=_now())
        except Exception as exc:  # a bug: keep the server alive, say little
            log.exception("video job %s crashed", job_dir.name)
            return update_state(
                job_dir, status="failed", error=f"internal error ({type(exc).__name__})", finished_at=_now()
            )
        finally:
            if own:
                recognizer.gallery.close()
            with contextlib.suppress(OSError):
                (job_dir / LIVE_FILE).unlink()
        status = "cancelled" if summary["stopped"] else "done"
        return update_state(
            job_dir,
            status=status,
            progress=1.0 if status == "done" else state.get("progress", 0.0),
            frames_done=summary["frames"],
            fps=summary["fps"],
            finished_at=_now(),
            summary={
                k: summary[k] for k in ("frames", "seconds", "fps", "tracks", "named_tracks", "people", "name_switches")
            },
        )


# --- the in-process manager ----------------------------------------------------------------------------------
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


class DaemonPool:
    """``workers`` daemon threads running submitted calls in order.

    Daemon threads do not hold the process open at exit (a ``ThreadPoolExecutor`` would wait for
    a long video): a job cut off that way stays ``running`` on disk and is marked failed at the next
    start.  Anything with ``submit(fn, *args)`` and ``shutdown(wait)`` can replace it (a task queue).
    """

    def __init__(self, workers: int, name: str = "video-job"):
        import queue

        self._q: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:  # pragma: no cover - the callable records its own failures
                log.exception("video job worker")

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._q.put((fn, args))

    def shutdown(self, wait: bool = True) -> None:
        if not wait:  # drop what has not started
            with contextlib.suppress(Exception):
                while True:
                    self._q.get_nowait()
        for _ in self._threads:
            self._q.put(None)
        if wait:
            for t in self._threads:
                t.join()


def _mjpeg_part(jpeg: bytes) -> bytes:
    return (
        b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
        + str(len(jpeg)).encode()
        + b"\r\n\r\n"
        + jpeg
        + b"\r\n"
    )


MJPEG_MIMETYPE = "multipart/x-mixed-replace; boundary=frame"


class JobManager:
    """Runs video jobs on a bounded pool; all state is on disk under ``jobs_dir``."""

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
    ):
        self.dir = Path(jobs_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.recognizer = recognizer
        self.limits = limits or JobLimits()
        self.video_config = video_config or VideoConfig()
        self.config_name = config_name
        self.gallery_location = str(gallery_location) if gallery_location is not None else None
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._pool = executor or DaemonPool(self.limits.max_running)
        self.recovered = self.recover()

    # --- paths and state ---------------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.dir / validate_job_id(job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._public(read_state(self.job_dir(job_id)))

    @staticmethod
    def _public(state: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in state.items() if k not in ("gallery_location", "input", "stream_token")}

    def stream_token(self, job_id: str) -> str:
        return read_state(self.job_dir(job_id)).get("stream_token", "")

    def list(self) -> list[dict[str, Any]]:
        out = []
        for d in self.dir.iterdir():
            try:
                validate_job_id(d.name)
                out.append(self._public(read_state(d)))
            except FaceRecError:
                continue
        return sorted(out, key=lambda s: s.get("created_at", ""))

    def recover(self) -> int:
        """Mark jobs left queued/running by a dead process as failed (finished results are kept)."""
        n = 0
        for d in self.dir.iterdir():
            try:
                validate_job_id(d.name)
                state = read_state(d)
            except FaceRecError:
                continue
            for tmp in d.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
            if state.get("status") not in ACTIVE:
                continue
            with _job_lock(d, blocking=False) as free:
                if not free:
                    continue  # another live process runs it
                update_state(d, status="failed", error=RESTARTED, finished_at=_now())
                n += 1
        if n:
            log.warning("marked %d unfinished video job(s) as failed after a restart", n)
        return n

    def _active_count(self) -> int:
        n = 0
        for d in self.dir.iterdir():
            try:
                validate_job_id(d.name)
                if read_state(d).get("status") in ACTIVE:
                    n += 1
            except FaceRecError:
                continue
        return n

    def _prune(self) -> None:
        done = [s for s in self.list() if s.get("status") not in ACTIVE]
        for s in done[: max(0, len(done) - self.limits.max_kept)]:
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
        :class:`ServiceUnavailableError` (503) when the queue is full.
        """
        if self._closed:
            raise ServiceUnavailableError("the video job manager is shutting down")
        if video_settings:
            from .config import video_config as merge

            from ..errors import ConfigError

            try:  # validate now: 400 before any upload work
                merge(video_settings, self.video_config, where=" (request)")
            except ConfigError as exc:
                raise InvalidRequestError(exc.message) from None
        if self._active_count() >= self.limits.max_running + self.limits.max_queued:
            raise ServiceUnavailableError(
                "too many video jobs are queued or running"
                f" (limit {self.limits.max_running + self.limits.max_queued}); retry later"
            )
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
            state = {
                "job_id": job_id,
                "status": "queued",
                "progress": 0.0,
                "created_at": _now(),
                "updated_at": _now(),
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
                "input": input_name,
                "config": self.config_name,
                "gallery_location": self.gallery_location,
                "stream_token": secrets.token_urlsafe(18),
            }
            write_state(d, state)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        with self._lock:
            self._live[job_id] = _Live()
        self._pool.submit(self._run, job_id)
        self._prune()
        return self._public(state)

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

    def _run(self, job_id: str) -> None:
        live = self._live.get(job_id) or _Live()
        try:
            run_job(
                self.dir / job_id,
                self.recognizer,
                video_config=self.video_config,
                limits=self.limits,
                cancel=live.cancel,
                on_frame=live.publish,
            )
        except Exception:  # pragma: no cover - run_job records its own failures
            log.exception("video job %s", job_id)
        finally:
            live.finish()
            with self._lock:
                self._live.pop(job_id, None)

    # --- cancel / delete ------------------------------------------------------------------------------------------
    def cancel(self, job_id: str, purge: bool = False) -> dict[str, Any]:
        """Cancel a queued or running job (idempotent); ``purge`` also deletes a finished job's files."""
        d = self.job_dir(job_id)
        state = read_state(d)
        if state["status"] in ACTIVE:
            (d / CANCEL_FILE).touch()
            live = self._live.get(state["job_id"])
            if live is not None:
                live.cancel.set()
            if state["status"] == "queued":
                with _job_lock(d, blocking=False) as free:
                    if free and read_state(d)["status"] == "queued":
                        state = update_state(d, status="cancelled", finished_at=_now())
            return self._public(read_state(d)) | {"cancel_requested": True}
        if purge:
            shutil.rmtree(d, ignore_errors=True)
            return self._public(state) | {"deleted": True}
        return self._public(state)

    # --- results ---------------------------------------------------------------------------------------------------
    def frames(
        self, job_id: str, offset: int = 0, limit: int | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Per-frame results written so far (all of them once ``done``) and the job's state."""
        d = self.job_dir(job_id)
        state = read_state(d)
        out: list[dict[str, Any]] = []
        path = d / "frames.jsonl"
        if path.is_file():
            with open(path, encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    if i < offset:
                        continue
                    if limit is not None and len(out) >= limit:
                        break
                    if not line.endswith("\n"):
                        break  # a line being written
                    out.append(json.loads(line))
        return out, self._public(state)

    def tracks(self, job_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        d = self.job_dir(job_id)
        state = read_state(d)
        path = d / "tracks.json"
        if not path.is_file():
            raise JobNotReadyError(f"the job is {state['status']}; tracks are written when it ends")
        return json.loads(path.read_text(encoding="utf-8")), self._public(state)

    def video_path(self, job_id: str) -> Path:
        d = self.job_dir(job_id)
        state = read_state(d)
        path = d / "annotated.mp4"
        if state["status"] not in ("done", "cancelled") or not path.is_file():
            raise JobNotReadyError(f"the job is {state['status']}; the annotated video is available when it is done")
        return path

    def crop_path(self, job_id: str, rel: str) -> Path:
        d = self.job_dir(job_id)
        tracks, _ = self.tracks(job_id)
        allowed = {t.get("best_crop") for t in tracks if t.get("best_crop")}
        if rel not in allowed:
            raise NotFoundError("no such crop")
        return d / rel

    # --- MJPEG ----------------------------------------------------------------------------------------------------
    def stream(self, job_id: str, *, max_seconds: float = 3600.0) -> Iterator[bytes]:
        """MJPEG parts of a job's annotated frames: live while it runs, then the annotated video at its frame rate."""
        d = self.job_dir(job_id)
        read_state(d)  # 404 before the response starts
        return self._stream(d, max_seconds)

    def _stream(self, d: Path, max_seconds: float) -> Iterator[bytes]:
        job_id = d.name
        t_end = time.monotonic() + max_seconds
        live = self._live.get(job_id)
        if live is not None:
            with live.cond:
                live.viewers += 1
            try:
                seq = -1
                while time.monotonic() < t_end:
                    with live.cond:
                        live.cond.wait_for(lambda: live.seq != seq or live.done, timeout=1.0)
                        if live.done:
                            break
                        if live.seq == seq or live.jpeg is None:
                            continue
                        seq, jpeg = live.seq, live.jpeg
                    yield _mjpeg_part(jpeg)
            finally:
                with live.cond:
                    live.viewers -= 1
        else:  # running in another process (or queued): poll its live.jpg
            last = 0.0
            while time.monotonic() < t_end:
                state = read_state(d)
                if state["status"] not in ACTIVE:
                    break
                p = d / LIVE_FILE
                try:
                    m = p.stat().st_mtime
                    if m != last:
                        last = m
                        yield _mjpeg_part(p.read_bytes())
                except OSError:
                    pass
                time.sleep(0.1)
        path = d / "annotated.mp4"
        state = read_state(d)
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

    def shutdown(self, wait: bool = True, cancel_running: bool = False) -> None:
        self._closed = True
        if cancel_running:
            for live in list(self._live.values()):
                live.cancel.set()
        self._pool.shutdown(wait=wait)
