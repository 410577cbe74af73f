"""Who runs video jobs: an in-process pool or RQ workers on Redis, and the tasks both of them run.

A job is one or more **tasks**, each a plain function call ``execute(ctx, job_id,
kind, idx)`` that reads and writes only the job store and the storage folder:

* ``analyze``, chunk *i*: a short video is one chunk, analysed, rendered and
  committed by one task (:func:`modules.video.pipeline.process_video`, per-frame
  results appearing as it goes).  A long one is several: each analyses its
  frame range (:func:`modules.video.chunks.analyze_range`) and stores the
  result in its chunk row; the task that finishes the *last* range joins them
  (:func:`~modules.video.chunks.join_chunks`), commits the frames and tracks
  and queues the ``render`` tasks;
* ``render``, chunk *i*: draws the final names and ids on its range; the task
  that finishes the last segment concatenates them and marks the job ``done``.

Every step that moves a job on is one transaction that first checks the job is
still where the task thinks it is (compare-and-set on ``status``/``phase``)
and that its chunk attempt is still the current one (a fencing token), so a
task that was given up on (its worker stopped sending heartbeats) can never
overwrite the work of the retry that replaced it, and results are either
wholly committed or not at all.

Executors (``JobManager`` talks to one of them):

* :class:`InProcessExecutor`: ``max_running`` daemon threads inside the API
  process (the embedded default; nothing else to start);
* :class:`RedisQueueExecutor`: RQ (``rq`` on Redis).  Workers are ``python -m
  modules.worker --queue-url redis://...`` on any number of machines; each is
  an RQ :class:`VideoWorker` (a ``SimpleWorker``: jobs run in the worker
  process itself, so the models are loaded once per worker).  While a task
  runs, its worker renews the task's entry in RQ's ``StartedJobRegistry``
  every ``heartbeat_ttl / 3`` seconds; a worker killed mid-task stops doing so,
  the entry expires after ``heartbeat_ttl`` and the next registry cleanup (every
  ``cleanup_interval`` seconds, by any worker or API server) hands the task to
  RQ's ``Retry`` (another worker picks it up) or, when its retries are used
  up, fails it, which fails the job.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from ..errors import ConfigError, FaceRecError, ServiceUnavailableError
from .config import VideoConfig
from .store import ACTIVE, JobStore, Tx, now_iso

log = logging.getLogger("facerec.video.queue")

QUEUE_NAME = "facerec-video"
LIVE_FILE = "live.jpg"
DEFAULT_RETRIES = 2
DEFAULT_TASK_TIMEOUT = 3600
DEFAULT_HEARTBEAT_TTL = 30
DEFAULT_CLEANUP_INTERVAL = 10
ANALYSIS_SHARE = 0.9  # of the progress bar, when a render pass follows


class Superseded(Exception):
    """This task's attempt is no longer the current one (or the job ended): stop without writing."""


def worker_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"


@dataclass
class TaskContext:
    """What a task needs from the process it runs in."""

    store: JobStore
    storage_dir: Path
    recognizer_for: Callable[[str | None], Any]
    executor: Any
    worker: str = field(default_factory=worker_name)
    publish: Callable[[str, Any], None] | None = None  # (job_id, FrameResult): in-process live view
    stop_event: Callable[[str], threading.Event] | None = None
    progress_interval: float = 0.5
    live_interval: float = 0.2

    def job_dir(self, job_id: str) -> Path:
        return self.storage_dir / job_id

    def stop_for(self, job_id: str) -> threading.Event:
        return self.stop_event(job_id) if self.stop_event is not None else threading.Event()


_CONTEXTS: dict[str, TaskContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def register_context(ctx: TaskContext) -> None:
    with _CONTEXTS_LOCK:
        _CONTEXTS[ctx.store.store_id] = ctx


def unregister_context(ctx: TaskContext) -> None:
    with _CONTEXTS_LOCK:
        if _CONTEXTS.get(ctx.store.store_id) is ctx:
            del _CONTEXTS[ctx.store.store_id]


def context_for(store_id: str | None) -> TaskContext | None:
    with _CONTEXTS_LOCK:
        if store_id in _CONTEXTS:
            return _CONTEXTS[store_id]
        if len(_CONTEXTS) == 1:  # one store here, spelled differently by whoever queued the task
            return next(iter(_CONTEXTS.values()))
    return None


# --- job state helpers ------------------------------------------------------------------------------------
def fail_job(store: JobStore, job_id: str, error: str) -> dict[str, Any] | None:
    """Mark an active job failed (no-op once it has ended)."""
    with store.tx() as tx:
        job = tx.job(job_id, lock=True)
        if job is None or job["status"] not in ACTIVE:
            return job
        log.warning("video job %s failed: %s", job_id, error)
        return tx.put_job({**job, "status": "failed", "error": error, "finished_at": now_iso()})


def cancel_job(store: JobStore, job_id: str) -> dict[str, Any] | None:
    with store.tx() as tx:
        job = tx.job(job_id, lock=True)
        if job is None or job["status"] not in ACTIVE:
            return job
        return tx.put_job({**job, "status": "cancelled", "cancel": True, "finished_at": now_iso()})


def _fenced(tx: Tx, job_id: str, idx: int, attempt: int, which: str = "attempt") -> tuple[dict, dict]:
    job = tx.job(job_id, lock=True)
    chunk = tx.chunk(job_id, idx, lock=True)
    if job is None or chunk is None or chunk[which] != attempt or job["status"] != "running":
        raise Superseded(f"video job {job_id} chunk {idx}: attempt {attempt} is no longer current")
    return job, chunk


def _video_config(job: dict[str, Any]) -> VideoConfig:
    cfg = VideoConfig.model_validate(job.get("video_config") or {})
    return cfg.model_copy(update={"save_unknown_crops": False})


def _progress(chunks: list[dict[str, Any]], total: int | None, render: bool) -> float:
    total = total or 0
    if total <= 0:
        return 0.0
    analysed = sum(int(c["frames_done"] or 0) for c in chunks)
    if not render:
        return round(min(1.0, analysed / total), 4)
    rendered = sum(int(c["rendered"] or 0) for c in chunks)
    return round(min(1.0, ANALYSIS_SHARE * analysed / total + (1 - ANALYSIS_SHARE) * rendered / total), 4)


class _Ticker:
    """Progress, heartbeat, cancellation and (single-chunk jobs) per-frame results, every ``interval`` s."""

    def __init__(self, ctx: TaskContext, job: dict, idx: int, attempt: int, which: str, stop: threading.Event):
        self.ctx, self.job_id, self.idx, self.attempt, self.which = ctx, job["job_id"], idx, attempt, which
        self.total = (job.get("video") or {}).get("frames")
        self.render_follows = job.get("chunks", 1) > 1 and _video_config(job).write_video
        self.stop = stop
        self.pending: list[dict[str, Any]] = []
        self.last = 0.0
        self.last_live = 0.0
        self.live_path = ctx.job_dir(self.job_id) / LIVE_FILE

    def __call__(self, done: int, fps: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.ctx.progress_interval:
            return
        self.last = now
        with self.ctx.store.tx() as tx:
            job, chunk = _fenced(tx, self.job_id, self.idx, self.attempt, self.which)
            if self.which == "attempt":
                chunk["frames_done"] = done
            else:
                chunk["rendered"] = done
            tx.put_chunk(chunk)
            chunks = tx.chunks(self.job_id)
            changes: dict[str, Any] = {
                "heartbeat": time.time(),
                "progress": _progress(chunks, self.total, self.render_follows),
                "frames_done": sum(int(c["frames_done"] or 0) for c in chunks),
            }
            if fps and job.get("chunks", 1) == 1:
                changes["fps"] = round(fps, 2)
            tx.put_job({**job, **changes})
            if self.pending:
                tx.add_frames(self.job_id, self.pending)
                self.pending = []
            if job["cancel"]:
                self.stop.set()

    def live(self, result: Any) -> None:
        """The latest annotated frame as ``live.jpg`` (a few a second) for MJPEG viewers in any process."""
        now = time.monotonic()
        if now - self.last_live < self.ctx.live_interval:
            return
        self.last_live = now
        ok, buf = cv2.imencode(".jpg", result.annotated(), [cv2.IMWRITE_JPEG_QUALITY, 80])
        if ok:
            tmp = self.live_path.with_name(f".{LIVE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
            with contextlib.suppress(OSError):
                tmp.write_bytes(buf.tobytes())
                os.replace(tmp, self.live_path)


# --- the tasks ------------------------------------------------------------------------------------------------
def execute(ctx: TaskContext, job_id: str, kind: str, idx: int) -> None:
    """Run one task.  Expected failures (a bad video, a limit) fail the job here; unexpected
    exceptions propagate (the executor retries or fails the job)."""
    try:
        if kind == "analyze":
            _analyze(ctx, job_id, idx)
        elif kind == "render":
            _render(ctx, job_id, idx)
        else:
            raise ValueError(f"unknown video task kind {kind!r}")
    except Superseded as exc:
        log.info("%s", exc)
    except ServiceUnavailableError:
        raise  # the database was busy or away: worth a retry
    except FaceRecError as exc:
        fail_job(ctx.store, job_id, exc.message)
    finally:
        if kind in ("analyze", "render"):
            with contextlib.suppress(Exception):
                job = ctx.store.get(job_id)
                if job["status"] not in ACTIVE:
                    (ctx.job_dir(job_id) / LIVE_FILE).unlink(missing_ok=True)


def _claim(ctx: TaskContext, job_id: str, idx: int, kind: str) -> tuple[dict, dict, int | None] | None:
    """Take chunk ``idx`` for ``kind``: (job, chunk, attempt), attempt None when that work is already done;
    None when the job has ended (or was cancelled now)."""
    status_col, attempt_col = ("status", "attempt") if kind == "analyze" else ("render_status", "render_attempt")
    with ctx.store.tx() as tx:
        job = tx.job(job_id, lock=True)
        if job is None:  # deleted meanwhile, or this worker looks at another database than the API
            log.warning("video job %s is not in this worker's job database %r: task dropped", job_id, ctx.store)
            return None
        if job["status"] not in ACTIVE:
            return None
        if job["cancel"]:
            tx.put_job({**job, "status": "cancelled", "finished_at": now_iso()})
            return None
        chunk = tx.chunk(job_id, idx, lock=True)
        if chunk is None:
            raise FaceRecError(f"video job {job_id} has no chunk {idx}")
        if chunk[status_col] == "done":
            return job, chunk, None
        attempt = int(chunk[attempt_col] or 0) + 1
        chunk.update({status_col: "running", attempt_col: attempt, "worker": ctx.worker})
        chunk["frames_done" if kind == "analyze" else "rendered"] = 0
        tx.put_chunk(chunk)
        workers = list(job.get("workers") or [])
        if ctx.worker not in workers:
            workers.append(ctx.worker)
        changes: dict[str, Any] = {
            "heartbeat": time.time(),
            "workers": workers[-32:],
            "attempts": int(job.get("attempts") or 0) + 1,
        }
        if job["status"] == "queued":
            changes.update(status="running", started_at=now_iso())
        if kind == "analyze" and job.get("chunks", 1) == 1:
            tx.delete_frames(job_id)  # a retry starts from an empty page
            changes.update(progress=0.0, frames_done=0)
        job = tx.put_job({**job, **changes})
        return job, chunk, attempt


def _analyze(ctx: TaskContext, job_id: str, idx: int) -> None:
    claimed = _claim(ctx, job_id, idx, "analyze")
    if claimed is None:
        return
    job, chunk, attempt = claimed
    if attempt is None:  # a retry of a task that had finished its range: make sure the job moves on
        _advance(ctx, job_id, resume=True)
        return
    if job.get("chunks", 1) == 1:
        _run_whole(ctx, job, attempt)
    else:
        _run_range(ctx, job, chunk, attempt)
        _advance(ctx, job_id)


def _run_whole(ctx: TaskContext, job: dict[str, Any], attempt: int) -> None:
    """A one-chunk job: the pipeline as ``test_frame.py`` runs it, results committed as they come."""
    from .pipeline import process_video

    job_id = job["job_id"]
    d = ctx.job_dir(job_id)
    run_dir = f"run-{attempt}"
    out = d / run_dir
    shutil.rmtree(out, ignore_errors=True)
    stop = ctx.stop_for(job_id)
    tick = _Ticker(ctx, job, 0, attempt, "attempt", stop)
    rec = ctx.recognizer_for(job.get("config"))
    cfg = _video_config(job)

    def on_frame(result: Any) -> None:
        tick.pending.append(result.to_dict())
        tick.live(result)
        if ctx.publish is not None:
            ctx.publish(job_id, result)

    def progress(done: int, _total: int | None, fps: float) -> None:
        tick(done, fps)

    summary = process_video(
        d / job["input"],
        out,
        rec,
        job["gallery"],
        cfg,
        progress=progress,
        on_frame=on_frame,
        stop=stop,
        max_frames=job.get("max_frames"),
    )
    tracks = json.loads((out / "tracks.json").read_text(encoding="utf-8"))
    status = "cancelled" if summary["stopped"] else "done"
    with ctx.store.tx() as tx:
        job, chunk = _fenced(tx, job_id, 0, attempt)
        if tick.pending:
            tx.add_frames(job_id, tick.pending)
        tx.set_tracks(job_id, tracks)
        tx.put_chunk({**chunk, "status": "done", "frames_done": summary["frames"]})
        tx.put_job(
            {
                **job,
                "status": status,
                "phase": "final",
                "progress": 1.0 if status == "done" else job.get("progress", 0.0),
                "frames_done": summary["frames"],
                "fps": summary["fps"],
                "finished_at": now_iso(),
                "result_dir": run_dir,
                "summary": _public_summary(summary),
            }
        )


def _public_summary(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("frames", "seconds", "fps", "tracks", "named_tracks", "people", "name_switches")
    return {k: summary[k] for k in keys if k in summary}


def _run_range(ctx: TaskContext, job: dict[str, Any], chunk: dict[str, Any], attempt: int) -> None:
    from .chunks import analyze_range

    job_id, idx = job["job_id"], chunk["idx"]
    d = ctx.job_dir(job_id)
    crops = f"chunks/a{idx}-{attempt}"
    stop = ctx.stop_for(job_id)
    tick = _Ticker(ctx, job, idx, attempt, "attempt", stop)
    result = analyze_range(
        d / job["input"],
        chunk["start_frame"],
        chunk["end_frame"],
        int(job.get("overlap_frames") or 0),
        ctx.recognizer_for(job.get("config")),
        job["gallery"],
        _video_config(job),
        crops_dir=d / crops,
        progress=lambda done, fps: tick(done, fps),
        on_frame=tick.live,
        stop=stop,
        max_frames=job.get("max_frames"),
    )
    if result["stopped"]:
        cancel_job(ctx.store, job_id)
        return
    result["crops_dir"] = crops
    with ctx.store.tx() as tx:
        job, chunk = _fenced(tx, job_id, idx, attempt)
        chunk.update(status="done", frames_done=result["end"] - result["start"])
        tx.put_chunk(chunk, result=result)
        chunks = tx.chunks(job_id)
        tx.put_job({**job, "heartbeat": time.time(), "progress": _progress(
            chunks, (job.get("video") or {}).get("frames"), _video_config(job).write_video)})


def _advance(ctx: TaskContext, job_id: str, resume: bool = False) -> None:
    """Move a chunked job on when its current phase is complete (any task may call it, any number of times)."""
    with ctx.store.tx(write=False) as tx:
        job = tx.job(job_id)
        chunks = tx.chunks(job_id)
    if job is None or job["status"] != "running":
        return
    if job["phase"] == "analyze":
        if chunks and all(c["status"] == "done" for c in chunks):
            if _join(ctx, job):
                for c in chunks:
                    ctx.executor.enqueue(job_id, "render", c["idx"], options=job.get("queue_options"))
    elif job["phase"] == "render":
        if all(c["render_status"] == "done" for c in chunks):
            _finish_render(ctx, job_id)
        elif resume:  # the task that moved the job on may have died before queueing these
            for c in chunks:
                if c["render_status"] != "done":
                    ctx.executor.enqueue(job_id, "render", c["idx"], ensure=True, options=job.get("queue_options"))


def _join(ctx: TaskContext, job: dict[str, Any]) -> bool:
    """Join the ranges; True when this call moved the job to its render phase."""
    from .chunks import join_chunks, judge_decider

    job_id = job["job_id"]
    d = ctx.job_dir(job_id)
    with ctx.store.tx(write=False) as tx:
        results = tx.chunk_results(job_id)
    if any(r is None for r in results):
        return False
    cfg = _video_config(job)
    rec = ctx.recognizer_for(job.get("config"))
    joined = join_chunks(results, judge_decider(rec, job["gallery"], cfg), save_unknown_crops=cfg.save_unknown_crops)
    result_dir = f"final-{secrets.token_hex(4)}"
    out = d / result_dir
    out.mkdir(parents=True, exist_ok=True)
    for k, name, dest in joined["crops"]:
        src = d / results[k]["crops_dir"] / name
        dst = out / dest
        dst.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(src, dst)
    tracks = joined["tracks"]
    people: dict[str, dict[str, int]] = {}
    for t in tracks:
        if t["name"] != "unknown":
            people.setdefault(t["name"], {"tracks": 0, "frames": 0})["tracks"] += 1
    for name, n in joined["frames_by_name"].items():
        if name != "unknown":
            people.setdefault(name, {"tracks": 0, "frames": 0})["frames"] = n
    n_frames = len(joined["frames"])
    summary = {
        "frames": n_frames,
        "tracks": len(tracks),
        "named_tracks": sum(1 for t in tracks if t["name"] != "unknown"),
        "people": dict(sorted(people.items())),
        "name_switches": joined["name_switches"],
        "chunks": len(results),
        "joined_tracks": joined["joins"],
    }
    files = {"frames.jsonl": "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in joined["frames"]),
             "tracks.json": json.dumps(tracks, indent=2, ensure_ascii=False)}
    for name, text in files.items():  # the same files a one-pass run leaves, for whoever reads the folder
        (out / name).write_text(text, encoding="utf-8")
    render = cfg.write_video
    with ctx.store.tx() as tx:
        cur = tx.job(job_id, lock=True)
        if cur is None or cur["status"] != "running" or cur["phase"] != "analyze":
            won = False
        else:
            won = True
            tx.delete_frames(job_id)
            tx.add_frames(job_id, joined["frames"])
            tx.set_tracks(job_id, tracks)
            changes: dict[str, Any] = {"result_dir": result_dir, "heartbeat": time.time(), "frames_done": n_frames}
            if render:
                changes.update(phase="render", pending_summary=summary, progress=ANALYSIS_SHARE)
            else:
                changes.update(phase="final", status="done", progress=1.0, finished_at=now_iso(),
                               summary=_with_timing(summary, cur))
            tx.put_job({**cur, **changes})
    if not won:
        shutil.rmtree(out, ignore_errors=True)
    return won and render


def _with_timing(summary: dict[str, Any], job: dict[str, Any]) -> dict[str, Any]:
    from datetime import datetime

    out = dict(summary)
    try:
        started = datetime.fromisoformat(str(job.get("started_at")).replace("Z", "+00:00"))
        seconds = (datetime.fromisoformat(now_iso().replace("Z", "+00:00")) - started).total_seconds()
        out["seconds"] = round(seconds, 3)
        out["fps"] = round(summary["frames"] / seconds, 2) if seconds > 0 else None
    except (TypeError, ValueError):
        pass
    return out


def _render(ctx: TaskContext, job_id: str, idx: int) -> None:
    from .chunks import render_range

    claimed = _claim(ctx, job_id, idx, "render")
    if claimed is None:
        return
    job, chunk, attempt = claimed
    if attempt is None or job["phase"] != "render":
        _advance(ctx, job_id, resume=True)
        return
    d = ctx.job_dir(job_id)
    start, end = chunk["start_frame"], chunk["end_frame"]
    with ctx.store.tx(write=False) as tx:
        frames = tx.frames(job_id, start, end)
    seg = Path("segments") / f"{idx}-{attempt}.mp4"
    (d / seg).parent.mkdir(parents=True, exist_ok=True)
    tmp = d / seg.with_name(f".{idx}-{attempt}.tmp.mp4")
    stop = ctx.stop_for(job_id)
    tick = _Ticker(ctx, job, idx, attempt, "render_attempt", stop)
    cfg = _video_config(job)
    n = render_range(d / job["input"], start, end, frames, tmp, cfg.video_codec, stop=stop,
                     progress=lambda done: tick(done, 0.0))
    if stop.is_set():
        tmp.unlink(missing_ok=True)
        cancel_job(ctx.store, job_id)
        return
    os.replace(tmp, d / seg)
    with ctx.store.tx() as tx:
        job, chunk = _fenced(tx, job_id, idx, attempt, "render_attempt")
        tx.put_chunk({**chunk, "render_status": "done", "rendered": n, "segment": str(seg)})
        chunks = tx.chunks(job_id)
        tx.put_job({**job, "heartbeat": time.time(),
                    "progress": _progress(chunks, (job.get("video") or {}).get("frames"), True)})
    _advance(ctx, job_id)


def _finish_render(ctx: TaskContext, job_id: str) -> None:
    from .chunks import concat_videos

    with ctx.store.tx(write=False) as tx:
        job = tx.job(job_id)
        chunks = tx.chunks(job_id)
    if job is None or job["status"] != "running" or job["phase"] != "render":
        return
    d = ctx.job_dir(job_id)
    out = d / job["result_dir"] / "annotated.mp4"
    tmp = out.with_name(f".annotated.{secrets.token_hex(4)}.tmp.mp4")
    method = concat_videos([d / c["segment"] for c in chunks], tmp)
    os.replace(tmp, out)  # an identical file if two tasks got here together
    with ctx.store.tx() as tx:
        cur = tx.job(job_id, lock=True)
        if cur is None or cur["status"] != "running" or cur["phase"] != "render":
            return
        summary = _with_timing(dict(cur.get("pending_summary") or {}, concat=method), cur)
        tx.put_job({**cur, "status": "done", "phase": "final", "progress": 1.0, "finished_at": now_iso(),
                    "summary": summary, "fps": summary.get("fps"), "pending_summary": None})
    for sub in ("segments", "chunks"):  # intermediate files; results are in the result folder
        shutil.rmtree(d / sub, ignore_errors=True)


# --- executors --------------------------------------------------------------------------------------------------
class DaemonPool:
    """``workers`` daemon threads running submitted calls in order.

    Daemon threads do not hold the process open at exit (a ``ThreadPoolExecutor`` would wait for
    a long video): a job cut off that way stays ``running`` in the store and is marked failed by
    the next start (or by another server once its heartbeat is stale).
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


class InProcessExecutor:
    """Tasks on a bounded pool of daemon threads in this process (the embedded default)."""

    kind = "inprocess"

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))
        self.parallelism = self.workers
        self._pool = DaemonPool(self.workers)
        self.ctx: TaskContext | None = None

    def start(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def enqueue(self, job_id: str, kind: str, idx: int, *, ensure: bool = False, options: Any = None) -> None:
        self._pool.submit(self._run, job_id, kind, idx)

    def _run(self, job_id: str, kind: str, idx: int) -> None:
        assert self.ctx is not None
        try:
            execute(self.ctx, job_id, kind, idx)
        except Exception as exc:  # a bug or the database gone: keep the server alive, say little
            log.exception("video job %s task %s/%d crashed", job_id, kind, idx)
            with contextlib.suppress(Exception):
                fail_job(self.ctx.store, job_id, f"internal error ({type(exc).__name__})")

    def cancel(self, job_id: str, chunks: int) -> None:
        pass  # queued tasks see the job ended and return at once

    def maintenance(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"executor": self.kind, "workers": self.workers}

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)


class SyncExecutor(InProcessExecutor):
    """Runs every task at once in the calling thread (scripts, benchmarks, :func:`run_job`)."""

    kind = "inprocess"

    def __init__(self) -> None:
        self.workers = 1
        self.parallelism = 2  # plan chunks as if they could run in parallel
        self.ctx = None
        self._pending: list[tuple[str, str, int]] = []
        self._running = False

    def enqueue(self, job_id: str, kind: str, idx: int, *, ensure: bool = False, options: Any = None) -> None:
        self._pending.append((job_id, kind, idx))
        if self._running:
            return
        self._running = True
        try:
            while self._pending:
                self._run(*self._pending.pop(0))
        finally:
            self._running = False

    def shutdown(self, wait: bool = True) -> None:
        pass


def _redis(url: str) -> Any:
    try:
        from redis import Redis
    except ImportError as exc:  # pragma: no cover - in requirements.txt
        raise ConfigError("a task queue needs the 'rq' and 'redis' packages (pip install rq)") from exc
    if not url.lower().startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"the queue URL must be redis://host:port/db (or rediss://, unix://), got {url!r}")
    return Redis.from_url(url, health_check_interval=30, socket_connect_timeout=10)


def rq_job_id(job_id: str, kind: str, idx: int) -> str:
    return f"video-{job_id}-{kind}-{idx}"


LIVE_RQ_STATES = ("queued", "started", "deferred", "scheduled")


class RedisQueueExecutor:
    """Tasks as RQ jobs on Redis, run by ``python -m modules.worker`` processes anywhere."""

    kind = "queue"
    parallelism = 1 << 20  # unknown: workers come and go; plan chunks by length alone

    def __init__(
        self,
        url: str,
        *,
        queue_name: str = QUEUE_NAME,
        retries: int = DEFAULT_RETRIES,
        task_timeout: int = DEFAULT_TASK_TIMEOUT,
        cleanup_interval: float = DEFAULT_CLEANUP_INTERVAL,
        lost_after: float = 300.0,
    ):
        from rq import Queue

        self.url = url
        self.redis = _redis(url)
        self.queue = Queue(queue_name, connection=self.redis)
        self.retries = max(0, int(retries))
        self.task_timeout = max(1, int(task_timeout))
        self.cleanup_interval = float(cleanup_interval)
        self.lost_after = float(lost_after)
        self.ctx: TaskContext | None = None

    def __repr__(self) -> str:
        return f"RedisQueueExecutor({safe_url(self.url)!r}, queue={self.queue.name!r})"

    @classmethod
    def from_env(cls, url: str, environ: Any = None, **overrides: Any) -> RedisQueueExecutor:
        """``FACEREC_QUEUE_NAME``, ``FACEREC_QUEUE_RETRIES``, ``FACEREC_QUEUE_TASK_TIMEOUT`` (s),
        ``FACEREC_QUEUE_CLEANUP_INTERVAL`` (s), then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, key, typ in (
            ("queue_name", "FACEREC_QUEUE_NAME", str),
            ("retries", "FACEREC_QUEUE_RETRIES", int),
            ("task_timeout", "FACEREC_QUEUE_TASK_TIMEOUT", int),
            ("cleanup_interval", "FACEREC_QUEUE_CLEANUP_INTERVAL", float),
        ):
            raw = (env.get(key) or "").strip()
            if raw:
                try:
                    values[name] = typ(raw)
                except ValueError:
                    raise ConfigError(f"{key} must be a {typ.__name__}, got {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(url, **values)

    def start(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        register_context(ctx)

    def options(self) -> dict[str, Any]:
        """Recorded with each job, so that follow-up tasks queued by a worker are queued alike."""
        return {"retries": self.retries, "timeout": self.task_timeout}

    def enqueue(self, job_id: str, kind: str, idx: int, *, ensure: bool = False, options: Any = None) -> None:
        import redis
        from rq import Callback, Retry
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        opts = {**self.options(), **(options or {})}
        rid = rq_job_id(job_id, kind, idx)
        try:
            if ensure:
                with contextlib.suppress(NoSuchJobError):
                    if Job.fetch(rid, connection=self.redis).get_status(refresh=True) in (*LIVE_RQ_STATES, "finished"):
                        return
            self.queue.enqueue(
                rq_task,
                job_id,
                kind,
                idx,
                job_id=rid,
                description=f"video job {job_id}: {kind} chunk {idx}",
                retry=Retry(max=int(opts["retries"])) if int(opts["retries"]) > 0 else None,
                job_timeout=int(opts["timeout"]),
                result_ttl=24 * 3600,
                failure_ttl=7 * 24 * 3600,
                on_failure=Callback(on_task_failure),
                meta={"video_job": job_id, "store": self.ctx.store.store_id if self.ctx else None},
            )
        except redis.exceptions.RedisError as exc:
            raise ServiceUnavailableError(f"the task queue is not reachable: {exc}") from exc

    def cancel(self, job_id: str, chunks: int) -> None:
        """Drop the job's tasks that have not started (those running stop at their next progress tick)."""
        import redis
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job

        for kind in ("analyze", "render"):
            for i in range(chunks):
                with contextlib.suppress(NoSuchJobError, InvalidJobOperation, redis.exceptions.RedisError):
                    j = Job.fetch(rq_job_id(job_id, kind, i), connection=self.redis)
                    if j.get_status(refresh=False) in ("queued", "deferred", "scheduled"):
                        j.cancel()

    def live_tasks(self, job_id: str, chunks: int) -> int:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        n = 0
        for kind in ("analyze", "render"):
            for i in range(chunks):
                with contextlib.suppress(NoSuchJobError):
                    if Job.fetch(rq_job_id(job_id, kind, i), connection=self.redis).get_status() in LIVE_RQ_STATES:
                        n += 1
        return n

    def maintenance(self) -> None:
        """Registry cleanup (abandoned tasks -> retry or failure), then jobs whose tasks are all gone -> failed."""
        import redis

        try:
            clean_queue(self.queue, self.cleanup_interval)
            if self.ctx is None:
                return
            now = time.time()
            for job in self.ctx.store.active():
                if job.get("executor") != self.kind:
                    continue
                seen = job.get("heartbeat") or _epoch(job.get("updated_at"))
                if seen and now - seen < self.lost_after:
                    continue
                if self.live_tasks(job["job_id"], int(job.get("chunks") or 1)) == 0:
                    fail_job(self.ctx.store, job["job_id"],
                             "lost: no worker runs or waits for any of its tasks (was the queue emptied,"
                             " or do the workers use another job database?)")
        except (redis.exceptions.RedisError, FaceRecError) as exc:
            log.warning("video queue maintenance: %s", exc)

    def describe(self) -> dict[str, Any]:
        from rq import Worker

        info: dict[str, Any] = {"executor": self.kind, "queue": self.queue.name}
        with contextlib.suppress(Exception):
            info["workers"] = Worker.count(queue=self.queue)
            info["queued_tasks"] = self.queue.count
        return info

    def shutdown(self, wait: bool = True) -> None:
        if self.ctx is not None:
            unregister_context(self.ctx)
        with contextlib.suppress(Exception):
            self.redis.close()


def _epoch(iso: Any) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except (TypeError, ValueError):
        return None


def safe_url(url: str) -> str:
    """``url`` without its password."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        p = urlsplit(url)
        if p.password:
            netloc = f"{p.username or ''}:***@{p.hostname}" + (f":{p.port}" if p.port else "")
            return urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))
    except ValueError:
        return "redis://?"
    return url


def clean_queue(queue: Any, interval: float) -> bool:
    """RQ's registry cleanup for ``queue``, at most once per ``interval`` across every process.

    Expired entries of the ``StartedJobRegistry`` are tasks whose worker stopped sending
    heartbeats: RQ runs their failure callback and retries them (``Retry``) or fails them.
    A lock with an expiry (never released) keeps two processes from handling one task twice.
    """
    from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry
    from rq.timeouts import TimerDeathPenalty

    key = f"facerec:video:cleanup:{queue.name}"
    if not queue.connection.set(key, worker_name(), nx=True, ex=max(1, int(round(interval)))):
        return False
    # the timer death penalty works off the main thread (callbacks run under it)
    StartedJobRegistry(queue=queue, death_penalty_class=TimerDeathPenalty).cleanup()
    FinishedJobRegistry(queue=queue).cleanup()
    FailedJobRegistry(queue=queue).cleanup()
    return True


# --- what RQ calls ------------------------------------------------------------------------------------------------
_WORKER: Any = None  # the VideoWorker of this process
_WORKER_CONTEXT: TaskContext | None = None


def set_worker_context(ctx: TaskContext, worker: Any = None) -> None:
    global _WORKER_CONTEXT, _WORKER
    _WORKER_CONTEXT = ctx
    _WORKER = worker
    register_context(ctx)


@contextlib.contextmanager
def _heartbeats(interval: float) -> Any:
    """Renew this task's entry in the StartedJobRegistry while it runs (stops before the task returns)."""
    from rq import get_current_job

    job, worker = get_current_job(), _WORKER
    if job is None or worker is None:
        yield
        return
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval):
            try:
                worker.maintain_heartbeats(job)
            except Exception as exc:  # noqa: BLE001 - Redis away for a moment: try again next time
                log.warning("heartbeat of %s failed: %s", job.id, exc)

    t = threading.Thread(target=beat, name="rq-heartbeat", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


def rq_task(job_id: str, kind: str, idx: int) -> None:
    """The RQ job function: one task of a video job, in the worker's context."""
    ctx = _WORKER_CONTEXT
    if ctx is None:
        raise RuntimeError("video tasks run in `python -m modules.worker` processes (no worker context here)")
    ttl = getattr(_WORKER, "heartbeat_ttl", DEFAULT_HEARTBEAT_TTL)
    with _heartbeats(max(0.5, ttl / 3.0)):
        execute(ctx, job_id, kind, idx)


def on_task_failure(job: Any, connection: Any, typ: Any, value: Any, tb: Any) -> None:
    """RQ failure callback: a task raised, timed out, or its worker died.  Fails the video job once
    RQ has no retry left for the task (never raises: RQ would stop its registry cleanup)."""
    try:
        from rq.exceptions import AbandonedJobError
        from rq.timeouts import JobTimeoutException

        video_job = (job.meta or {}).get("video_job") or (job.args[0] if job.args else None)
        ctx = context_for((job.meta or {}).get("store"))
        if ctx is None or video_job is None:
            return
        if isinstance(typ, type) and issubclass(typ, AbandonedJobError):
            reason = "its worker stopped (no heartbeat)"
        elif isinstance(typ, type) and issubclass(typ, JobTimeoutException):
            reason = "a task ran past its time limit"
        else:
            reason = f"internal error ({getattr(typ, '__name__', typ)})"
        if job.retries_left and job.retries_left > 0:
            log.warning("video job %s: %s; retrying (%d retries left)", video_job, reason, job.retries_left)
            with ctx.store.tx() as tx:
                cur = tx.job(video_job, lock=True)
                if cur is not None and cur["status"] in ACTIVE:
                    tx.put_job({**cur, "retries": int(cur.get("retries") or 0) + 1, "last_error": reason})
            return
        fail_job(ctx.store, video_job, f"{reason}; no retries left")
    except Exception:
        log.exception("video task failure callback")


def make_worker_class() -> type:
    """:class:`VideoWorker` (built on first use, so that importing this module needs no ``rq``)."""
    from rq.worker import SimpleWorker
    from rq.worker_registration import clean_worker_registry

    class VideoWorker(SimpleWorker):
        """RQ's ``SimpleWorker`` (no fork: models stay loaded) with short task heartbeats."""

        heartbeat_ttl: int = DEFAULT_HEARTBEAT_TTL
        cleanup_interval: float = DEFAULT_CLEANUP_INTERVAL

        def get_heartbeat_ttl(self, job: Any) -> int:
            return int(self.heartbeat_ttl)

        def clean_registries(self) -> None:
            for q in self.queues:
                if clean_queue(q, self.cleanup_interval):
                    clean_worker_registry(q)
            from rq.utils import now

            self.last_cleaned_at = now()

    return VideoWorker
